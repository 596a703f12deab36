"""Plugin mode and helpers mode with a real Bareos 25 (tests/bareos_bed.py), checked the way an
admin checks a backup: bconsole (llist, list files, the job log) and the restored files.

One Bareos per VM run (module fixture): director, storage daemon, file daemon with python3-fd, a
PostgreSQL catalog, all under /tmp. FileSet/Job/Client are etc/bareos/*.conf with only their
`# EDIT` lines replaced; two jobs of the tests are variants of the example Job (renamed, one
directive added: `FD Plugin Options`, `Maximum Bandwidth`).

Guests (tests/guestdisks.py) live in a VG of this module's own, because the tests write to origins
(as the guest would) and break one: prefix `bsnap-`, so no other suite's guest is ever selected.
- bsnap-alpha (msdos, ext4 at 1 MiB, journal to replay) with extras written into its origin before
  the Full: a fifo, a sparse file, user.* xattrs and POSIX ACLs (file and directory default ACL);
- bsnap-beta (ext4 on the whole LV);
- bsnap-gamma (ext4 on the whole LV): saved by the Full, then broken (root inode cleared, e2fsck
  exits 4) for the failing-guest job.
Restores with xattrs/ACLs go to a real ext4 (an LV of the VG that the prefix does not select):
the VM's /tmp overlay cannot hold user.* attributes.

Without any Bareos (DOMU_BAREOS_HOME, Debian's packages, ../shared/bareos/*.tar.xz) every test
fails with one line saying so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests import bareos_bed, guestdisks
from tests.bareos_bed import Bareos, BareosMissing

pytestmark = pytest.mark.vm

VG = "domubareos"
PREFIX = "bsnap-"
ALPHA, BETA, GAMMA = PREFIX + "alpha", PREFIX + "beta", PREFIX + "gamma"
RESTORE_LV = "bedrestore"            # not selected by the prefix: the restores' real ext4
PLUGIN_JOB, HELPERS_JOB = "domu-snapshot-plugin", "domu-snapshot-helpers"
PLUGIN_FILESET, HELPERS_FILESET = "domu-snapshot-plugin", "domu-snapshot-helpers"
ONLY_BETA_JOB, THROTTLED_JOB = "bed-plugin-only-beta", "bed-plugin-throttled"
# beta while the throttled alpha job holds the run lock: one waits for it, one gives up at once
BETA_WAITS_JOB, BETA_GIVES_UP_JOB = "bed-plugin-beta-waits", "bed-plugin-beta-gives-up"
CHANGED = ["etc/hostname", "home/user/notes.txt", "data/blob-03.bin"]
DELETED = "data/blob-05.bin"
EXTRA = "bedextra"                   # top-level directory of the extras in alpha
SPARSE_SIZE = 8 * 1024 * 1024


def note(message: str) -> None:
    """Progress, readable from the host while the VM runs: $DOMU_VM_RUN_DIR/bareos/progress.log."""
    print(message)
    run_dir = os.environ.get("DOMU_VM_RUN_DIR")
    if run_dir:
        Path(run_dir, "bareos").mkdir(parents=True, exist_ok=True)
        with open(Path(run_dir, "bareos", "progress.log"), "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {message}\n")


def _run(argv, check=True, input=None):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, input=input)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {p.returncode}: {p.stderr.strip()}")
    return p


@dataclasses.dataclass
class Bed:
    gvg: guestdisks.GuestVG
    work: Path
    mount_root: Path
    helpers_root: Path
    restore_fs: Path
    bareos: Bareos
    fd_pid: int | None
    jobs: dict


def _mounts_under(root: Path) -> list[str]:
    return [mp for _dev, mp in guestdisks._mountinfo() if mp == str(root) or mp.startswith(f"{root}/")]


def leftovers(bed: Bed) -> list[str]:
    """Snapshot LVs tagged domu_snapshot, loop devices over the guests' LVs, mounts under the roots."""
    lvs = bed.gvg.lvs()
    left = [f"snapshot LV {VG}/{lv['lv_name']} ({lv['lv_tags']})" for lv in lvs if "domu_snapshot" in lv["lv_tags"]]
    left += [f"LV {VG}/{lv['lv_name']}" for lv in lvs
             if lv["lv_name"] not in bed.gvg.guests and lv["lv_name"] != RESTORE_LV and "domu_snapshot" not in lv["lv_tags"]]
    # loops and mounts over the guests' origins and over any snapshot (not the restores' LV)
    loops, mounts = guestdisks._users_of([lv for lv in lvs if lv["lv_name"] != RESTORE_LV])
    left += [f"loop device {l}" for l in loops] + [f"mount {m}" for m in mounts]
    left += [f"mount {m}" for root in (bed.mount_root, bed.helpers_root) for m in _mounts_under(root)]
    return sorted(set(left))


