"""One run at a time: an flock on a lock file that names the holder's pid."""

import errno
import fcntl
import os
import time

from .errors import LockBusy


class RunLock:
    def __init__(self, path, timeout):
        self.path = path
        self.timeout = timeout
        self._fd = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = self.holder()
                    os.close(fd)
                    raise LockBusy(
                        f"another domu-snapshot run (pid {holder or 'unknown'}) holds {self.path}; "
                        f"waited {self.timeout:.0f} s. Wait for it to finish, or check that pid")
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def holder(self):
        try:
            with open(self.path, encoding="ascii", errors="replace") as handle:
                return handle.read().strip()
        except OSError:
            return ""

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
