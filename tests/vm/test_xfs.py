"""XFS guests (issue 15) on real LVM, through the CLI as a user runs it (helpers mode).

VG `domuxfs` holds two RHEL-like guest disks (msdos: swap at 1 MiB, then XFS; the log dirty: the
tree's metadata is only in the log, as on a running guest's disk, see guestdisks._make_xfs):
- `domu-x-rhel`: replayed on its snapshot (read-write mount of the snapshot's loop device with
  nouuid, unmount), then mounted ro,nouuid,nosuid,nodev,noexec;
- `domu-x-broken`: the same disk with its log's first record to replay damaged (CRC), so the kernel
  cannot replay it: the guest fails at "log replay", and is not mounted with norecovery instead.
- `domu-x-rhellvm`: as RHEL's installer lays a disk out (GPT: EFI system partition, /boot xfs, an
  LVM PV with VG `rhel`, LVs root xfs with a dirty log, and swap); with guest_lvm = yes its root LV
  is replayed and mounted from the renamed guest VG on the snapshot.

XFS is opt-in (`filesystems = ext4, ext3, xfs`); the default configuration refuses both guests.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import guestdisks

pytestmark = pytest.mark.vm

VG = "domuxfs"
PREFIX = "domu-x-"
RHEL = PREFIX + "rhel"
BROKEN = PREFIX + "broken"
RHEL_LVM = PREFIX + "rhellvm"
ROOT = "/run/domu-xfs-mnt"
WORK = Path("/run/domu-xfs")
XFS_CONF = WORK / "xfs.conf"
DEFAULT_CONF = WORK / "default.conf"


def cli(config, *args, timeout=900):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--config", str(config), "--vg", VG,
            "--prefix", PREFIX, "--mount-root", ROOT, "--quiesce", "none", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def guest_lines(proc, name):
    return [line for line in (proc.stdout + proc.stderr).splitlines() if re.search(rf"\b{re.escape(name)}\b", line)]


def findmnt(target):
    proc = subprocess.run(["findmnt", "--json", "--mountpoint", target, "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"],
                          capture_output=True, text=True)
    return json.loads(proc.stdout)["filesystems"][0] if proc.returncode == 0 else None


def log_state(lv_path, offset, size):
    """The XFS log's state on an LV (read-only loop device at the partition): "DIRTY" or "CLEAN"."""
    loop = guestdisks.out(["losetup", "--read-only", "--find", "--show", "--offset", str(offset),
                           "--sizelimit", str(size), lv_path]).strip()
    try:
        return guestdisks.xfs_log_state(loop)[3]
    finally:
        guestdisks.run(["losetup", "--detach", loop])


def root_entries():
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


def assert_nothing_left(gvg):
    assert gvg.leftovers() == []  # no snapshot LV, no loop device over one, no mount of one
    assert [lv["lv_name"] for lv in gvg.lvs() if lv["lv_name"].endswith("-dsnap")] == []
    assert root_entries() == []


@pytest.fixture(scope="module")
def xfs_vg():
    subprocess.run(["modprobe", "xfs"], check=False)  # else mount loads it; a missing module fails there
    WORK.mkdir(parents=True, exist_ok=True)
    XFS_CONF.write_text("[domu-snapshot]\nfilesystems = ext4, ext3, xfs\n")
    DEFAULT_CONF.write_text("[domu-snapshot]\n")
    gvg = guestdisks.GuestVG(VG, size_mib=2048).create()
    try:
        rhel_lvm = gvg.add_guest(RHEL_LVM, "gpt-efi-xfs-lvm", inner_vg="rhel")
        rhel = gvg.add_guest(RHEL, "msdos-swap-xfs")
        broken = gvg.add_guest(BROKEN, "msdos-swap-xfs", seed=RHEL)  # the same image, built once
        # Damage the first record to replay (inside its data, past its 512-byte header): its CRC fails.
        # The reference copy of the broken disk gets the same damage (origins are compared to these).
        references = {RHEL: rhel.image, BROKEN: str(WORK / "broken.img"), RHEL_LVM: rhel_lvm.image}
        with open(references[BROKEN], "wb") as copy:
            copy.truncate(broken.size_mib * guestdisks.MiB)
        guestdisks._copy_into(Path(broken.image), references[BROKEN], 0)
        for path in (broken.lv_path, references[BROKEN]):
            with open(path, "r+b") as device:
                device.seek(broken.log_tail + 512 + 64)
                data = device.read(16)
                device.seek(broken.log_tail + 512 + 64)
                device.write(bytes(b ^ 0xFF for b in data))
                os.fsync(device.fileno())
        yield gvg, references
    finally:
        gvg.destroy()
        (WORK / "broken.img").unlink(missing_ok=True)


def origins_unchanged(gvg, references):
    """Each origin LV is byte-identical to the disk it was built as (and damaged as)."""
    return {name: guestdisks.same_content(references[name], g.lv_path) for name, g in gvg.guests.items()}


