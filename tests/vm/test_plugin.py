"""Plugin mode end to end in the VM test bed: the python-fd plugin with the real core library on
real LVM (tests/guestdisks.py fixtures), driven by the stand-in file daemon (tests/fd_harness.py)
with the Plugin string of the shipped example etc/bareos/domu-snapshot-plugin.conf (only
module_path pointed at this checkout, and the test's own mount root and VG added).

1. Full of the standard guests, restore to a `where`, compare with the fixtures' trees (content,
   mode, owner, mtime, symlink targets, hard links); the origins are unchanged.
2. Cancel while the file daemon holds one of our files open, then only JobEnd: no snapshot LV,
   loop device or mount is left, the run lock is free.
3. Extended attributes (security.*, trusted.*, user.*) and POSIX ACLs set in a guest's origin
   survive backup and restore.
4. Helpers mode (`domu-snapshot mount`) and the plugin on one host: the plugin leaves the helpers'
   mount alone and reaps only what dead plugin jobs (and older versions) left.

Incrementals, cancel mid-job, a failing guest and user.* attributes are proven with the real
bareos-fd in test_bareos_real.py; the stand-in's versions of those stay in the host suite.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import fd_harness, guestdisks
from tests.fd_harness import FileDaemon, bareosfd
from tests.vm.conftest import PREFIX, VG

pytestmark = pytest.mark.vm

WITH_FS = [PREFIX + n for n, layout, _ in guestdisks.STANDARD_GUESTS if guestdisks.LAYOUTS[layout].fstype]


@pytest.fixture(scope="module", autouse=True)
def no_config_file():
    """The core's defaults, whatever /etc of the host holds."""
    old = os.environ.get("DOMU_SNAPSHOT_CONFIG")
    os.environ["DOMU_SNAPSHOT_CONFIG"] = "/nonexistent/domu-snapshot.conf"
    yield
    if old is None:
        del os.environ["DOMU_SNAPSHOT_CONFIG"]
    else:
        os.environ["DOMU_SNAPSHOT_CONFIG"] = old


def daemon(mount_root, **options):
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=str(mount_root), vg=VG, prefix=PREFIX,
        quiesce="none", **options)
    return FileDaemon(definition, **fd_harness.example_fileset_options())


def nothing_left(gvg, mount_root):
    """Snapshots, loop devices and mounts on the VG, mounts under the root, the run lock."""
    left = gvg.leftovers()
    mounts = [mp for _dev, mp in guestdisks._mountinfo()
              if mp == str(mount_root) or mp.startswith(f"{mount_root}/")]
    left += [f"mount {mp}" for mp in mounts]
    from domu_snapshot.config import Config
    from domu_snapshot.lock import RunLock
    try:
        RunLock(Config().lock_file, 0).acquire().release()
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        left.append(f"run lock: {exc}")
    return left


@pytest.fixture(scope="module")
def full(guest_vg, tmp_path_factory):
    """One Full of the standard guests, shared by the tests that only read it."""
    mount_root = tmp_path_factory.mktemp("plugin") / "mnt"
    fd = daemon(mount_root)
    started = int(time.time())
    result = fd.backup()
    return fd, mount_root, started, result


def test_full_backup_restores_the_guests(guest_vg, guests, full, tmp_path):
    fd, mount_root, _started, result = full
    assert result.status == "T", result.job.messages
    assert result.job.errors == [] and result.job.fatal == []
    # the swap-only guest is skipped with a note (by design: no warning, the job stays OK), the
    # LV without the prefix is not touched
    assert any(f"{PREFIX}swap" in t and "skipped" in t for t in result.job.texts(bareosfd.M_INFO))
    assert result.job.texts(bareosfd.M_WARNING) == []
    assert not [r for r in result.records if f"/{guestdisks.UNPREFIXED_LV}" in r.fname]
    infos = [t for t in result.job.texts(bareosfd.M_INFO) if ": guest " in t and " entries " in t]
    assert sorted(t.split(": guest ")[1].split(":")[0] for t in infos) == sorted(WITH_FS)
    for line in infos:
        assert " at byte " in line and "entries" in line and "snapshot peak use" in line, line
    assert any("journal replayed" in t for t in infos)
    assert nothing_left(guest_vg, mount_root) == []
    for lv, g in guests.items():  # read-only use: every origin is byte for byte as built
        assert guestdisks.device_sha256(g.lv_path) == g.sha256, lv

    where = tmp_path / "restore"
    job, statuses = fd.restore(result.records, str(where))
    assert job.errors == [], job.messages
    for lv in WITH_FS:
        restored = f"{where}{mount_root}/{VG}/{lv}"
        assert guestdisks.compare_tree(restored, guests[lv].tree) == [], lv


