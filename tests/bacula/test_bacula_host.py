"""Host tests of the Bacula harness and of the shipped example's RunScript semantics (no LVM).

Real Bacula 9.6 daemons on loopback run the shipped example job (etc/bacula/, only its "# EDIT"
lines changed) with a stand-in for `foreach-domu` (tests/bacula/standin_foreach_domu.py) over guest
directories that already sit below the mount root. What they prove about Bacula itself:
backup/restore round trip, Incremental picks exactly the changed files, a failing Before script
leaves the other guests backed up and the job marked with warnings, the After script runs after a
failed and after a cancelled job. The real helpers are exercised in tests/vm/test_bacula.py.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.bacula import example, trees
from tests.bacula.harness import (BACULA_DIR, JS_CANCELED, JS_ERROR, JS_FATAL, JS_TERMINATED, Bacula,
                                  make_catalog, quote, require_installed)

STANDIN = Path(__file__).with_name("standin_foreach_domu.py")


def _populate(root: Path) -> None:
    """Two guests' worth of files with what a restore must keep."""
    a = root / "vg0" / "domu-a"
    b = root / "vg0" / "domu-b"
    c = root / "vg0" / "domu-broken"
    for d in (a / "etc", a / "home" / "user", b / "srv", c):
        d.mkdir(parents=True)
    (a / "etc" / "hostname").write_text("domu-a\n")
    (a / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    os.chmod(a / "etc" / "shadow", 0o640)
    os.chown(a / "etc" / "shadow", 0, 42)
    (a / "home" / "user" / "notes with space.txt").write_text("x" * 5000)
    (a / "home" / "user" / "grüße.txt").write_text("non-ascii name\n")
    os.chown(a / "home" / "user", 1000, 1000)
    os.chown(a / "home" / "user" / "grüße.txt", 1000, 1000)
    os.symlink("../etc/hostname", a / "home" / "user" / "link-to-hostname")
    os.link(a / "etc" / "hostname", a / "etc" / "hostname.hardlink")
    (b / "srv" / "data.bin").write_bytes(os.urandom(100_000))
    os.chmod(b / "srv" / "data.bin", 0o4755)
    (b / "srv" / "empty").write_bytes(b"")
    (c / "never-backed-up").write_text("this guest is broken\n")
    old = time.time() - 86400 * 3
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if not p.is_symlink():
            os.utime(p, (old, old))


@pytest.fixture(scope="module")
def env():
    require_installed()
    work = Path(tempfile.mkdtemp(prefix="bacula-host-"))
    mnt = work / "mnt"
    _populate(mnt)
    # Let every later write be clearly newer than the Full's "since" time.
    conf = work / "domu-snapshot.conf"
    conf.write_text("[domu-snapshot]\nmount_root = %s\n\n[standin]\nlog = %s\nparking = %s\nbroken =\n"
                    % (mnt, work / "standin.log", work / "parking"))
    resources = example.render({
        "mount_root": str(mnt), "client": Bacula.CLIENT, "storage": Bacula.STORAGE,
        "pool": Bacula.POOL, "messages": Bacula.MESSAGES, "schedule": None,
        "bootstrap": str(work / "bacula" / "bsr" / "%c-domu.bsr"),
        "foreach-domu": "%s %s --config %s" % (sys.executable, STANDIN, conf),
    })
    b = Bacula(work / "bacula", resources)
    b.start()
    try:
        yield dict(work=work, mnt=mnt, conf=conf, bacula=b, log=work / "standin.log")
    finally:
        b.stop()
        if not os.environ.get("KEEP_BACULA_WORKDIR"):
            shutil.rmtree(work, ignore_errors=True)


def _set_standin(env, key, value):
    lines = [l for l in env["conf"].read_text().splitlines() if not l.startswith(key + " =")]
    if value is not None:
        lines.append("%s = %s" % (key, value))       # [standin] is the last section
    env["conf"].write_text("\n".join(lines) + "\n")


def _set_broken(env, names):
    _set_standin(env, "broken", " ".join(names))


def _log_actions(env):
    if not env["log"].exists():
        return []
    return [l.split()[0] for l in env["log"].read_text().splitlines()]


def test_shipped_example_is_valid_for_bacula_dir_as_is(tmp_path):
    """The example, unmodified, parses in bacula-dir next to the resources it names."""
    require_installed()
    text = example.EXAMPLE.read_text()
    names = {m["edit"]: m["value"] for m in example.marked_lines(text)}
    make_catalog(tmp_path / "bacula.db")
    conf = tmp_path / "bacula-dir.conf"
    conf.write_text("""
Director {
  Name = check-dir
  QueryFile = "/etc/bacula/scripts/query.sql"
  WorkingDirectory = %(w)s
  PidDirectory = %(w)s
  Password = "x"
  Messages = %(messages)s
}
Catalog { Name = c; dbname = "bacula"; dbuser = ""; dbpassword = "" }
Client { Name = %(client)s; Address = 127.0.0.1; Catalog = c; Password = "x" }
Storage { Name = %(storage)s; Address = 127.0.0.1; Password = "x"; Device = d; Media Type = m }
Pool { Name = %(pool)s; Pool Type = Backup }
Messages { Name = %(messages)s; console = all }
Schedule {
  Name = %(schedule)s
  Run = Incremental daily at 23:05
}
@%(example)s
""" % dict(names, w=quote(tmp_path), client=quote(names["client"]), storage=quote(names["storage"]),
           pool=quote(names["pool"]), messages=quote(names["messages"]),
           schedule=quote(names["schedule"]), example=example.EXAMPLE))
    r = subprocess.run([BACULA_DIR, "-t", "-c", str(conf)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_shipped_example_has_the_directives_that_matter():
    text = example.EXAMPLE.read_text()
    assert example.resource_names(text, "Job") == ["domu-snapshot"]
    assert example.directive(text, "Job", "RunsWhen") == ["Before", "After"]
    assert example.directive(text, "Job", "Runs On Client") == ["yes", "yes"]
    assert example.directive(text, "Job", "RunsOnSuccess") == ["yes", "yes"]
    assert example.directive(text, "Job", "RunsOnFailure") == ["yes", "yes"]
    # yes would fail the whole job (nothing saved) for one broken guest, or uncatalog a good backup
    assert example.directive(text, "Job", "FailJobOnError") == ["no", "no"]
    assert example.directive(text, "Job", "Command") == ["foreach-domu mount", "foreach-domu unmount"]
    assert example.directive(text, "FileSet", "File") == ["/var/lib/domu-snapshot/mnt"]
    assert example.directive(text, "FileSet", "onefs") == ["no"]
    assert example.directive(text, "FileSet", "signature") == ["MD5"]


def test_full_backup_and_restore_round_trip(env):
    b, mnt = env["bacula"], env["mnt"]
    expected = trees.describe(mnt)
    jobid = b.run_job("domu-snapshot", level="Full")
    job = b.wait(jobid)
    assert job["jobstatus"] == JS_TERMINATED and job["joberrors"] == 0, b.joblog(jobid)
    assert _log_actions(env)[-2:] == ["mount", "unmount"]
    files = b.list_files(jobid)
    assert "%s/vg0/domu-a/home/user/notes with space.txt" % mnt in files
    assert "%s/vg0/domu-a/home/user/grüße.txt" % mnt in files
    where = env["work"] / "restore-full"
    rjob = b.restore(where, jobids=[jobid])
    assert rjob["jobstatus"] == JS_TERMINATED and rjob["joberrors"] == 0, b.joblog(int(rjob["jobid"]))
    restored = trees.describe(str(where) + str(mnt))
    problems = trees.diff(expected, restored)
    assert not problems, "\n".join(problems)
    env["full"] = jobid


def test_incremental_saves_exactly_the_changed_files(env):
    b, mnt = env["bacula"], env["mnt"]
    assert "full" in env, "needs the Full of the previous test"
    time.sleep(1.1)  # Bacula compares whole seconds
    changed = [mnt / "vg0/domu-a/etc/hostname", mnt / "vg0/domu-a/home/user/grüße.txt",
               mnt / "vg0/domu-b/srv/data.bin"]
    for p in changed:
        with open(p, "ab") as f:
            f.write(b"changed\n")
    jobid = b.run_job("domu-snapshot", level="Incremental")
    job = b.wait(jobid)
    assert job["jobstatus"] == JS_TERMINATED and job["joberrors"] == 0, b.joblog(jobid)
    files = b.list_files(jobid)
    non_dirs = sorted(f for f in files if not f.endswith("/"))
    # hostname has a hard link: Bacula saves the link entry too (same inode changed).
    want = sorted([str(p) for p in changed] + [str(mnt / "vg0/domu-a/etc/hostname.hardlink")])
    assert non_dirs == want
    assert job["jobfiles"] == len(files)
    # the console's list is the catalog's File table
    rows = b.catalog_files(jobid)
    assert sorted(r["path"] for r in rows) == sorted(files)
    assert sum(r["size"] for r in rows if not r["path"].endswith("/") and r["fileindex"]) >= 3 * 8
    env["incr"] = jobid


def test_incremental_without_change_saves_no_data(env):
    b = env["bacula"]
    assert "incr" in env
    jobid = b.run_job("domu-snapshot", level="Incremental")
    job = b.wait(jobid)
    assert job["jobstatus"] == JS_TERMINATED and job["joberrors"] == 0, b.joblog(jobid)
    assert job["jobbytes"] == 0
    assert [f for f in b.list_files(jobid) if not f.endswith("/")] == []


def test_broken_guest_others_backed_up_failure_visible_after_runs(env):
    b, mnt = env["bacula"], env["mnt"]
    _set_broken(env, ["domu-broken"])
    try:
        jobid = b.run_job("domu-snapshot", level="Full")
        job = b.wait(jobid)
    finally:
        _set_broken(env, [])
    log = b.joblog(jobid)
    # Bacula 9.6: status T with JobErrors and "Backup OK -- with warnings"
    assert job["jobstatus"] == JS_TERMINATED, log
    assert job["joberrors"] >= 1, log
    assert "Backup OK -- with warnings" in log
    assert "guest vg0/domu-broken: mount failed" in log
    assert "ClientBeforeJob returned non-zero status=1" in log
    files = b.list_files(jobid)
    assert "%s/vg0/domu-b/srv/data.bin" % mnt in files
    assert not [f for f in files if "domu-broken" in f]
    assert _log_actions(env)[-2:] == ["mount", "unmount"]
    assert (mnt / "vg0/domu-broken/never-backed-up").exists()   # the stand-in's "teardown" ran


def test_cancel_while_running_still_runs_the_after_script(env):
    b, mnt = env["bacula"], env["mnt"]
    big = mnt / "vg0/domu-b/srv/big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(16 << 20))
    b.console("setbandwidth limit=1mb/s client=%s" % b.CLIENT)
    try:
        jobid = b.run_job("domu-snapshot", level="Full")
        b.wait_running(jobid)
        deadline = time.monotonic() + 60
        while "mount" not in _log_actions(env)[-1:] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        b.cancel(jobid)
        job = b.wait(jobid)
    finally:
        b.console("setbandwidth limit=0 client=%s" % b.CLIENT)
        big.unlink()
    assert job["jobstatus"] == JS_CANCELED, b.joblog(jobid)
    # The FD runs ClientAfterJob when the job's connection ends, after the director has already
    # recorded the cancel: poll for it.
    deadline = time.monotonic() + 60
    while _log_actions(env)[-1:] != ["unmount"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _log_actions(env)[-2:] == ["mount", "unmount"]


def test_cancel_during_the_before_script(env):
    """Bacula 9.6 lets a running Before script finish after a cancel (it is not killed), then runs
    the After script: whatever the Before script mounted is torn down."""
    b = env["bacula"]
    _set_standin(env, "sleep", "4")
    try:
        jobid = b.run_job("domu-snapshot", level="Full")
        deadline = time.monotonic() + 60
        n = len(_log_actions(env))
        while len(_log_actions(env)) == n and time.monotonic() < deadline:
            time.sleep(0.1)
        b.cancel(jobid)
        job = b.wait(jobid)
        assert job["jobstatus"] == JS_CANCELED
        while _log_actions(env)[-1:] != ["unmount"] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        _set_standin(env, "sleep", None)
    last = env["log"].read_text().splitlines()[-2:]
    assert [l.split()[0] for l in last] == ["mount", "unmount"]
    started, torn_down = (float(l.split()[1]) for l in last)
    assert torn_down - started >= 4          # the Before script ran to its end


def _variant(text: str, which: int) -> str:
    """The example with FailJobOnError = yes in its `which`-th RunScript (0 Before, 1 After)."""
    lines = text.splitlines(keepends=True)
    idx = [i for i, l in enumerate(lines) if l.strip() == "FailJobOnError = no"]
    assert len(idx) == 2
    lines[idx[which]] = lines[idx[which]].replace("= no", "= yes")
    return "".join(lines)


@pytest.mark.parametrize("which", [0, 1], ids=["before", "after"])
def test_why_failjobonerror_is_no(tmp_path, which):
    """What the example's FailJobOnError = no avoids, in Bacula 9.6:
    Before script failing with "yes": the job fails fatally before saving anything;
    After script failing with "yes": the job ends in error and its files are not cataloged."""
    require_installed()
    mnt = tmp_path / "mnt"
    _populate(mnt)
    conf = tmp_path / "domu-snapshot.conf"
    conf.write_text("[domu-snapshot]\nmount_root = %s\n\n[standin]\nlog = %s\nparking = %s\nbroken = %s\n"
                    "fail_unmount = %s\n" % (mnt, tmp_path / "standin.log", tmp_path / "parking",
                                             "domu-broken" if which == 0 else "", "yes" if which else "no"))
    text = example.render({
        "mount_root": str(mnt), "client": Bacula.CLIENT, "storage": Bacula.STORAGE,
        "pool": Bacula.POOL, "messages": Bacula.MESSAGES, "schedule": None,
        "bootstrap": str(tmp_path / "bacula" / "bsr" / "%c-domu.bsr"),
        "foreach-domu": "%s %s --config %s" % (sys.executable, STANDIN, conf),
    }, _variant(example.EXAMPLE.read_text(), which))
    with Bacula(tmp_path / "bacula", text) as b:
        jobid = b.run_job("domu-snapshot", level="Full")
        job = b.wait(jobid)
        log = b.joblog(jobid)
        files = b.list_files(jobid)
    actions = [l.split()[0] for l in (tmp_path / "standin.log").read_text().splitlines()]
    assert actions == ["mount", "unmount"]            # the After script ran either way
    if which == 0:
        assert job["jobstatus"] == JS_FATAL and job["jobfiles"] == 0, log
        assert "Backup Error" in log
    else:
        assert job["jobstatus"] == JS_ERROR, log
        assert job["jobfiles"] > 0 and files == [], log   # sent, yet not in the catalog
