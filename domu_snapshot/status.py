"""A guest's outcome in a run (lifecycle.GuestResult.status), without loading the lifecycle."""

import enum


class Status(str, enum.Enum):
    """A guest's outcome. A str: "ok" in --json, and equal to its value."""

    OK = "ok"
    SKIPPED = "skipped"  # nothing to back up in it (swap only); not a failure
    HELD = "held"  # another owner's (helpers mode, another job) mount: left alone
    FAILED = "failed"

    __str__ = str.__str__
    __format__ = str.__format__
