"""The lifecycle's own logic (lifecycle.Runner) on a model of a host (hostmodel.py): the order of
the steps, how each failure is reported, and that every partial state is torn down.

The VM suite proves the same lifecycle on real LVM, dm-snapshot, loop devices, e2fsck and
mount (tests/vm/test_core.py, test_teardown.py, test_signals.py); these tests reach the states
that are hard to make there: a failure at each single step, and a teardown that fails midway.
"""

import os

import pytest

from domu_snapshot.commands import CommandError
from domu_snapshot.config import Config
from domu_snapshot.errors import ProbeError
from domu_snapshot.lifecycle import Runner
from domu_snapshot.status import Status

from .hostmodel import HostModel, busy


@pytest.fixture
def host():
    return HostModel()


@pytest.fixture
def cfg(tmp_path):
    return Config(mount_root=str(tmp_path / "mnt"), vgs=["vg0"], host="plain")


def runner_on(host, cfg, owner="cli"):
    return Runner(cfg, owner=owner, system=host)


def prepared(host, cfg, *names, owner="cli"):
    runner = runner_on(host, cfg, owner)
    guests = runner.discover(list(names) or None)
    return runner, guests, [runner.prepare(guest) for guest in guests]


def changes(host):
    """The calls that change the host, in order, with what they changed."""
    reads = {"volumes", "mounts_under", "loops", "probe", "superblock", "settle"}
    return [(call, subject) for call, subject in host.calls if call not in reads]


NOTHING_LEFT = {"snapshots": [], "loops": [], "mounts": []}


# ------------------------------------------------------------------ prepare, in order

def test_prepare_snapshots_then_loops_replays_and_mounts_read_only(host, cfg):
    host.add_guest_lv("domu-web01", parts=(("linux-swap(v1)", 2048, 4096), ("ext4", 6144, 20480)))
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    mount_path = os.path.join(cfg.mount_root, "vg0", "domu-web01")
    assert changes(host) == [
        ("create_snapshot", "vg0/domu-web01"),
        ("attach_loop", "/dev/vg0/domu-web01-dsnap"),
        ("replay", "/dev/vg0/domu-web01-dsnap"),
        ("mount", mount_path),
    ]
    [disk] = result.disks
    assert (disk.choice.number, disk.choice.offset, disk.choice.size) == (2, 6144 * 512, 20480 * 512)
    assert host.attached[disk.loop].offset == 6144 * 512  # the loop starts at the partition
    assert host.mounted == [(mount_path, disk.loop)]
    assert all(path.endswith("-dsnap") for path in host.written())  # never the origin


def test_every_disk_of_a_guest_is_snapshotted_before_any_is_read(host, cfg):
    host.add_guest_lv("domu-db-a")
    host.add_guest_lv("domu-db-b")
    runner = runner_on(host, cfg)
    [a, b] = runner.discover()
    a.disks.extend(b.disks)  # one guest with two disks (as a libvirt domain groups them)
    result = runner.prepare(a)
    assert result.status == Status.OK, result.error
    calls = [call for call, _subject in changes(host)]
    assert calls[:2] == ["create_snapshot", "create_snapshot"]
    assert calls.count("mount") == 2


def test_an_inactive_lv_is_skipped_untouched(host, cfg):
    host.add_guest_lv("domu-off", active=False)
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.SKIPPED
    assert "lvchange -ay" in result.notes[0]
    assert changes(host) == []


def test_a_disk_with_only_swap_is_skipped_and_its_snapshot_removed(host, cfg):
    host.add_guest_lv("domu-swap", parts=(("linux-swap(v1)", 2048, 8192),))
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.SKIPPED
    assert "holds only swap" in result.notes[0]
    assert host.leftovers() == NOTHING_LEFT


# ------------------------------------------------------------------ a failure at each step

def command_error(argv, message):
    return CommandError(argv, 1, "", message)


