"""Running external tools: argument lists only, captured output, one error type.

Every command of the tool goes through `run`, so dry-run, tracing and the
invocation counts the benchmarks read live in one place.
"""

import collections
import contextlib
import os
import signal
import subprocess
import time

# How often each tool ran in this process, keyed (tool, "query"|"change");
# benchmarks check that queries do not grow with the number of guests.
invocations = collections.Counter()

# When set, `run` prints the command instead of running anything that
# changes the system; read-only queries still run so the plan is real.
_dry_run = {"enabled": False, "printer": print}


class CommandError(Exception):
    """An external command failed; carries its argv, exit code and stderr."""

    def __init__(self, argv, returncode, stdout, stderr):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(self.summary())

    def output(self):
        """The command's own message: stderr, or stdout when stderr is empty."""
        text = (self.stderr or "").strip() or (self.stdout or "").strip()
        return text

    def summary(self):
        cmd = " ".join(self.argv)
        if self.returncode is None:
            return f"`{cmd}` could not run: {self.output()}"
        return f"`{cmd}` exited {self.returncode}: {self.output() or '(no output)'}"


# Hooks of the front end (CLI or plugin): `trace(argv)` before each command runs (-v), and
# `progress(text)` while a command is still running: after PROGRESS_FIRST seconds, then at
# doubling intervals (5, 15, 35, 75 s ...), so a long e2fsck or lvremove says so without flooding.
_hooks = {"trace": None, "progress": None, "doing": ""}
PROGRESS_FIRST = 5.0


def set_hooks(trace=None, progress=None):
    _hooks["trace"], _hooks["progress"] = trace, progress


@contextlib.contextmanager
def doing(label):
    """Name what the commands run inside are for (a guest), for the progress lines."""
    outer = _hooks["doing"]
    _hooks["doing"] = label
    try:
        yield
    finally:
        _hooks["doing"] = outer


def _say_progress(argv, seconds):
    hook = _hooks["progress"]
    if hook is None:
        return
    label = _hooks["doing"]
    try:
        hook(f"{label + ': ' if label else ''}{' '.join(argv)} still running ... {seconds:.0f} s")
    except Exception:  # noqa: BLE001 - a report must never break the command it reports on
        pass


def set_dry_run(enabled, printer=print):
    _dry_run["enabled"] = bool(enabled)
    _dry_run["printer"] = printer


def is_dry_run():
    return _dry_run["enabled"]


def say(text):
    """A dry-run's line of its own (what would be written or done besides running a command)."""
    _dry_run["printer"](text)


# Tools are looked up here only, never through the caller's PATH (root may run us from anywhere).
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Test beds and benchmarks wrap tools; root's own environment may put them first (nothing else can).
TOOL_PATH_ENV = "DOMU_SNAPSHOT_TOOL_PATH"

# LVM commands and dmsetup suspend and resume device-mapper devices: killed between the two, they
# leave a running guest's origin suspended (its I/O hangs). They are never killed: on a timeout or a
# signal we wait for them to finish, then report. Other tools (mount, losetup, e2fsck on a snapshot's
# loop device, udevadm) keep their timeout-kill.
NEVER_KILLED = frozenset({
    "lvm", "lvcreate", "lvremove", "lvchange", "lvconvert", "lvextend", "lvreduce", "lvresize",
    "lvrename", "vgchange", "vgcreate", "vgremove", "vgextend", "vgreduce", "vgrename", "vgcfgrestore",
    "pvcreate", "pvremove", "pvmove", "pvchange", "dmsetup", "vgimportclone",
})


def tool_path():
    return os.environ.get(TOOL_PATH_ENV) or TOOL_PATH


def child_environment():
    """The whole environment of every child: nothing of the caller's but DOMU_* (test settings no
    tool reads). An inherited PYTHONPATH, LD_PRELOAD, LVM_SYSTEM_DIR... would change what runs as root."""
    env = {k: v for k, v in os.environ.items() if k.startswith("DOMU_")}
    # Stable, parseable output from LVM and util-linux whatever the locale.
    env.update(PATH=tool_path(), LC_ALL="C", LANG="C")
    # lvm warns about every inherited descriptor (bareos-fd has many open).
    env["LVM_SUPPRESS_FD_WARNINGS"] = "1"
    return env


