"""mount.py: which mounts are under the mount root (from findmnt's JSON), and the directories
below the root: made 0700, removed only when empty, never outside the root, never recursively."""

import json
import os
import subprocess

import pytest

from domu_snapshot import commands, mount


def findmnt_says(monkeypatch, rows):
    """findmnt --list --json as util-linux prints it (a list of {"target", "source"})."""
    seen = []

    def run(argv, **kwargs):
        seen.append(list(argv))
        return subprocess.CompletedProcess(argv, 0, json.dumps({"filesystems": rows}), "")
    monkeypatch.setattr(commands, "run", run)
    return seen


def test_only_mounts_at_or_below_the_root_deepest_first(monkeypatch):
    seen = findmnt_says(monkeypatch, [
        {"target": "/", "source": "/dev/sda1"},
        {"target": "/srv/domu", "source": "tmpfs"},
        {"target": "/srv/domu/vg0/domu-a", "source": "/dev/loop3"},
        {"target": "/srv/domu/vg0/domu-a/boot", "source": "/dev/loop4"},
        {"target": "/srv/domu2/vg0/domu-b", "source": "/dev/loop5"},   # a sibling, not below the root
        {"target": "/srv/domu/vg0/domu-c", "source": None},
    ])
    assert mount.under("/srv/domu/") == [
        ("/srv/domu/vg0/domu-a/boot", "/dev/loop4"),
        ("/srv/domu/vg0/domu-a", "/dev/loop3"),
        ("/srv/domu/vg0/domu-c", ""),
        ("/srv/domu", "tmpfs"),
    ]
    assert seen == [["findmnt", "--list", "--json", "--output", "TARGET,SOURCE"]]


def test_no_output_is_no_mounts(monkeypatch):
    monkeypatch.setattr(commands, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 1, "", ""))
    assert mount.under("/srv/domu") == []


def test_mounts_are_read_only_and_without_devices_setuid_or_programs():
    printed = []
    commands.set_dry_run(True, printer=printed.append)
    try:
        mount.mount("/dev/loop3", "/srv/domu/vg0/domu-a", "ext4")
    finally:
        commands.set_dry_run(False)
    assert printed == ["would run: mount -t ext4 -o ro,nosuid,nodev,noexec /dev/loop3 /srv/domu/vg0/domu-a"]


def test_directories_below_the_root_are_private(tmp_path):
    root = tmp_path / "root"
    mount.make_dirs(str(root / "vg0" / "domu-a"), str(root))
    for path in (root, root / "vg0", root / "vg0" / "domu-a"):
        assert (path.stat().st_mode & 0o777) == 0o700, path


def test_a_symlink_in_the_path_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "vg0").symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory"):
        mount.make_dirs(str(root / "vg0" / "domu-a"), str(root))
    assert list(elsewhere.iterdir()) == []


def test_only_empty_directories_are_removed_and_never_the_root_or_above(tmp_path):
    root = tmp_path / "root"
    mount.make_dirs(str(root / "vg0" / "domu-a"), str(root))
    mount.make_dirs(str(root / "vg0" / "domu-b"), str(root))
    (root / "vg0" / "domu-b" / "kept").write_text("a file of someone's")
    mount.remove_empty_dirs(str(root / "vg0" / "domu-a"), str(root))
    mount.remove_empty_dirs(str(root / "vg0" / "domu-b"), str(root))
    assert sorted(os.listdir(root / "vg0")) == ["domu-b"]
    assert (root / "vg0" / "domu-b" / "kept").exists()
    mount.remove_empty_dirs(str(tmp_path / "outside"), str(root))  # not below the root: nothing
    (tmp_path / "outside").mkdir()
    mount.remove_empty_dirs(str(tmp_path / "outside"), str(root))
    assert (tmp_path / "outside").is_dir() and root.is_dir()


def test_every_path_is_below_the_disk_path():
    assert mount.every_path("/m/vg0/domu-a", 5) == "/m/vg0/domu-a/part5"
    assert mount.every_path("/m/vg0/domu-a", 0) == "/m/vg0/domu-a/whole"
    assert mount.every_path("/m/vg0/domu-a", guest_vg="debian-vg", lv="home") == "/m/vg0/domu-a/lvm/debian-vg/home"


def test_empty_directories_below_a_disk_path_go_and_nothing_else(tmp_path):
    disk = tmp_path / "domu-a"
    (disk / "part1").mkdir(parents=True)
    (disk / "lvm" / "vg" / "root").mkdir(parents=True)
    (disk / "lvm" / "vg" / "home").mkdir(parents=True)
    (disk / "lvm" / "vg" / "home" / "file").write_text("x")   # not empty: stays
    (disk / "busy").mkdir()
    (disk / "busy" / "empty").mkdir()                          # below a mount that is not ours
    (disk / "link").symlink_to(tmp_path)
    mount.remove_empty_tree(str(disk), skip={str(disk / "busy")})
    left = sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))
    assert left == ["busy", "busy/empty", "link", "lvm", "lvm/vg", "lvm/vg/home", "lvm/vg/home/file"]
