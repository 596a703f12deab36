"""Per-guest hook commands around the snapshots (any toolstack without libvirt or Proxmox).

A hook is written in the configuration as one line that is split like a shell would split it
(shlex: quotes and backslashes), but never run by a shell: the words become an argument list.
The first word is an absolute program path (the fixed PATH of child processes would otherwise
decide which program runs). Placeholders name what the hook is for:

    {guest}   the guest's name            {domain}  its domain ("" for a plain LV)
    {vg}      its first disk's VG         {lv}      its first disk's LV
    {lvs}     every disk as vg/lv: a word that is exactly {lvs} becomes one argument per disk;
              inside a longer word the disks are joined with ","

`{{` and `}}` are literal braces. Values are substituted after the split, so a name can never
add arguments or options of its own.
"""

import os
import re
import shlex

from . import commands
from .commands import CommandError
from .errors import GuestError

PLACEHOLDERS = ("guest", "domain", "vg", "lv", "lvs")
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
FAILURE_POLICIES = ("fail", "continue")


def parse(text):
    """The hook's words; ValueError saying what is wrong (empty, relative program, bad brace)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from None
    if not words:
        raise ValueError("empty command")
    if not os.path.isabs(words[0]) or "{" in words[0]:
        raise ValueError(f"the program must be an absolute path without placeholders, not {words[0]!r}")
    for word in words:
        for match in _FIELD.finditer(word):
            token = match.group(0)
            if token in ("{{", "}}"):
                continue
            if match.group(1) is None:
                raise ValueError(f"unmatched brace in {word!r} (write {{{{ or }}}} for a literal one)")
            if match.group(1) not in PLACEHOLDERS:
                raise ValueError(f"unknown placeholder {token} in {word!r} (known: "
                                 + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ")")
    return words


def values(guest):
    """Placeholder -> value (lvs: a list) for a lifecycle.Guest."""
    first = guest.disks[0]
    return {"guest": guest.name, "domain": guest.domain or "", "vg": first.vg, "lv": first.lv,
            "lvs": [disk.key for disk in guest.disks]}


def expand(words, fields):
    """The argument list of a parsed hook for one guest's `fields` (see values())."""
    argv = []
    for word in words:
        if word == "{lvs}":
            argv.extend(fields["lvs"])
            continue

        def substitute(match):
            token = match.group(0)
            if token in ("{{", "}}"):
                return token[0]
            value = fields[match.group(1)]
            return ",".join(value) if isinstance(value, list) else value
        argv.append(_FIELD.sub(substitute, word))
    return argv


def run(guest, which, text, timeout):
    """Run one hook (`which`: "before-snapshot hook" or "after-snapshot hook") for `guest`, bounded
    by `timeout` seconds (killed after it); GuestError naming the hook and its own message."""
    argv = expand(parse(text), values(guest))
    try:
        commands.run(argv, changes_system=True, timeout=timeout)
    except CommandError as exc:
        undo = ("; whatever the before-snapshot hook did to the guest may still be in effect: check the guest now"
                if which.startswith("after") else "")
        raise GuestError(guest.name, which, exc.summary(),
                         f"run the hook by hand to see why ({' '.join(shlex.quote(a) for a in argv)}){undo}; "
                         f"hooks are set in the configuration (before_snapshot_hook, after_snapshot_hook)") from None
