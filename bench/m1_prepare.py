"""Measure 1: one guest's prepare + teardown, `domu-snapshot mount G` then `unmount G`, against
the same steps typed as bare commands on the same LV with the same dirty journal.

Bare arm (what an administrator would type, driven from the already running bench process):
  lvcreate --snapshot (same size and tag) / losetup --find --show --offset --sizelimit /
  e2fsck -p -E journal_only / mkdir / mount -t ext4 -o ro,nosuid,nodev,noexec / umount /
  losetup --detach / lvremove --yes / rmdir.
The origin is rewritten from its image before every run (outside the timed region), so each run
replays the same journal. Arms interleaved (ABBA), after one untimed warm-up of each.

A last, untimed run of the tool goes through PATH wrappers (and DOMU_SNAPSHOT_PROBE_PYTHON) to
split the tool's extra time into its parts: extra queries, the probe child, Python start-up.
"""

import os
import time

from bench import wrappers
from bench.common import PREFIX, BenchError, refresh_dirty, run
from bench.report import Row, interleaved, median, spread

LAYOUT = "msdos-ext4-1m"
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"


class Arms:
    def __init__(self, ctx, gvg, guest):
        from domu_snapshot import lvm
        from domu_snapshot.config import Config
        self.ctx = ctx
        self.vg = gvg.vg
        self.guest = guest
        origin = next(lv for lv in lvm.report([self.vg]) if lv.name == guest.lv)
        self.extents = lvm.snapshot_extents(origin, Config().snapshot_size)
        self.snapshot = lvm.snapshot_name(guest.lv)
        self.tag = lvm.TAG
        self.mount_path = os.path.join(ctx.mount_root, self.vg, guest.lv)

    def tool(self, wrap_log=None):
        """`domu-snapshot mount G` + `domu-snapshot unmount G`; returns (seconds, detail)."""
        env = self.ctx.env(wrap_log, probe=wrap_log is not None)
        spans = []   # wall-clock (start, end) of the two processes, for the breakdown's timeline
        t0 = time.time()
        t_mount, proc = run(self.ctx.cli(self.vg, "mount", self.guest.lv), env=env)
        spans.append((t0, time.time()))
        if "journal replayed" not in proc.stdout:
            raise BenchError(f"mount did not replay the journal: {proc.stdout.strip()}")
        t0 = time.time()
        t_unmount, _ = run(self.ctx.cli(self.vg, "unmount", self.guest.lv), env=env)
        spans.append((t0, time.time()))
        return t_mount + t_unmount, {"mount": t_mount, "unmount": t_unmount, "spans": spans,
                                     "said": proc.stdout.strip().splitlines()[-1:]}

    def bare(self):
        """The same steps as bare commands; returns (seconds, {step: seconds})."""
        env = self.ctx.env()
        snap_path = f"/dev/{self.vg}/{self.snapshot}"
        steps = {}

        def step(name, argv, ok_codes=(0,)):
            seconds, proc = run(argv, env=env, ok_codes=ok_codes)
            steps[name] = steps.get(name, 0.0) + seconds
            return proc

        started = time.perf_counter()
        step("lvcreate", ["lvcreate", "--snapshot", "--name", self.snapshot, "--addtag", self.tag,
                          "--extents", str(self.extents), f"{self.vg}/{self.guest.lv}"])
        loop = step("losetup", ["losetup", "--find", "--show", "--offset", str(self.guest.offset),
                                "--sizelimit", str(self.guest.fs_size), snap_path]).stdout.strip()
        step("e2fsck", ["e2fsck", "-p", "-E", "journal_only", loop], ok_codes=(0, 1, 2))
        t = time.perf_counter()
        os.makedirs(self.mount_path, mode=0o700, exist_ok=True)
        steps["mkdir"] = time.perf_counter() - t
        step("mount", ["mount", "-t", self.guest.fstype, "-o", MOUNT_OPTIONS, loop, self.mount_path])
        step("umount", ["umount", self.mount_path])
        step("losetup -d", ["losetup", "--detach", loop])
        for attempt in range(3):  # an admin would retype it; the tool retries "busy" too
            try:
                step("lvremove", ["lvremove", "--yes", f"{self.vg}/{self.snapshot}"])
                break
            except BenchError:
                if attempt == 2:
                    raise
                step("udevadm settle", ["udevadm", "settle"])
        t = time.perf_counter()
        os.rmdir(self.mount_path)
        steps["rmdir"] = time.perf_counter() - t
        return time.perf_counter() - started, steps


