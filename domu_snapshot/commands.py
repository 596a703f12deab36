"""Running external tools: argument lists only, captured output, one error type.

Every command of the tool goes through `run`, so dry-run, tracing and the
invocation counts the benchmarks read live in one place.
"""

import collections
import os
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


def set_dry_run(enabled, printer=print):
    _dry_run["enabled"] = bool(enabled)
    _dry_run["printer"] = printer


def is_dry_run():
    return _dry_run["enabled"]


def _environment():
    env = dict(os.environ)
    # Stable, parseable output from LVM and util-linux whatever the locale.
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
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
    invocations[(os.path.basename(argv[0]), "change" if changes_system else "query")] += 1
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL if input_text is None else None,
            input=input_text,
            capture_output=True,
            text=True,
            errors="replace",
            env=_environment(),
            timeout=timeout,
            close_fds=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, None, "", f"{argv[0]} not found ({exc.strerror}); install it") from None
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, None, "", f"timed out after {timeout:.0f} s") from exc
    proc.seconds = time.monotonic() - started
    if check and proc.returncode not in ok_codes:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


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
