"""Helpers mode end to end with a real backup engine (issue 8): Bacula 9.6 runs `foreach-domu`.

Inside the VM test bed: a private director, storage daemon (file device) and file daemon on
loopback (tests/bacula/harness.py), running the job and FileSet of the shipped example
etc/bacula/bacula-dir-domu-snapshot.conf with only its "# EDIT" values replaced (mount root,
resource names, and `foreach-domu` -> this checkout's foreach-domu with `--config`).

Guests: fixture disks (tests/guestdisks.py) in a VG of this module's own, because the scenarios
write to origins and add a broken guest: msdos ext3 at sector 63 with swap, msdos ext4 at 1 MiB
(both with a journal to replay), and the unprefixed LV that nothing may touch. Their images come
from the fixture's cache (same layouts and seeds as the standard set).

Four backup jobs, because under software emulation each costs minutes (every foreach-domu call
starts Python, ~10-20 s there, and each guest takes 20-45 s to snapshot, probe, replay, mount and
10-20 s to tear down):
- job 1, Full, with a broken guest (an ext4 whose root inode is cleared: `e2fsck -p` exits 4)
  beside the good ones. Scenario 1: the good guests restore byte for byte. Scenario 4: the Before
  script names the broken guest, the job ends "Backup OK -- with warnings" (JobErrors), the After
  script ran, nothing is left. The restore proves the other guests were backed up in full.
- job 2, Incremental after 3 files changed in one origin (scenario 2): exactly those files.
- job 3, Incremental without change (scenario 3): no file with data; "Backup OK", no errors.
- job 4, cancelled from bconsole while data flows (scenario 5; `setbandwidth` 1 MB/s and a
  16 MiB file, one guest): the file daemon still runs the After script, nothing is left.
After every job: no LV besides the guests (no snapshot), no loop device on the VG's LVs, nothing
mounted under the mount root. Bacula's log (with timestamps) goes to $DOMU_VM_RUN_DIR/bacula/.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import guestdisks
from tests.bacula import example
from tests.bacula.harness import JS_CANCELED, JS_RUNNING, JS_TERMINATED, Bacula

pytestmark = pytest.mark.vm

VG = "domubacula"
PREFIX = "domu-"
JOB = "domu-snapshot"            # the example's Job name
GUESTS = [(PREFIX + "oldxen", "msdos-ext3-63"), (PREFIX + "modern", "msdos-ext4-1m")]
BROKEN = PREFIX + "broken"
CHANGED_GUEST = PREFIX + "modern"
CHANGED = ["etc/hostname", "home/user/notes.txt", "data/blob-03.bin"]


@dataclasses.dataclass
class Bed:
    gvg: guestdisks.GuestVG
    work: Path
    mount_root: Path
    conf: Path
    foreach_domu: str
    bacula: Bacula
    jobs: dict

    def write_conf(self, include: str = "") -> None:
        self.conf.write_text(
            "[domu-snapshot]\nprefix = %s\nvg = %s\nmount_root = %s\nlock_file = %s\nquiesce = none\n"
            "syslog = no\n%s" % (PREFIX, VG, self.mount_root, self.work / "lock",
                                 "include = %s\n" % include if include else ""))

    def good_guests(self):
        return [self.gvg.guests[name] for name, _ in GUESTS]


def _run(argv, check=True):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and p.returncode != 0:
        raise AssertionError("%s -> %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))
    return p


def _mounts_under(root: Path) -> list:
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == str(root) or mp.startswith(str(root) + "/"):
                res.append(mp)
    return res


def _leftovers(bed: Bed) -> list:
    # LVs other than the fixture's guests (snapshots), loop devices on the VG's LVs, their mounts
    return bed.gvg.leftovers() + ["mount %s" % m for m in _mounts_under(bed.mount_root)]


def _assert_nothing_left(bed: Bed, timeout: float = 0.0) -> float:
    """Nothing of ours on the system (polls up to `timeout` seconds); returns seconds waited."""
    start = time.monotonic()
    while True:
        left = _leftovers(bed)
        if not left or time.monotonic() - start >= timeout:
            break
        time.sleep(1)
    assert not left, "left behind: %s" % left
    return time.monotonic() - start


@contextlib.contextmanager
def _origin_mounted(g: guestdisks.GuestDisk, where: Path):
    """Mount a guest's origin read-write (the test plays the guest writing its own disk)."""
    where.mkdir(parents=True, exist_ok=True)
    loop = _run(["losetup", "--find", "--show", "--offset", str(g.offset), "--sizelimit", str(g.fs_size),
                 g.lv_path]).stdout.strip()
    try:
        _run(["mount", "-t", g.fstype, loop, str(where)])
        try:
            yield where
        finally:
            _run(["umount", str(where)])
    finally:
        _run(["losetup", "-d", loop])
        _run(["udevadm", "settle", "--timeout=30"], check=False)


def _guest_files(files, bed, guest):
    """Non-directory entries of one guest in a file list, relative to the guest's root."""
    prefix = "%s/%s/%s/" % (bed.mount_root, VG, guest)
    return sorted(f[len(prefix):] for f in files if f.startswith(prefix) and not f.endswith("/"))


