"""The guest fixtures are real: LVM lists them, pyparted reads their tables, e2fsck sees the dirty
journals, and a replayed snapshot shows exactly the expected tree. Uses plain commands only, so
it checks the fixtures and the test bed, not the code under test."""
from __future__ import annotations

import contextlib
import json
import os
import re

import parted
import pytest

from tests import guestdisks
from tests.guestdisks import LAYOUTS, STANDARD_GUESTS, UNPREFIXED_LV, compare_tree, run
from tests.vm.conftest import PREFIX, VG

ALL = [PREFIX + n for n, _, _ in STANDARD_GUESTS] + [UNPREFIXED_LV]
DIRTY = [PREFIX + n for n, layout, dirty in STANDARD_GUESTS if LAYOUTS[layout].fstype and dirty]
WITH_FS = DIRTY + [UNPREFIXED_LV]


@contextlib.contextmanager
def loop_at(device: str, offset: int, size: int, *, readonly: bool):
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    loop = guestdisks.out(argv + (["--read-only"] if readonly else []) + [device]).strip()
    try:
        yield loop
    finally:
        run(["losetup", "-d", loop])


def test_lvs_lists_the_guests(guest_vg):
    rep = json.loads(guestdisks.out(["lvs", "--reportformat", "json", "-o", "lv_name,lv_attr,lv_size",
                                     "--units", "m", VG]))
    names = {lv["lv_name"] for lv in rep["report"][0]["lv"]}
    assert set(ALL) <= names
    assert not UNPREFIXED_LV.startswith(PREFIX)


@pytest.mark.parametrize("lv", ALL)
def test_pyparted_reads_the_table_read_only(guests, lv):
    g = guests[lv]
    dev = parted.getDevice(g.lv_path)
    try:
        disk = parted.newDisk(dev)
        parts = {p.number: p for p in disk.partitions}
        if LAYOUTS[g.layout].label:
            assert disk.type == LAYOUTS[g.layout].label
            ext = parts[g.partition]
            assert ext.geometry.start * dev.sectorSize == g.offset
            assert ext.fileSystem.type == g.fstype
            for n in g.swap_partitions:
                assert parts[n].fileSystem.type.startswith("linux-swap")
        else:   # a filesystem on the whole LV shows as libparted's "loop" label
            assert disk.type == "loop"
            (only,) = parts.values()
            assert only.geometry.start == 0
            assert only.fileSystem.type == (g.fstype or "linux-swap(v1)")
    finally:
        dev.removeFromCache()
    assert g.unchanged(), "reading the table changed the LV"


@pytest.mark.parametrize("lv", WITH_FS)
def test_e2fsck_sees_the_journal_state(guests, lv):
    g = guests[lv]
    with loop_at(g.lv_path, g.offset, g.fs_size, readonly=True) as loop:
        fsck = run(["e2fsck", "-n", loop], check=False)
        header = guestdisks.out(["dumpe2fs", "-h", loop])
    text = fsck.stdout.decode() + fsck.stderr.decode()
    features = re.search(r"^Filesystem features:\s*(.*)$", header, re.M).group(1).split()
    journal_start = int(re.search(r"^Journal start:\s*(\d+)", header, re.M).group(1))
    if g.dirty:
        assert "skipping journal recovery" in text, text
        assert "needs_recovery" in features
        assert journal_start != 0, "journal holds no transactions"
    else:
        assert "needs_recovery" not in features and journal_start == 0
        assert fsck.returncode == 0, text
    assert re.search(r"^Filesystem UUID:\s*(\S+)", header, re.M).group(1) == g.fs_uuid


@pytest.mark.parametrize("lv", DIRTY)
def test_replayed_snapshot_shows_the_tree(guest_vg, guests, lv, tmp_path):
    """The manual cycle of the tool: snapshot, loop at the offset, journal replay on the
    snapshot, mount read-only, compare, tear down."""
    g = guests[lv]
    snap = f"{lv}-fxsnap"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run(["lvcreate", "-q", "-s", "-n", snap, "-L", "16M", "--addtag", "domu_fixture_test", f"{VG}/{lv}"])
    try:
        with loop_at(f"/dev/{VG}/{snap}", g.offset, g.fs_size, readonly=False) as loop:
            replay = run(["e2fsck", "-E", "journal_only", "-y", loop], check=False)
            assert replay.returncode in (0, 1, 2), replay.stderr
            preen = run(["e2fsck", "-p", loop], check=False)
            assert preen.returncode in (0, 1, 2), preen.stdout + preen.stderr
            run(["mount", "-t", g.fstype, "-o", "ro,nosuid,nodev,noexec", loop, str(mnt)])
            try:
                assert compare_tree(mnt, g.tree) == []
                assert _write_fails(mnt), "read-only mount accepted a write"
            finally:
                run(["umount", str(mnt)])
    finally:
        run(["lvremove", "-q", "-f", f"{VG}/{snap}"])
    assert guest_vg.leftovers() == []
    assert g.unchanged(), "the origin changed"


def _write_fails(mnt) -> bool:
    try:
        (mnt / "probe").write_text("x")
    except OSError:
        return True
    return False


def test_compare_tree_finds_differences(guests, tmp_path):
    guestdisks.populate(tmp_path, "cmp")
    expected = guestdisks.expected_tree("cmp")
    assert compare_tree(tmp_path, expected) == []
    (tmp_path / "data/blob-01.bin").write_bytes(b"changed")
    os.chmod(tmp_path / "etc/fstab", 0o600)
    os.unlink(tmp_path / "links/dangling")
    os.symlink("/elsewhere", tmp_path / "links/dangling")
    (tmp_path / "home/user/new").write_text("x")
    os.unlink(tmp_path / "srv/www/report-link.txt")
    (tmp_path / "srv/www/report-link.txt").write_bytes((tmp_path / "home/user/report.txt").read_bytes())
    diffs = "\n".join(compare_tree(tmp_path, expected))
    for needle in ["data/blob-01.bin: size", "etc/fstab: mode 600", "links/dangling: symlink to '/elsewhere'",
                   "unexpected: home/user/new", "hard link group home/user/report.txt"]:
        assert needle in diffs, diffs


def test_teardown_leaves_nothing(guests):
    """destroy_vg removes even what a crashed test left: snapshot, loop device, mount."""
    vg = "domufixtmp"
    gvg = guestdisks.GuestVG(vg, size_mib=256).create()
    g = gvg.add_guest("domu-whole", "whole-ext4")        # image cached by the standard set
    run(["lvcreate", "-q", "-s", "-n", "left-snap", "-L", "8M", f"{vg}/domu-whole"])
    loop = guestdisks.out(["losetup", "--find", "--show", f"/dev/{vg}/left-snap"]).strip()
    mnt = gvg.workdir / "left-mnt"
    mnt.mkdir()
    run(["mount", "-o", "ro,noload", loop, str(mnt)])
    assert sorted(gvg.leftovers()) == sorted([f"LV {vg}/left-snap", f"loop device {loop}", f"mount {mnt}"])

    cleaned = gvg.destroy()
    assert f"mount {mnt}" in cleaned and f"loop device {loop}" in cleaned and f"LV {vg}/left-snap" in cleaned
    assert run(["vgs", vg], check=False).returncode != 0
    assert not gvg.workdir.exists()
    loops = guestdisks.out(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"])
    assert str(gvg.workdir) not in loops and f"/dev/{vg}/" not in loops
    assert vg not in guestdisks.out(["dmsetup", "ls"])
    assert str(gvg.workdir) not in open("/proc/self/mounts").read()
    assert g.fstype == "ext4"