def timeline(spans, calls):
    """The CLI processes' own (Python) time, between the commands they ran: [(label, seconds)].
    `spans`: (start, end) of each process; `calls`: the wrapper log (each call's start includes
    nothing of the wrapper's own bash start, so that lands in the gap before it)."""
    parts = []
    for n, (begin, end) in enumerate(spans):
        inside = sorted((c for c in calls if begin <= c.start <= end), key=lambda c: c.start)
        label = ("mount", "unmount")[n] if n < 2 else f"process {n + 1}"
        previous_end, previous = begin, "start"
        for call in inside:
            parts.append((f"{label}: {previous} -> {call.kind}", call.start - previous_end))
            previous_end, previous = call.end, call.kind
        parts.append((f"{label}: {previous} -> exit", end - previous_end))
    return parts


def breakdown(ctx, arms, med_tool, med_bare, bare_steps):
    """Where the tool's extra time goes: one run through the PATH wrappers (commands, the probe
    child, and the CLI's own time between them)."""
    log = ctx.new_log("m1-breakdown")
    refresh_dirty(arms.guest, rewrite=True)
    total, detail = arms.tool(wrap_log=log)
    calls = wrappers.read(log)
    by_kind = wrappers.seconds_by_kind(calls)
    count = wrappers.counts(calls)
    wrapper_cost = _wrapper_cost(ctx)
    same = {"lvcreate": "lvcreate", "losetup --find": "losetup", "e2fsck": "e2fsck", "mount": "mount",
            "umount": "umount", "losetup --detach": "losetup -d", "lvremove": "lvremove"}
    commands_same = sum(by_kind.get(k, 0.0) for k in same)
    commands_extra = {f"{k} x{count[k]}": v for k, v in by_kind.items() if k not in same}
    gaps = timeline(detail["spans"], calls)
    own = sum(seconds for _label, seconds in gaps)
    n_calls = len(calls)
    return {
        "wrapped_run_seconds": total, "wrapped_run": detail, "calls": [vars(c) for c in calls],
        "counts": count, "seconds_by_kind": by_kind, "startup": ctx.startup,
        "timed_overhead_seconds": None if med_tool is None or med_bare is None else med_tool - med_bare,
        "wrapped": {
            "commands_also_in_bare_s": commands_same,
            "bare_arm_steps_median_s": sum(v for v in bare_steps.values() if v),
            "extra_commands_s": commands_extra,
            "cli_own_time_s": own,
            "wrapper_bash_start_s_each": wrapper_cost,
            "cli_own_time_less_wrappers_s": own - n_calls * (wrapper_cost or 0.0),
            "timeline": gaps,
        },
    }


def _wrapper_cost(ctx):
    """Seconds a wrapper adds to one command (bash start), from a wrapped /bin/true."""
    import subprocess
    wrapped = os.path.join(ctx.wrap_dir, "true")
    if not os.path.exists(wrapped):
        return None
    times = []
    for argv in ([wrapped], ["/bin/true"]):
        started = time.perf_counter()
        subprocess.run(argv, env=ctx.env())
        times.append(time.perf_counter() - started)
    return max(0.0, times[0] - times[1])