@contextlib.contextmanager
def origin_mounted(g: guestdisks.GuestDisk, where: Path, readonly: bool = False):
    """The guest's origin through a loop device: read-write when the test plays the guest."""
    where.mkdir(parents=True, exist_ok=True)
    loop = _run(["losetup", "--find", "--show", *(["--read-only"] if readonly else []), "--offset",
                 str(g.offset), "--sizelimit", str(g.fs_size), g.lv_path]).stdout.strip()
    try:
        _run(["mount", "-t", g.fstype, *(["-o", "ro,noload"] if readonly else []), loop, str(where)])
        try:
            yield where
        finally:
            _run(["umount", str(where)])
    finally:
        _run(["losetup", "-d", loop])
        _run(["udevadm", "settle", "--timeout=30"], check=False)


def write_extras(root: Path) -> None:
    """A fifo, a sparse file, xattrs and ACLs: what the fixture's tree does not have."""
    d = root / EXTRA
    d.mkdir()
    os.mkfifo(d / "fifo", 0o640)
    os.chown(d / "fifo", 1000, 1000)
    with open(d / "sparse.bin", "wb") as f:
        f.seek(SPARSE_SIZE - 5)
        f.write(b"tail\n")
        f.seek(4096)
        f.write(b"head data\n")
        os.fsync(f.fileno())
    (d / "xattr.txt").write_bytes(b"has xattrs\n")
    os.setxattr(d / "xattr.txt", "user.domu.test", b"value-1")
    os.setxattr(d / "xattr.txt", "user.domu.binary", bytes(range(0, 256, 7)))
    (d / "acl.txt").write_bytes(b"has an ACL\n")
    _run(["setfacl", "-m", "u:1000:rw,g:33:r", str(d / "acl.txt")])
    (d / "acldir").mkdir()
    _run(["setfacl", "-m", "d:u:1000:rwx", str(d / "acldir")])
    for p, t in ((d / "fifo", 1_650_000_000), (d / "sparse.bin", 1_650_000_100), (d / "xattr.txt", 1_650_000_200),
                 (d / "acl.txt", 1_650_000_300), (d / "acldir", 1_650_000_400), (d, 1_650_000_500)):
        os.utime(p, (t, t))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def extras_problems(root: Path) -> list[str]:
    d = root / EXTRA
    problems = []
    st = os.lstat(d / "fifo")
    if not stat.S_ISFIFO(st.st_mode):
        problems.append(f"fifo: restored as mode {st.st_mode:o}")
    elif (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) != (0o640, 1000, 1000, 1_650_000_000):
        problems.append(f"fifo: mode/owner/mtime {stat.S_IMODE(st.st_mode):o} {st.st_uid}:{st.st_gid} {int(st.st_mtime)}")
    sp = d / "sparse.bin"
    data = sp.read_bytes()
    want = bytearray(SPARSE_SIZE)
    want[4096:4106] = b"head data\n"
    want[SPARSE_SIZE - 5:] = b"tail\n"
    if data != bytes(want):
        problems.append(f"sparse.bin: content differs (size {len(data)})")
    if os.stat(sp).st_blocks * 512 >= SPARSE_SIZE // 2:
        problems.append(f"sparse.bin: restored without holes ({os.stat(sp).st_blocks * 512} bytes allocated "
                        f"for {SPARSE_SIZE})")
    for name, value in (("user.domu.test", b"value-1"), ("user.domu.binary", bytes(range(0, 256, 7)))):
        try:
            got = os.getxattr(d / "xattr.txt", name)
        except OSError as e:
            got = f"<{e.strerror}>"
        if got != value:
            problems.append(f"xattr.txt: {name} = {got!r}")
    acl = _run(["getfacl", "-cpn", str(d / "acl.txt")]).stdout
    for entry in ("user:1000:rw-", "group:33:r--"):
        if entry not in acl.split():
            problems.append(f"acl.txt: ACL lacks {entry}: {acl.split()}")
    dacl = _run(["getfacl", "-cpn", str(d / "acldir")]).stdout
    if "default:user:1000:rwx" not in dacl.split():
        problems.append(f"acldir: default ACL lacks default:user:1000:rwx: {dacl.split()}")
    return problems


def restored_root(where: Path, bed: Bed, lv: str, mount_root: Path | None = None) -> Path:
    return Path(f"{where}{mount_root or bed.mount_root}") / VG / lv


def guest_names(files: list[str], root: Path, lv: str) -> list[str]:
    """Non-directory entries of one guest in a `list files` listing, relative to its root."""
    prefix = f"{root}/{VG}/{lv}/"
    return sorted(f[len(prefix):] for f in files if f.startswith(prefix) and not f.endswith("/"))