FAILURES = [
    # (call that fails, its error, the step the guest's error names, what the message must carry)
    ("create_snapshot", command_error(["lvcreate"], "Insufficient free space: 6 extents needed"),
     "snapshot", "Insufficient free space"),
    ("probe", ProbeError("the partition-table reader crashed (SIGSEGV) on /dev/vg0/domu-web01-dsnap",
                         "inspect the disk by hand; the backup of this guest was not made"),
     "partition probe", "crashed (SIGSEGV)"),
    ("attach_loop", command_error(["losetup"], "losetup: cannot find an unused loop device"),
     "loop device", "unused loop device"),
    ("replay", command_error(["e2fsck"], "e2fsck: Bad magic number in super-block"),
     "journal replay", "Bad magic number"),
    ("replay", ProbeError("the ext4 filesystem on vg0/domu-web01 partition 1 has an external journal",
                          "move the journal inside the filesystem"), "journal check", "external journal"),
    ("mount", command_error(["mount"], "mount: wrong fs type, bad option, bad superblock"),
     "mount", "wrong fs type"),
]


@pytest.mark.parametrize("call,error,step,text", FAILURES, ids=[f"{f[0]}-{f[2]}" for f in FAILURES])
def test_a_failed_step_fails_the_guest_and_leaves_nothing(host, cfg, call, error, step, text):
    host.add_guest_lv("domu-web01")
    host.fail_next(call, error)
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.FAILED
    assert (result.error.guest, result.error.step) == ("domu-web01", step)
    assert text in result.error.message
    assert result.error.hint  # says what to do
    assert host.leftovers() == NOTHING_LEFT
    assert not os.path.exists(os.path.join(cfg.mount_root, "vg0", "domu-web01"))


def test_a_failed_second_disk_takes_the_first_disks_mount_down_too(host, cfg):
    host.add_guest_lv("domu-db-a")
    host.add_guest_lv("domu-db-b", parts=(("ntfs", 2048, 8192),))
    runner = runner_on(host, cfg)
    [a, b] = runner.discover()
    a.disks.extend(b.disks)
    result = runner.prepare(a)
    assert result.status == Status.FAILED
    assert result.error.step == "partition"
    assert "vg0/domu-db-b" in result.error.message
    assert host.leftovers() == NOTHING_LEFT


def test_one_guest_failing_does_not_stop_the_next(host, cfg):
    host.add_guest_lv("domu-a")
    host.add_guest_lv("domu-b")
    host.fail_next("mount", command_error(["mount"], "mount: bad superblock"))
    _runner, _guests, [a, b] = prepared(host, cfg)
    assert (a.status, b.status) == (Status.FAILED, Status.OK)
    assert host.snapshots() == ["vg0/domu-b-dsnap"]


def test_an_interrupt_mid_prepare_tears_the_guest_down_and_goes_on_up(host, cfg):
    host.add_guest_lv("domu-web01")
    host.fail_next("replay", KeyboardInterrupt())
    runner = runner_on(host, cfg)
    [guest] = runner.discover()
    with pytest.raises(KeyboardInterrupt):
        runner.prepare(guest)
    assert host.leftovers() == NOTHING_LEFT


def test_the_probe_child_started_ahead_is_always_ended(host, cfg):
    host.add_guest_lv("domu-web01")
    host.fail_next("attach_loop", command_error(["losetup"], "no loop device"))
    prepared(host, cfg)
    assert host.probe_children and all(child.ended for child in host.probe_children)


def test_a_leftover_snapshot_of_a_crashed_run_is_replaced(host, cfg):
    host.add_guest_lv("domu-web01")
    prepared(host, cfg)  # a run that "crashed" after its mount: everything is still there
    host.calls.clear()
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    assert "removed a leftover snapshot of an earlier run first" in result.notes
    calls = [call for call, _subject in changes(host)]
    assert calls[:4] == ["unmount", "detach_loop", "remove_snapshot", "create_snapshot"]
    assert len(host.snapshots()) == 1 and len(host.mounted) == 1


def test_a_plugin_run_leaves_a_helpers_mode_mount_alone(host, cfg):
    host.add_guest_lv("domu-web01")
    prepared(host, cfg, owner="cli")
    before = host.leftovers()
    host.calls.clear()
    _runner, _guests, [result] = prepared(host, cfg, owner="plugin")
    assert result.status == Status.FAILED and result.held_by == "cli"
    assert "domu-snapshot unmount domu-web01" in result.error.hint
    assert changes(host) == [] and host.leftovers() == before