@contextlib.contextmanager
def origin_mounted(g, where):
    """The test's own write access to a throwaway guest's origin (never the code under test's)."""
    loop = guestdisks.out(["losetup", "--find", "--show", "--offset", str(g.offset),
                           "--sizelimit", str(g.fs_size), g.lv_path]).strip()
    try:
        where.mkdir(parents=True, exist_ok=True)
        guestdisks.run(["mount", "-t", g.fstype, loop, str(where)])
        try:
            yield where
        finally:
            guestdisks.run(["umount", str(where)])
    finally:
        guestdisks.run(["losetup", "-d", loop])


def test_cancel_then_jobend_only(guest_vg, tmp_path):
    """CancelCommand while the file daemon holds one of our files open, then only JobEnd."""
    mount_root = tmp_path / "mnt"
    fd = daemon(mount_root, include=f"{PREFIX}modern")
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
            fd._call("end_backup_file")
        iop = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_OPEN, flags=os.O_RDONLY,
                             fname=sp.fname)
        assert fd._call("plugin_io", iop) == bareosfd.bRC_OK
        fd.event(bareosfd.bEventCancelCommand)
        fd.event(bareosfd.bEventJobEnd)
    finally:
        fd._end_job()
    assert nothing_left(guest_vg, mount_root) == []


def _own_xattrs(path):
    return {n: os.getxattr(path, n, follow_symlinks=False)
            for n in os.listxattr(path, follow_symlinks=False)}


@contextlib.contextmanager
def _ext4_scratch(where):
    """An ext4 filesystem to restore into: it keeps every kind of attribute, whatever /tmp is."""
    image = where.parent / (where.name + ".img")
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    guestdisks.run(["mkfs.ext4", "-q", "-F", str(image)])
    where.mkdir(parents=True)
    guestdisks.run(["mount", "-t", "ext4", "-o", "loop", str(image), str(where)])
    try:
        yield where
    finally:
        guestdisks.run(["umount", str(where)])
        image.unlink()


def test_extended_attributes_and_acls_round_trip(guest_vg, make_guest, tmp_path):
    """Attributes and POSIX ACLs set in a guest's origin are read from the snapshot's read-only
    mount (the real core) and restored through the plugin."""
    g = make_guest("msdos-ext4-1m", name=f"{PREFIX}xattrs")
    cap_net_raw = b"\x01\x00\x00\x02" + (1 << 13).to_bytes(4, "little") + bytes(12)
    with origin_mounted(g, tmp_path / "origin") as origin:
        os.setxattr(origin / "etc/hostname", "user.note", b"set in the guest")
        os.setxattr(origin / "home/user/notes.txt", "security.capability", cap_net_raw)
        os.setxattr(origin / "home/user/notes.txt", "trusted.origin", b"guest")
        guestdisks.run(["setfacl", "-m", "u:1234:rw", str(origin / "home/user/notes.txt")])
        guestdisks.run(["setfacl", "-d", "-m", "g:4321:rx", str(origin / "home/user")])
        expected = {rel: _own_xattrs(origin / rel)
                    for rel in ("etc/hostname", "home/user/notes.txt", "home/user")}
    assert "system.posix_acl_default" in expected["home/user"]
    mount_root = tmp_path / "mnt"
    fd = daemon(mount_root, include=g.lv)
    result = fd.backup()
    assert result.status == "T", result.job.messages
    assert nothing_left(guest_vg, mount_root) == []
    root = f"{mount_root}/{VG}/{g.lv}"
    with _ext4_scratch(tmp_path / "where") as where:
        job, _statuses = fd.restore(result.records, str(where))
        assert job.errors == [], job.messages
        for rel, attrs in expected.items():
            assert _own_xattrs(f"{where}{root}/{rel}") == attrs, rel


# --- helpers mode and the plugin on one host ----------------------------------------------------

OWNER_TAG = {"cli": "domu_snapshot_cli", "plugin": "domu_snapshot_plugin"}


def cli(mount_root, *args):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", VG, "--prefix", PREFIX,
            "--mount-root", str(mount_root), "--quiesce", "none", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def snapshot_tags(gvg):
    """snapshot LV name -> its tags, from `lvs -o lv_tags`."""
    return {lv["lv_name"]: sorted(t for t in lv["lv_tags"].split(",") if t)
            for lv in gvg.lvs() if lv["lv_name"].endswith("-dsnap")}


