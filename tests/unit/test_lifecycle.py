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


# ------------------------------------------------------------------ guest_filesystems = fstab

ROOT_UUID, BOOT_UUID = "2f1c0d6e-6f4c-4d8e-9a51-0c6a3b1e7d01", "7b3e9f10-2a44-4c1b-8f0e-5d9c6a2b4e02"


def debian_like(host, root_fstab, root_tree=None):
    """A disk with swap, then / (ext4), /boot and /home (ext4), each showing its tree when mounted;
    /boot holds a stray copy of an fstab whose / is the root filesystem, not itself."""
    lv = host.add_guest_lv("domu-deb", parts=(("linux-swap(v1)", 2048, 4096), ("ext4", 6144, 8192),
                                              ("ext4", 14336, 8192), ("ext4", 22528, 8192)))
    tree = {"etc": None, "etc/fstab": root_fstab, "etc/hostname": "deb\n", "boot": None, "home": None}
    host.fill(lv, 6144 * 512, uuid=ROOT_UUID, label="root", tree=root_tree or tree)
    host.fill(lv, 14336 * 512, uuid=BOOT_UUID, label="", tree={
        "vmlinuz": "kernel", "etc": None, "etc/fstab": f"UUID={ROOT_UUID} / ext4 defaults 0 1\n"})
    host.fill(lv, 22528 * 512, uuid="", label="home", tree={"alice": None, "alice/notes.txt": "hi"})
    return lv


DEBIAN_FSTAB = f"""# /etc/fstab: static file system information.
UUID={ROOT_UUID.upper()} /               ext4    errors=remount-ro 0       1
UUID={BOOT_UUID} /boot           ext4    defaults        0       2
LABEL=home      /home           ext4    defaults        0       2
/dev/mapper/deb--vg-swap_1 none            swap    sw              0       0
proc            /proc           proc    defaults        0       0
/dev/vdb1       /srv            ext4    defaults        0       2
"""


def test_fstab_puts_each_filesystem_where_the_guest_mounts_it_and_tears_down(host, cfg):
    cfg.guest_filesystems = "fstab"
    debian_like(host, DEBIAN_FSTAB)
    runner, guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    disk_path = os.path.join(cfg.mount_root, "vg0", "domu-deb")
    [disk] = result.disks
    assert disk.roots == [disk_path, f"{disk_path}/boot", f"{disk_path}/home"]
    assert [target for target, _source in host.mounted] == disk.roots
    with open(f"{disk_path}/home/alice/notes.txt") as handle:   # where the guest has it
        assert handle.read() == "hi"
    assert os.path.isfile(f"{disk_path}/boot/vmlinuz") and os.path.isfile(f"{disk_path}/etc/hostname")
    assert [m.mount_point for m in disk.filesystems] == ["/", "/boot", "/home"]
    assert "/home: partition 4 (msdos), ext4" in disk.describe()
    assert disk.left_out == ["partition 1 (linux-swap(v1))",
                             "fstab line 7 ('/dev/vdb1' on '/srv'): not a filesystem of this disk mounted here"]
    [down] = runner.teardown(guests)
    assert down.ok, down.error
    assert host.leftovers() == NOTHING_LEFT
    assert tree_under(cfg.mount_root) == []


def test_fstab_a_filesystem_it_does_not_list_is_left_out_and_said(host, cfg):
    cfg.guest_filesystems = "fstab"
    debian_like(host, f"UUID={ROOT_UUID} / ext4 defaults 0 1\nLABEL=home /home ext4 defaults 0 2\n")
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    [disk] = result.disks
    assert [m.mount_point for m in disk.filesystems] == ["/", "/home"]
    assert "partition 3 (msdos), ext4 at byte 7340032 (not in the guest's /etc/fstab)" in disk.left_out