def tree_state(root: Path) -> dict:
    """{relative path: (type, mode, uid, gid, mtime, size, sha256 or target)} of a tree."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel == "lost+found":
                continue
            st = os.lstat(p)
            extra = ""
            if stat.S_ISREG(st.st_mode):
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            state[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 0,
                          st.st_uid, st.st_gid, int(st.st_mtime) if not stat.S_ISLNK(st.st_mode) else 0,
                          st.st_size if stat.S_ISREG(st.st_mode) else 0, extra)
    return state


def restamped_dirs(files: list[str], root: Path, lv: str) -> set[str]:
    """Directories (relative to the guest) holding a file an Incremental saved while the directory
    itself was unchanged, so not in that job. A restore of the latest state (re)creates the file
    after the Full's directory entry set the directory's attributes: the directory keeps the
    restore's mtime. Seen with Bareos 25.1.0 in plugin mode and in helpers mode (native FileSet)
    alike: Bareos's own restore behaviour, README "Restores"."""
    prefix = f"{root}/{VG}/{lv}/"
    saved = {f[len(prefix):].rstrip("/") for f in files if f.startswith(prefix)}
    listed = [f[len(prefix):] for f in files if f.startswith(prefix)]
    parents = {os.path.dirname(f) for f in listed if not f.endswith("/")}
    return {p for p in parents if p and p not in saved}


def without_mtime(state: dict, paths: set[str]) -> dict:
    """`state` with the mtime of `paths` blanked (see restamped_dirs)."""
    return {k: (v[:4] + (None,) + v[5:] if k in paths else v) for k, v in state.items()}


def diff_states(got: dict, want: dict) -> list[str]:
    out = [f"missing: {p}" for p in sorted(set(want) - set(got))]
    out += [f"unexpected: {p}" for p in sorted(set(got) - set(want))]
    out += [f"{p}: {got[p]} != {want[p]}" for p in sorted(set(got) & set(want)) if got[p] != want[p]]
    return out


def summary(st: dict) -> str:
    note(f"job {st['jobid']} ({st['level']}): {st['status']} {st['termination']!r} files {st['files']}")
    """What a failed assertion shows: status, termination, counts, and the job's log."""
    return (f"job {st['jobid']}: JobStatus {st['status']}, Termination {st['termination']!r}, "
            f"JobFiles {st['files']}, JobErrors {st['errors']}\n{st['log']}")


def _config(path: Path, mount_root: Path) -> Path:
    path.write_text(f"[domu-snapshot]\nprefix = {PREFIX}\nvg = {VG}\nmount_root = {mount_root}\n"
                    "quiesce = none\nsyslog = no\n")
    return path


@pytest.fixture(scope="module")
def bed():
    work = Path(tempfile.mkdtemp(prefix="domu-bareos-", dir="/tmp"))
    os.chmod(work, 0o755)                # the catalog below it runs as user postgres
    t0 = time.monotonic()
    try:
        bareos_bed.locate(work / "bareos")
    except BareosMissing as e:
        shutil.rmtree(work, ignore_errors=True)
        print(f"bareos: {e}")
        pytest.fail(f"real Bareos suite not run: {e}", pytrace=False)
    foreach_domu = shutil.which("foreach-domu") or str(bareos_bed.REPO / "helpers" / "foreach-domu")
    gvg = guestdisks.GuestVG(VG, size_mib=640).create()
    b = None
    try:
        gvg.add_guest(ALPHA, "msdos-ext4-1m", dirty=True)
        gvg.add_guest(BETA, "whole-ext4", size_mib=24, dirty=True)
        gvg.add_guest(GAMMA, "whole-ext4", size_mib=16, dirty=False)
        note(f"guests built in {time.monotonic() - t0:.0f}s")
        _run(["lvcreate", "-q", "-y", "-n", RESTORE_LV, "-L", "96M", VG])
        _run(["mkfs.ext4", "-q", "-F", f"/dev/{VG}/{RESTORE_LV}"])
        restore_fs = work / "restore-fs"
        restore_fs.mkdir()
        _run(["mount", f"/dev/{VG}/{RESTORE_LV}", str(restore_fs)])
        with origin_mounted(gvg.guests[ALPHA], work / "origin") as root:
            write_extras(root)
        mount_root = work / "mnt"
        helpers_root = work / "hmnt"
        plugin_conf = _config(work / "plugin.conf", mount_root)
        helpers_conf = _config(work / "helpers.conf", helpers_root)
        b = Bareos(work / "bareos",
                   plugin_values={"mount_root": str(mount_root), "guest LV prefix": PREFIX},
                   helpers_values={"mount_root": str(helpers_root),
                                   "foreach-domu": f"{foreach_domu} --config {helpers_conf}"},
                   variants={ONLY_BETA_JOB: (PLUGIN_JOB, [f'FD Plugin Options = "python3:include={BETA}"']),
                             THROTTLED_JOB: (PLUGIN_JOB, ["Maximum Bandwidth = 300 kb/s",
                                                          f'FD Plugin Options = "python3:include={ALPHA}"']),
                             BETA_WAITS_JOB: (PLUGIN_JOB, [f'FD Plugin Options = "python3:include={BETA}:lock_timeout=900"']),
                             BETA_GIVES_UP_JOB: (PLUGIN_JOB, [f'FD Plugin Options = "python3:include={BETA}:lock_timeout=2"'])},
                   fd_env={"DOMU_SNAPSHOT_CONFIG": str(plugin_conf)}, log=note)
        b.start()
        bed = Bed(gvg=gvg, work=work, mount_root=mount_root, helpers_root=helpers_root, restore_fs=restore_fs,
                  bareos=b, fd_pid=b.fd_pid(), jobs={})
        note(f"bareos bed with guests ready in {time.monotonic() - t0:.0f}s")
        yield bed
    finally:
        if b is not None:
            b.stop()
        try:
            if _mounts_under(work / "hmnt"):
                _run([foreach_domu, "--config", str(work / "helpers.conf"), "unmount"], check=False)
            _run(["umount", str(work / "restore-fs")], check=False)
            _run(["lvremove", "-q", "-f", f"{VG}/{RESTORE_LV}"], check=False)
        finally:
            gvg.destroy()
            if not os.environ.get("KEEP_BAREOS_WORKDIR"):
                shutil.rmtree(work, ignore_errors=True)


