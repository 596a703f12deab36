"""Where a plugin job's time goes inside the real bareos-fd: a profile of measure 6's plugin arm.

In the VM test bed (as root):
    python -m tests.vmbed -- .venv/bin/python -m bench.m6_profile [--files 6000] [--jobs Full,Full,Incremental]

Sets up what measure 6 uses (bench/m6_bareos.py: the guest, a real Bareos 25 with the example
Jobs), then puts a profiling entry module in the bed's plugin directory in place of the one
`make install-plugin` installed: it loads that one under another name and forwards every entry
point to it, timing each (calls, seconds) and running cProfile while the plugin's code runs. At
bEventJobEnd it writes, per job, the seconds of the job's interpreter, the seconds spent inside
the plugin's entry points (the rest is bareos-fd's own work and python-fd's conversions), the
entry points by time and the top functions into $DOMU_VM_RUN_DIR/plugin-profile-<job>.txt, and
prints the heads. cProfile makes Python code slower, so the figures tell where the time goes,
not what a job costs (that is measure 6). Nothing here is part of the product or of make test.
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

from bench import m6_bareos  # noqa: E402

ENTRY = "bareos-fd-domu-snapshot.py"
FORWARDED = "domu_unprofiled_entry"     # the installed entry module, loaded under this name
ENTRY_POINTS = ("load_bareos_plugin", "parse_plugin_definition", "handle_plugin_event", "start_backup_file",
                "end_backup_file", "plugin_io", "check_file", "get_acl", "get_xattr", "handle_backup_file",
                "start_restore_file", "end_restore_file", "create_file", "set_file_attributes", "set_acl",
                "set_xattr", "restore_object_data")

PROFILING_ENTRY = '''"""Written by bench/m6_profile.py: the plugin's entry points, timed and profiled."""
import cProfile
import io
import os
import pstats
import time

import bareosfd

import {forwarded} as _real

_profile = cProfile.Profile()
_seconds, _calls = {{}}, {{}}
_born = time.perf_counter()


def _timed(name):
    target = getattr(_real, name)

    def entry_point(*args):
        _profile.enable()
        started = time.perf_counter()
        try:
            return target(*args)
        finally:
            _seconds[name] = _seconds.get(name, 0.0) + time.perf_counter() - started
            _calls[name] = _calls.get(name, 0) + 1
            _profile.disable()
    return entry_point


for _name in {names!r}:
    globals()[_name] = _timed(_name)
_handle_event = globals()["handle_plugin_event"]


def handle_plugin_event(event):
    answer = _handle_event(event)
    if event == bareosfd.bEventJobEnd:
        lived = time.perf_counter() - _born
        text = io.StringIO()
        text.write(f"job interpreter {{lived:.2f}} s; inside the plugin's entry points "
                   f"{{sum(_seconds.values()):.2f}} s\\n")
        for name in sorted(_seconds, key=_seconds.get, reverse=True):
            text.write(f"  {{name}}: {{_seconds[name]:.2f}} s in {{_calls[name]}} calls "
                       f"({{_seconds[name] / _calls[name] * 1e6:.0f}} us per call)\\n")
        stats = pstats.Stats(_profile, stream=text)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(25)
        name = f"plugin-profile-{{time.strftime('%H%M%S')}}-{{os.getpid()}}-{{int(lived * 1000)}}.txt"
        with open(os.path.join(os.environ.get("DOMU_VM_RUN_DIR", "/tmp"), name), "w") as out:
            out.write(text.getvalue())
    return answer
'''


def install_profiler(plugin_dir):
    plugin_dir = Path(plugin_dir)
    shutil.copy(plugin_dir / ENTRY, plugin_dir / f"{FORWARDED}.py")
    (plugin_dir / ENTRY).write_text(PROFILING_ENTRY.format(forwarded=FORWARDED, names=ENTRY_POINTS))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.m6_profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=6000, help="entries in the guest (default 6000)")
    p.add_argument("--jobs", default="Full,Full,Incremental,Incremental",
                   help="levels of the plugin jobs, in order (default Full,Full,Incremental,Incremental)")
    opts = p.parse_args(argv)
    if os.geteuid() != 0 or os.environ.get("DOMU_SNAPSHOT_IN_VM") != "1":
        print("m6_profile: runs as root in the VM test bed (python -m tests.vmbed -- ...)", file=sys.stderr)
        return 2
    out_dir = Path(os.environ.get("DOMU_VM_RUN_DIR") or "/tmp")
    scratch = Path("/run/dsbench-profile")
    scratch.mkdir(parents=True, exist_ok=True)
    with m6_bareos.bareos_with_guest(scratch, None, "dsbenchp", opts.files, print) as (bed, _details):
        install_profiler(bed.plugin_dir)
        for level in [x.strip() for x in opts.jobs.split(",") if x.strip()]:
            before = set(out_dir.glob("plugin-profile-*.txt"))
            res = m6_bareos.timed_job(bed, "plugin", level)
            print(f"m6_profile: plugin {level}: {res['seconds']:.0f} s by Bareos, {res['files']} files, "
                  f"steps {res['steps']} (job {res['jobid']})")
            deadline = time.monotonic() + 30
            while not set(out_dir.glob("plugin-profile-*.txt")) - before and time.monotonic() < deadline:
                time.sleep(0.5)
            for path in sorted(set(out_dir.glob("plugin-profile-*.txt")) - before):
                print(f"--- {path}")
                print("\n".join(path.read_text().splitlines()[:12]))
    scratch.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
