"""Run a command as root inside a throwaway VM: the VM test bed.

The host kernel has no device-mapper, so everything that needs LVM runs in a VM booted by
virtme-ng with Debian's generic kernel, sharing the host's root filesystem read-only (writable
overlays on /tmp, /var, /etc, ...). One boot runs one command, normally the whole vm suite:

    python -m tests.vmbed [--memory 3G] [--timeout 4800] [--run-dir DIR] [-- COMMAND...]

Without a command it runs `pytest -m vm tests` and leaves junit.xml in the run directory.
The run directory (default `.vmrun/<timestamp>-<pid>/`) is the only place the VM can write that
the host sees: it holds the command, console.log and `exit-code`, written by
tests/vm_inside.sh after the command ends. No exit-code file means the command never ran, which
is a failure whatever qemu returned.

Environment: DOMU_VM_MEMORY, DOMU_VM_CPUS, DOMU_VM_TIMEOUT (seconds, default 4800: below CI's
90 minutes with room for set-up, so a stuck VM ends with a clear message), DOMU_VM_KVM=1 (try KVM,
with a probe; the default is software emulation because KVM aborts on these machines).
Variables named DOMU_* and PYTEST_ADDOPTS are passed into the VM. DOMU_VM_PYIMAGE=0 turns off
the Python images below (to compare, or to rule them out).

Python trees: every stat and open of an import is a 9p round trip under emulation, so Python's
start-up (seconds per process) dominated the suites. Before booting, the runner puts the stdlib,
Debian's dist-packages and the venv's site-packages each in a read-only ext4 image (cached in
.vmrun/pyimg, rebuilt when the tree's metadata changes) that vm_inside.sh loop-mounts over the same
path; the repository's own package stays the working tree's (editable install). It also compiles
the working tree's .pyc (the VM cannot write them). Any failure there: a one-line message, and the
run goes on without it.

Library use (other suites):  `run_in_vm([...argv...], memory="2G").exit_code`
"""
from __future__ import annotations

import argparse
import compileall
import dataclasses
import glob
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSIDE_SCRIPT = REPO / "tests" / "vm_inside.sh"
VMRUN = REPO / ".vmrun"
VENV_BIN = REPO / ".venv" / "bin"
PYIMG_DIR = VMRUN / "pyimg"
# Bumped when the image layout changes, so older cached images are not reused.
PYIMG_FORMAT = "1"

# Exit codes of the runner itself (a command's own exit code is passed through).
EXIT_NOT_RUN = 125      # the VM did not run the command (no exit-code file)
EXIT_TIMEOUT = 124      # killed after --timeout seconds
EXIT_HOST_LEFTOVER = 3  # the run changed the host's loop devices or mounts

PASSTHROUGH_ENV = re.compile(r"^(DOMU_(?!VM_)\w+|PYTEST_ADDOPTS|HYPOTHESIS_\w+)$")


@dataclasses.dataclass
class VmResult:
    exit_code: int
    run_dir: Path
    seconds: float
    ran: bool             # the command ran to completion inside the VM
    message: str = ""     # why it failed, when the runner (not the command) failed


def find_kernel() -> str:
    """The newest Debian generic kernel; `-cloud-` kernels lack 9p and cannot mount the root."""
    candidates = []
    for path in glob.glob("/boot/vmlinuz-*-amd64"):
        version = path[len("/boot/vmlinuz-"):]
        if "-cloud-" in version or not os.path.isdir(f"/lib/modules/{version}"):
            continue
        key = [int(n) for n in re.findall(r"\d+", version)]
        candidates.append((key, path))
    if not candidates:
        raise SystemExit("vmbed: no /boot/vmlinuz-*-amd64 with modules (apt-get install linux-image-amd64)")
    return max(candidates)[1]


def _vng() -> str:
    vng = VENV_BIN / "vng"
    if not vng.exists():
        raise SystemExit(f"vmbed: {vng} missing; run `make deps` first")
    return str(vng)


def _vng_env() -> dict:
    # vng finds its helpers (virtme-run, ...) on PATH
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
    return env


def vng_argv(kernel: str, *, memory: str, cpus: int, kvm: bool, rwdirs: list[str], exec_cmd: str) -> list[str]:
    argv = [_vng(), "--run", kernel, "--memory", memory, "--cpus", str(cpus)]
    if not kvm:
        argv.append("--disable-kvm")
    for d in rwdirs:
        argv += ["--rwdir", d]
    return argv + ["--exec", exec_cmd]