def need(bed: Bed, *keys: str) -> None:
    missing = [k for k in keys if k not in bed.jobs]
    assert not missing, f"needs the job(s) {missing} of an earlier test"


@contextlib.contextmanager
def big_file(bed: Bed, mib: int):
    """A file of `mib` MiB in alpha's origin for the duration: the throttled job (300 kB/s)
    then reads alpha for mib / 0.3 seconds, long enough to act on it mid-job."""
    with origin_mounted(bed.gvg.guests[ALPHA], bed.work / "origin") as root:
        with open(root / "data" / "big.bin", "wb") as f:
            f.write(os.urandom(mib << 20))
            os.fsync(f.fileno())
    try:
        yield
    finally:
        with origin_mounted(bed.gvg.guests[ALPHA], bed.work / "origin") as root:
            os.unlink(root / "data" / "big.bin")


def wait_reading(bed: Bed, jobid: int) -> None:
    """Until the job has a guest mounted (and is still running)."""
    b = bed.bareos
    deadline = time.monotonic() + 300
    while not _mounts_under(bed.mount_root):
        assert time.monotonic() < deadline, f"guest never mounted:\n{b.joblog(jobid)}"
        assert b.record(jobid)["jobstatus"][:1] not in bareos_bed.FINAL_STATES, b.joblog(jobid)
        time.sleep(0.5)


def a_good_backup(bed: Bed) -> int:
    """The id of a plugin backup that ended T: the suite's Full, or (in a subset run without it)
    a Full of beta made once here."""
    if "full" in bed.jobs:
        return bed.jobs["full"]["jobid"]
    if "beta_full" not in bed.jobs:
        st = bed.bareos.wait_job(bed.bareos.run_job(ONLY_BETA_JOB, level="Full"))
        assert st["status"] == "T", summary(st)
        bed.jobs["beta_full"] = st
    return bed.jobs["beta_full"]["jobid"]


# ---------------------------------------------------------------------------------- plugin mode
def test_full_backup_restores_every_guest(bed):
    b = bed.bareos
    t0 = time.monotonic()
    jobid = b.run_job(PLUGIN_JOB, level="Full")
    st = b.wait_job(jobid)
    bed.jobs["full"] = st
    print(f"plugin Full: {time.monotonic() - t0:.0f}s")
    assert st["status"] in "TW" and st["level"] == "F", summary(st)
    assert leftovers(bed) == []
    files = b.list_files(jobid)
    for lv in (ALPHA, BETA, GAMMA):
        assert guest_names(files, bed.mount_root, lv), f"nothing of {lv} in `list files`:\n{summary(st)}"
    assert not [f for f in files if f"/{RESTORE_LV}" in f]

    where = bed.restore_fs / "full"
    rst = b.restore(str(where), jobid=jobid)
    assert rst["status"] == "T" and rst["termination"] == "Restore OK", summary(rst)
    problems = []
    for lv in (ALPHA, BETA, GAMMA):
        g = bed.gvg.guests[lv]
        ignore = ("lost+found", EXTRA) if lv == ALPHA else ("lost+found",)
        problems += [f"{lv}: {p}" for p in guestdisks.compare_tree(restored_root(where, bed, lv), g.tree,
                                                                   ignore=ignore)]
    problems += [f"{ALPHA}: {p}" for p in extras_problems(restored_root(where, bed, ALPHA))]
    assert problems == [], "restored differently:\n" + "\n".join(problems) + "\n" + summary(st)
    # nothing outside the guests' restore trees
    assert sorted(os.listdir(f"{where}{bed.mount_root}/{VG}")) == sorted([ALPHA, BETA, GAMMA])


