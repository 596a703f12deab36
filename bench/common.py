"""What every measure needs inside the VM: a context (paths, environment, progress log), the
`domu-snapshot` command line, timed subprocesses, and putting a guest's dirty journal back.

Runs as root in the VM test bed only (tests/vmbed.py); nothing here touches the host.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import wrappers  # noqa: E402
from domu_snapshot import commands  # noqa: E402
from tests import guestdisks  # noqa: E402

PREFIX = "domu-"
NO_CONFIG = "/nonexistent/domu-snapshot-bench.conf"   # the core's defaults, whatever /etc holds
WORKDIR = Path(os.environ.get("DSBENCH_WORKDIR", "/run/dsbench"))


class BenchError(RuntimeError):
    """A measure could not run (not a missed target: those are results)."""


class Context:
    def __init__(self, out_dir, log=print):
        self.started = time.monotonic()
        self.out_dir = Path(out_dir)
        self.work = WORKDIR
        self.work.mkdir(parents=True, exist_ok=True)
        self.mount_root = str(self.work / "mnt")
        self.wrap_dir = str(self.work / "wrap")
        self.python = sys.executable
        self._print = log
        base_path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        self.plain_path = base_path
        self.wrapped = wrappers.install(self.wrap_dir, search_path=base_path, python=self.python)
        self.wrap_path = f"{self.wrap_dir}:{base_path}"
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self._log_seq = 0
        os.environ["DOMU_SNAPSHOT_CONFIG"] = NO_CONFIG
        os.environ["LVM_SUPPRESS_FD_WARNINGS"] = "1"
        os.environ.pop(wrappers.LOG_ENV, None)
        # set by use_staged(): the host-like install of domu-snapshot (bench/stage.py)
        self.cli_head = None
        self.cli_pythonpath = None
        self.staged = None
        self.startup = None     # {what: seconds} of process start-ups in this VM (bench/stage.py)

    def use_staged(self, staged):
        self.staged = staged
        # the probe child now runs the staged CLI's interpreter
        self.wrapped.update(wrappers.install(self.wrap_dir, tools=(), python=staged["python"]))
        self.cli_head = [staged["cli"]]
        self.cli_pythonpath = staged["pythonpath"]

    # -- progress
    def log(self, text):
        self._print(f"[{time.monotonic() - self.started:7.1f}s] {text}", flush=True)

    def elapsed(self):
        return time.monotonic() - self.started

    # -- environment for child processes
    def env(self, wrap_log=None, probe=False):
        """Environment of a `domu-snapshot` child: no config file, and with `wrap_log` the PATH
        wrappers (and, with `probe`, the probe's Python) log into that file."""
        env = dict(os.environ)
        env["DOMU_SNAPSHOT_CONFIG"] = NO_CONFIG
        env.pop(wrappers.LOG_ENV, None)
        env.pop("DOMU_SNAPSHOT_PROBE_PYTHON", None)
        env["PATH"] = self.plain_path
        env.pop(commands.TOOL_PATH_ENV, None)
        if self.cli_pythonpath:
            env["PYTHONPATH"] = self.cli_pythonpath
        if wrap_log is not None:
            env["PATH"] = self.wrap_path
            env[commands.TOOL_PATH_ENV] = self.wrap_path  # the core runs tools through its own PATH
            env[wrappers.LOG_ENV] = str(wrap_log)
            if probe and wrappers.PROBE in self.wrapped:
                env["DOMU_SNAPSHOT_PROBE_PYTHON"] = os.path.join(self.wrap_dir, wrappers.PROBE)
        return env

    def new_log(self, name):
        self._log_seq += 1
        path = self.logs / f"{self._log_seq:03d}-{name}.log"
        if path.exists():
            path.unlink()
        return path

    # -- the tool
    def cli(self, vg, *args):
        """argv of `domu-snapshot` as an administrator runs it (the installed console script)."""
        script = REPO / ".venv" / "bin" / "domu-snapshot"
        head = self.cli_head or ([str(script)] if script.exists() else [self.python, "-m", "domu_snapshot.cli"])
        return head + ["--no-syslog", "--vg", vg, "--mount-root", self.mount_root, "--quiesce", "none",
                       *args]


def run(argv, env=None, check=True, ok_codes=(0,)):
    """Run argv (a list), return (seconds, CompletedProcess); BenchError with its output if it fails."""
    started = time.perf_counter()
    proc = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", env=env)
    seconds = time.perf_counter() - started
    if check and proc.returncode not in ok_codes:
        raise BenchError(f"`{' '.join(map(str, argv))}` exited {proc.returncode}: "
                         f"{(proc.stderr.strip() or proc.stdout.strip())[-2000:]}")
    return seconds, proc


def refresh_dirty(guest, rewrite=True):
    """Put the guest's origin back to the bytes it was built with (its dirty journal included),
    outside any timed region. Snapshots never write to the origin, so `rewrite=False` only checks
    the needs_recovery flag and rewrites when it is gone. Returns the seconds it took."""
    started = time.perf_counter()
    dirty = guestdisks.needs_recovery(guest.lv_path, guest.offset or 0)
    if rewrite or not dirty:
        if guestdisks.run(["blkdiscard", "-f", guest.lv_path], check=False).returncode == 0:
            guestdisks._copy_into(Path(guest.image), guest.lv_path, 0)
        else:
            guestdisks._write_image_to_device(Path(guest.image), guest.lv_path)
        if not guestdisks.needs_recovery(guest.lv_path, guest.offset or 0):
            raise BenchError(f"{guest.lv_path}: rewritten from its image but the journal is not dirty")
    return time.perf_counter() - started


def reap(ctx, vgs):
    """Tear down whatever a failed measure left under our mount root on these VGs (best effort)."""
    from domu_snapshot.config import load_config
    from domu_snapshot.lifecycle import Runner
    try:
        existing = set(guestdisks.out(["vgs", "--noheadings", "-o", "vg_name"]).split())
        vgs = [vg for vg in vgs if vg in existing]
        if not vgs:
            return []
        cfg = load_config(None, {"vgs": list(vgs), "mount_root": ctx.mount_root, "quiesce": "none",
                                 "syslog": False})
        return [r for r in Runner(cfg).reap() if not r.ok]
    except Exception as exc:  # noqa: BLE001 -- best effort after a failure; reported by the caller
        return [exc]