def kvm_usable(kernel: str) -> bool:
    """Boot once with KVM; qemu aborts on these machines ("failed to set MSR") or hangs."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = vng_argv(kernel, memory="512M", cpus=1, kvm=True, rwdirs=[], exec_cmd="echo domu-kvm-ok")
    proc = subprocess.Popen(argv, env=_vng_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        _kill_group(proc)        # vng and its qemu: a hung probe must not outlive us
        return False
    return proc.returncode == 0 and "domu-kvm-ok" in stdout


def python_trees() -> list[Path]:
    """The trees every Python start in the VM reads: the stdlib, Debian's dist-packages (pyparted,
    libvirt) and the venv's site-packages. Not the repository: its code must be the working tree's."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.base_prefix) / "lib" / version, Path("/usr/lib/python3/dist-packages"),
                  *sorted((REPO / ".venv" / "lib").glob("python3*/site-packages"))]
    trees = []
    for tree in candidates:
        real = Path(os.path.realpath(tree))
        if tree.is_dir() and not tree.is_symlink() and real not in REPO.parents and real != REPO:
            trees.append(tree)
    return trees


def scan_tree(root: Path) -> tuple[str, int, int]:
    """(fingerprint, bytes to reserve, inodes) of a tree. The fingerprint covers every entry's
    name, type, mode, owner, size, mtime, ctime and inode: pip and dpkg replace files (new inode,
    new ctime), so any install, upgrade or removal changes it; content is not read (too slow)."""
    h = hashlib.sha256(f"{PYIMG_FORMAT}\0{root}\n".encode())
    blocks, inodes = 0, 1

    def add(path: str, rel: str) -> None:
        nonlocal blocks, inodes
        st = os.lstat(path)
        h.update(os.fsencode(rel) + b"\0" + f"{st.st_mode} {st.st_uid} {st.st_gid} {st.st_size} "
                 f"{st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}\n".encode())
        inodes += 1
        blocks += (st.st_size + 4095) // 4096 + 1

    add(str(root), ".")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            add(path, os.path.relpath(path, root))
    return h.hexdigest()[:20], blocks * 4096, inodes


def _image_stem(tree: Path) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(tree).strip("/"))


def build_tree_image(tree: Path, dest: Path) -> tuple[Path, bool]:
    """A read-only ext4 image of `tree` with the same names, modes, owners and mtimes (so the
    tree's .pyc stay valid), cached in `dest` by fingerprint. Returns (image, built now).
    Raises OSError or CalledProcessError when it cannot be built."""
    fingerprint, size, inodes = scan_tree(tree)
    stem = _image_stem(tree)
    image = dest / f"{stem}-{fingerprint}.ext4"
    if image.exists():
        return image, False
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{image.name}.{os.getpid()}.tmp"
    try:
        # Sparse file; the margin covers directories' and metadata blocks, which the scan does not.
        with open(tmp, "wb") as f:
            f.truncate(size + size // 4 + 32 * 1024 * 1024)
        # mke2fs -d copies the tree without mounting anything (nothing changes on the host).
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-N", str(inodes + 64),
                        "-O", "^has_journal", "-L", "domu-py", "-d", str(tree), str(tmp)],
                       check=True, capture_output=True, env=_tools_env())
        # The image's root is the tree itself: no lost+found that the original does not have.
        subprocess.run(["debugfs", "-w", "-R", "rmdir lost+found", str(tmp)],
                       check=True, capture_output=True, env=_tools_env())
        if scan_tree(tree)[0] != fingerprint:
            raise OSError(f"{tree} changed while its image was built")
        os.replace(tmp, image)
    finally:
        tmp.unlink(missing_ok=True)
    for old in dest.glob(f"{stem}-*.ext4"):
        if old != image:
            old.unlink(missing_ok=True)
    return image, True


def _tools_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{env.get('PATH', '/usr/bin:/bin')}:/usr/sbin:/sbin"
    return env


def python_images(trees: list[Path] | None = None, dest: Path | None = None) -> tuple[list[tuple[Path, Path]], str]:
    """(image, mount point) pairs for the VM and a one-line note of what happened. A failure is
    no error: the VM then reads that tree over 9p as before, and the note says why."""
    dest = PYIMG_DIR if dest is None else dest
    pairs, built, failed = [], [], []
    for tree in python_trees() if trees is None else trees:
        try:
            image, new = build_tree_image(tree, dest)
        except Exception as e:      # whatever goes wrong, the run goes on over 9p: a speed-up only
            detail = e.stderr.decode(errors="replace").strip() if getattr(e, "stderr", None) else str(e)
            failed.append(f"{tree} ({detail.splitlines()[-1] if detail else e})")
            continue
        pairs.append((image, tree))
        if new:
            built.append(str(tree))
    note = f"python trees from images: {len(pairs)}" + (f" (built {', '.join(built)})" if built else " (cached)")
    if failed:
        note += f"; over 9p as before: {'; '.join(failed)}"
    return pairs, note