@pytest.mark.parametrize("home, why", [
    (("symlink", "../../../../etc"), "/home is a symlink in the guest's tree"),
    ("a file", "/home is not a directory in the guest's tree"),
])
def test_fstab_a_mount_point_that_is_no_real_directory_of_the_guest_fails_it(host, cfg, home, why):
    cfg.guest_filesystems = "fstab"
    debian_like(host, DEBIAN_FSTAB, root_tree={"etc": None, "etc/fstab": DEBIAN_FSTAB, "boot": None, "home": home})
    runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.FAILED and result.error.step == "fstab"
    assert why in str(result.error) and "guest_filesystems = all" in str(result.error)
    assert host.leftovers() == NOTHING_LEFT
    assert tree_under(cfg.mount_root) == []
    assert not any(call == "mount" and not subject.startswith(cfg.mount_root) for call, subject in host.calls)


def test_fstab_a_mount_point_leaving_the_tree_stays_inside_it(host, cfg):
    cfg.guest_filesystems = "fstab"
    fstab = f"UUID={ROOT_UUID} / ext4 defaults 0 1\nLABEL=home /../../../etc ext4 defaults 0 2\n"
    debian_like(host, fstab)
    _runner, _guests, [result] = prepared(host, cfg)
    disk_path = os.path.join(cfg.mount_root, "vg0", "domu-deb")
    assert result.status == Status.OK, result.error
    assert [target for target, _source in host.mounted] == [disk_path, f"{disk_path}/etc"]


def test_fstab_two_roots_that_each_name_themselves_fail_the_guest(host, cfg):
    cfg.guest_filesystems = "fstab"
    lv = host.add_guest_lv("domu-two", parts=(("ext4", 2048, 8192), ("ext4", 10240, 8192)))
    for offset, uuid in ((2048 * 512, ROOT_UUID), (10240 * 512, BOOT_UUID)):
        host.fill(lv, offset, uuid=uuid, tree={"etc": None, "etc/fstab": f"UUID={uuid} / ext4 defaults 0 1\n"})
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.FAILED and result.error.step == "fstab"
    assert "2 of its filesystems hold an /etc/fstab, and 2 of those name themselves as /" in str(result.error)
    assert host.leftovers() == NOTHING_LEFT


def test_fstab_a_disk_without_one_keeps_the_paths_of_all(host, cfg):
    cfg.guest_filesystems = "fstab"
    lv = host.add_guest_lv("domu-data", parts=(("ext4", 2048, 8192), ("ext4", 10240, 8192)))
    host.fill(lv, 2048 * 512, tree={"srv": None})
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    disk_path = os.path.join(cfg.mount_root, "vg0", "domu-data")
    assert result.disks[0].roots == [f"{disk_path}/part1", f"{disk_path}/part2"]
    assert any("none of its filesystems holds an /etc/fstab" in note for note in result.notes)


def test_fstab_a_busy_unmount_while_moving_fails_the_guest_and_leaves_nothing(host, cfg):
    cfg.guest_filesystems = "fstab"
    debian_like(host, DEBIAN_FSTAB)
    host.fail_next("unmount", busy(["umount", "part2"]))
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.FAILED and result.error.step == "fstab"
    assert "device or resource busy" in str(result.error)
    assert host.leftovers() == NOTHING_LEFT
    assert tree_under(cfg.mount_root) == []


def test_fstab_a_second_line_for_one_filesystem_or_mount_point_is_noted_not_mounted(host, cfg):
    cfg.guest_filesystems = "fstab"
    debian_like(host, f"UUID={ROOT_UUID} / ext4 defaults 0 1\nLABEL=home /home ext4 defaults 0 2\n"
                      f"UUID={BOOT_UUID} /home ext4 defaults 0 2\nLABEL=home /boot ext4 defaults 0 2\n")
    _runner, _guests, [result] = prepared(host, cfg)
    assert result.status == Status.OK, result.error
    [disk] = result.disks
    assert [m.mount_point for m in disk.filesystems] == ["/", "/home"]
    assert [line for line in disk.left_out if line.startswith("fstab")] == [
        f"fstab line 3 ('UUID={BOOT_UUID}' on '/home'): an earlier line mounts that filesystem, or mounts one there",
        "fstab line 4 ('LABEL=home' on '/boot'): an earlier line mounts that filesystem, or mounts one there"]