def test_full_of_healthy_guests_ends_backup_ok(bed):
    need(bed, "full")
    st = bed.jobs["full"]
    assert st["status"] == "T" and st["termination"] == "Backup OK" and st["errors"] == 0, summary(st)
    # the plugin's notes on healthy guests (journal replayed, ...) are information, not warnings
    fd_warnings = [l for l in st["log"].splitlines() if re.search(r" bed-fd JobId \d+: (Warning|Error|Fatal)", l)]
    assert fd_warnings == [], summary(st)


def test_estimate_lists_the_guests_files_and_leaves_nothing(bed):
    """bconsole `estimate listing` (of the example Job with FD Plugin Options include= beta):
    bareos-fd 25.1.0 sends no bEventStartBackupJob/EndBackupJob for it (filed/estimate.cc,
    PluginEstimate in fd_plugins.cc: bEventEstimateCommand, then start_backup_file/
    end_backup_file until done, then bEventJobEnd), so the plugin prepares the guest at the first
    start_backup_file and tears it down after its walk. The listing has every entry a Full saved."""
    b = bed.bareos
    full = b.list_files(a_good_backup(bed))
    out = b.estimate(ONLY_BETA_JOB, level="Full", listing=True)
    m = re.search(r"2000 OK estimate files=([\d,]+) bytes=([\d,]+)", out)
    assert m, out
    assert leftovers(bed) == [], out

    def entries(paths, lv):
        prefix = f"{bed.mount_root}/{VG}/{lv}/"
        return {p[len(prefix):].rstrip("/") for p in paths if p.startswith(prefix)} - {""}

    # lib/attr.cc attr_to_ls_output: mode, links, owner, group, size, ctime, two spaces, the
    # name, and for a symlink " -> " and its target
    listed = re.findall(r"^\s*\S{10}\s+\d+ .*? -?\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  (/.*?)(?: -> .*)?$", out, re.M)
    want = entries(full, BETA)
    assert want and entries(listed, BETA) == want, \
        f"missing {sorted(want - entries(listed, BETA))}, extra {sorted(entries(listed, BETA) - want)}:\n{out}"
    # the estimate ignores the Job's FD Plugin Options (include= beta): it lists the FileSet's
    # selection, every guest (seen with 25.1.0; README)
    assert entries(listed, ALPHA) and entries(listed, GAMMA), out
    assert int(m.group(1).replace(",", "")) >= len(want), out
    # the run lock is free again: the next job can start (the next tests run jobs)
    assert bed.bareos.fd_alive()


def test_incremental_sends_changes_and_accurate_records_the_deletion(bed):
    need(bed, "full")
    b = bed.bareos
    time.sleep(1.1)          # whole seconds against the Full's start
    g = bed.gvg.guests[ALPHA]
    with origin_mounted(g, bed.work / "origin") as root:
        for rel in CHANGED:
            with open(root / rel, "r+b") as f:        # in place: their directories stay as they were
                f.write(b"changed by test_bareos_real\n")
                os.fsync(f.fileno())
        os.unlink(root / DELETED)
        bed.jobs["alpha_after_incr"] = tree_state(root)
    jobid = b.run_job(PLUGIN_JOB, level="Incremental")
    st = b.wait_job(jobid)
    bed.jobs["incr"] = st
    assert st["status"] == "T" and st["level"] == "I", summary(st)
    assert leftovers(bed) == []
    files = b.list_files(jobid)
    # Bareos 25's `list files` also shows the entry Accurate marked deleted
    assert sorted(guest_names(files, bed.mount_root, ALPHA)) == sorted(CHANGED + [DELETED]), files
    assert guest_names(files, bed.mount_root, BETA) == [] and guest_names(files, bed.mount_root, GAMMA) == []
    # what the job summary says the FD sent: the changed files and the directory that lost a file
    dirs = [f for f in files if f.endswith("/")]
    # ... and the deletion record, which Bareos 25 counts as a file of the job
    assert st["fd_files"] == st["files"] == len(CHANGED) + len(dirs) + 1, \
        summary(st) + "\n" + "\n".join(files)
    assert set(dirs) <= {f"{bed.mount_root}/{VG}/{ALPHA}/data/", f"{bed.mount_root}/{VG}/{ALPHA}/",
                         f"{bed.mount_root}/", f"{bed.mount_root}/{VG}/"}, dirs

    # the latest state, as an admin restores it, lacks the deleted file and has the new contents
    where = bed.restore_fs / "incr-current"
    rst = b.restore(str(where), current=True, fileset=PLUGIN_FILESET)
    assert rst["status"] == "T", summary(rst)
    root = restored_root(where, bed, ALPHA)
    assert not os.path.lexists(root / DELETED), "the file deleted in the guest came back with the latest state"
    state = tree_state(root)
    want = bed.jobs["alpha_after_incr"]
    # etc/hostname came with the Incremental, etc/ did not: etc/ has the restore's mtime (and
    # only that differs); data/ lost a file, so it is in the Incremental and keeps its own
    restamped = restamped_dirs(files, bed.mount_root, ALPHA)
    note(f"latest-state restore: directories with the restore's mtime: {sorted(restamped)}")
    assert diff_states(without_mtime({k: v for k, v in state.items() if not k.startswith(EXTRA)}, restamped),
                       without_mtime({k: v for k, v in want.items() if not k.startswith(EXTRA)}, restamped)) == []
    assert restamped == {"etc", "home/user"}, restamped
    shutil.rmtree(where)


