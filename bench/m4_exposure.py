"""Measure 4: snapshot exposure. For 5 guests, the sum over guests of the seconds each snapshot
existed (end of its lvcreate to end of its lvremove, from the PATH wrappers' log), plugin
prepare=each (one guest at a time, the default) against prepare=all (every guest up front).

The plugin runs in this process through the stand-in file daemon (tests/fd_harness.py) with
the real core on real LVM. The guests are the small fixture guests of measure 2, so reading a
guest takes little time here: with real guests the reads dominate and prepare=all keeps each
snapshot for roughly the reads of the guests before it as well.
"""

import os
import time

from bench import wrappers
from bench.common import PREFIX, BenchError
from bench.m2_scaling import build_guests
from bench.report import Row, interleaved, median


def backup(ctx, vg, guests, mode):
    from domu_snapshot import commands
    from tests import fd_harness
    from tests.fd_harness import bareosfd

    log = ctx.new_log(f"m4-{mode}")
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=ctx.mount_root, vg=vg, prefix=PREFIX,
        include=",".join(g.lv for g in guests), quiesce="none", prepare=mode)
    saved = {k: os.environ.get(k) for k in ("PATH", commands.TOOL_PATH_ENV, wrappers.LOG_ENV)}
    os.environ["PATH"] = ctx.wrap_path
    os.environ[commands.TOOL_PATH_ENV] = ctx.wrap_path
    os.environ[wrappers.LOG_ENV] = str(log)
    before = dict(commands.invocations)
    started = time.perf_counter()
    try:
        result = fd_harness.FileDaemon(definition).backup()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - started
    if result.status != "T":
        raise BenchError(f"plugin backup (prepare={mode}) ended {result.status}: {result.job.errors[:3]}")
    backed_up = [t for t in result.job.texts(bareosfd.M_INFO) if ": guest " in t]
    if len(backed_up) != len(guests):
        raise BenchError(f"plugin backup (prepare={mode}) backed up {len(backed_up)} of {len(guests)} guests")
    lives = wrappers.snapshot_lifetimes(wrappers.read(log))
    if len(lives) != len(guests):
        raise BenchError(f"prepare={mode}: found {len(lives)} snapshot lifetimes for {len(guests)} guests")
    invoked = {f"{tool} {kind}": n - before.get((tool, kind), 0)
               for (tool, kind), n in commands.invocations.items() if n != before.get((tool, kind), 0)}
    return {"mode": mode, "job_s": seconds, "exposure_s": sum(lives.values()), "lifetimes": lives,
            "entries": len(result.records), "invocations": invoked}


def run_measure(ctx, opts, gvg):
    guests = build_guests(gvg, opts.exposure_guests)
    results = []
    for mode in interleaved(["each", "all"], opts.exposure_reps):
        res = backup(ctx, gvg.vg, guests, mode)
        results.append(res)
        ctx.log(f"m4: prepare={mode}: job {res['job_s']:.1f} s, snapshots existed {res['exposure_s']:.1f} s "
                f"in all ({len(guests)} guests)")
    each = median(r["exposure_s"] for r in results if r["mode"] == "each")
    all_ = median(r["exposure_s"] for r in results if r["mode"] == "all")
    job_each = median(r["job_s"] for r in results if r["mode"] == "each")
    job_all = median(r["job_s"] for r in results if r["mode"] == "all")
    rows = [Row("4", f"snapshot exposure, sum over {len(guests)} guests: prepare=each vs prepare=all",
                "s", each, all_,
                note=f"median of {opts.exposure_reps}; job time each {job_each:.0f} s, all {job_all:.0f} s").finish()]
    return rows, {"guests": [g.lv for g in guests], "runs": results}
