"""`python -m bench`: what domu-snapshot costs next to the bare commands, and how it scales.

On the host (as root):   python -m bench [options]       (what `make bench` should run)
  boots the VM test bed (tests/vmbed.py), runs `python -m bench --inside [options]` in it, then
  copies the results to bench/results/latest.json and rewrites bench/RESULTS.md.
In the VM:               python -m bench --inside [options]
  (also what `python -m tests.vmbed -- .venv/bin/python -m bench` runs: inside the VM the
  bench notices DOMU_SNAPSHOT_IN_VM=1) measures, prints the table and writes bench.json and
  bench.md into $DOMU_VM_RUN_DIR; `python -m bench --collect RUN_DIR` on the host then does
  the copying.

Measures (issue 7): 1 prepare+teardown vs bare commands; 2 scaling of mount/unmount --all and
query counts; 3 plugin walk vs os.scandir (and, with --read-entries, the stand-in harness's
reads vs cat); 4 snapshot exposure, prepare=each vs all; 5 the freeze window
(bench/bench_freeze.py, if present); 6 (issue 12) a Full and an Incremental of one guest on a
real Bareos 25, plugin mode vs helpers mode.
Every figure is a ratio of two arms run side by side, interleaved, in one VM run.
Timings are never asserted; the exit code is 0 when every selected measure ran.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import report  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
RESULTS_MD = REPO / "bench" / "RESULTS.md"
VG_PREFIX = "dsbench"


def parser():
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="1,2,3,4,5,6", help="measures to run, e.g. 1,3 (default all)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: few repetitions, 1/3/6 guests, 5,000 files (figures not meaningful)")
    p.add_argument("--reps", type=int, default=2, help="1: timed runs of each arm (default 2, order ABBA)")
    p.add_argument("--warmup", type=int, default=0, help="1: untimed runs of each arm first (default 0)")
    p.add_argument("--no-rewrite", dest="rewrite", action="store_false",
                   help="1: do not rewrite the guest image between runs (only check the journal is dirty)")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                   help="1: skip the wrapped run that splits the tool's extra time")
    p.add_argument("--scale", default="1,10,30", help="2: guest counts (default 1,10,30)")
    p.add_argument("--scale-reps", type=int, default=1, help="2: runs of each larger count (default 1)")
    p.add_argument("--single-reps", type=int, default=2, help="2: runs of the smallest count (default 2)")
    p.add_argument("--files", type=int, default=100_000, help="3: entries in the big guest (default 100000)")
    p.add_argument("--walk-reps", type=int, default=2, help="3: walks of each arm (default 2)")
    p.add_argument("--read-reps", type=int, default=1, help="3: read passes of each arm (default 1)")
    p.add_argument("--read-entries", type=int, default=0,
                   help="3: entries of the guest the stand-in harness job reads, against cat (default 0: "
                        "not run; measure 6 reads through the real bareos-fd; about 5000 is a useful size)")
    p.add_argument("--exposure-guests", type=int, default=5, help="4: guests (default 5)")
    p.add_argument("--exposure-reps", type=int, default=1, help="4: jobs of each mode (default 1)")
    p.add_argument("--freeze-runs", type=int, default=2, help="5: --runs for bench_freeze.py (default 2)")
    p.add_argument("--freeze-timeout", type=float, default=900, help="5: seconds before it is stopped")
    p.add_argument("--bareos-files", type=int, default=12_000,
                   help="6: entries in the guest Bareos backs up (default 12000)")
    p.add_argument("--bareos-reps", type=int, default=2, help="6: jobs of each mode and level (default 2, ABBA)")
    p.add_argument("--bareos-warmup", type=int, default=1,
                   help="6: untimed Fulls of each mode first (default 1)")
    p.add_argument("--no-stage", dest="stage", action="store_false",
                   help="run the venv's editable install of domu-snapshot, not a host-like copy (bench/stage.py)")
    p.add_argument("--inside", action="store_true", help="run the measures here (in the VM)")
    p.add_argument("--out", help="with --inside: results directory (default $DOMU_VM_RUN_DIR)")
    p.add_argument("--collect", metavar="RUN_DIR", help="host: take the results of a finished VM run")
    p.add_argument("--memory", default=os.environ.get("DOMU_VM_MEMORY", "4G"), help="host: VM memory (default 4G)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("DOMU_VM_TIMEOUT", 3 * 3600)),
                   help="host: seconds before the VM is stopped (default 3 h; partial results are kept)")
    return p


def apply_quick(args):
    if args.quick:
        args.reps, args.warmup, args.scale, args.single_reps = 2, 0, "1,3,6", 2
        args.files, args.walk_reps, args.read_reps, args.exposure_guests = 5000, 1, 1, 3
        args.freeze_runs = 1
        args.bareos_files, args.bareos_reps, args.bareos_warmup = 2000, 1, 0
    args.scale = sorted({int(x) for x in str(args.scale).split(",") if x.strip()})
    args.only = {x.strip() for x in str(args.only).split(",") if x.strip()}
    args.vg_prefix = VG_PREFIX
    return args


# ------------------------------------------------------------------------ inside the VM

def inside(args):
    from bench.common import Context, reap
    from tests import guestdisks

    if os.geteuid() != 0 or os.environ.get("DOMU_SNAPSHOT_IN_VM") != "1":
        print("bench: the measures run as root in the VM test bed only (they create VGs, loop devices, "
              "mounts); on the host run `python -m bench` (or `make bench`)", file=sys.stderr)
        return 2
    out_dir = Path(args.out or os.environ.get("DOMU_VM_RUN_DIR") or "/tmp/dsbench-results")
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(out_dir)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "kernel": platform.release(), "cpus": os.cpu_count(),
            "memory_mib": _mem_mib(), "emulation": _emulation(), "args": _args_text(args),
            "measures_run": sorted(args.only)}
    details = {"notes": []}
    rows = []
    failed = []
    ctx.log(f"bench: measures {','.join(sorted(args.only))} in {meta['kernel']}, {meta['cpus']} cpus, "
            f"{meta['memory_mib']} MiB, {meta['emulation']}")
    from bench import stage
    # A neutral working directory, as on a host: `python -m` children (the probe) put it first on
    # sys.path, and the repository's package must not shadow the installed one.
    os.chdir(ctx.work)
    if args.stage:
        staged = stage.stage(ctx.work, log=ctx.log)
        ctx.use_staged(staged)
        # in-process uses of the core (plugin, harness) and their probe children: the same copy
        sys.path.insert(0, staged["pythonpath"])
        os.environ["DOMU_SNAPSHOT_PROBE_PYTHON"] = staged["python"]
        details["stage"] = staged
        details["notes"].append(
            "domu-snapshot runs from a host-like install in the VM (bench/stage.py): the working tree's "
            "package with .pyc on the system Python, not the venv's editable install.")
    else:
        details["notes"].append("--no-stage: domu-snapshot ran from the venv's editable install.")
    python = ctx.staged["python"] if ctx.staged else sys.executable
    details["startup"] = ctx.startup = stage.startup_figures(python, cli_env=ctx.env(), reps=1)
    ctx.log(f"bench: start-up costs in this VM: {_fmt_figures(details['startup'])}")
    details["notes"].append("Start-up costs in this VM (tcg on a loaded host): " + _fmt_figures(details["startup"]))
    import domu_snapshot
    details["core_path"] = os.path.dirname(domu_snapshot.__file__)

    def attempt(number, title, fn, *fn_args):
        if number not in args.only:
            return
        ctx.log(f"=== {number}: {title}")
        started = time.monotonic()
        try:
            new_rows, info = fn(*fn_args)
            rows.extend(new_rows)
            details[f"m{number}"] = info
            details["notes"].extend(info.get("summary_notes", []))
        except Exception as exc:  # noqa: BLE001 -- one measure's failure must not lose the others
            failed.append(number)
            text = f"{type(exc).__name__}: {exc}"
            ctx.log(f"measure {number} FAILED: {text}")
            traceback.print_exc()
            rows.append(report.Row(number, title, "", note=f"FAILED: {text[:160]}").finish())
            details[f"m{number}"] = {"error": text, "traceback": traceback.format_exc()}
            for left in reap(ctx, [f"{VG_PREFIX}{n}" for n in ("1", "2", "w", "6")]):
                ctx.log(f"cleanup after measure {number}: {left}")
        details.setdefault("measure_seconds", {})[number] = time.monotonic() - started
        ctx.log(f"=== {number} done in {time.monotonic() - started:.0f} s")
        _write(out_dir, rows, details, meta)   # partial results survive a later crash

    from bench import m1_prepare, m2_scaling, m3_walk, m4_exposure, m5_freeze, m6_bareos
    attempt("1", "prepare + teardown of one guest vs bare commands", m1_prepare.run_measure, ctx, args)
    if {"2", "4"} & args.only:
        size = 64 + (max(args.scale + [args.exposure_guests]) * 56)
        try:
            shared = guestdisks.GuestVG(f"{VG_PREFIX}2", size_mib=size).create()
        except Exception as exc:  # noqa: BLE001
            shared = None
            for number in sorted({"2", "4"} & args.only):
                failed.append(number)
                rows.append(report.Row(number, "set-up", "", note=f"FAILED: {exc}").finish())
        if shared is not None:
            try:
                attempt("2", "scaling of mount --all + unmount --all", m2_scaling.run_measure, ctx, args, shared)
                attempt("4", "snapshot exposure, plugin prepare=each vs all", m4_exposure.run_measure, ctx, args,
                        shared)
            finally:
                shared.destroy()
    attempt("3", "plugin walk and in-core reads", m3_walk.run_measure, ctx, args, f"{VG_PREFIX}w")
    attempt("5", "freeze window (bench/bench_freeze.py)", m5_freeze.run_measure, ctx, args)
    attempt("6", "real Bareos: plugin mode vs helpers mode", m6_bareos.run_measure, ctx, args, f"{VG_PREFIX}6")
    meta["seconds"] = round(ctx.elapsed())
    rows.sort(key=lambda r: r.measure)
    _write(out_dir, rows, details, meta)
    print()
    print(report.text_table(rows))
    print(f"\nbench: {len(rows)} rows in {meta['seconds']} s; results in {out_dir}/bench.json"
          + (f"; measures that did not run: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _write(out_dir, rows, details, meta):
    doc = report.document(rows, details, meta)
    (out_dir / "bench.json").write_text(report.dumps(doc))
    (out_dir / "bench.md").write_text(report.results_markdown(doc))


def _fmt_figures(figures):
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in figures.items() if seconds is not None)


def _mem_mib():
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            return int(handle.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return None


def _emulation():
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return "unknown"
    return "kvm" if "hypervisor" in text and "kvm" in text.lower() else "tcg (software emulation)"


def _args_text(args):
    keys = ("quick", "only", "reps", "warmup", "scale", "scale_reps", "single_reps", "files", "walk_reps", "read_reps", "read_entries",
            "exposure_guests", "exposure_reps", "freeze_runs", "bareos_files", "bareos_reps", "bareos_warmup", "stage", "rewrite")
    return " ".join(f"{k}={','.join(sorted(map(str, v))) if isinstance(v, (set, list)) else v}"
                    for k, v in ((k, getattr(args, k)) for k in keys))


# ------------------------------------------------------------------------------ the host

def collect(run_dir, extra_meta=None, merge_with_latest=True):
    """Copy a VM run's results to bench/results/latest.json and rewrite bench/RESULTS.md. A run of
    some measures (--only) keeps the other measures' rows of the previous latest.json."""
    run_dir = Path(run_dir)
    source = run_dir / "bench.json"
    if not source.exists():
        print(f"bench: no results in {run_dir} (see {run_dir}/console.log)", file=sys.stderr)
        return None
    doc = json.loads(source.read_text())
    doc.setdefault("meta", {}).update(extra_meta or {})
    doc["meta"]["run_dir"] = os.path.relpath(run_dir, REPO)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = doc["meta"].get("date", "").replace(" ", "T").replace(":", "")
    if stamp:
        (RESULTS_DIR / f"bench-{stamp}.json").write_text(report.dumps(doc))   # this run alone
    latest = RESULTS_DIR / "latest.json"
    if not merge_with_latest:
        previous = None
    else:
        try:
            previous = json.loads(latest.read_text())
        except (OSError, ValueError):
            previous = None
    def quick(d):
        return "quick=True" in str(d.get("meta", {}).get("args", ""))
    if previous and quick(previous) != quick(doc):
        previous = None     # a smoke run and a real one are never mixed
    doc = report.merge(doc, previous)
    latest.write_text(report.dumps(doc))
    RESULTS_MD.write_text(report.results_markdown(doc))
    print(f"bench: results in {os.path.relpath(RESULTS_DIR / 'latest.json')}, table in "
          f"{os.path.relpath(RESULTS_MD)}")
    return doc