def test_jobs_ran_in_one_bareos_fd_process(bed):
    need(bed, "full")
    assert bed.bareos.fd_alive() and bed.bareos.fd_pid() == bed.fd_pid, \
        f"bareos-fd pid {bed.fd_pid} at start, now {bed.bareos.fd_pid()} (alive: {bed.bareos.fd_alive()})"


def test_failing_guest_fails_the_job_and_keeps_its_last_good_files(bed):
    need(bed, "full")
    b = bed.bareos
    gamma = bed.gvg.guests[GAMMA]
    # root inode cleared, filesystem marked unclean: `e2fsck -p` on the snapshot exits 4
    _run(["debugfs", "-w", "-R", "clri <2>", gamma.lv_path])
    _run(["debugfs", "-w", "-R", "ssv state 0", gamma.lv_path])
    time.sleep(1.1)
    with origin_mounted(bed.gvg.guests[BETA], bed.work / "origin") as root:
        with open(root / "etc/hostname", "r+b") as f:
            f.write(b"beta changed\n")
            os.fsync(f.fileno())
    jobid = b.run_job(PLUGIN_JOB, level="Incremental")
    st = b.wait_job(jobid)
    bed.jobs["failing"] = st
    assert leftovers(bed) == []
    assert re.search(rf"{GAMMA}.*NOT backed up", st["log"]), summary(st)
    # an admin sees a failed job, not "Backup OK" (nor "OK -- with warnings")
    assert not (st["termination"] or "").startswith("Backup OK"), summary(st)
    assert st["status"] == "f" and st["termination"] in ("Backup Error", "*** Backup Error ***"), summary(st)

    where = bed.restore_fs / "failing-current"
    rst = b.restore(str(where), current=True, fileset=PLUGIN_FILESET)
    assert rst["status"] == "T", summary(rst)
    problems = guestdisks.compare_tree(restored_root(where, bed, GAMMA), gamma.tree)
    assert problems == [], f"{GAMMA}'s last good files not in the latest state:\n" + "\n".join(problems)
    beta_now = (restored_root(where, bed, BETA) / "etc/hostname").read_bytes()
    shutil.rmtree(where)
    # Bareos keeps no catalog entries of a failed job (seen with 25.1.0): nothing of it shadows
    # anything, and the latest state is the last good job's, also for the other guests, whose
    # changes the next good Incremental sends again
    files = b.list_files(jobid)
    assert guest_names(files, bed.mount_root, GAMMA) == []
    assert not beta_now.startswith(b"beta changed\n"), \
        f"the failed job {jobid} became the latest state of {BETA} (job status {st['status']})"


def test_restore_with_strip_and_add_prefix_is_refused_and_writes_nothing(bed):
    """bareos-fd 25.1.0 hands a plugin neither `where` nor the regexwhere of a strip_prefix/
    add_prefix restore (seen here), so the plugin cannot keep such a restore inside a target: it
    refuses every entry with a message that says to use where=, and writes nothing anywhere."""
    b = bed.bareos
    target = bed.restore_fs / "prefixed"
    strip = f"{bed.mount_root}/{VG}/"
    rst = b.restore(None, jobid=a_good_backup(bed), strip_prefix=strip, add_prefix=f"{target}/")
    assert rst["status"] in ("f", "E") and "Restore OK" not in (rst["termination"] or ""), summary(rst)
    assert "restore with where=DIR" in rst["log"] and "strip_prefix" in rst["log"], summary(rst)
    # one fatal line says it, not an error per entry
    refusals = re.findall(r"domu-snapshot: restore refused", rst["log"])
    assert len(refusals) == 1 and "Fatal error" in rst["log"], summary(rst)
    assert not os.path.exists(target) or not any(p.is_file() for p in target.rglob("*")), \
        list(target.rglob("*"))
    assert not os.path.exists(bed.mount_root / VG), os.listdir(bed.mount_root)
    if os.path.exists(target):
        shutil.rmtree(target)