def compile_working_tree() -> str:
    """Compile the working tree's .pyc before boot: with PYTHONDONTWRITEBYTECODE in the VM, every
    process would otherwise compile the modules it imports again. Stale .pyc are recompiled
    (source mtime and size), so the code run is still the working tree's. Returns a note on failure."""
    try:
        ok = all([compileall.compile_dir(str(REPO / d), quiet=2) for d in ("domu_snapshot", "tests", "bench",
                                                                            "bareos_plugin") if (REPO / d).is_dir()])
    except Exception as e:          # a speed-up only: never a reason to fail the run
        return f"could not compile the working tree's .pyc: {e}"
    return "" if ok else "some working-tree modules did not compile (they will fail in the VM too)"


def host_state() -> dict:
    """Loop devices and mount points of the host, to prove a VM run leaves nothing behind."""
    loops = json.loads(subprocess.run(["losetup", "--json", "--list"], capture_output=True,
                                      text=True).stdout or '{"loopdevices": []}')["loopdevices"]
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(line.split()[4] for line in f)
    return {"loop": sorted((d.get("name"), d.get("back-file")) for d in loops), "mounts": mounts}


def _diff_state(before: dict, after: dict) -> list[str]:
    out = []
    for key in before:
        added = sorted(set(map(str, after[key])) - set(map(str, before[key])))
        removed = sorted(set(map(str, before[key])) - set(map(str, after[key])))
        out += [f"{key} added on the host: {x}" for x in added]
        out += [f"{key} gone from the host: {x}" for x in removed]
    return out


def new_run_dir(name: str | None = None) -> Path:
    d = VMRUN / (name or time.strftime("%Y%m%d-%H%M%S-") + str(os.getpid()))
    d.mkdir(parents=True, exist_ok=False)
    return d


def default_command(run_dir: Path) -> list[str]:
    # vm_inside.sh adds `-p no:cacheprovider` (read-only repository) through PYTEST_ADDOPTS
    return [str(VENV_BIN / "python"), "-m", "pytest", "-m", "vm", "--durations=40",
            f"--junitxml={run_dir}/junit.xml", "tests"]


def run_in_vm(command: list[str], *, run_dir: Path | str | None = None, memory: str | None = None,
              cpus: int | None = None, timeout: float | None = None, kvm: bool | None = None,
              env: dict | None = None, rwdirs: list[str] = (), out=None,
              pyimages: bool | None = None) -> VmResult:
    """Boot the VM, run `command` (an argv list) inside as root, stream its output to `out`.
    `pyimages` (default: unless DOMU_VM_PYIMAGE=0) mounts Python's trees from local images."""
    out = out or sys.stdout
    memory = memory or os.environ.get("DOMU_VM_MEMORY", "3G")
    cpus = int(cpus or os.environ.get("DOMU_VM_CPUS", "2"))
    timeout = float(timeout or os.environ.get("DOMU_VM_TIMEOUT", "4800"))
    run_dir = Path(run_dir).resolve() if run_dir else new_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    exit_file = run_dir / "exit-code"
    started_file = run_dir / "started"
    # argv and environment go through NUL-separated files: no quoting through vng's shell
    (run_dir / "command").write_bytes(b"".join(os.fsencode(a) + b"\0" for a in command))
    passed = {k: v for k, v in os.environ.items() if PASSTHROUGH_ENV.match(k)}
    passed.update(env or {})
    (run_dir / "env").write_bytes(b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in passed.items()))

    if pyimages is None:
        pyimages = os.environ.get("DOMU_VM_PYIMAGE", "1") != "0"
    notes = []
    if pyimages:
        pairs, note = python_images()
        notes.append(note)
        notes.append(compile_working_tree())
        (run_dir / "pyimages").write_bytes(b"".join(os.fsencode(str(p)) + b"\0" for pair in pairs for p in pair))
    else:
        (run_dir / "pyimages").unlink(missing_ok=True)
        notes.append("python trees over 9p (DOMU_VM_PYIMAGE=0)")

    kernel = find_kernel()
    if kvm is None:
        kvm = os.environ.get("DOMU_VM_KVM") == "1" and kvm_usable(kernel)
    exec_cmd = " ".join(shlex.quote(a) for a in ["bash", str(INSIDE_SCRIPT), str(run_dir), str(REPO)])
    argv = vng_argv(kernel, memory=memory, cpus=cpus, kvm=kvm,
                    rwdirs=[str(run_dir), *rwdirs], exec_cmd=exec_cmd)
    print(f"vmbed: {os.path.basename(kernel)}, {'kvm' if kvm else 'tcg (no kvm)'}, {cpus} cpus, "
          f"{memory}, timeout {timeout:.0f}s, run dir {os.path.relpath(run_dir)}", file=out, flush=True)
    for note in filter(None, notes):
        print(f"vmbed: {note}", file=out, flush=True)

    before = host_state()
    start = time.monotonic()
    for attempt in (1, 2):
        exit_file.unlink(missing_ok=True)
        started_file.unlink(missing_ok=True)
        returncode, timed_out = _boot(argv, run_dir, start + timeout - time.monotonic(), out)
        # A VM that never reached vm_inside.sh (qemu or virtme failing at start, seen once among
        # several concurrent boots) is booted once more; a command that started is never rerun.
        if timed_out or exit_file.exists() or started_file.exists() or attempt == 2:
            break
        print(f"vmbed: the VM did not boot (vng exited {returncode}); booting again", file=out, flush=True)
    seconds = time.monotonic() - start

    result = VmResult(exit_code=0, run_dir=run_dir, seconds=seconds, ran=False)
    if timed_out:
        result.exit_code, result.message = EXIT_TIMEOUT, f"the VM was killed after the {timeout:.0f}s timeout"
    elif not exit_file.exists():
        result.exit_code = EXIT_NOT_RUN
        result.message = (f"the VM did not run the command (no {exit_file.name}; vng exited {returncode}); "
                          f"see {os.path.relpath(run_dir)}/console.log")
    else:
        text = exit_file.read_text().strip()
        result.exit_code = int(text) if text.isdigit() else EXIT_NOT_RUN
        result.ran = result.exit_code != EXIT_NOT_RUN      # vm_inside.sh writes 125 when set-up fails
        if not result.ran:
            result.message = "set-up inside the VM failed (see the messages above)"

    leftovers = _diff_state(before, host_state())
    if leftovers:
        result.message = "; ".join([result.message] + leftovers if result.message else leftovers)
        if result.exit_code == 0:
            result.exit_code = EXIT_HOST_LEFTOVER
    return result


