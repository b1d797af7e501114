"""The Dockerfile, read (no Docker engine runs here): a slim Python base, a builder stage and a final
stage without build tools, a numeric non-root user, and entry points that pyproject.toml really
defines. The build context (.dockerignore) must hold everything the Dockerfile copies."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .helpers import REPO, objects, pod_spec, workloads

DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSOLE_SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    out = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "ARG" and not stages:
            arg, _, default = rest.partition("=")
            args[arg] = default
        elif keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[str(m.group(1) or m.group(2))], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return args, stages


ARGS, STAGES = parse(DOCKERFILE.read_text())
FINAL = STAGES[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def test_every_stage_is_a_slim_python_311() -> None:
    assert len(STAGES) >= 2, "a builder stage and a final stage"
    for stage in STAGES:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-[a-z]+)?(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_final_stage_installs_the_builders_wheels_and_builds_nothing() -> None:
    builder = STAGES[0]
    assert builder.name and "pip wheel" in " ".join(builder.all("RUN"))
    run = " ".join(FINAL.all("RUN"))
    assert f"from={builder.name}" in run, "the final stage takes the wheels from the builder"
    assert "--no-index" in run, "the final stage installs only the built wheels"
    assert not FINAL.all("COPY") or all("--from=" in c for c in FINAL.all("COPY")), "no source in the final image"
    for tool in ("apt-get", "apk ", "gcc", "build-essential", "make ", "git "):
        assert tool not in run, f"{tool.strip()} in the final stage"


def test_runs_as_a_numeric_non_root_user() -> None:
    users = FINAL.all("USER")
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0, f"USER {users[-1]}: numeric (Kubernetes checks runAsNonRoot by UID)"
    assert not group or (group.isdigit() and int(group) > 0)
    # the manifests run the same UID, so that the files the image owns and the pods agree
    for workload in workloads(objects("overlays/kind")):
        spec = pod_spec(workload)
        if any(c["image"].startswith("saga-operator") for c in spec["containers"]):
            assert spec["securityContext"]["runAsUser"] == int(user), workload["metadata"]["name"]


def test_entry_points_are_console_scripts_of_the_package() -> None:
    commands = [exec_form(a) for kw in ("ENTRYPOINT", "CMD") for a in FINAL.all(kw)]
    assert commands, "the final stage has a CMD or ENTRYPOINT"
    for command in commands:
        assert command[0] in CONSOLE_SCRIPTS, f"{command[0]} is not in [project.scripts]"
    # and what the manifests run in this image are console scripts too
    for workload in workloads(objects("overlays/kind")):
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if container["image"].startswith("saga-operator"):
                assert container["command"][0] in CONSOLE_SCRIPTS, container["command"]


@pytest.mark.parametrize("script", ["saga-operator", "saga-participant", "kubectl-saga"])
def test_the_console_scripts_resolve(script: str) -> None:
    """The module:function each script names exists (what pip turns into /usr/local/bin/<script>)."""
    import importlib

    module, _, function = CONSOLE_SCRIPTS[script].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_dockerfile_copies() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in STAGES:
        for args in stage.all("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if any(a.startswith("--from") for a in args.split()):
                continue
            copied += words[:-1]
    assert copied
    for source in copied:
        source = source.rstrip("/")
        assert (REPO / source).exists(), f"the Dockerfile copies {source}, which does not exist"
        assert not _ignored(source, patterns), f".dockerignore leaves {source} out of the build context"
    # every folder pyproject.toml finds packages in is copied, else the wheel would miss a package
    for where in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]:
        assert where in {c.rstrip("/") for c in copied}, f"{where}/ is not copied into the builder"
    readme = PYPROJECT["project"].get("readme")
    if readme:
        assert readme in copied, "pyproject.toml names a readme: the build needs it"
    # and what must stay out does
    for private in (".venv/bin/python", ".git/HEAD", ".stack/kubeconfig", "tests/conftest.py", "data/users.db"):
        assert _ignored(private, patterns), f"{private} would be sent to the Docker daemon"


def test_source_paths_exist_for_the_packages() -> None:
    for where in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["where"]:
        assert any(Path(REPO, where).glob("*/__init__.py")), where