def summary(info):
    """One line: where the tool's extra time went in the wrapped run (for RESULTS.md)."""
    b = info.get("breakdown") or {}
    w = b.get("wrapped") or {}
    if not w.get("timeline"):
        return None
    gaps = w["timeline"]
    start = sum(sec for label, sec in gaps if ": start -> " in label)
    libvirt = sum(sec for label, sec in gaps if label in ("mount: lvs -> lvcreate", "unmount: lvs -> findmnt"))
    other_own = w.get("cli_own_time_s", 0.0) - start - libvirt
    extra = dict(w.get("extra_commands_s") or {})
    probe = sum(v for k, v in extra.items() if k.startswith("probe"))
    queries = sum(v for k, v in extra.items() if not k.startswith("probe"))
    calls = sum((b.get("counts") or {}).values())
    wrappers_cost = calls * (w.get("wrapper_bash_start_s_each") or 0.0)
    return (f"1: in the wrapped run ({b.get('wrapped_run_seconds', 0):.0f} s; the bare steps took "
            f"{w.get('bare_arm_steps_median_s', 0):.0f} s) the tool spent {start:.0f} s starting its two "
            f"Python processes (to their first command), {libvirt:.0f} s between discover's lvs and the "
            f"next command (libvirt import and connection attempt, space check), {probe:.0f} s in the "
            f"pyparted probe child, {queries:.0f} s in queries the bare steps do not need "
            f"({', '.join(k for k in extra if not k.startswith('probe'))}), {other_own:.0f} s elsewhere in "
            f"its own code, of which about {wrappers_cost:.0f} s are the wrappers' bash starts.")


def run_measure(ctx, opts):
    from tests import guestdisks
    vg = opts.vg_prefix + "1"
    gvg = guestdisks.GuestVG(vg, size_mib=256).create()
    details = {}
    try:
        guest = gvg.add_guest(PREFIX + "bench", LAYOUT, seed="dsbench", dirty=True)
        arms = Arms(ctx, gvg, guest)
        ctx.log(f"m1: guest {guest.lv_path} ({LAYOUT}, ext4 at byte {guest.offset}, journal dirty), "
                f"snapshot {arms.extents} extents")
        samples = {"tool": [], "bare": []}
        tool_parts, bare_steps, refresh = [], [], []
        for arm in ["tool", "bare"] * opts.warmup:
            refresh.append(refresh_dirty(guest, rewrite=opts.rewrite))
            seconds, _ = getattr(arms, arm)()
            ctx.log(f"m1: warm-up {arm}: {seconds:.2f} s")
        for n, arm in enumerate(interleaved(["tool", "bare"], opts.reps)):
            refresh.append(refresh_dirty(guest, rewrite=opts.rewrite))
            seconds, part = getattr(arms, arm)()
            samples[arm].append(seconds)
            (tool_parts if arm == "tool" else bare_steps).append(part)
            ctx.log(f"m1: run {n + 1}/{2 * opts.reps} {arm}: {seconds:.2f} s")
        med_tool, med_bare = median(samples["tool"]), median(samples["bare"])
        med_steps = {k: median(s.get(k) for s in bare_steps) for k in (bare_steps[0] if bare_steps else {})}
        if opts.breakdown:
            details["breakdown"] = breakdown(ctx, arms, med_tool, med_bare, med_steps)
        left = gvg.leftovers()
        if left:
            raise BenchError(f"m1 left behind: {left}")
        details.update({
            "guest": {"lv": guest.lv, "layout": LAYOUT, "offset": guest.offset, "fs_size": guest.fs_size,
                      "snapshot_extents": arms.extents},
            "reps": opts.reps, "warmup": opts.warmup, "samples": samples,
            "tool_mount_unmount": tool_parts, "bare_steps": bare_steps, "bare_steps_median": med_steps,
            "refresh_seconds": refresh, "rewrite_between_runs": opts.rewrite,
        })
        line = summary(details)
        if line:
            details["summary_notes"] = [line]
    finally:
        gvg.destroy()
    lo, hi = spread(samples["tool"])
    blo, bhi = spread(samples["bare"])
    rows = [Row("1", "prepare+teardown of 1 guest: `mount G` + `unmount G` vs bare commands", "s",
                med_tool, med_bare, target="<= 1.15",
                note=f"median of {opts.reps} each (tool {lo:.2f}-{hi:.2f}, bare {blo:.2f}-{bhi:.2f})").finish()]
    return rows, details
