"""Thin origins (issue 13) on real dm-thin pools, laid out as Proxmox VE lays out LVM-thin: a thin
pool `data` in the VG, each guest disk a thin LV `vm-<id>-disk-<n>` in it holding a real disk.

Through the CLI as a user runs it: a pool at or above the threshold gets no snapshot (its guest
fails, the others are mounted); a pool that runs full while the backup runs fails its guests at
unmount. Every test ends with nothing of ours left (no snapshot LV, loop device or mount).
"""

import json
import os
import subprocess
import sys

import pytest

from tests import guestdisks

pytestmark = pytest.mark.vm

MOUNT_ROOT = "/tmp/domu thin mnt"
PREFIX = "vm-"   # Proxmox VE's disk names


def cli(vg, *args, timeout=600):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", vg, "--mount-root", MOUNT_ROOT,
            "--quiesce", "none", "--prefix", PREFIX, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def pool_state(vg, pool="data"):
    rep = json.loads(guestdisks.out(["lvs", "--reportformat", "json", "-o",
                                     "lv_name,data_percent,metadata_percent,lv_health_status,lv_attr", f"{vg}/{pool}"]))
    return rep["report"][0]["lv"][0]


def mounted_under_root():
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(MOUNT_ROOT.replace(" ", "\\040"))]


def root_entries():
    found = []
    for dirpath, dirnames, filenames in os.walk(MOUNT_ROOT):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


def assert_nothing_left(gvg, also_there=()):
    left = [x for x in gvg.leftovers() if x not in {f"LV {gvg.vg}/{lv}" for lv in also_there}]
    assert left == [], left
    assert [lv["lv_name"] for lv in gvg.lvs() if lv["lv_name"].endswith("-dsnap")] == []
    assert mounted_under_root() == []
    assert root_entries() == []


def write_into(device, mib, *, seek_mib=0, timeout=300):
    """The guest writing: `mib` MiB of random data, direct and synced; bounded. Returns dd's result
    (it fails once a pool with --errorwhenfull y runs full)."""
    return subprocess.run(["dd", "if=/dev/urandom", f"of={device}", "bs=1M", f"count={mib}", f"seek={seek_mib}",
                           "oflag=direct", "conv=fsync,notrunc", "status=none"],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def thin_vg():
    gvg = guestdisks.GuestVG("domupve", size_mib=512).create()   # a VG of its own, like Proxmox VE's `pve`
    yield gvg
    subprocess.run([sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--mount-root", MOUNT_ROOT,
                    "cleanup"], capture_output=True, timeout=600)
    gvg.destroy()


def test_thin_pool_above_threshold_is_refused_others_are_mounted(thin_vg):
    vg = thin_vg.vg
    thin_vg.add_thin_pool("data", 32)
    thin_vg.add_thin_pool("roomy", 96)
    thin_vg.add_guests([dict(lv="vm-101-disk-0", layout="msdos-ext4-1m", pool="data"),
                        dict(lv="vm-102-disk-0", layout="msdos-ext4-1m", pool="roomy"),
                        dict(lv="vm-103-disk-0", layout="msdos-ext4-1m")])        # a classic LV
    # Something else in the pool (another VM's disk) takes it to about 93%: over the 90% default.
    guestdisks.run(["lvcreate", "-q", "-y", "-n", "filler", "-V", "64M", "--thinpool", "data", vg])
    used = float(pool_state(vg)["data_percent"])
    write_into(f"/dev/{vg}/filler", int((93 - used) * 32 / 100) + 1).check_returncode()
    before = pool_state(vg)
    assert 90 <= float(before["data_percent"]) < 100, before

    proc = cli(vg, "mount", "--all")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next((x for x in proc.stderr.splitlines() if "FAILED  vm-101-disk-0" in x), "")
    assert f"space check failed: {vg}/vm-101-disk-0 is a thin LV in thin pool {vg}/data" in line, proc.stderr
    assert f"data use {float(before['data_percent']):.1f}% is at or above thin_pool_max_data_percent (90%)" in line
    assert f"lvextend -L +SIZE {vg}/data" in line and "--poolmetadatasize" in line and "remove thin LVs" in line
    assert "nothing was created" in line
    for name in ("vm-102-disk-0", "vm-103-disk-0"):
        assert f"OK      {name}" in proc.stdout, proc.stdout + proc.stderr
        assert os.path.ismount(os.path.join(MOUNT_ROOT, vg, name))
        assert guestdisks.compare_tree(os.path.join(MOUNT_ROOT, vg, name), thin_vg.guests[name].tree) == []
    snapshots = sorted(lv["lv_name"] for lv in thin_vg.lvs() if lv["lv_name"].endswith("-dsnap"))
    assert snapshots == ["vm-102-disk-0-dsnap", "vm-103-disk-0-dsnap"]   # none in the full pool
    assert not os.path.exists(os.path.join(MOUNT_ROOT, vg, "vm-101-disk-0"))

    proc = cli(vg, "unmount", "--all")
    assert proc.returncode == 1, proc.stdout + proc.stderr   # the refused guest is not backed up
    assert "not backed up: vm-101-disk-0" in proc.stderr
    assert "OK      vm-102-disk-0" in proc.stdout and "OK      vm-103-disk-0" in proc.stdout
    assert_nothing_left(thin_vg, also_there=["filler"])
    assert thin_vg.guests["vm-101-disk-0"].unchanged()


def test_thin_pool_that_fills_during_the_backup_fails_its_guests(thin_vg):
    vg = thin_vg.vg
    thin_vg.add_thin_pool("data", 40, errorwhenfull=True)     # writes fail at once when it is full
    thin_vg.add_guests([dict(lv="vm-201-disk-0", layout="msdos-ext4-1m", pool="data"),
                        dict(lv="vm-202-disk-0", layout="msdos-ext4-1m")])          # a classic LV
    assert float(pool_state(vg)["data_percent"]) < 90

    proc = cli(vg, "mount", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK      vm-201-disk-0" in proc.stdout and "OK      vm-202-disk-0" in proc.stdout

    # The guest keeps writing while its backup runs: 44 MiB into its 48 MiB disk, all new pool
    # blocks (the snapshot keeps the old ones), more than the 40 MiB pool holds.
    dd = write_into(f"/dev/{vg}/vm-201-disk-0", 44, seek_mib=2)
    full = pool_state(vg)
    assert dd.returncode != 0, (dd, full)     # the guest's own writes failed: the pool is full
    # dm-thin goes back to writing once a commit frees a few blocks: a few chunks may show free
    assert float(full["data_percent"]) >= 99 or full["lv_health_status"] == "out_of_data", full

    proc = cli(vg, "unmount", "--all")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next((x for x in proc.stderr.splitlines() if "FAILED  vm-201-disk-0" in x), "")
    assert f"thin pool failed: thin pool {vg}/data ran full during the backup" in line, proc.stdout + proc.stderr
    assert "the files read may be incomplete" in line and "not reliable" in line
    assert f"lvextend -L +SIZE {vg}/data" in line and "run the backup again" in line
    assert "OK      vm-202-disk-0" in proc.stdout, proc.stdout + proc.stderr   # other pools' guests are fine
    assert_nothing_left(thin_vg)
