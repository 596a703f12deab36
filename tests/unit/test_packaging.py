"""Packaging: `pip install .` into a fresh virtualenv works and installs the console scripts."""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import domu_snapshot

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = {"domu-snapshot": "domu_snapshot.cli:main", "foreach-domu": "domu_snapshot.cli:foreach_main"}


def test_metadata_of_the_installed_distribution():
    dist = importlib.metadata.distribution("domu-snapshot")
    assert dist.version == domu_snapshot.__version__ == "0.1.0"
    assert dist.metadata["Requires-Python"] == ">=3.9"
    requires = dist.requires or []
    assert "pyparted" in requires
    assert any(r.startswith("libvirt-python") and 'extra == "libvirt"' in r for r in requires)
    eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert eps == SCRIPTS


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv(tmp_path):
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the work tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "domu_snapshot", src / "domu_snapshot",
                    ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    # Debian's python with system site packages: pyparted comes from python3-parted, as on a host.
    base = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    subprocess.run([base, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    # The build backend is Debian's setuptools and wheel (python3-setuptools, python3-wheel, seen
    # through the system site packages): no download, so this stays fast and works offline.
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    for script, target in SCRIPTS.items():
        path = venv / "bin" / script
        assert path.exists(), f"{script} not installed"
        module, func = target.split(":")
        assert f"from {module} import {func}" in path.read_text()
    out = subprocess.run([str(venv / "bin/python"), "-c",
                          "import domu_snapshot, sys; print(domu_snapshot.__version__, domu_snapshot.__file__)"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert out[0] == "0.1.0" and out[1].startswith(str(venv))
