"""A guest's result as people read it: one renderer for the CLI's lines (which syslog gets too)
and the plugin's per-guest job messages, so that both say the same thing the same way.

    OK      domu-web01: vg0/domu-web01: partition 2 (msdos), ext4 at byte 3145728, journal
            replayed -> /srv/domu-snapshot/vg0/domu-web01, quiesce agent 12 ms  (2.1s)
    guest domu-web01: vg0/domu-web01: partition 2 (msdos), ext4 at byte 3145728, clean,
            1,204 entries (88.0 MiB), 1,100 files read (87.1 MiB), snapshot peak use 0.4%  (9.8s)
"""

from .status import Status

# The CLI's first column: a fixed width, so a log of many guests lines up.
WORDS = {Status.OK: "OK", Status.FAILED: "FAILED", Status.SKIPPED: "SKIPPED", Status.HELD: "HELD"}


def size(n):
    """Bytes for people: 19 B, 4.1 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
    return f"{n} B"


def peaks(result):
    """The snapshots' peak use (%) a teardown result read, per disk that showed it."""
    return [d.peak_percent for d in result.disks if d.peak_percent is not None]


def detail(result, sent="", peak_use=None, paths=True, seconds=None):
    """What became of a guest that did not fail: its disks (partition, filesystem, replay), where
    they are mounted (`paths`), what was sent (the plugin's counts), the snapshots' peak use
    (`peak_use`: a list, empty when unknown; a teardown result's own when it is one), the quiesce
    and the time."""
    if result.action == "unmount":
        parts = ["torn down"]
        if peak_use is None:
            peak_use = peaks(result) or None  # said only when lvs showed it
    else:
        described = "; ".join(d.describe() for d in result.disks)  # none in a dry run
        mounted = [d.mount_path for d in result.disks if d.mounted]
        parts = [described + (" -> " + ", ".join(mounted) if paths and mounted else "")]
    if sent:
        parts.append(sent)
    if peak_use is not None:
        parts.append(f"snapshot peak use {max(peak_use):.1f}%" if peak_use else "snapshot peak use unknown")
    if result.quiesce != "none" or result.freeze_ms is not None:
        parts.append(f"quiesce {result.quiesce}" + (f" {result.freeze_ms:.0f} ms" if result.freeze_ms is not None
                                                    else ""))
    took = result.seconds if seconds is None else seconds
    return ", ".join(parts) + f"  ({took:.1f}s)"


def lines(result):
    """The CLI's (level, line) for a guest: its status line, then one line per note."""
    name = result.guest.name
    word = f"{WORDS[result.status]:<7} "
    if result.status == Status.FAILED:
        return [("error", f"{word}{result.error}  ({result.seconds:.1f}s)")] + _notes("warning", name, result)
    if result.status in (Status.SKIPPED, Status.HELD):
        return [("warning", f"{word}{name}: {'; '.join(result.notes)}")]
    return [("info", f"{word}{name}: {detail(result)}")] + _notes("warning", name, result)


def _notes(level, name, result):
    return [(level, f"        {name}: {note}") for note in result.notes]
