"""Error types: usage/configuration errors and per-guest failures."""


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