def run(argv, *, check=True, changes_system=False, timeout=300, ok_codes=(0,), input_text=None):
    """Run `argv` (a list) and return a CompletedProcess with text output.

    `changes_system` marks commands that are only printed in dry-run mode.
    Exit codes in `ok_codes` count as success; anything else raises
    CommandError when `check` is true.
    """
    argv = [str(a) for a in argv]
    if changes_system and _dry_run["enabled"]:
        _dry_run["printer"]("would run: " + " ".join(argv))
        return subprocess.CompletedProcess(argv, 0, "", "")
    tool = os.path.basename(argv[0])
    invocations[(tool, "change" if changes_system else "query")] += 1
    if _hooks["trace"] is not None:
        _hooks["trace"](argv)
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if input_text is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=child_environment(),
            cwd="/",
            close_fds=True,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, not the child
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, None, "", f"{argv[0]} not found in {tool_path()} ({exc.strerror}); install it") from None
    stdout, stderr, timed_out = _wait(proc, input_text, timeout, tool in NEVER_KILLED, argv)
    seconds = time.monotonic() - started
    if timed_out:
        if tool not in NEVER_KILLED:
            raise CommandError(argv, None, stdout, f"timed out after {timeout:.0f} s (killed)")
        raise CommandError(argv, None, stdout,
                           f"timed out: still running after {timeout:.0f} s; left to finish (LVM commands are "
                           f"never killed), it exited {proc.returncode} after {seconds:.0f} s"
                           + (f": {stderr.strip()}" if stderr.strip() else ""))
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    result.seconds = seconds
    if check and result.returncode not in ok_codes:
        raise CommandError(argv, result.returncode, stdout, stderr)
    return result


def _wait(proc, input_text, timeout, never_kill, argv=()):
    """(stdout, stderr, timed_out). A child that may be killed is, on timeout or interruption; one
    that may not is waited for, and the interruption (KeyboardInterrupt from a signal) re-raised after.
    While it runs, progress lines are due at PROGRESS_FIRST seconds and doubling intervals after."""
    interrupted = None
    timed_out = False
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    interval = PROGRESS_FIRST
    next_progress = started + interval if _hooks["progress"] is not None else None
    first = True
    while True:
        now = time.monotonic()
        remaining = None if deadline is None or timed_out else max(0.0, deadline - now)
        progress_due = next_progress is not None and (remaining is None or next_progress - now < remaining)
        wait = max(0.0, next_progress - now) if progress_due else remaining
        try:
            stdout, stderr = proc.communicate(input_text if first else None, timeout=wait)
            break
        except subprocess.TimeoutExpired:
            if progress_due:
                _say_progress(argv, time.monotonic() - started)
                interval *= 2
                next_progress += interval
                continue
            timed_out = True
            if not never_kill:
                _kill(proc)
                stdout, stderr = proc.communicate()
                break
        except BaseException as exc:  # KeyboardInterrupt, SystemExit raised by a signal handler
            if not never_kill:
                _kill(proc)
                proc.communicate()
                raise
            interrupted = interrupted or exc
        finally:
            first = False
    if interrupted is not None:
        raise interrupted
    return stdout or "", stderr or "", timed_out


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the child and its children
    except OSError:
        proc.kill()


def settle(timeout=10):
    """Wait for udev to finish with new or removed devices (bounded)."""
    try:
        run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False, timeout=timeout + 5)
    except CommandError:
        pass  # no udev (minimal containers): nothing to wait for


def is_busy(error):
    text = error.output().lower()
    return any(word in text for word in ("busy", "in use", "is open", "resource temporarily"))


def retry_busy(action, *, attempts=5, first_delay=0.2):
    """Run `action()`; on a "device busy" CommandError settle udev and retry, a bounded number of times."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except CommandError as error:
            if attempt == attempts or not is_busy(error):
                raise
            settle()
            time.sleep(delay)
            delay *= 2
