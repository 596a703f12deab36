"""The Debian package, installed for real in the VM test bed (issue 17).

The host builds the package before the VM boots (`make test-vm` and `make test` depend on
`make deb`, which leaves dist/domu-snapshot_<version>_all.deb); this test builds nothing. The
shared root is read-only in the VM, so an overlayfs over /usr (upper layer on a tmpfs of its
own) takes dpkg's writes there; /etc and /var (dpkg's database) are writable overlays of the VM
already. Then: the files are where the package says (Debian policy), the commands run from the
installed module, the cleanup unit is enabled, the demo's steps run on a small guest from the
installed files, and `dpkg --purge` leaves nothing behind. The overlay is unmounted at the end.
"""
from __future__ import annotations

import contextlib
import ctypes
import filecmp
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
VG = "domutest"
MOUNT_ROOT = "/tmp/domu-deb-mnt"
UNIT = "domu-snapshot-cleanup.service"
WANTS_LINK = Path("/etc/systemd/system/multi-user.target.wants") / UNIT
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
PLUGIN = Path("/usr/lib/bareos/plugins/bareos-fd-domu-snapshot.py")
# Only Debian's tools and python3: not the venv's console scripts, not the repository.
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
       "DEBIAN_FRONTEND": "noninteractive", "LVM_SUPPRESS_FD_WARNINGS": "1",
       "PYTHONDONTWRITEBYTECODE": "1"}
# man-db's trigger would rebuild the whole manual database (minutes under emulation, over 9p);
# its own switch turns that off (this /var is the VM's throwaway overlay).
MANDB_AUTO_UPDATE = Path("/var/lib/man-db/auto-update")
# umount(8) cannot unmount the overlay: its own binary and libraries are mapped from it (EBUSY).
# This process was started from the /usr below, so it calls umount2(2) itself.
_LIBC = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def umount(path: str, flags: int = 0) -> None:
    if _LIBC.umount2(os.fsencode(path), flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"umount {path}: {os.strerror(errno)}")


PLUGIN_JOB = """
import json, sys
tests, module_path, mount_root, vg, lv = sys.argv[1:]
sys.path.insert(0, tests)
import fd_harness
definition = fd_harness.example_plugin_definition(module_path=module_path, mount_root=mount_root, vg=vg,
                                                  include=lv, quiesce="none")
result = fd_harness.FileDaemon(definition, **fd_harness.example_fileset_options()).backup()
import domu_snapshot
print(json.dumps({"status": result.status, "core": domu_snapshot.__file__,
                  "plugin": sys.modules["bareos-fd-domu-snapshot"].__file__,
                  "files": sorted(r.fname for r in result.with_data),
                  "messages": [str(m) for m in result.job.messages]}))
"""


def deb_file() -> Path:
    first = (REPO / "debian" / "changelog").read_text().splitlines()[0]
    version = re.match(r"^\S+ \(([^)]+)\)", first).group(1)
    path = REPO / "dist" / f"domu-snapshot_{version}_all.deb"
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing: the host builds it before the VM boots "
                    f"(`make deb`; `make test-vm` and `make test` do it)")
    return path


def run(*argv, check=True, cwd="/", env=None, **kw):
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=env or ENV, cwd=cwd, **kw)
    if check:
        assert proc.returncode == 0, f"{' '.join(argv)} -> exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def domu_snapshot(*args):
    return run("/usr/sbin/domu-snapshot", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
               "--quiesce", "none", *args, check=False, timeout=600)