def host(args, argv):
    from tests import vmbed

    if os.geteuid() != 0:
        print("bench: must run as root (it boots the VM test bed)", file=sys.stderr)
        return 2
    passthrough = [a for a in argv if a not in ("--inside",)]
    passthrough = _drop_option(_drop_option(passthrough, "--memory"), "--timeout")
    run_dir = vmbed.new_run_dir("bench-" + time.strftime("%Y%m%d-%H%M%S"))
    python = str(REPO / ".venv" / "bin" / "python")
    if not os.path.exists(python):
        python = sys.executable
    load_before = os.getloadavg()
    result = vmbed.run_in_vm([python, "-m", "bench", "--inside", *passthrough], run_dir=run_dir,
                             memory=args.memory, timeout=args.timeout)
    meta = {"load_before": " ".join(f"{x:.1f}" for x in load_before),
            "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "vm_seconds": round(result.seconds)}
    doc = collect(run_dir, meta)
    if result.message:
        print(f"bench: {result.message}", file=sys.stderr)
    if doc is None:
        return result.exit_code or 1
    print()
    print(report.text_table(report.rows_from_json(doc["rows"])))
    return result.exit_code


def _drop_option(argv, name):
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = apply_quick(parser().parse_args(argv))
    if args.collect:
        return 0 if collect(args.collect) else 1
    if args.inside or os.environ.get("DOMU_SNAPSHOT_IN_VM") == "1":
        return inside(args)
    return host(args, argv)


if __name__ == "__main__":
    sys.exit(main())
