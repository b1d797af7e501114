"""The product's wheel holds the product only: the operator, the protocol and its plumbing, the
participant SDK, the buy-video participants and the conformance kit; never the local control plane or
the harness, which are development-only distributions of their own (testenv/, harness/)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = {
    "saga_operator",
    "saga_kubectl",
    "saga_protocol",
    "saga_plumbing",
    "saga_participants",
    "saga_buyvideo",
    "saga_conformance",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("saga_operator-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_the_product_packages_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    packages = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert packages == PRODUCT


def test_the_wheel_declares_no_development_dependency(wheel: zipfile.ZipFile) -> None:
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [
        line
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert requires, "the wheel declares its runtime dependencies"
    assert not [line for line in requires if "cryptography" in line or "pytest" in line], requires
