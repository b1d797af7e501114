"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and they can fail.

The first test is what `make lint` checks, kept here so that a plain pytest run sees it too. The second runs the
project's own contracts, renamed, against a throwaway package that breaks them: a contract that nothing can break
would pass just as quietly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def project_contracts() -> list[dict[str, Any]]:
    with (REPO / "pyproject.toml").open("rb") as f:
        contracts: list[dict[str, Any]] = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    return contracts


def test_the_project_keeps_its_import_contracts() -> None:
    result = lint_imports(REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    contracts = project_contracts()
    for contract in contracts:
        assert f"{contract['name']} KEPT" in " ".join(output.split()), output
    assert f"Contracts: {len(contracts)} kept, 0 broken." in output


# The project's packages as the throwaway tree calls them.
RENAMES = {"saga_operator": "vop", "saga_participants": "vsdk", "saga_buyvideo": "vexamples", "saga_kubectl": "vkctl"}

# Each module of the throwaway tree and what it imports: one import that breaks each contract under test.
VIOLATIONS = {
    "vop/__init__.py": "",
    "vop/domain/__init__.py": "",
    "vop/domain/model.py": "import aiohttp\n",  # the domain imports a transport
    "vop/domain/transition.py": "from vop.runtime import coordinator\n",  # a lower layer imports a higher one
    "vop/adapters/__init__.py": "",
    "vop/adapters/kube.py": "from vop.domain import model\n",  # allowed: a higher layer imports a lower one
    "vop/runtime/__init__.py": "",
    "vop/runtime/coordinator.py": "from vop.adapters import kube\n",  # allowed
    "vsdk/__init__.py": "from vsdk.inbox import BusinessError\n",  # the SDK's public face
    "vsdk/inbox.py": "class BusinessError(Exception):\n    pass\n",
    "vexamples/__init__.py": "",
    "vexamples/good.py": "from vsdk import BusinessError\n",  # allowed: the public face
    "vexamples/bad.py": "from vsdk.inbox import BusinessError\n",  # an SDK submodule
    "vkctl/__init__.py": "",
    "vkctl/good.py": "import vop.domain\n",  # allowed: the plugin reads the domain (its models)
    "vkctl/bad.py": "import vop.runtime\n",  # the plugin imports the operator's runtime
}


def renamed(value: Any) -> Any:
    if isinstance(value, str):
        for old, new in RENAMES.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [renamed(v) for v in value]
    return value


def test_the_contracts_break_on_a_package_that_violates_them(tmp_path: Path) -> None:
    wanted = {"operator-layers", "pure-domain", "examples-use-public-sdk", "kubectl-plugin-without-runtime"}
    contracts = [c for c in project_contracts() if c["id"] in wanted]
    assert {c["id"] for c in contracts} == wanted
    lines = [
        "[tool.importlinter]",
        f"root_packages = {json.dumps(sorted(RENAMES.values()))}",
        "include_external_packages = true",
    ]
    for contract in contracts:
        lines.append("[[tool.importlinter.contracts]]")
        for key, value in contract.items():
            if key != "ignore_imports":  # today's exceptions name the project's modules
                lines.append(f"{key} = {json.dumps(renamed(value))}")  # JSON strings, lists, booleans are TOML
    (tmp_path / "pyproject.toml").write_text("\n".join(lines) + "\n")
    for path, source in VIOLATIONS.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(source)

    result = lint_imports(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"Contracts: 0 kept, {len(contracts)} broken." in output
    assert "vop.domain.transition -> vop.runtime.coordinator" in output
    assert "vop.domain.model -> aiohttp" in output
    assert "vexamples.bad -> vsdk.inbox" in output
    assert "vexamples.good" not in output
    assert "vkctl.bad -> vop.runtime" in output
    assert "vkctl.good" not in output
    assert "vop.adapters.kube ->" not in output
