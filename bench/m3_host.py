"""Measure 3's arms on the host, without the VM: a quick look at per-entry and per-file costs.

    python -m bench.m3_host [--dir /dev/shm/m3tree] [--files 100000] [--reps 7] [--keep]

Builds the tree of bench/m3_walk.py (plan_tree/build_tree) in a plain directory (tmpfs or ext4,
no LV, no snapshot, no mount) and runs the same arms as measure 3 on it: the plugin's generator
against the bare os.scandir + lstat walk, and the harness's in-core reads (IO_OPEN..IO_CLOSE)
against cat of the same files. The walk is timed in process CPU time (the host is shared: wall
time swings with other people's load); the reads in wall time, as cat runs in its own process.
Each figure is the best of --reps interleaved runs. Not a substitute for `python -m bench
--only 3` in the VM, whose numbers are the ones RESULTS.md reports.
"""

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import m3_walk  # noqa: E402
from bench.report import interleaved  # noqa: E402


class _Ctx:
    def __init__(self, mount_root):
        self.mount_root = mount_root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/dev/shm/domu-m3-tree", help="where the tree is built")
    p.add_argument("--files", type=int, default=100_000, help="entries in the tree (default 100000)")
    p.add_argument("--reps", type=int, default=7, help="runs of each arm (default 7)")
    p.add_argument("--read-entries", type=int, default=5000, help="entries of the harness job")
    p.add_argument("--keep", action="store_true", help="keep (and reuse) the tree")
    opts = p.parse_args(argv)
    from tests import fd_harness

    top = Path(opts.dir)
    plan = m3_walk.plan_tree(opts.files)
    expected = len(plan["dirs"]) + sum(len(plan[k]) for k in ("files", "symlinks", "hardlinks"))
    if not (opts.keep and top.is_dir() and m3_walk.names_walk(str(top)) == expected):
        m3_walk.build_tree(top, plan)
    try:
        from domu_snapshot.bareos import walk as plugin
        walk = {"bare": [], "plugin": []}
        count = None
        m3_walk.bare_walk(str(top))  # warm the caches
        for arm in interleaved(["bare", "plugin"], opts.reps):
            started = time.process_time()
            n = m3_walk.bare_walk(str(top)) if arm == "bare" else m3_walk.plugin_walk(plugin, str(top))
            walk[arm].append(time.process_time() - started)
            if count not in (None, n):
                raise SystemExit(f"the {arm} walk saw {n} entries, the other {count}")
            count = n
        bare, ours = min(walk["bare"]), min(walk["plugin"])
        print(f"walk of {count:,} entries (CPU time, best of {opts.reps}): bare scandir + lstat "
              f"{bare / count * 1e6:.2f} us/entry, plugin generator {ours / count * 1e6:.2f} us/entry: "
              f"{bare / ours:.2f}x the bare entries/s")

        trees, entries = m3_walk.read_subset(str(top), opts.read_entries)
        files = m3_walk.regular_files(trees)
        names = [name for name, _size in files]
        total = sum(size for _name, size in files)
        repeat = m3_walk.cat_repeat(total, len(names))
        reads = {"harness": [], "cat": [], "in_plugin": [], "job": []}
        for arm in interleaved(["harness", "cat"], opts.reps):
            if arm == "cat":
                reads["cat"].append(m3_walk.cat_files(names, os.environ, repeat) / repeat)
                continue
            seconds, daemon, _records = m3_walk.harness_backup(_Ctx(str(top) + ".mnt"), trees)
            if daemon.read_files != len(names) or daemon.read_bytes != total:
                raise SystemExit(f"the harness read {daemon.read_files} files, the tree has {len(names)}")
            reads["harness"].append(daemon.read_s)
            reads["in_plugin"].append(daemon.plugin_in_read_s)
            reads["job"].append(seconds)
        nf, mib = len(names), 2 ** 20
        harness, cat = min(reads["harness"]), min(reads["cat"])
        print(f"in-core reads of {nf:,} files, {total / mib:.1f} MiB (wall time, best of {opts.reps}): harness "
              f"{harness / nf * 1e6:.1f} us/file ({total / harness / mib:.0f} MiB/s; "
              f"{min(reads['in_plugin']) / nf * 1e6:.1f} us/file inside plugin_io), cat {cat / nf * 1e6:.1f} us/file "
              f"({total / cat / mib:.0f} MiB/s): {cat / harness:.2f}x cat's bytes/s; whole stand-in job "
              f"{min(reads['job']) / entries * 1e6:.0f} us/entry")
    finally:
        if not opts.keep:
            shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
