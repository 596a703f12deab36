"""Snapshot owners (lvm.OWNER_TAGS): what a plugin runner leaves alone and what it reaps.

Pure logic on system states built here (the VM suite checks the same on real LVM, loop devices
and mounts: tests/vm/test_plugin.py, tests/vm/test_core.py). No command may run: the counts of
`commands.invocations` prove it.
"""

import os
import stat

import pytest

from domu_snapshot import commands, lvm
from domu_snapshot.config import Config
from domu_snapshot.lifecycle import Disk, Guest, Runner, SystemState
from domu_snapshot.loop import LoopDevice


def snapshot(origin, *owner_tags, major=253, minor=7, vg="vg0"):
    return lvm.LogicalVolume(
        vg=vg, name=origin + lvm.SUFFIX, attr="swi-a-s---", path=f"/dev/{vg}/{origin}{lvm.SUFFIX}",
        dm_path="", origin=origin, snap_percent=1.0, data_percent=None,
        tags=[lvm.TAG, *owner_tags], size=8 << 20, active=True, major=major, minor=minor,
        segtype="snapshot", pool="", extent_size=4 << 20, vg_free=0)


@pytest.fixture
def cfg(tmp_path):
    return Config(mount_root=str(tmp_path / "mnt"), vgs=["vg0"])


def state_of(*snapshots, mounts=(), loops=()):
    return SystemState(mounts=list(mounts), loops=list(loops), snapshots={s.key: s for s in snapshots})


def test_owner_tags_are_read_back():
    assert snapshot("a", "domu_snapshot_cli").owner == "cli"
    assert snapshot("a", "domu_snapshot_plugin").owner == "plugin"
    assert snapshot("a").owner == ""
    assert snapshot("a", "domu_snapshot_plugin", "domu_snapshot_cli").owner == "cli"  # protected wins


def test_create_snapshot_adds_the_owner_tag():
    origin = snapshot("a")  # only its name, key, size and extent size are used
    origin.attr, origin.origin, origin.name = "-wi-a-----", "", "domu-a"
    printed = []
    commands.set_dry_run(True, printer=printed.append)
    try:
        for owner in ("cli", "plugin", ""):
            lvm.create_snapshot(origin, "1M", owner=owner)
        with pytest.raises(ValueError, match="unknown snapshot owner"):
            lvm.create_snapshot(origin, "1M", owner="someone")
    finally:
        commands.set_dry_run(False)
    base = "would run: lvcreate --snapshot --name domu-a-dsnap --addtag domu_snapshot"
    assert printed == [f"{base} --addtag domu_snapshot_cli --extents 1 vg0/domu-a",
                       f"{base} --addtag domu_snapshot_plugin --extents 1 vg0/domu-a",
                       f"{base} --extents 1 vg0/domu-a"]


def test_plugin_runner_holds_cli_snapshots_only(cfg):
    state = state_of(snapshot("domu-a", "domu_snapshot_cli"), snapshot("domu-b", "domu_snapshot_plugin", minor=8),
                     snapshot("domu-c", minor=9))
    assert Runner(cfg, owner="plugin").held(state) == {("vg0", "domu-a"): "cli"}
    assert Runner(cfg, owner="cli").held(state) == {}
    assert Runner(cfg).held(state) == {}
    with pytest.raises(ValueError):
        Runner(cfg, owner="someone")


def test_mount_over_a_cli_snapshot_counts_as_held(cfg, tmp_path):
    """Whatever its path says: the mount's loop device is backed by the CLI's snapshot."""
    device = tmp_path / "dm-7"
    os.mknod(device, stat.S_IFBLK | 0o600, os.makedev(253, 7))
    other = tmp_path / "dm-9"
    os.mknod(other, stat.S_IFBLK | 0o600, os.makedev(253, 9))
    root = cfg.mount_root
    state = state_of(snapshot("domu-a", "domu_snapshot_cli", minor=7), snapshot("domu-c", minor=9),
                     loops=[LoopDevice("/dev/loop3", str(device), 1 << 20, 0),
                            LoopDevice("/dev/loop4", str(other), 0, 0)],
                     mounts=[(f"{root}/vg0/renamed", "/dev/loop3"), (f"{root}/vg0/domu-c", "/dev/loop4"),
                             (f"{root}/vg0/stray", "/dev/loop5")])
    assert Runner(cfg, owner="plugin").held(state) == {("vg0", "domu-a"): "cli", ("vg0", "renamed"): "cli"}


def test_teardown_and_reap_leave_held_guests_untouched(cfg):
    runner = Runner(cfg, owner="plugin")
    state = state_of(snapshot("domu-a", "domu_snapshot_cli"))
    guest = Guest("domu-a", [Disk("vg0", "domu-a", runner.mount_path("vg0", "domu-a"))])
    before = sum(commands.invocations.values())
    [result] = runner.teardown([guest], state)
    assert sum(commands.invocations.values()) == before  # no umount, losetup or lvremove
    assert result.status == "held" and result.ok and result.held_by == "cli"
    assert result.notes == ["guest domu-a is mounted by `domu-snapshot mount` (helpers mode): a backup job "
                            "may be reading it, so it was left alone. If no job uses it, run "
                            "`domu-snapshot unmount domu-a`"]


def test_prepare_of_a_held_guest_fails_and_touches_nothing(cfg):
    runner = Runner(cfg, owner="plugin")
    runner._volumes = [snapshot("domu-a", "domu_snapshot_cli")]  # what discover() saw
    guest = Guest("domu-a", [Disk("vg0", "domu-a", runner.mount_path("vg0", "domu-a"))])
    before = sum(commands.invocations.values())
    result = runner.prepare(guest)
    assert sum(commands.invocations.values()) == before  # no teardown of the helpers' snapshot
    assert result.status == "failed" and result.held_by == "cli"
    assert result.error.guest == "domu-a" and result.error.step == "snapshot"
    assert "vg0/domu-a-dsnap was made by `domu-snapshot mount` (helpers mode)" in result.error.message
    assert "does not back up this guest" in result.error.message
    assert "domu-snapshot unmount domu-a" in result.error.hint


@pytest.mark.parametrize("tags", [("domu_snapshot_plugin",), ()])
def test_plugin_and_untagged_snapshots_are_not_held(cfg, tags):
    runner = Runner(cfg, owner="plugin")
    runner._volumes = [snapshot("domu-a", *tags)]
    guest = Guest("domu-a", [Disk("vg0", "domu-a", runner.mount_path("vg0", "domu-a"))])
    assert runner._held_snapshot(guest) is None
    assert runner.held(state_of(*runner._volumes)) == {}
