"""Error types: usage/configuration errors and per-guest failures; text made safe for one log line."""

import re


class DomuError(Exception):
    """A problem with how the tool was called or configured (exit code 2)."""


class LockBusy(DomuError):
    """Another run holds the lock."""


class GuestError(Exception):
    """One guest failed at one step. Says which guest, which step, why, and what to do."""

    def __init__(self, guest, step, message, hint=""):
        self.guest = guest
        self.step = step
        self.message = message.strip()
        self.hint = hint.strip()
        super().__init__(str(self))

    def __str__(self):
        text = f"{self.guest}: {self.step} failed: {self.message}"
        if self.hint:
            text += f" -- {self.hint}"
        return text


class ProbeError(Exception):
    """The partition table or filesystem could not be read or has nothing to mount."""

    def __init__(self, message, hint=""):
        self.message = message
        self.hint = hint
        super().__init__(message)


# What must not reach a terminal, a job log or syslog raw from a guest's names or its tools' output:
# C0/C1 controls and DEL (escape sequences, carriage returns, new lines), the separators that
# str.splitlines() also breaks at, bidi overrides (text that reads in another order than it is),
# and lone surrogates (bytes that are not UTF-8, as os.fsdecode keeps them; syslog cannot encode them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escaped(match):
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:          # surrogateescape: the byte it stands for
        return f"\\x{code - 0xDC00:02x}"
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def shown(name):
    """A name (path, label, domain) as it may appear inside a message: unsafe characters escaped."""
    return _UNSAFE.sub(_escaped, str(name))


def one_line(message):
    """A message as one log line: a tool's multi-line output joined with " / ", whatever else is
    unsafe (see _UNSAFE) escaped, so that a guest cannot forge or hide lines of a job log."""
    return shown(" / ".join(part.strip() for part in str(message).splitlines() if part.strip()))