def _boot(argv: list[str], run_dir: Path, timeout: float, out) -> tuple[int, bool]:
    """Run vng, copy its output live to `out` and console.log; (vng's exit code, timed out)."""
    timed_out = threading.Event()
    with open(run_dir / "console.log", "ab") as log:
        proc = subprocess.Popen(argv, env=_vng_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)

        def kill_on_timeout():
            if proc.poll() is None:
                timed_out.set()
                _kill_group(proc)

        timer = threading.Timer(max(timeout, 1), kill_on_timeout)
        timer.daemon = True
        timer.start()
        try:
            for line in iter(proc.stdout.readline, b""):
                log.write(line)
                log.flush()
                out.write(line.decode("utf-8", "replace"))
                out.flush()
            proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            timer.cancel()
    return proc.returncode, timed_out.is_set()


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop vng and the qemu it started (their own process group), politely first."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m tests.vmbed", description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", help="VM memory (default $DOMU_VM_MEMORY or 3G)")
    p.add_argument("--cpus", type=int, help="VM cpus (default $DOMU_VM_CPUS or 2)")
    p.add_argument("--timeout", type=float, help="seconds before the VM is killed (default $DOMU_VM_TIMEOUT or 4800)")
    p.add_argument("--run-dir", help="results directory (default .vmrun/<timestamp>-<pid>)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="set in the VM")
    args = p.parse_args(argv)
    env = dict(e.split("=", 1) for e in args.env)

    if os.geteuid() != 0:
        print("vmbed: must run as root (qemu, and the VM shares root's view of the host)", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir).resolve() if args.run_dir else new_run_dir()
    if not command:
        command = default_command(run_dir)
    res = run_in_vm(command, run_dir=run_dir, memory=args.memory, cpus=args.cpus,
                    timeout=args.timeout, env=env)
    status = "ok" if res.exit_code == 0 else f"FAILED (exit {res.exit_code})"
    print(f"vmbed: {status} in {res.seconds:.0f}s; results in {os.path.relpath(res.run_dir)}", flush=True)
    if res.message:
        print(f"vmbed: {res.message}", file=sys.stderr, flush=True)
    if res.exit_code == 5 and command[1:3] == ["-m", "pytest"]:
        print("vmbed: pytest collected no tests in the VM: that is a failure", file=sys.stderr)
    return res.exit_code


if __name__ == "__main__":
    sys.exit(main())