def test_the_fixture_disks_have_dirty_logs(xfs_vg):
    gvg, _references = xfs_vg
    for name in (RHEL, BROKEN):
        g = gvg.guests[name]
        assert (g.fstype, g.partition, g.dirty) == ("xfs", 2, True)
        assert log_state(g.lv_path, g.offset, g.fs_size) == "DIRTY"


def host_vgs():
    proc = subprocess.run(["vgs", "--noheadings", "-o", "vg_name"], capture_output=True, text=True, check=True)
    return sorted(proc.stdout.split())


def test_rhel_like_guest_with_its_root_xfs_on_guest_lvm(xfs_vg):
    """The root LV's log replayed on the snapshot, mounted read-only from the guest VG renamed on
    the snapshot; the host never shows VG `rhel`, and afterwards looks as before."""
    gvg, references = xfs_vg
    g = gvg.guests[RHEL_LVM]
    conf = WORK / "rhel-lvm.conf"
    conf.write_text(f"[domu-snapshot]\nfilesystems = ext4, ext3, xfs\n\n[guest {RHEL_LVM}]\nguest_lvm = yes\n")
    target = os.path.join(ROOT, VG, RHEL_LVM)
    before = host_vgs()
    proc = cli(conf, "mount", RHEL_LVM)
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "guest VG rhel (as domusnap_" in proc.stdout and "LV root" in proc.stdout, proc.stdout
        assert "partition 3" in proc.stdout and "log replayed" in proc.stdout, proc.stdout
        mounted = findmnt(target)
        assert mounted is not None and mounted["fstype"] == "xfs", mounted
        assert mounted["source"].startswith("/dev/mapper/domusnap_"), mounted
        assert {"ro", "nouuid", "nosuid", "nodev", "noexec"} <= set(mounted["options"].split(","))
        assert "norecovery" not in mounted["options"]
        assert guestdisks.compare_tree(target, g.tree) == []  # only a replay of the log shows them all
        during = host_vgs()
        assert "rhel" not in during and len(set(during)) == len(during), during
    finally:
        unmounted = cli(conf, "unmount", RHEL_LVM)
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    assert host_vgs() == before
    assert_nothing_left(gvg)
    assert origins_unchanged(gvg, references)[RHEL_LVM] is True


def test_the_default_configuration_refuses_xfs_guests_naming_them(xfs_vg):
    gvg, _references = xfs_vg
    proc = cli(DEFAULT_CONF, "mount", RHEL, BROKEN)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for name in (RHEL, BROKEN):
        lines = guest_lines(proc, name)
        assert any("no ext4/ext3 filesystem found" in line and "2:xfs" in line for line in lines), lines
        assert findmnt(os.path.join(ROOT, VG, name)) is None
    assert_nothing_left(gvg)


def test_list_shows_the_xfs_partition_when_selected(xfs_vg):
    gvg, _references = xfs_vg
    proc = cli(XFS_CONF, "list", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {row["lv"]: row for row in json.loads(proc.stdout)}
    g = gvg.guests[RHEL]
    assert (rows[RHEL]["partition"], rows[RHEL]["fs"], rows[RHEL]["offset"], rows[RHEL]["problem"]) == \
        (2, "xfs", g.offset, None)


def test_xfs_log_replayed_on_the_snapshot_and_mounted_read_only(xfs_vg):
    gvg, references = xfs_vg
    rhel = gvg.guests[RHEL]
    target = os.path.join(ROOT, VG, RHEL)
    proc = cli(XFS_CONF, "mount", RHEL, BROKEN)
    try:
        assert proc.returncode == 1, proc.stdout + proc.stderr  # BROKEN fails, RHEL is mounted
        assert f"OK      {RHEL}" in proc.stdout, proc.stdout + proc.stderr
        mounted = findmnt(target)
        assert mounted is not None and mounted["fstype"] == "xfs"
        assert {"ro", "nouuid", "nosuid", "nodev", "noexec"} <= set(mounted["options"].split(","))
        assert "norecovery" not in mounted["options"]
        assert mounted["source"].startswith("/dev/loop")
        # Every file written before the crash is there: only a log replay shows them.
        assert guestdisks.compare_tree(target, rhel.tree) == []
        with pytest.raises(OSError) as refused:
            open(os.path.join(target, "new-file"), "w")
        assert refused.value.errno == 30  # EROFS

        # A log the kernel cannot replay fails its guest, naming the step, mount's words and a hint.
        lines = guest_lines(proc, BROKEN)
        assert any("log replay" in line and "mount" in line for line in lines), lines
        assert any("norecovery" in line for line in lines), lines
        assert findmnt(os.path.join(ROOT, VG, BROKEN)) is None
        assert not [lv for lv in gvg.lvs() if lv["lv_name"] == BROKEN + "-dsnap"]
    finally:
        unmounted = cli(XFS_CONF, "unmount", "--all")
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    assert_nothing_left(gvg)
    # Never written: the origins are byte-identical, their logs still dirty (replayed on snapshots only).
    assert origins_unchanged(gvg, references) == {RHEL: True, BROKEN: True, RHEL_LVM: True}
    assert log_state(rhel.lv_path, rhel.offset, rhel.fs_size) == "DIRTY"
