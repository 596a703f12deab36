"""Nothing planted by another user runs as root: modules in the directory root runs
`domu-snapshot` from (the probe child used to be `python -m`, cwd first on sys.path)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import guestdisks

pytestmark = pytest.mark.vm

VG = "domuplant"


@pytest.fixture(scope="module")
def plant_vg():
    gvg = guestdisks.GuestVG(VG, size_mib=64).create()
    try:
        gvg.add_guest("domu-plant", "msdos-ext4-1m", size_mib=32, dirty=False)
        yield gvg
    finally:
        left = gvg.destroy()
    assert not left, left


def test_planted_modules_in_cwd_do_not_run_and_probing_works(plant_vg, tmp_path):
    marker = tmp_path / "planted-ran"
    planted = tmp_path / "home-of-a-user"
    planted.mkdir()
    for module in ("json", "parted", "struct", "zlib"):
        (planted / f"{module}.py").write_text(f"open({str(marker)!r}, 'a').write('{module} ')\n")
    os.chmod(planted, 0o777)
    cli = shutil.which("domu-snapshot") or os.path.join(os.path.dirname(sys.executable), "domu-snapshot")
    proc = subprocess.run([cli, "--no-syslog", "--vg", VG, "--quiesce", "none", "list", "--json"],
                          cwd=planted, capture_output=True, text=True, timeout=600)
    assert not marker.exists(), f"planted modules ran as root: {marker.read_text()}"
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert (row["guest"], row["partition"], row["fs"], row["offset"]) == ("domu-plant", 1, "ext4", 1024 * 1024)