class MountWatch(threading.Thread):
    """Reads a file of the helpers' mount again and again while a plugin job runs: records every
    moment it was not mounted or the file's content was not the guest's."""

    def __init__(self, target, rel, expected):
        super().__init__(daemon=True)
        self.target, self.path, self.expected = target, os.path.join(target, rel), expected
        self.stop = threading.Event()
        self.problems = []
        self.reads = 0

    def run(self):
        while not self.stop.is_set():
            try:
                if not os.path.ismount(self.target):
                    self.problems.append(f"{self.target} not mounted")
                elif Path(self.path).read_bytes() != self.expected:
                    self.problems.append(f"{self.path} has other content")
                self.reads += 1
            except OSError as exc:
                self.problems.append(f"{self.path}: {exc}")
            self.stop.wait(0.2)


def test_helpers_mount_survives_a_plugin_job_that_reaps_dead_plugin_leftovers(guest_vg, guests, tmp_path):
    """A helpers-mode job between `domu-snapshot mount G1` and `unmount G1`, and a plugin job on
    the same host and mount root: the plugin leaves G1 alone (warning at job start, G1 of its own
    guests fails visibly), reaps what a dead plugin job and an older version left, backs up the
    other guest; `unmount G1` afterwards removes everything."""
    from domu_snapshot.config import load_config
    from domu_snapshot.lifecycle import Runner

    g1, other, legacy = f"{PREFIX}modern", f"{PREFIX}gpt", f"{PREFIX}oldxen"
    mount_root = tmp_path / "mnt"
    g1_root = f"{mount_root}/{VG}/{g1}"
    mounted = cli(mount_root, "mount", g1)
    assert mounted.returncode == 0, mounted.stdout + mounted.stderr
    try:
        # a plugin job that died with `other` prepared (snapshot, loop, mount: the plugin's tag)
        dead = Runner(load_config(None, {"vgs": VG, "prefix": PREFIX, "mount_root": str(mount_root),
                                         "quiesce": "none"}), owner="plugin")
        with dead.lock():
            [guest] = dead.discover([other])
            assert dead.prepare(guest).status == "ok"
        # and a snapshot an older version left (no owner tag)
        guestdisks.run(["lvcreate", "-q", "--snapshot", "--name", f"{legacy}-dsnap", "--addtag",
                        "domu_snapshot", "--size", "8M", f"{VG}/{legacy}"])
        assert snapshot_tags(guest_vg) == {
            f"{g1}-dsnap": ["domu_snapshot", OWNER_TAG["cli"]],
            f"{other}-dsnap": ["domu_snapshot", OWNER_TAG["plugin"]],
            f"{legacy}-dsnap": ["domu_snapshot"]}
        assert guestdisks.compare_tree(g1_root, guests[g1].tree) == []

        watch = MountWatch(g1_root, "etc/hostname", Path(g1_root, "etc/hostname").read_bytes())
        watch.start()
        try:
            result = daemon(mount_root, include=f"{g1},{other}").backup()
        finally:
            watch.stop.set()
            watch.join()
        assert watch.reads > 0 and watch.problems == []

        # G1: warned at job start, then failed as a guest of this job, and nothing of it read
        warnings = result.job.texts(bareosfd.M_WARNING)
        assert any(f"guest {g1} is mounted by `domu-snapshot mount`" in t and "left alone" in t
                   and f"domu-snapshot unmount {g1}" in t for t in warnings), warnings
        assert result.status == "f"
        errors = result.job.texts(bareosfd.M_ERROR)
        assert len(errors) == 1, errors
        assert f"guest {g1}: NOT backed up" in errors[0] and "helpers mode" in errors[0], errors[0]
        assert not [r for r in result.records if r.fname.startswith(g1_root)]
        # the dead plugin job's and the older version's leftovers were reaped; `other` backed up
        infos = result.job.texts(bareosfd.M_INFO)
        assert any(f"removed what an earlier run left of guest {other}" in t for t in infos), infos
        assert any(f"removed what an earlier run left of guest {legacy}" in t for t in infos), infos
        other_root = f"{mount_root}/{VG}/{other}"
        assert result.records and all(r.fname.startswith(other_root) for r in result.records)
        assert any(f": guest {other}:" in t and "entries" in t for t in infos), infos

        # the helpers' mount, loop and snapshot are as they were; nothing else is left
        assert snapshot_tags(guest_vg) == {f"{g1}-dsnap": ["domu_snapshot", OWNER_TAG["cli"]]}
        assert os.path.ismount(g1_root)
        assert guestdisks.compare_tree(g1_root, guests[g1].tree) == []
        assert sorted(os.listdir(f"{mount_root}/{VG}")) == [g1]
    finally:
        unmounted = cli(mount_root, "unmount", g1)
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    assert nothing_left(guest_vg, mount_root) == []
