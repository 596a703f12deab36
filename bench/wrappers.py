"""Counting and timing the external commands a run spawns: wrapper scripts earlier on PATH.

Each wrapper runs the real tool, then appends one tab-separated line to the log named by
$DOMU_BENCH_WRAP_LOG: start and end wall-clock times (bash's $EPOCHREALTIME), exit code, tool,
arguments. No log variable, no line: the wrappers are inert outside a measurement. They cost
a bash start per command, so timings that are compared are taken without them unless a
measure says otherwise.

The parsing below is pure (tested on the host); `install` needs only a writable directory.
"""

import collections
import dataclasses
import os
import shutil
import stat

LOG_ENV = "DOMU_BENCH_WRAP_LOG"
TOOLS = ("lvs", "lvcreate", "lvremove", "losetup", "e2fsck", "mount", "umount", "findmnt", "udevadm",
         "true")   # `true`: to measure what a wrapper itself costs
PROBE = "probe-python"          # the pyparted probe child, through DOMU_SNAPSHOT_PROBE_PYTHON

_SCRIPT = """#!/bin/bash
# domu-snapshot bench wrapper: run {real}, log start/end/exit to ${log_env}
_s=$EPOCHREALTIME
{real} "$@"
_rc=$?
if [ -n "${{{log_env}:-}}" ]; then
    printf '%s\\t%s\\t%s\\t%s\\t%s\\n' "$_s" "$EPOCHREALTIME" "$_rc" "{name}" "$*" >> "${log_env}"
fi
exit $_rc
"""


def _write(path, text):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def install(directory, tools=TOOLS, search_path=None, python=None):
    """Write a wrapper per tool into `directory` (and one for the probe's Python when `python` is
    given). Returns {name: real path}; tools not found are left out (and not wrapped)."""
    os.makedirs(directory, exist_ok=True)
    found = {}
    for tool in tools:
        real = shutil.which(tool, path=search_path)
        if real is None or os.path.dirname(os.path.abspath(real)) == os.path.abspath(directory):
            continue
        _write(os.path.join(directory, tool), _SCRIPT.format(real=real, name=tool, log_env=LOG_ENV))
        found[tool] = real
    if python:
        _write(os.path.join(directory, PROBE), _SCRIPT.format(real=python, name=PROBE, log_env=LOG_ENV))
        found[PROBE] = python
    return found


@dataclasses.dataclass
class Call:
    start: float
    end: float
    rc: int
    tool: str
    args: str

    @property
    def seconds(self):
        return self.end - self.start

    @property
    def kind(self):
        """The tool, with losetup split into its listing and its other uses (the issue counts
        `losetup --list`: a query that must not grow with the number of guests)."""
        if self.tool == "losetup":
            words = self.args.split()
            if any(w in words for w in ("--list", "-l", "--all", "-a")):
                return "losetup --list"
            if "--detach" in words or "-d" in words:
                return "losetup --detach"
            return "losetup --find"
        if self.tool == "udevadm":
            words = self.args.split()
            return f"udevadm {words[0]}" if words else "udevadm"
        return self.tool


def parse(text):
    """Calls from a wrapper log's text (lines that do not parse are skipped)."""
    calls = []
    for line in text.splitlines():
        parts = line.split("\t", 4)
        if len(parts) < 4:
            continue
        try:
            start, end, rc = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            continue
        calls.append(Call(start, end, rc, parts[3], parts[4] if len(parts) > 4 else ""))
    return calls


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse(handle.read())
    except FileNotFoundError:
        return []


def counts(calls):
    """{kind: number of calls}."""
    return dict(collections.Counter(c.kind for c in calls))


def seconds_by_kind(calls):
    """{kind: total seconds spent in it}."""
    total = collections.defaultdict(float)
    for call in calls:
        total[call.kind] += call.seconds
    return dict(total)


QUERY_KINDS = ("lvs", "losetup --list", "findmnt")


def query_counts(calls):
    """The three queries the issue counts, always present (0 when not run)."""
    found = counts(calls)
    return {kind: found.get(kind, 0) for kind in QUERY_KINDS}


def _snapshot_of_lvcreate(args):
    words = args.split()
    for flag in ("--name", "-n"):
        if flag in words and words.index(flag) + 1 < len(words):
            name = words[words.index(flag) + 1]
            vg = next((w.split("/")[0] for w in reversed(words) if "/" in w and not w.startswith("-")), "")
            return f"{vg}/{name}" if vg else name
    return None


def _snapshot_of_lvremove(args):
    targets = [w for w in args.split() if not w.startswith("-")]
    return targets[-1] if targets else None


def snapshot_lifetimes(calls, suffix="-dsnap"):
    """{vg/snapshot: seconds from the end of its lvcreate to the end of its lvremove}, for the
    snapshots (names ending in `suffix`) that were both created and removed in `calls`. A name
    created twice counts each life separately (keys get #2, #3)."""
    born = {}
    lives = {}
    seen = collections.Counter()
    for call in sorted(calls, key=lambda c: c.end):
        if call.rc != 0:
            continue
        words = call.args.split()
        if call.tool == "lvcreate" and ("--snapshot" in words or "-s" in words):
            name = _snapshot_of_lvcreate(call.args)
            if name and name.endswith(suffix):
                born[name] = call.end
        elif call.tool == "lvremove":
            name = _snapshot_of_lvremove(call.args)
            if name in born:
                seen[name] += 1
                key = name if seen[name] == 1 else f"{name}#{seen[name]}"
                lives[key] = call.end - born.pop(name)
    return lives
