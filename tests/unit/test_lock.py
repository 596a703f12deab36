"""The run lock in a tmp directory: where it may live, what it refuses, what a busy lock says."""

import os
import subprocess
import sys

import pytest

from domu_snapshot.config import Config
from domu_snapshot.errors import LockBusy
from domu_snapshot.lock import RunLock


def test_default_lock_is_in_a_root_only_directory():
    assert Config().lock_file == "/run/domu-snapshot/lock"


def test_missing_directory_is_created_0755_and_the_pid_written(tmp_path):
    path = tmp_path / "domu-snapshot" / "lock"
    with RunLock(str(path), 0) as lock:
        assert path.read_text() == f"{os.getpid()}\n"
        assert lock.holder() == str(os.getpid())
    assert (path.parent.stat().st_mode & 0o777) == 0o755 & ~_umask()
    assert path.read_text() == ""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_world_writable_directory_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(LockBusy, match=r"must be owned by root and writable by root only"):
        RunLock(str(shared / "lock"), 0).acquire()
    assert not (shared / "lock").exists()


def test_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    (tmp_path / "lock").symlink_to(target)
    with pytest.raises(LockBusy, match=r"cannot take the run lock .*lock"):
        RunLock(str(tmp_path / "lock"), 0).acquire()
    assert target.read_text() == "keep me\n"


def test_symlinked_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(LockBusy, match="not a directory"):
        RunLock(str(tmp_path / "link" / "lock"), 0).acquire()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file owned by another user")
def test_lock_file_of_another_user_is_refused(tmp_path):
    path = tmp_path / "lock"
    path.write_text("")
    os.chown(path, 65534, 65534)
    with pytest.raises(LockBusy, match="not a plain file owned by root"):
        RunLock(str(path), 0).acquire()


def test_busy_lock_names_the_holder_and_keeps_its_pid(tmp_path):
    path = tmp_path / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from domu_snapshot.lock import RunLock; "
         "l = RunLock(sys.argv[1], 0).acquire(); print('held', flush=True); time.sleep(30)", str(path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(LockBusy, match=rf"another domu-snapshot run \(pid {holder.pid}\) holds"):
            RunLock(str(path), 0.3).acquire()
        assert path.read_text() == f"{holder.pid}\n"  # no O_TRUNC: the holder's pid stays
    finally:
        holder.kill()
        holder.wait()


def test_cli_says_one_line_and_exits_1_when_the_lock_is_refused(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the CLI refuses to run as non-root before taking the lock")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    conf = tmp_path / "conf"
    conf.write_text(f"[domu-snapshot]\nlock_file = {shared}/lock\nlock_timeout = 0\n")
    proc = subprocess.run([sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--config", str(conf),
                           "cleanup"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot take the run lock"), proc.stderr


def test_a_second_job_of_one_process_is_told_why_it_waits(tmp_path):
    """Two Bareos jobs in one bareos-fd: two open files, so flock keeps them apart; the waiter
    hears once who holds the lock and, at its timeout, that it is a job of its own process."""
    path = str(tmp_path / "lock")
    first = RunLock(path, 0).acquire()
    heard = []
    try:
        with pytest.raises(LockBusy, match=rf"another job of this process \(pid {os.getpid()}\)"):
            RunLock(path, 0.5).acquire(on_wait=lambda *holder: heard.append(holder))
    finally:
        first.release()
    assert heard == [(str(os.getpid()), "")]
    RunLock(path, 0).acquire(on_wait=lambda *holder: heard.append(holder)).release()   # free: nobody is told to wait
    assert heard == [(str(os.getpid()), "")]


def test_the_holder_names_itself_and_a_canceled_waiter_stops(tmp_path):
    """A Bareos job writes its job id and name under its pid: the waiter (and its timeout
    message) name the job; a waiter whose job was canceled stops waiting at once."""
    path = str(tmp_path / "lock")
    first = RunLock(path, 0).acquire(note="Bareos job 12 (nightly)\nforged line")
    heard = []
    try:
        assert open(path).read() == f"{os.getpid()}\nBareos job 12 (nightly) forged line\n"
        with pytest.raises(LockBusy, match=r"\(pid \d+: Bareos job 12 \(nightly\) forged line\) holds"):
            RunLock(path, 0.3).acquire(on_wait=lambda *holder: heard.append(holder))
        with pytest.raises(LockBusy, match=r"stopped while waiting .*Bareos job 12"):
            RunLock(path, 3600).acquire(stop=lambda: True)
    finally:
        first.release()
    assert heard == [(str(os.getpid()), "Bareos job 12 (nightly) forged line")]
    assert RunLock(path, 0).holder() == ""