def test_job_plugin_options_override_the_filesets_key_by_key(bed):
    need(bed, "full")
    b = bed.bareos
    jobid = b.run_job(ONLY_BETA_JOB, level="Full")
    st = b.wait_job(jobid)
    assert leftovers(bed) == []
    files = b.list_files(jobid)
    # include= from the Job, mount_root and prefix still the FileSet's
    assert guest_names(files, bed.mount_root, BETA), summary(st) + "\n" + "\n".join(files[:20])
    assert [f for f in files if not f.startswith(f"{bed.mount_root}/")] == [], files[:20]
    assert guest_names(files, bed.mount_root, ALPHA) == [] and guest_names(files, bed.mount_root, GAMMA) == []
    assert st["status"] == "T" and st["termination"] == "Backup OK", summary(st)


def test_cancel_mid_job_leaves_nothing_once_the_next_job_starts(bed):
    b = bed.bareos
    with big_file(bed, 6):
        jobid = b.run_job(THROTTLED_JOB, level="Full")
        wait_reading(bed, jobid)
        time.sleep(5)                    # data flows at 300 kB/s: 6 MiB take 20 s
        assert b.record(jobid)["jobstatus"][:1] == bareos_bed.RUNNING, b.joblog(jobid)
        b.cancel(jobid)
        st = b.wait_job(jobid)
        assert st["status"] == "A" and st["termination"] == "Backup Canceled", summary(st)
        # the next job starts and ends; nothing of the cancelled one may be left by then
        nxt = b.run_job(ONLY_BETA_JOB, level="Incremental")
        nst = b.wait_job(nxt)
        assert leftovers(bed) == [], summary(st)
        assert nst["status"] == "T", summary(nst)


def test_concurrent_jobs_on_one_client_wait_for_the_run_lock_or_give_up_naming_the_holder(bed):
    """Client Maximum Concurrent Jobs = 4: while the throttled job reads alpha (holding the run
    lock), a beta job with lock_timeout=900 waits, saying for whom, and then runs; one with
    lock_timeout=2 fails at its start, saying for whom and what to do, having touched nothing."""
    b = bed.bareos
    with big_file(bed, 12):              # 40 s of data at 300 kB/s
        holder = b.run_job(THROTTLED_JOB, level="Full")
        wait_reading(bed, holder)
        waiter = b.run_job(BETA_WAITS_JOB, level="Full")
        quitter = b.run_job(BETA_GIVES_UP_JOB, level="Full")
        qst = b.wait_job(quitter)
        wst = b.wait_job(waiter)
        hst = b.wait_job(holder)
    assert leftovers(bed) == []
    held_by = rf"held by another job of this process \(pid \d+: Bareos job {holder} \({THROTTLED_JOB}\."
    assert hst["status"] == "T" and guest_names(b.list_files(holder), bed.mount_root, ALPHA), summary(hst)
    # the waiter said why it waits, then saved beta (and only beta) and ended OK
    assert re.search(r"waiting up to 900 s \(lock_timeout\) for the run lock, " + held_by, wst["log"]), summary(wst)
    wfiles = b.list_files(waiter)
    assert guest_names(wfiles, bed.mount_root, BETA) and not guest_names(wfiles, bed.mount_root, ALPHA), wfiles
    assert wst["status"] == "T" and wst["termination"] == "Backup OK", summary(wst)
    # the other gave up after its 2 s, naming the holder and the fix, with nothing snapshotted
    assert qst["status"] in ("f", "E"), summary(qst)
    assert re.search(r"waiting up to 2 s \(lock_timeout\) for the run lock, " + held_by, qst["log"]), summary(qst)
    assert re.search(rf"Fatal error: .*domu-snapshot: cannot start: .*Bareos job {holder} .*; waited 2 s.*"
                     r"nothing was snapshotted.*Maximum Concurrent Jobs = 1", qst["log"]), summary(qst)
    assert not guest_names(b.list_files(quitter), bed.mount_root, BETA), summary(qst)
    assert f"guest {BETA}" not in qst["log"], summary(qst)


def test_kill_9_of_bareos_fd_mid_job_fails_the_job_and_the_next_job_cleans_up(bed):
    """bareos-fd dies (SIGKILL) while it reads a mounted guest: no plugin event, no teardown. The
    director marks the job failed; after bareos-fd is started again, the next job's start
    removes the dead job's snapshot, loop device and mount, and the job ends OK."""
    b = bed.bareos
    with big_file(bed, 6):
        jobid = b.run_job(THROTTLED_JOB, level="Full")
        wait_reading(bed, jobid)
        time.sleep(3)
        assert b.record(jobid)["jobstatus"][:1] == bareos_bed.RUNNING, b.joblog(jobid)
        killed = b.kill_fd()
        st = b.wait_job(jobid)
        left = leftovers(bed)
        note(f"after kill -9 of bareos-fd {killed}: {left}")
        try:
            assert st["status"] in ("f", "E") and not (st["termination"] or "").startswith("Backup OK"), summary(st)
            # what a crash leaves (else this test shows nothing)
            assert {l.split()[0] for l in left} >= {"snapshot", "loop", "mount"}, left
        finally:
            bed.fd_pid = b.restart_fd()
        nxt = b.run_job(ONLY_BETA_JOB, level="Incremental")
        nst = b.wait_job(nxt)
    assert leftovers(bed) == [], summary(nst)
    assert f"removed what an earlier run left of guest {ALPHA}" in nst["log"], summary(nst)
    assert nst["status"] == "T" and nst["termination"] == "Backup OK", summary(nst)