# ------------------------------------------------------------------ teardown of each partial state

def partial(host, cfg, stop_before):
    """A guest prepared up to (not including) the call `stop_before`, as a crash would leave it."""
    host.add_guest_lv("domu-web01")
    host.fail_next(stop_before, SystemExit("killed"))
    runner = runner_on(host, cfg)
    [guest] = runner.discover()
    runner._teardown_quietly = lambda guest, result: None  # the crash: no teardown of its own
    with pytest.raises(SystemExit):
        runner.prepare(guest)
    return host.leftovers()


@pytest.mark.parametrize("stop_before,left", [
    ("attach_loop", {"snapshots": 1, "loops": 0, "mounts": 0}),
    ("replay", {"snapshots": 1, "loops": 1, "mounts": 0}),
    ("mount", {"snapshots": 1, "loops": 1, "mounts": 0}),
    ("settle", {"snapshots": 1, "loops": 0, "mounts": 0}),
])
def test_cleanup_after_a_crash_at_each_step_leaves_nothing(host, cfg, stop_before, left):
    found = partial(host, cfg, stop_before)
    assert {kind: len(items) for kind, items in found.items()} == left
    results = runner_on(host, cfg).reap()  # what `domu-snapshot cleanup` runs
    assert [r.status for r in results] == [Status.OK]
    assert host.leftovers() == NOTHING_LEFT


def test_cleanup_after_a_crash_with_the_guest_mounted(host, cfg):
    host.add_guest_lv("domu-web01")
    prepared(host, cfg)
    assert len(host.mounted) == 1
    host.calls.clear()
    [result] = runner_on(host, cfg).reap()
    assert result.status == Status.OK
    assert [call for call, _s in changes(host)] == ["unmount", "detach_loop", "remove_snapshot"]
    assert host.leftovers() == NOTHING_LEFT


def test_a_busy_mount_keeps_its_snapshot_and_says_how_to_finish(host, cfg):
    host.add_guest_lv("domu-web01")
    runner, guests, _ = prepared(host, cfg)
    host.fail_next("unmount", busy(["umount", "/mnt"]))
    [result] = runner.teardown(guests)
    assert result.status == Status.FAILED
    assert result.error.step == "unmount" and "busy" in result.error.message
    assert "fuser -vm" in result.error.hint and "domu-snapshot cleanup" in result.error.hint
    # never removed from under a mount or a loop device
    assert len(host.snapshots()) == 1 and len(host.attached) == 1 and len(host.mounted) == 1
    [again] = runner.teardown(guests)  # once it is free
    assert again.status == Status.OK and host.leftovers() == NOTHING_LEFT


def test_an_overflowed_snapshot_fails_the_guest_but_is_removed(host, cfg):
    host.add_guest_lv("domu-web01")
    runner, guests, _ = prepared(host, cfg)
    host.overflow("vg0/domu-web01-dsnap")
    [result] = runner.teardown(guests)
    assert result.status == Status.FAILED
    assert result.error.step == "snapshot overflow" and "snapshot_size" in result.error.hint
    assert host.leftovers() == NOTHING_LEFT


def test_teardown_of_one_guest_leaves_the_others(host, cfg):
    host.add_guest_lv("domu-a")
    host.add_guest_lv("domu-b")
    runner, [a, b], _ = prepared(host, cfg)
    [result] = runner.teardown([a])
    assert result.status == Status.OK
    assert host.snapshots() == ["vg0/domu-b-dsnap"]
    assert [target for target, _ in host.mounted] == [b.disks[0].mount_path]


def test_a_mount_that_is_not_ours_is_never_unmounted(host, cfg):
    host.add_guest_lv("domu-web01")
    runner, [guest], _ = prepared(host, cfg)
    foreign = (os.path.join(guest.disks[0].mount_path, "proc"), "proc")
    host.mounted.append(foreign)
    [result] = runner.teardown([guest])
    assert host.mounted == [foreign]
    assert any("not ours, not touched" in note for note in result.notes)
    assert ("unmount", foreign[0]) not in host.calls