def _remove_broken(bed: Bed) -> None:
    if BROKEN in bed.gvg.guests:
        bed.gvg.remove_guest(BROKEN)


def _keep_logs(b: Bacula) -> None:
    run_dir = os.environ.get("DOMU_VM_RUN_DIR")
    if not run_dir:
        return
    dest = Path(run_dir) / "bacula"
    dest.mkdir(parents=True, exist_ok=True)
    for p in [b.log_file, b.dir_conf] + [b.workdir / ("%s.out" % k) for k in ("dir", "sd", "fd")]:
        if p.exists():
            shutil.copy(p, dest / p.name)


@pytest.fixture(scope="module")
def bed():
    foreach_domu = shutil.which("foreach-domu")
    assert foreach_domu, "foreach-domu is not on PATH (make deps installs it into .venv)"
    t0 = time.monotonic()
    gvg = guestdisks.GuestVG(VG, size_mib=512).create()
    work = Path(tempfile.mkdtemp(prefix="domu-bacula-", dir="/run"))
    b = None
    try:
        for name, layout in GUESTS:
            gvg.add_guest(name, layout, dirty=True)
        gvg.add_guest(guestdisks.UNPREFIXED_LV, "whole-ext4", size_mib=16, dirty=False)
        mount_root = work / "mnt"
        conf = work / "domu-snapshot.conf"
        resources = example.render({
            "mount_root": str(mount_root), "client": Bacula.CLIENT, "storage": Bacula.STORAGE,
            "pool": Bacula.POOL, "messages": Bacula.MESSAGES, "schedule": None,
            "bootstrap": str(work / "bacula" / "bsr" / "%c-domu.bsr"),
            "foreach-domu": "%s --config %s" % (foreach_domu, conf),
        })
        b = Bacula(work / "bacula", resources)
        bed = Bed(gvg=gvg, work=work, mount_root=mount_root, conf=conf, foreach_domu=foreach_domu,
                  bacula=b, jobs={})
        bed.write_conf()
        b.start()
        print("bacula bed ready in %.1fs" % (time.monotonic() - t0))
        yield bed
    finally:
        if b is not None:
            b.stop()
            _keep_logs(b)
        try:
            if _mounts_under(work / "mnt") or gvg.leftovers():
                # what a failed test left: our own teardown first, then the fixture's
                _run([foreach_domu, "--config", str(work / "domu-snapshot.conf"), "unmount"], check=False)
        finally:
            gvg.destroy()
            if not os.environ.get("KEEP_BACULA_WORKDIR"):
                shutil.rmtree(work, ignore_errors=True)


def test_full_backup_restores_every_guest_byte_for_byte(bed):
    """Scenario 1 (job 1, which also carries the broken guest of scenario 4)."""
    b = bed.bacula
    broken = bed.gvg.add_guest(BROKEN, "whole-ext4", size_mib=16, seed=guestdisks.UNPREFIXED_LV,
                               dirty=False)      # hostdata's cached image
    # root inode cleared, filesystem marked unclean: `e2fsck -p` stops with exit 4
    _run(["debugfs", "-w", "-R", "clri <2>", broken.lv_path])
    _run(["debugfs", "-w", "-R", "ssv state 0", broken.lv_path])
    bed.jobs["broken_sha256"] = guestdisks.device_sha256(broken.lv_path)

    jobid = b.run_job(JOB, level="Full")
    job = b.wait(jobid)
    bed.jobs["full"] = jobid
    bed.jobs["full_record"] = job
    log = b.joblog(jobid)
    bed.jobs["full_log"] = log
    _assert_nothing_left(bed)
    assert job["jobstatus"] == JS_TERMINATED and job["level"] == "F", log
    files = b.list_files(jobid)
    for g in bed.good_guests():
        assert _guest_files(files, bed, g.lv), "nothing of %s in the backup" % g.lv
    assert not [f for f in files if "/%s/" % guestdisks.UNPREFIXED_LV in f]

    where = bed.work / "restore-full"
    rjob = b.restore(where, jobids=[jobid])
    assert rjob["jobstatus"] == JS_TERMINATED and rjob["joberrors"] == 0, b.joblog(int(rjob["jobid"]))
    for g in bed.good_guests():
        root = Path(str(where) + str(bed.mount_root)) / VG / g.lv
        problems = guestdisks.compare_tree(root, g.tree)
        assert not problems, "%s restored differently:\n%s" % (g.lv, "\n".join(problems))
    shutil.rmtree(where)
    # e2fsck ran on snapshots only: a dirty origin and the unprefixed LV are as built
    for name in (GUESTS[0][0], guestdisks.UNPREFIXED_LV):
        g = bed.gvg.guests[name]
        assert guestdisks.device_sha256(g.lv_path) == g.sha256, "%s was written to" % name


