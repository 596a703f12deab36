"""Whole jobs through the fd harness on the host: the plugin against real directory trees.

The core's Runner is replaced by tests/fd_harness.DirRunner, whose "mounted guest filesystems"
are directories built here (the VM suite, tests/vm/test_plugin.py, runs the real core on LVM).
"""

import os
import re
import shutil
import stat
import time

import pytest

from tests import fd_harness
from tests.fd_harness import Catalog, FakeGuest, FileDaemon, bareosfd


@pytest.fixture(autouse=True)
def no_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "no-such.conf"))


def build_guest(root, seed):
    """A small guest filesystem: owners, modes, times, links, a fifo, a hard link."""
    (root / "etc").mkdir(parents=True)
    (root / "home" / "user").mkdir(parents=True)
    (root / "etc" / "hostname").write_text(f"guest-{seed}\n")
    (root / "etc" / "shadow").write_text("root:*:19000::::::\n")
    os.chmod(root / "etc" / "shadow", 0o640)
    os.chown(root / "etc" / "shadow", 0, 42)
    (root / "home" / "user" / "data.bin").write_bytes(os.urandom(150_000 + seed))
    os.chown(root / "home" / "user" / "data.bin", 1000, 1000)
    os.chown(root / "home" / "user", 1000, 1000)
    os.chmod(root / "home" / "user", 0o700)
    (root / "empty").write_bytes(b"")
    os.link(root / "etc" / "hostname", root / "etc" / "hostname.bak")
    (root / "etc" / "localtime").symlink_to("/usr/share/zoneinfo/Europe/Berlin")
    (root / "run.fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "run.fifo", 0o600)
    for path in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        os.utime(path, (1_600_000_000 + seed, 1_600_000_000 + seed), follow_symlinks=False)
    os.utime(root, (1_600_000_000, 1_600_000_000))
    return root


@pytest.fixture
def guests(tmp_path):
    mnt = tmp_path / "mnt" / "vg0"
    return [FakeGuest("domu-a", [build_guest(mnt / "domu-a", 1)]),
            FakeGuest("domu-b", [build_guest(mnt / "domu-b", 2)])]


def definition(**options):
    return fd_harness.example_plugin_definition(module_path=str(fd_harness.PLUGIN_DIR), **options)


def info_lines(result):
    return [t for t in result.job.texts(bareosfd.M_INFO) if ": guest " in t]


def assert_balanced(calls):
    """Every prepared guest was torn down afterwards, and the run lock was released last."""
    prepared = [c[1] for c in calls if c[0] == "prepare"]
    for name in prepared:
        last_prepare = max(i for i, c in enumerate(calls) if c == ("prepare", name))
        assert ("teardown", name) in calls[last_prepare:], calls
    assert calls[-1] == ("unlock",), calls


def test_full_backup_and_restore_round_trip(monkeypatch, guests, tmp_path):
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    result = fd.backup()
    assert result.status == "T", result.job.messages
    assert result.job.errors == []
    # the documented call order
    assert result.calls[:4] == ["load_bareos_plugin", "parse_plugin_definition",
                                "handle_plugin_event", "parse_plugin_definition"]
    assert result.events[:2] == [bareosfd.bEventStartBackupJob, bareosfd.bEventBackupCommand]
    assert result.events[-2:] == [bareosfd.bEventEndBackupJob, bareosfd.bEventJobEnd]
    # one guest at a time
    assert [c for c in calls if c[0] in ("prepare", "teardown")] == [
        ("prepare", "domu-a"), ("teardown", "domu-a"), ("prepare", "domu-b"), ("teardown", "domu-b")]
    assert_balanced(calls)
    by_name = result.by_name()
    a = str(guests[0].trees[0])
    assert by_name[f"{a}/etc/hostname.bak"].type == bareosfd.FT_LNKSAVED
    assert by_name[f"{a}/etc/hostname.bak"].link == f"{a}/etc/hostname"
    assert by_name[f"{a}/etc/localtime"].type == bareosfd.FT_LNK
    assert by_name[f"{a}/run.fifo"].type == bareosfd.FT_SPEC   # mkfifo on restore, no data
    assert by_name[a].type == bareosfd.FT_DIREND and by_name[a].link == a + "/"
    lines = info_lines(result)
    assert len(lines) == 2
    assert "partition 1" in lines[0] and "byte 1048576" in lines[0]
    assert "journal replayed" in lines[0] and "entries" in lines[0]
    assert "snapshot peak use 2.5%" in lines[0] and re.search(r"  \(\d+\.\ds\)$", lines[0]), lines[0]

    where = tmp_path / "restore"
    job, statuses = fd.restore(result.records, str(where))
    assert job.errors == [], job.messages
    for guest in guests:
        tree = guest.trees[0]
        assert fd_harness.compare_trees(tree, f"{where}{tree}") == []


def test_incremental_without_change_reads_nothing(monkeypatch, guests):
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    full = fd.backup()
    since = int(time.time()) + 1   # after every ctime of the trees
    incremental = fd.backup(level="I", since=since)
    assert incremental.status == "T", incremental.job.messages
    assert incremental.records == []
    assert len(incremental.unchanged) == len(full.records)


def test_incremental_after_changes_saves_exactly_those(monkeypatch, guests):
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    fd.backup()
    since = int(time.time()) + 1
    while time.time() < since + 1:  # the changes below must get a ctime >= since
        time.sleep(0.1)
    a, b = guests[0].trees[0], guests[1].trees[0]
    changed = [a / "etc" / "shadow", a / "home" / "user" / "data.bin", b / "empty"]
    for path in changed:
        with open(path, "r+b") as handle:  # in place: the directories do not change
            handle.seek(0, os.SEEK_END)
            handle.write(b"changed\n")
    incremental = fd.backup(level="I", since=since)
    assert sorted(r.fname for r in incremental.records) == sorted(map(str, changed))
    assert all(r.data is not None and r.data.endswith(b"changed\n") for r in incremental.records)


def test_accurate_incremental_marks_deleted_files_only_for_complete_guests(monkeypatch, guests):
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    catalog = Catalog().add(fd.backup())
    a, b = guests[0].trees[0], guests[1].trees[0]
    os.unlink(a / "etc" / "shadow")
    os.utime(a / "etc", (1_600_000_099, 1_600_000_099))  # a deletion changes the directory
    guests[1].prepare_error = ("journal replay", "e2fsck exit code 8")  # b fails this time
    failed = fd.backup(level="I", accurate=True, catalog=catalog)
    # a guest lost: the job fails, so the file daemon sends no deleted-file list at all
    assert failed.status == "f" and failed.deleted == [] and failed.check_file_calls == []
    guests[1].prepare_error = None
    incremental = fd.backup(level="I", accurate=True, catalog=catalog)
    assert incremental.status == "T", incremental.job.messages
    assert incremental.deleted == [f"{a}/etc/shadow"]
    assert dict(incremental.check_file_calls) == {f"{a}/etc/shadow": bareosfd.bRC_OK}
    # only the changed directory is saved again
    assert [r.fname for r in incremental.records] == [f"{a}/etc"]
    # and check_file itself keeps what lies below a guest that failed, should it be asked
    from domu_snapshot.bareos.job import PluginJob
    state = PluginJob()
    state.roots = {str(a): "complete", str(b): "failed"}
    assert state.check_file(f"{b}/etc/hostname") == bareosfd.bRC_Seen
    assert state.check_file(f"{b}/") == bareosfd.bRC_Seen         # directories come with "/"
    assert state.check_file(f"{a}/etc/shadow") == bareosfd.bRC_OK


def test_accurate_incremental_with_no_change(monkeypatch, guests):
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    catalog = Catalog().add(fd.backup())
    incremental = fd.backup(level="I", accurate=True, catalog=catalog)
    assert incremental.records == [] and incremental.deleted == []
    assert incremental.check_file_calls == []  # every file was seen


def test_broken_guest_is_reported_and_others_complete(monkeypatch, guests):
    guests[0].prepare_error = ("partition probe", "no partition table and no filesystem")
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    assert result.status == "f"
    errors = result.job.texts(bareosfd.M_ERROR)
    assert len(errors) == 1
    assert "domu-a" in errors[0] and "partition probe" in errors[0] \
        and "no partition table" in errors[0]
    # one fatal line at the end, after the other guest was saved, naming the lost one
    [fatal] = result.job.fatal
    assert "1 of 2 guest(s) NOT backed up completely: domu-a" in fatal
    texts = [text for _type, text in result.job.messages]
    assert texts.index(info_lines(result)[0]) < texts.index(fatal)
    b = str(guests[1].trees[0])
    assert result.records and all(r.fname.startswith(b) for r in result.records)
    assert len(info_lines(result)) == 1
    assert_balanced(calls)


def test_guest_held_by_helpers_mode_fails_alone_and_is_not_torn_down(monkeypatch, guests):
    """A guest `domu-snapshot mount` holds: a warning at job start, an error as a guest of this
    job, never a teardown by the plugin; the other guest is backed up."""
    guests[0].held_by = "cli"
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    assert result.status == "f"
    warnings = result.job.texts(bareosfd.M_WARNING)
    assert any("guest domu-a is mounted by `domu-snapshot mount`" in t
               and "domu-snapshot unmount domu-a" in t for t in warnings), warnings
    errors = result.job.texts(bareosfd.M_ERROR)
    assert len(errors) == 1 and "domu-a: NOT backed up" in errors[0] and "helpers mode" in errors[0]
    assert len(result.job.fatal) == 1 and "domu-a" in result.job.fatal[0]
    assert ("teardown", "domu-a") not in calls
    b = str(guests[1].trees[0])
    assert result.records and all(r.fname.startswith(b) for r in result.records)
    assert len(info_lines(result)) == 1
    assert calls[-1] == ("unlock",)


def test_guest_whose_mount_vanishes_fails_alone(monkeypatch, guests, tmp_path):
    guests[0].trees = [tmp_path / "not-there"]
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    assert result.status == "f" and len(result.job.fatal) == 1
    assert len(result.job.texts(bareosfd.M_ERROR)) == 1 and "reading" in result.job.errors[0]
    assert result.records and all(r.fname.startswith(str(guests[1].trees[0])) for r in result.records)
    assert_balanced(calls)


def test_overflow_at_teardown_is_an_error(monkeypatch, guests):
    guests[1].overflow = True
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    result = fd.backup()
    errors = result.job.texts(bareosfd.M_ERROR)
    assert len(errors) == 1 and "domu-b" in errors[0] and "overflow" in errors[0]
    assert result.status == "f" and "domu-b" in result.job.fatal[0]
    # its files stay current in accurate mode rather than being marked deleted
    guests[1].overflow = False
    catalog = Catalog().add(result)
    os.unlink(guests[1].trees[0] / "empty")
    guests[1].overflow = True
    incremental = fd.backup(level="I", accurate=True, catalog=catalog)
    assert incremental.deleted == []


@pytest.mark.parametrize("jobend", [False, True], ids=["EndBackupJob", "EndBackupJob+JobEnd"])
def test_cancel_mid_job_leaves_nothing(monkeypatch, guests, jobend):
    """Cancel while the file daemon reads a file of the first guest (bareos-fd: CancelCommand,
    then EndBackupJob; JobEnd is not sent to a cancelled job, unless asked here)."""
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup(cancel_after=1, jobend_after_cancel=jobend)
    assert result.status == "A"
    assert bareosfd.bEventCancelCommand in result.events
    assert ("prepare", "domu-b") not in calls  # stopped before the next guest
    assert_balanced(calls)


def test_cancel_then_jobend_only(monkeypatch, guests):
    """CancelCommand while a file is open (teardown must wait), then only JobEnd."""
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    fd._start_job("F", "B")
    try:
        fd._command_event(bareosfd.bEventPluginCommand)
        fd.event(bareosfd.bEventStartBackupJob)
        fd._command_event(bareosfd.bEventBackupCommand)
        while True:
            sp = fd._new_savepacket()
            assert fd._call("start_backup_file", sp) == bareosfd.bRC_OK
            if sp.type == bareosfd.FT_REG:
                break
            assert fd._call("end_backup_file") == bareosfd.bRC_More
        iop = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_OPEN, flags=os.O_RDONLY,
                             fname=sp.fname)
        assert fd._call("plugin_io", iop) == bareosfd.bRC_OK
        fd.event(bareosfd.bEventCancelCommand)   # a file is open: teardown postponed ...
        assert ("teardown", "domu-a") not in calls
        fd.event(bareosfd.bEventJobEnd)          # ... to here
    finally:
        fd._end_job()
    assert ("teardown", "domu-a") in calls
    assert_balanced(calls)