# ------------------------------------------------------------------ guest_filesystems = all

def tree_under(root):
    """Every path below `root` (directories too), relative; [] when it is gone."""
    found = []
    for top, dirs, files in os.walk(root):
        found += [os.path.relpath(os.path.join(top, name), root) for name in dirs + files]
    return sorted(found)


def test_every_filesystem_of_a_disk_is_mounted_at_its_own_path_and_torn_down(host, cfg):
    cfg.guest_filesystems = "all"
    host.add_guest_lv("domu-multi", parts=(("linux-swap(v1)", 2048, 4096), ("ext4", 6144, 8192),
                                           ("ext3", 14336, 8192)))
    runner, guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    disk_path = os.path.join(cfg.mount_root, "vg0", "domu-multi")
    [disk] = result.disks
    assert disk.roots == [os.path.join(disk_path, "part2"), os.path.join(disk_path, "part3")]
    assert [target for target, _source in host.mounted] == disk.roots
    assert len({source for _target, source in host.mounted}) == 2  # a loop device each
    assert disk.left_out == ["partition 1 (linux-swap(v1))"]
    assert "part3: partition 3 (msdos), ext3" in disk.describe()
    assert [subject for call, subject in changes(host) if call == "replay"] == ["/dev/vg0/domu-multi-dsnap"] * 2
    [down] = runner.teardown(guests)
    assert down.ok, down.error
    assert host.leftovers() == NOTHING_LEFT
    assert tree_under(cfg.mount_root) == []


def test_every_filesystem_a_failure_on_the_second_takes_the_first_down_too(host, cfg):
    cfg.guest_filesystems = "all"
    host.add_guest_lv("domu-multi", parts=(("ext4", 2048, 8192), ("ext4", 10240, 8192)))
    runner = runner_on(host, cfg)
    [guest] = runner.discover()
    calls = []
    real_mount = host.mount

    def second_fails(kind, device, target, fstype):
        calls.append(target)
        if len(calls) == 2:
            raise CommandError(["mount", device, target], 32, "", "wrong fs type, bad superblock")
        real_mount(kind, device, target, fstype)
    host.mount = second_fails
    result = runner.prepare(guest)
    assert result.status == Status.FAILED and result.error.step == "mount"
    assert "wrong fs type" in str(result.error)
    assert calls[0].endswith("/part1") and calls[1].endswith("/part2")
    assert host.leftovers() == NOTHING_LEFT
    assert tree_under(cfg.mount_root) == []


def test_every_filesystem_of_a_crashed_run_is_cleaned_up_from_the_system(host, cfg):
    cfg.guest_filesystems = "all"
    host.add_guest_lv("domu-multi", parts=(("ext4", 2048, 8192), ("ext4", 10240, 8192)))
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.ok and len(host.mounted) == 2
    os.makedirs(os.path.join(cfg.mount_root, "vg0", "domu-multi", "lvm", "vg", "root"))  # a crash before its mount
    results = runner_on(host, Config(mount_root=cfg.mount_root, vgs=["vg0"], host="plain")).reap()
    assert [r.ok for r in results] == [True]
    assert host.leftovers() == NOTHING_LEFT
    assert tree_under(cfg.mount_root) == []


def test_every_filesystem_cleanup_never_empties_a_directory_of_a_mount_not_ours(host, cfg):
    cfg.guest_filesystems = "all"
    host.add_guest_lv("domu-multi", parts=(("ext4", 2048, 8192),))
    runner, guests, [result] = prepared(host, cfg)
    foreign = os.path.join(cfg.mount_root, "vg0", "domu-multi", "lvm")
    os.makedirs(os.path.join(foreign, "empty-dir"))
    host.mounted.append((foreign, "/dev/sdz1"))  # someone's own mount below the guest's path
    [down] = runner.teardown(guests)
    assert os.path.isdir(os.path.join(foreign, "empty-dir"))
    assert host.mounted == [(foreign, "/dev/sdz1")]
    assert any("not ours, not touched" in note for note in down.notes)