def test_broken_guest_reported_job_marked_after_script_ran(bed):
    """Scenario 4, on job 1: the others were backed up (restored above), the failure is visible."""
    try:
        assert "full" in bed.jobs, "needs job 1 of the previous test"
        job, log = bed.jobs["full_record"], bed.jobs["full_log"]
        # the Before script's own report, naming the guest and e2fsck's verdict
        assert "FAILED  %s" % BROKEN in log, log
        assert "e2fsck" in log
        assert "ClientBeforeJob returned non-zero status=1" in log
        # Bacula 9.6 keeps JobStatus T and counts the failure in JobErrors; the summary says so
        assert job["jobstatus"] == JS_TERMINATED and job["joberrors"] >= 1, log
        assert "Backup OK -- with warnings" in log
        assert "run ClientAfterJob" in log
        assert "torn down" in log.split("run ClientAfterJob", 1)[1]
        files = bed.bacula.list_files(bed.jobs["full"])
        assert not [f for f in files if "/%s/" % BROKEN in f]
        assert guestdisks.device_sha256(bed.gvg.guests[BROKEN].lv_path) == bed.jobs["broken_sha256"], \
            "the broken origin was written to"
    finally:
        _remove_broken(bed)


def test_incremental_holds_exactly_the_three_changed_files(bed):
    """Scenario 2 (job 2)."""
    assert "full" in bed.jobs, "needs the Full of the first test"
    _remove_broken(bed)
    b = bed.bacula
    g = bed.gvg.guests[CHANGED_GUEST]
    time.sleep(1.1)      # Bacula compares whole seconds with the Full's start time
    with _origin_mounted(g, bed.work / "origin") as root:
        for rel in CHANGED:
            with open(root / rel, "r+b") as f:     # in place: the directories stay unchanged
                f.write(b"changed by test_bacula\n")
                os.fsync(f.fileno())
    jobid = b.run_job(JOB, level="Incremental")
    job = b.wait(jobid)
    log = b.joblog(jobid)
    _assert_nothing_left(bed)
    assert job["jobstatus"] == JS_TERMINATED and job["joberrors"] == 0 and job["level"] == "I", log
    files = b.list_files(jobid)
    assert sorted(f for f in files if not f.endswith("/")) == \
        sorted("%s/%s/%s/%s" % (bed.mount_root, VG, CHANGED_GUEST, rel) for rel in CHANGED)
    # The job's file count is what the catalog lists; directories in it can only be the ones
    # domu-snapshot makes for each run (the mount root and the VG directory), never guest dirs.
    assert job["jobfiles"] == len(files)
    dirs = {f for f in files if f.endswith("/")}
    assert dirs <= {"%s/" % bed.mount_root, "%s/%s/" % (bed.mount_root, VG)}, sorted(dirs)
    bed.jobs["incr"] = jobid


def test_incremental_without_change_saves_no_file_data(bed):
    """Scenario 3 (job 3)."""
    assert "incr" in bed.jobs
    b = bed.bacula
    jobid = b.run_job(JOB, level="Incremental")
    job = b.wait(jobid)
    log = b.joblog(jobid)
    _assert_nothing_left(bed)
    assert job["jobstatus"] == JS_TERMINATED and job["joberrors"] == 0, log
    assert re.search(r"Termination:\s+Backup OK\s*$", log, re.M), log
    files = b.list_files(jobid)
    assert [f for f in files if not f.endswith("/")] == []
    assert job["jobbytes"] == 0


def test_cancel_while_running_leaves_nothing(bed):
    """Scenario 5 (job 4): one guest, 16 MiB more in it, sent at 1 MB/s, cancelled mid-way."""
    b = bed.bacula
    g = bed.gvg.guests[CHANGED_GUEST]
    with _origin_mounted(g, bed.work / "origin") as root:
        with open(root / "data" / "big.bin", "wb") as f:
            for _ in range(16):
                f.write(os.urandom(1 << 20))
            os.fsync(f.fileno())
    bed.write_conf(include=CHANGED_GUEST)
    b.console("setbandwidth limit=1mb/s client=%s" % b.CLIENT)
    try:
        jobid = b.run_job(JOB, level="Full")
        b.wait_running(jobid)
        deadline = time.monotonic() + 300
        while not _mounts_under(bed.mount_root):
            assert time.monotonic() < deadline, "guest not mounted: %s" % b.joblog(jobid)
            assert b.status(jobid) == JS_RUNNING, b.joblog(jobid)
            time.sleep(0.5)
        time.sleep(3)            # the Before script ends, the data flows (at 1 MB/s)
        assert b.status(jobid) == JS_RUNNING
        b.cancel(jobid)
        job = b.wait(jobid)
    finally:
        b.console("setbandwidth limit=0 client=%s" % b.CLIENT)
        bed.write_conf()
    assert job["jobstatus"] == JS_CANCELED, b.joblog(jobid)
    # bacula-fd runs ClientAfterJob when the cancelled job's connection ends, which may be after
    # the director has recorded the cancel: give it time.
    waited = _assert_nothing_left(bed, timeout=240)
    print("after the cancel, the After script had torn everything down within %.0fs" % waited)