def test_prepare_all_up_front(monkeypatch, guests):
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(prepare="all"), **fd_harness.example_fileset_options()).backup()
    assert result.status == "T"
    assert ("check_space", True) in calls
    order = [c for c in calls if c[0] in ("prepare", "teardown")]
    assert order[:2] == [("prepare", "domu-a"), ("prepare", "domu-b")]
    assert_balanced(calls)


def test_same_inode_in_two_guests_is_not_a_hard_link(monkeypatch, tmp_path):
    """Loop devices are reused guest after guest, so two guests' files can share st_dev and
    st_ino; the plugin's per-disk st_dev keeps the file daemon from linking them."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_bytes(b"guest a data")
    os.link(a / "f", a / "g")
    os.link(a / "f", b / "f")   # same inode, as on a reused loop device
    guests = [FakeGuest("ga", [a]), FakeGuest("gb", [b])]
    fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    by_name = result.by_name()
    assert by_name[f"{a}/f"].data == b"guest a data"
    assert by_name[f"{a}/g"].type == bareosfd.FT_LNKSAVED
    assert by_name[f"{b}/f"].type == bareosfd.FT_REG and by_name[f"{b}/f"].data == b"guest a data"


def test_special_entries_and_bad_names(monkeypatch, tmp_path):
    root = tmp_path / "g"
    root.mkdir()
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with open(os.fsencode(root) + b"/\xff", "wb") as handle:
        handle.write(b"x")
    (root / "ok").write_text("fine")
    fd_harness.install_dir_runner(monkeypatch, [FakeGuest("g", [root])])
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    # names Bareos cannot carry are errors, not a lost guest: every night would fail otherwise
    assert result.status == "W" and result.job.fatal == []
    assert [r.fname for r in result.records] == [f"{root}/ok", str(root)]
    assert any("b'" in t and "\\xff" in t for t in result.job.errors)
    warnings = result.job.texts(bareosfd.M_WARNING)
    assert any("device node" in t and f"{root}/null" in t for t in warnings)
    assert "1 not saved (names not UTF-8)" in info_lines(result)[0]


def test_domain_definition_is_saved_with_the_guest(monkeypatch, tmp_path):
    root = tmp_path / "vg0" / "domu-x"
    root.mkdir(parents=True)
    (root / "f").write_text("x")
    guests = [FakeGuest("x", [root], domain_xml="<domain><name>x</name></domain>\n")]
    fd_harness.install_dir_runner(monkeypatch, guests)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    xml = f"{root}.domain.xml"
    assert result.records[0].fname == xml
    assert result.records[0].data == b"<domain><name>x</name></domain>\n"
    assert not os.path.exists(xml)  # removed again at teardown


def test_without_in_core_io_the_plugin_reads(monkeypatch, guests, tmp_path):
    monkeypatch.delattr(bareosfd, "iostat_do_in_core")
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    result = fd.backup()
    assert result.status == "T"
    assert "plugin_io" in result.calls
    data = result.by_name()[f"{guests[0].trees[0]}/home/user/data.bin"].data
    assert data == (guests[0].trees[0] / "home" / "user" / "data.bin").read_bytes()


def test_no_guests(monkeypatch):
    calls = fd_harness.install_dir_runner(monkeypatch, [])
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    assert result.records == []
    assert result.status == "f"
    assert any("no guest selected" in t and "prefix 'domu-'" in t for t in result.job.fatal)
    assert calls[-1] == ("unlock",)


def test_restore_of_a_backup_copy_matches(monkeypatch, guests, tmp_path):
    """Restoring twice into the same where (replace=always) gives the same tree again."""
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    result = fd.backup()
    where = tmp_path / "r"
    fd.restore(result.records, str(where))
    job, _statuses = fd.restore(result.records, str(where))
    assert job.errors == []
    tree = guests[0].trees[0]
    assert fd_harness.compare_trees(tree, f"{where}{tree}") == []
    shutil.rmtree(where)


def test_estimate_lists_what_a_full_would_save(monkeypatch, guests):
    calls = fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    job, listed = fd.estimate()
    full = fd.backup()
    assert [name for name, _type in listed] == [r.fname for r in full.records]
    assert job.fatal == []
    assert_balanced(calls)


def test_a_note_is_information_and_a_clean_job_is_backup_ok(monkeypatch, guests):
    """No libvirt on the host is a note (M_INFO): the job stays "Backup OK" (JobStatus T)."""
    fd_harness.install_dir_runner(monkeypatch, guests)
    real_discover = fd_harness.DirRunner.discover

    def discover(self, names=None):
        self.log("info", "quiesce: no libvirt daemon on this host; guests get no quiesce")
        return real_discover(self, names)

    monkeypatch.setattr(fd_harness.DirRunner, "discover", discover)
    result = FileDaemon(definition(), **fd_harness.example_fileset_options()).backup()
    assert result.status == "T", result.job.messages
    assert any("no libvirt daemon" in t for t in result.job.texts(bareosfd.M_INFO))
    assert result.job.texts(bareosfd.M_WARNING) == []


def test_incremental_summary_counts_what_was_read(monkeypatch, guests):
    fd_harness.install_dir_runner(monkeypatch, guests)
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    full = fd.backup()
    # data.bin, hostname (once for its two names), shadow: the files with data
    assert "3 files read" in info_lines(full)[0]
    since = int(time.time()) + 1
    changed = guests[0].trees[0] / "etc" / "shadow"
    time.sleep(1.1)
    changed.write_text("root:!:19001::::::\n")
    incremental = fd.backup(level="I", since=since)
    assert incremental.status == "T", incremental.job.messages
    a_line, b_line = info_lines(incremental)
    assert "1 files read (19 B)" in a_line and "0 files read (0 B)" in b_line


def test_every_filesystem_of_a_guest_is_walked_and_accurate_knows_each(monkeypatch, tmp_path):
    """guest_filesystems = all: a disk's filesystems at part1 and lvm/vg/home below its path are
    each saved; a file deleted in one is marked deleted; when the guest fails, nothing is."""
    disk = tmp_path / "mnt" / "vg0" / "domu-all"
    build_guest(disk / "part1", 3)
    build_guest(disk / "lvm" / "vg" / "home", 4)
    guest = FakeGuest("domu-all", [disk], filesystems=("part1", "lvm/vg/home"))
    fd_harness.install_dir_runner(monkeypatch, [guest])
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    full = fd.backup()
    assert full.status == "T", full.job.messages
    names = {r.fname for r in full.records}
    assert f"{disk}/part1/etc/hostname" in names and f"{disk}/lvm/vg/home/home/user/data.bin" in names
    catalog = Catalog().add(full)
    os.unlink(disk / "lvm" / "vg" / "home" / "etc" / "shadow")
    os.utime(disk / "lvm" / "vg" / "home" / "etc", (1_600_000_099, 1_600_000_099))
    incremental = fd.backup(level="I", accurate=True, catalog=catalog)
    assert incremental.status == "T", incremental.job.messages
    assert incremental.deleted == [f"{disk}/lvm/vg/home/etc/shadow"]
    # a file of the disk that lies in none of its filesystems' roots (an earlier layout) is gone too
    from domu_snapshot.bareos.job import PluginJob
    state = PluginJob()
    state.roots = {str(disk): "complete", f"{disk}/part1": "complete"}
    assert state.check_file(f"{disk}/part2/etc/hostname") == bareosfd.bRC_OK
    state.roots = {str(disk): "failed", f"{disk}/part1": "failed"}  # as finish_guest leaves a lost guest
    assert state.check_file(f"{disk}/part1/etc/hostname") == bareosfd.bRC_Seen
    assert state.check_file(f"{disk}/lvm/vg/home/etc/hostname") == bareosfd.bRC_Seen


def test_fstab_assembled_guest_is_saved_once_per_file_and_accurate_knows_each_filesystem(monkeypatch, tmp_path):
    """guest_filesystems = fstab: the guest's / at the disk's path with /boot and /home mounted
    inside it. Each filesystem is walked as a root of its own: the walk of / leaves /boot and
    /home to theirs (no file twice, no "another filesystem" warning), and Accurate marks a file
    deleted in /home only while /home was read completely."""
    disk = tmp_path / "mnt" / "vg0" / "domu-deb"
    build_guest(disk, 3)
    build_guest(disk / "boot", 4)
    build_guest(disk / "home", 5)
    guest = FakeGuest("domu-deb", [disk], filesystems=("", "boot", "home"))
    fd_harness.install_dir_runner(monkeypatch, [guest])
    fd = FileDaemon(definition(), **fd_harness.example_fileset_options())
    full = fd.backup()
    assert full.status == "T", full.job.messages
    names = [r.fname for r in full.records]
    assert len(names) == len(set(names))
    assert {f"{disk}/etc/hostname", f"{disk}/boot/etc/hostname", f"{disk}/home/etc/hostname",
            f"{disk}/boot", f"{disk}/home"} <= set(names)
    assert not any("another filesystem" in text for _level, text in full.job.messages)
    catalog = Catalog().add(full)
    os.unlink(disk / "home" / "etc" / "shadow")
    os.utime(disk / "home" / "etc", (1_600_000_099, 1_600_000_099))
    incremental = fd.backup(level="I", accurate=True, catalog=catalog)
    assert incremental.status == "T", incremental.job.messages
    assert incremental.deleted == [f"{disk}/home/etc/shadow"]
    from domu_snapshot.bareos.job import PluginJob
    state = PluginJob()
    state.roots = {str(disk): "complete", f"{disk}/boot": "complete", f"{disk}/home": "failed"}
    assert state.check_file(f"{disk}/home/etc/hostname") == bareosfd.bRC_Seen   # /home not read completely
    assert state.check_file(f"{disk}/etc/gone") == bareosfd.bRC_OK