def is_mountpoint(path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


def package_files() -> list[str]:
    return run("dpkg-query", "-L", "domu-snapshot").stdout.split("\n")


def dpkg_status() -> str:
    proc = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "domu-snapshot", check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "not known"


def process_names() -> set[str]:
    names = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            names.add(comm.read_text().strip())
    return names


def holders(dev: int) -> list[str]:
    """Processes with a file of device `dev` mapped, open, as cwd, root or executable."""
    found = []
    hexdev = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            comm = (proc / "comm").read_text().strip()
            links = [proc / "cwd", proc / "root", proc / "exe", *(proc / "fd").iterdir()]
            used = [str(os.readlink(link)) for link in links if os.stat(link).st_dev == dev]
            used += [line.split()[5] for line in (proc / "maps").read_text().splitlines()
                     if len(line.split()) > 5 and line.split()[3] == hexdev]
            if used:
                found.append(f"{proc.name} {comm}: {sorted(set(used))[:3]}")
    return found


@contextlib.contextmanager
def writable_usr():
    """An overlayfs over /usr whose upper layer is a tmpfs of its own (/tmp in the VM is itself an
    overlay, which overlayfs refuses as an upper layer). It also hides the read-only Python images
    that tests/vmbed.py mounts on /usr/lib/python3*, where dpkg must write. Unmounted afterwards."""
    # lvcreate --snapshot starts dmeventd (snapshot monitoring) when none runs: started from the
    # overlay, it would keep /usr busy. Start it first, as the first snapshot would, from the root.
    if "dmeventd" not in process_names():
        run("dmeventd", check=False)
    scratch = Path(tempfile.mkdtemp(prefix="domu-deb-usr.", dir="/run"))
    run("mount", "-t", "tmpfs", "-o", "mode=0755", "domu-deb-usr", str(scratch))
    try:
        (scratch / "upper").mkdir()
        (scratch / "work").mkdir()
        run("mount", "-t", "overlay", "domu-deb-usr", "-o",
            f"lowerdir=/usr,upperdir={scratch}/upper,workdir={scratch}/work", "/usr")
        overlay_dev = os.stat("/usr").st_dev
        try:
            yield scratch / "upper"
        finally:
            try:
                umount("/usr")
            except OSError as exc:
                users = holders(overlay_dev)
                umount("/usr", MNT_DETACH)      # the rest of the suite needs its /usr back
                pytest.fail(f"the overlay on /usr was busy: {exc}; used by {users or 'no process'}")
    finally:
        run("umount", str(scratch), check=False)
        os.rmdir(scratch)


@pytest.fixture
def usr_overlay():
    mandb_was_on = MANDB_AUTO_UPDATE.exists()
    MANDB_AUTO_UPDATE.unlink(missing_ok=True)
    try:
        with writable_usr() as upper:
            yield upper
    finally:
        # Whatever happened in the test: no package left in this VM's dpkg database.
        if dpkg_status() not in ("not known", "un", "pn"):
            run("dpkg", "--purge", "domu-snapshot", check=False)
        if mandb_was_on:
            MANDB_AUTO_UPDATE.touch()


def test_deb_package_installs_runs_and_purges(usr_overlay, make_guest, guest_vg):
    deb = deb_file()
    assert dpkg_status() in ("not known", "un", "pn"), "domu-snapshot is installed already on the shared root"
    assert not WANTS_LINK.exists() and not Path("/usr/sbin/domu-snapshot").exists()

    # -- install, with the Depends as the host has them (make deps installs them)
    run("dpkg", "-i", str(deb))
    assert dpkg_status() == "ii"
    files = package_files()
    assert usr_overlay.joinpath("sbin/domu-snapshot").is_file(), "dpkg did not write through the overlay"

    # -- the files are where policy and the package's description say
    for command in ("domu-snapshot", "foreach-domu"):
        path = Path("/usr/sbin") / command
        assert str(path) in files and os.access(path, os.X_OK), f"{path} not installed as an executable"
        assert not Path("/usr/bin", command).exists(), f"/usr/bin/{command}: admin commands belong in /usr/sbin"
        assert path.read_text().startswith("#!/usr/bin/python3"), f"{path} does not run Debian's python3"
    for name in ("__init__.py", "cli.py", "lifecycle.py", "bareos/job.py"):
        assert str(DIST_PACKAGES / "domu_snapshot" / name) in files
    man = {"/usr/share/man/man8/domu-snapshot.8.gz", "/usr/share/man/man8/foreach-domu.8.gz",
           "/usr/share/man/man5/domu-snapshot.conf.5.gz"}
    assert man <= set(files), f"man pages missing: {man - set(files)}"
    examples = Path("/usr/share/doc/domu-snapshot/examples")
    wanted = {p.name for p in [*REPO.glob("etc/bareos/*"), *REPO.glob("etc/bacula/*"), REPO / "etc/domu-snapshot.conf"]}
    assert wanted <= {p.name for p in examples.iterdir()}, f"examples missing: {wanted - set(os.listdir(examples))}"
    assert Path("/usr/share/doc/domu-snapshot/copyright").is_file()
    stray = [f for f in files if f and not f.startswith(("/usr/", "/lib/systemd/system", "/etc/domu-snapshot.conf"))
             and f not in ("/.", "/etc", "/lib", "/lib/systemd", "/usr")]
    assert not stray and not [f for f in files if f.startswith("/usr/local")], f"files outside /usr: {stray}"

    # the conffile is the repository's example
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", "domu-snapshot").stdout
    assert "/etc/domu-snapshot.conf" in conffiles, f"not a conffile: {conffiles!r}"
    assert filecmp.cmp("/etc/domu-snapshot.conf", REPO / "etc/domu-snapshot.conf", shallow=False)

    # one installed core: the plugin file bareos-fd loads, and no second copy next to it
    assert PLUGIN.is_file() and filecmp.cmp(PLUGIN, REPO / "bareos_plugin" / PLUGIN.name, shallow=False)
    assert not PLUGIN.parent.joinpath("domu_snapshot").exists(), "a second copy of the core next to the plugin"
    assert [f for f in files if f.endswith("/domu_snapshot/__init__.py")] == [str(DIST_PACKAGES / "domu_snapshot/__init__.py")]
    # the package is this working tree's (a stale .deb would test old code)
    stale = [f for f in files if f.startswith(f"{DIST_PACKAGES}/domu_snapshot/") and f.endswith(".py")
             and not filecmp.cmp(f, REPO / f[len(f"{DIST_PACKAGES}/"):], shallow=False)]
    assert not stale, f"{deb.name} is older than the working tree ({stale}): run `make deb`"

    # the cleanup unit: the package's path, enabled at boot
    unit = Path("/lib/systemd/system") / UNIT
    assert str(unit) in files and "ExecStart=/usr/sbin/domu-snapshot cleanup\n" in unit.read_text()
    assert WANTS_LINK.is_symlink() and Path(os.path.realpath(WANTS_LINK)) == Path(os.path.realpath(unit)), \
        f"{WANTS_LINK}: the unit is not enabled"

    # -- the commands run from the installed module, not from the repository
    where = run("python3", "-c", "import domu_snapshot; print(domu_snapshot.__file__)").stdout.strip()
    assert where == str(DIST_PACKAGES / "domu_snapshot" / "__init__.py"), where
    helped = run("/usr/sbin/domu-snapshot", "--help", env=dict(ENV, PYTHONVERBOSE="1"))
    assert "usage: domu-snapshot" in helped.stdout
    imported = re.findall(r"code object from '([^']*/domu_snapshot/[^']*)'", helped.stderr)
    assert any("/cli." in p for p in imported), helped.stderr[-2000:]
    assert all(p.startswith(f"{DIST_PACKAGES}/domu_snapshot/") for p in imported), imported
    assert str(REPO) not in helped.stderr, "the installed command imported something from the repository"
    foreach = run("/usr/sbin/foreach-domu", "--help", check=False)
    assert foreach.returncode in (0, 2) and "foreach-domu" in foreach.stdout + foreach.stderr, foreach
    assert "Traceback" not in foreach.stderr, foreach.stderr

    # -- the demo's steps from the installed files, with the installed /etc/domu-snapshot.conf
    guest = make_guest("msdos-ext4-1m")
    listed = domu_snapshot("list")
    assert listed.returncode == 0 and guest.lv in listed.stdout, listed.stdout + listed.stderr
    mounted = domu_snapshot("mount", guest.lv)
    try:
        assert mounted.returncode == 0, mounted.stdout + mounted.stderr
        root = Path(MOUNT_ROOT, VG, guest.lv)
        assert is_mountpoint(root)
        ls = run("ls", "-la", str(root / "etc"))
        assert "hostname" in ls.stdout, ls.stdout
        assert (root / "etc/hostname").stat().st_size == guest.tree["etc/hostname"]["size"]
    finally:
        unmounted = domu_snapshot("unmount", guest.lv)
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    assert guest_vg.leftovers() == []

    # -- one Bareos plugin job from the installed plugin file and core, in Debian's python3 (as
    # bareos-fd embeds it), driven by the harness's stand-in for bareos-fd: only tests/ (for the
    # harness) is added to sys.path, never the repository, so the core can only be the package's
    job = run("python3", "-c", PLUGIN_JOB, str(REPO / "tests"), str(PLUGIN.parent), MOUNT_ROOT, VG, guest.lv,
              timeout=600, check=False)
    assert job.returncode == 0, job.stdout + job.stderr
    report = json.loads(job.stdout.splitlines()[-1])
    assert report["status"] == "T", report
    assert report["core"] == str(DIST_PACKAGES / "domu_snapshot/__init__.py"), report["core"]
    assert report["plugin"] == str(PLUGIN), report["plugin"]
    assert f"{MOUNT_ROOT}/{VG}/{guest.lv}/etc/hostname" in report["files"], report
    assert guest_vg.leftovers() == []

    # -- purge: nothing left but what policy keeps (nothing of this package)
    default_root = Path("/var/lib/domu-snapshot/mnt")
    made_default_root = not default_root.exists()
    if made_default_root:      # as the commands leave it after a run with the default mount root
        default_root.mkdir(parents=True)
    run("dpkg", "--purge", "domu-snapshot")
    assert dpkg_status() in ("not known", "un", "pn"), dpkg_status()
    left = [f for f in files if f.startswith(("/usr/sbin/", "/usr/lib/python3/dist-packages/domu_snapshot",
                                              "/usr/lib/bareos/", "/usr/share/doc/domu-snapshot",
                                              "/usr/share/man/", "/lib/systemd/system/", "/etc/"))
            and os.path.lexists(f) and not os.path.isdir(f)]
    assert not left, f"left after purge: {left}"
    for path in ("/usr/sbin/domu-snapshot", "/usr/sbin/foreach-domu", "/etc/domu-snapshot.conf", WANTS_LINK,
                 DIST_PACKAGES / "domu_snapshot", PLUGIN, "/usr/share/doc/domu-snapshot",
                 "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/" + UNIT):
        assert not os.path.lexists(path), f"{path} left after purge"
    if made_default_root:
        assert not Path("/var/lib/domu-snapshot").exists(), "purge left the (empty) default mount root"