# --------------------------------------------------------------------------------- helpers mode
def test_helpers_full_incremental_and_restore(bed):
    b = bed.bareos
    if GAMMA in bed.gvg.guests:          # broken by the failing-guest test: not this test's subject
        bed.gvg.remove_guest(GAMMA)
    jobid = b.run_job(HELPERS_JOB, level="Full")
    st = b.wait_job(jobid)
    bed.jobs["helpers_full"] = st
    assert st["status"] == "T" and st["termination"] == "Backup OK", summary(st)
    assert leftovers(bed) == []
    files = b.list_files(jobid)
    assert guest_names(files, bed.helpers_root, ALPHA) and guest_names(files, bed.helpers_root, BETA), summary(st)
    where = bed.restore_fs / "helpers-full"
    rst = b.restore(str(where), jobid=jobid)
    assert rst["status"] == "T", summary(rst)
    for lv in (ALPHA, BETA):
        with origin_mounted(bed.gvg.guests[lv], bed.work / "origin", readonly=True) as root:
            want = tree_state(root)
        got = tree_state(restored_root(where, bed, lv, bed.helpers_root))
        assert diff_states(got, want) == [], lv
    assert extras_problems(restored_root(where, bed, ALPHA, bed.helpers_root)) == []
    shutil.rmtree(where)

    time.sleep(1.1)
    with origin_mounted(bed.gvg.guests[BETA], bed.work / "origin") as root:
        with open(root / "home/user/notes.txt", "r+b") as f:
            f.write(b"helpers incremental\n")
            os.fsync(f.fileno())
    jobid = b.run_job(HELPERS_JOB, level="Incremental")
    st = b.wait_job(jobid)
    bed.jobs["helpers_incr"] = st
    assert st["status"] == "T" and st["level"] == "I", summary(st)
    assert leftovers(bed) == []
    files = b.list_files(jobid)
    bed.jobs["helpers_incr_files"] = files
    assert guest_names(files, bed.helpers_root, BETA) == ["home/user/notes.txt"], files
    assert guest_names(files, bed.helpers_root, ALPHA) == [], files


def test_helpers_guest_that_fails_to_mount_is_not_recorded_deleted(bed):
    """`foreach-domu mount` fails for one guest (here: a partition its disk does not have, set in
    the tool's configuration): the After script's `unmount` exits 1, the job ends in error, and
    a restore of the latest state still has that guest's last good files (Accurate did not record
    them as deleted; Bareos takes no error job into the latest state)."""
    need(bed, "helpers_full", "helpers_incr")
    b = bed.bareos
    beta = bed.gvg.guests[BETA]
    with origin_mounted(beta, bed.work / "origin", readonly=True) as root:
        want = tree_state(root)        # clean since helpers_incr wrote it (journal replayed)
    conf = bed.work / "helpers.conf"
    good = conf.read_text()
    conf.write_text(good + f"\n[guest {BETA}]\npartition = 7\n")
    try:
        jobid = b.run_job(HELPERS_JOB, level="Incremental")
        st = b.wait_job(jobid)
    finally:
        conf.write_text(good)
    assert st["status"] == "E", summary(st)
    assert leftovers(bed) == []
    assert f"not backed up: {BETA}" in st["log"], summary(st)
    where = bed.restore_fs / "helpers-current"
    rst = b.restore(str(where), current=True, fileset=HELPERS_FILESET)
    assert rst["status"] == "T", summary(rst)
    got = tree_state(restored_root(where, bed, BETA, bed.helpers_root))
    # notes.txt came with helpers_incr, its directory did not (see restamped_dirs)
    restamped = restamped_dirs(bed.jobs["helpers_incr_files"], bed.helpers_root, BETA)
    note(f"helpers latest-state restore: directories with the restore's mtime: {sorted(restamped)}")
    assert diff_states(without_mtime(got, restamped), without_mtime(want, restamped)) == [], \
        f"the latest state lacks {BETA}'s last good files after `foreach-domu mount` failed for it:\n{summary(st)}"
    assert restamped == {"home/user"}, restamped
    shutil.rmtree(where)
