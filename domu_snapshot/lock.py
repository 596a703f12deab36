"""One run at a time: an flock on a lock file that names the holder's pid.

The lock lives in a directory only root can write (default /run/domu-snapshot/): in a
world-writable one (/run/lock) any user could pre-create the file (no backup runs) or plant a
symlink to a file root would then write.
"""

import errno
import fcntl
import os
import stat
import time

from .errors import LockBusy


class RunLock:
    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self._fd = None

    def _refuse(self, why):
        return LockBusy(f"cannot take the run lock {self.path}: {why}")

    def _open_directory(self):
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            raise self._refuse(f"cannot create {directory}: {exc.strerror}; create it (root, mode 0755)") from None
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._refuse(f"{directory} is not a directory ({exc.strerror}); remove it") from None
        info = os.fstat(fd)
        group_writable = info.st_mode & stat.S_IWGRP and info.st_gid != 0
        if info.st_uid != os.geteuid() or info.st_mode & stat.S_IWOTH or group_writable:
            os.close(fd)
            raise self._refuse(
                f"{directory} is owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}; it must be "
                f"owned by root and writable by root only (another user could replace the lock). "
                f"Remove it, or set lock_file to a path in a root-only directory")
        return fd

    def acquire(self, on_wait=None, note="", stop=None):
        """Take the lock, waiting up to `timeout` seconds. `on_wait(holder_pid, holder_note)` is
        called once when the lock is found busy (a caller that must say why it waits, e.g. a
        Bareos job). `note` (one line, e.g. "Bareos job 12 (nightly)") is written under our pid
        so that a waiter can name us; `stop()` true ends the wait early (a canceled job)."""
        dir_fd = self._open_directory()
        name = os.path.basename(self.path)
        try:
            # No O_TRUNC: the holder's pid stays readable until we hold the lock.
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise self._refuse(f"{exc.strerror}; remove it if it is not a plain file") from None
        finally:
            os.close(dir_fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            os.close(fd)
            raise self._refuse(f"it is not a plain file owned by root (uid {info.st_uid}); remove it")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise self._refuse(exc.strerror) from None
                if on_wait is not None:
                    on_wait(*_read_holder(fd))
                    on_wait = None
                stopped = stop is not None and stop()
                if stopped or time.monotonic() >= deadline:
                    pid, held_by = _read_holder(fd)
                    os.close(fd)
                    who = describe_holder(pid, held_by)
                    if stopped:
                        raise LockBusy(f"stopped while waiting for the run lock {self.path} ({who} holds it)")
                    raise LockBusy(
                        f"{who} holds {self.path}; waited {self.timeout:.0f} s. Wait for it to "
                        f"finish, or check that pid")
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        note = " ".join(str(note).split())[:200]
        os.pwrite(fd, f"{os.getpid()}\n{note}\n".encode("ascii", "replace") if note
                  else f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def holder(self):
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return ""
        try:
            return _read_holder(fd)[0]
        finally:
            os.close(fd)

    def release(self):
        if self._fd is not None:
            # Unlink-free: removing the file would race a waiter that opened it.
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd):
    """(pid, note) of the holder, as it wrote them: "" for what is missing or not well-formed."""
    lines = os.pread(fd, 256, 0).decode("ascii", "replace").split("\n")
    pid = lines[0].strip()
    if not pid.isdigit():
        return "", ""
    note = lines[1].strip() if len(lines) > 2 else ""   # complete lines only
    return pid, "".join(ch if ch.isprintable() else "?" for ch in note)


def describe_holder(pid, note=""):
    """Who holds the lock, for a message: a job of this very process, or another run."""
    what = f"pid {pid or 'unknown'}" + (f": {note}" if note else "")
    if pid == str(os.getpid()):
        return f"another job of this process ({what})"
    return f"another domu-snapshot run ({what})"
