"""Install domu-snapshot in the VM the way a hypervisor host has it, for the arms to run.

The repository's .venv holds an *editable* install (a finder hooked in through a .pth file) on
top of the system site-packages, over the test bed's 9p share. In the VM that costs every Python
start several seconds more than a plain install (measured: `site` 7.8 s through the venv, 0.7 s
with the system Python), which a host running `pip install .` never pays. So before measuring,
the bench copies the working tree's package to /run/dsbench/host/lib (RAM) with compiled .pyc,
as `pip install .` leaves it, and writes a console script /run/dsbench/host/bin/domu-snapshot on
the system Python (/usr/bin/python3). Every arm that runs `domu-snapshot`, the in-process core
(plugin, harness) and the probe children use that copy; the code is the working tree's.
`--no-stage` runs the venv's console script instead.

What it does not try to fix: the VM's CPU is emulated (tcg) on a shared, loaded host, so every
process start and every Python import is slow in absolute terms; copying the programs into the
VM's RAM (overlay copy-up) was tried and made no difference, the cost is CPU, not 9p.
`startup_figures` records what a start costs in the run, so the results show it.
"""

import compileall
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def install_host_like(target):
    """domu_snapshot as `pip install .` leaves it: package + .pyc under target/lib, a console
    script target/bin/domu-snapshot on the system Python. Returns the script's path."""
    target = Path(target)
    lib, bindir = target / "lib", target / "bin"
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    bindir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "domu_snapshot", lib / "domu_snapshot",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compileall.compile_dir(str(lib), quiet=1)
    script = bindir / "domu-snapshot"
    script.write_text(f"#!{sys.base_prefix}/bin/python3\nimport sys\nfrom domu_snapshot.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    return str(script), str(lib)


def system_python():
    """The distribution's interpreter the venv is made from (its real path)."""
    candidate = os.path.join(sys.base_prefix, "bin", "python3")
    return os.path.realpath(candidate if os.path.exists(candidate) else sys.executable)


def stage(work, log=print):
    """Do it; returns what was done (for the results)."""
    started = time.monotonic()
    script, lib = install_host_like(Path(work) / "host")
    result = {"seconds": time.monotonic() - started, "cli": script, "pythonpath": lib,
              "python": system_python()}
    log(f"stage: domu-snapshot installed host-like in {Path(script).parent.parent} "
        f"(package + .pyc, console script on {result['python']}) in {result['seconds']:.0f} s")
    return result


def startup_figures(python, cli_env=None, reps=3):
    """Seconds of a few start-ups (median of reps): an exec, Python alone, the CLI's imports, lvs."""
    from bench.report import median

    probes = {
        "/bin/true": ["/bin/true"],
        "python3 -c pass": [python, "-c", "pass"],
        "venv python -c pass": [str(REPO / ".venv" / "bin" / "python"), "-c", "pass"],
        "python3 + import domu_snapshot.cli": [python, "-c", "import domu_snapshot.cli, domu_snapshot.lifecycle"],
        "python3 + import parted": [python, "-c", "import parted"],
        "python3 + import libvirt": [python, "-c", "import libvirt"],
        "python3 + import libvirt + open()": [python, "-c", "import libvirt\nlibvirt.registerErrorHandler("
                                              "lambda c, e: None, None)\ntry:\n    libvirt.open(None)\n"
                                              "except libvirt.libvirtError:\n    pass"],
        "lvs": ["lvs"],
    }
    results = {}
    for name, argv in probes.items():
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=cli_env)
            times.append(time.perf_counter() - started)
        results[name] = median(times)
    return results
