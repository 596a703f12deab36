"""Measure 5: the freeze window (quiesce issue), through bench/bench_freeze.py when it exists.

bench_freeze.py belongs to the quiesce work: it times the window a guest is frozen/paused
(libvirt test driver) against the lvcreate calls held inside it, and writes JSON. This hook runs
it as a child process with `--runs N --json FILE` and turns its rows into table rows; if the
script is missing, fails, or its JSON changes shape, the table says so and the rest of the
bench is unaffected.
"""

import json
import os
import subprocess
import sys
import time

from bench.common import REPO
from bench.report import Row

SCRIPT = REPO / "bench" / "bench_freeze.py"


def run_measure(ctx, opts):
    if not SCRIPT.exists():
        return [Row("5", "freeze window", "ms", note="hook: bench/bench_freeze.py not found").finish()], {}
    out = ctx.work / "freeze.json"
    if out.exists():
        out.unlink()
    argv = [sys.executable, str(SCRIPT), "--runs", str(opts.freeze_runs), "--json", str(out)]
    env = dict(os.environ)
    started = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          cwd=str(REPO), timeout=opts.freeze_timeout)
    seconds = time.perf_counter() - started
    details = {"argv": argv, "exit": proc.returncode, "seconds": seconds,
               "stdout": proc.stdout[-4000:], "stderr": proc.stderr[-4000:]}
    ctx.log(f"m5: bench_freeze.py exited {proc.returncode} after {seconds:.0f} s")
    try:
        data = json.loads(out.read_text())
        rows = []
        target = float(data.get("target_overhead_ms", 50))
        for r in data["rows"]:
            window, held = r["window_ms"]["median"], r["lvcreate_inside_ms"]["median"]
            over = r["overhead_ms"]
            rows.append(Row("5", f"freeze window, {r['disks']} disk(s), {r['level']}: window vs lvcreate held",
                            "ms", window, held, target=f"overhead <= {target:g} ms", ok=bool(r["target_ok"]),
                            note=f"overhead (window - lvcreate held) median {over['median']:.0f} ms, "
                                 f"max {over['max']:.0f} ms; {r['runs']} runs").finish())
        details["result"] = data
        return rows, details
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = (proc.stderr.strip().splitlines() or [str(exc)])[-1][:200]
        return [Row("5", "freeze window", "ms", note=f"hook: bench_freeze.py gave no usable result "
                                                    f"(exit {proc.returncode}: {why})").finish()], details
