"""loop.py: the loop devices losetup lists (its JSON), which snapshot backs each, and the
argument lists of attach and detach."""

import json
import os
import stat
import subprocess

from domu_snapshot import commands, loop


def losetup_says(monkeypatch, stdout):
    monkeypatch.setattr(commands, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 0, stdout, ""))


def test_the_list_as_losetup_prints_it(monkeypatch):
    losetup_says(monkeypatch, json.dumps({"loopdevices": [
        {"name": "/dev/loop0", "back-file": "/dev/dm-7", "offset": 1048576, "sizelimit": 268435456},
        {"name": "/dev/loop1", "back-file": None, "offset": None, "sizelimit": None},
    ]}))
    assert loop.list_all() == [loop.LoopDevice("/dev/loop0", "/dev/dm-7", 1048576, 268435456),
                               loop.LoopDevice("/dev/loop1", "", 0, 0)]


def test_no_loop_device_attached(monkeypatch):
    losetup_says(monkeypatch, "")  # losetup prints nothing at all then, not an empty list
    assert loop.list_all() == []


def test_the_backing_device_is_matched_by_its_device_number(tmp_path):
    device = tmp_path / "dm-7"
    os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(253, 7))
    assert loop.LoopDevice("/dev/loop0", str(device), 0, 0).backing_rdev() == (253, 7)
    # losetup marks a backing file that was removed since; a block device keeps its number
    assert loop.LoopDevice("/dev/loop0", f"{device} (deleted)", 0, 0).backing_rdev() == (253, 7)
    plain = tmp_path / "image"
    plain.write_bytes(b"")
    assert loop.LoopDevice("/dev/loop1", str(plain), 0, 0).backing_rdev() is None  # a file, not a snapshot
    assert loop.LoopDevice("/dev/loop2", str(tmp_path / "gone"), 0, 0).backing_rdev() is None


def test_attach_at_the_partition_and_detach():
    printed = []
    commands.set_dry_run(True, printer=printed.append)
    try:
        loop.attach("/dev/vg0/domu-a-dsnap", 1048576, 268435456)
        loop.attach("/dev/vg0/domu-b-dsnap", 8192, 4096 * 100, sector_size=4096)
        loop.detach("/dev/loop3")
    finally:
        commands.set_dry_run(False)
    assert printed == [
        "would run: losetup --find --show --offset 1048576 --sizelimit 268435456 /dev/vg0/domu-a-dsnap",
        "would run: losetup --find --show --offset 8192 --sizelimit 409600 --sector-size 4096 /dev/vg0/domu-b-dsnap",
        "would run: losetup --detach /dev/loop3",
    ]
