"""The Debian package, installed for real in the VM test bed (issue 17).

The host builds the package before the VM boots (`make test-vm` and `make test` depend on
`make deb`, which leaves dist/domu-snapshot_<version>_all.deb); this test builds nothing. The
shared root is read-only in the VM, so dpkg's writes to /usr go to an overlayfs (upper layer on a
tmpfs of its own) that exists only in a private mount namespace: the package's commands run there
(nsenter), its files are read through that namespace's root (/proc/PID/root), and the rest of the
suite never sees the overlay, whatever is left running from it. /etc and /var (dpkg's database)
are writable overlays of the VM already and shared. Then: the files are where the package says
(Debian policy), the commands run from the installed module, the cleanup unit is enabled, the
demo's steps run on a small guest from the installed files, and `dpkg --purge` leaves nothing
behind. Ending the namespace's one process ends the overlay.
"""
from __future__ import annotations

import contextlib
import filecmp
import json
import os
import re
import subprocess
import tempfile
import time
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


class Namespace:
    """A private mount namespace held open by one sleeping process, with /usr made writable."""

    def __init__(self):
        self.process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "infinity"],
                                        env=ENV, cwd="/")
        ours = os.readlink("/proc/self/ns/mnt")
        deadline = time.monotonic() + 30
        while self._ns() in (None, ours):
            assert self.process.poll() is None and time.monotonic() < deadline, "unshare --mount did not start"
            time.sleep(0.05)
        self.scratch = Path(tempfile.mkdtemp(prefix="domu-deb-usr.", dir="/run"))

    def _ns(self):
        with contextlib.suppress(OSError):
            return os.readlink(f"/proc/{self.process.pid}/ns/mnt")
        return None

    def argv(self, *argv) -> list[str]:
        return ["nsenter", f"--target={self.process.pid}", "--mount", "--", *map(str, argv)]

    def path(self, path) -> Path:
        """`path` as the namespace sees it (its /usr is the overlay)."""
        return Path(f"/proc/{self.process.pid}/root") / str(path).lstrip("/")

    def make_usr_writable(self):
        # The upper layer gets a tmpfs of its own: /tmp in the VM is itself an overlay, which
        # overlayfs refuses as an upper layer. The overlay also hides the read-only Python images
        # that tests/vmbed.py mounts on /usr/lib/python3*, where dpkg must write.
        run("mount", "-t", "tmpfs", "-o", "mode=0755", "domu-deb-usr", self.scratch, ns=self)
        run("mkdir", self.scratch / "upper", self.scratch / "work", ns=self)
        run("mount", "-t", "overlay", "domu-deb-usr", "-o",
            f"lowerdir=/usr,upperdir={self.scratch}/upper,workdir={self.scratch}/work", "/usr", ns=self)
        return self.path(self.scratch / "upper")

    def close(self):
        self.process.kill()
        self.process.wait(timeout=30)
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)      # empty here: the tmpfs was mounted only in the namespace


PLUGIN_JOB = """
import json, sys
tests, module_path, mount_root, vg, lv = sys.argv[1:]
sys.path.insert(0, tests)
import fd_harness
definition = fd_harness.example_plugin_definition(module_path=module_path, mount_root=mount_root, vg=vg,
                                                  include=lv, quiesce="none")
fd = fd_harness.FileDaemon(definition, **fd_harness.example_fileset_options())
result = fd.backup()
import importlib.util, domu_snapshot
# the harness drops the plugin's module at the job's end (bareos-fd ends the sub-interpreter);
# where the import finds it is what the job loaded
print(json.dumps({"status": result.status, "core": domu_snapshot.__file__,
                  "plugin": importlib.util.find_spec(fd.module_name).origin,
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


def run(*argv, check=True, cwd="/", env=None, ns: Namespace | None = None, **kw):
    argv = ns.argv(*argv) if ns else [str(a) for a in argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env or ENV, cwd=cwd, **kw)
    if check:
        assert proc.returncode == 0, f"{' '.join(argv)} -> exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def domu_snapshot(ns, *args):
    return run("/usr/sbin/domu-snapshot", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
               "--quiesce", "none", *args, check=False, timeout=600, ns=ns)


def package_files(ns) -> list[str]:
    return run("dpkg-query", "-L", "domu-snapshot", ns=ns).stdout.split("\n")


def dpkg_status(ns) -> str:
    proc = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "domu-snapshot", check=False, ns=ns)
    return proc.stdout.strip() if proc.returncode == 0 else "not known"


def process_names() -> set[str]:
    names = set()
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            names.add(comm.read_text().strip())
    return names


@pytest.fixture
def ns():
    """The namespace with the writable /usr; whatever happened in the test, no package is left in
    this VM's dpkg database (shared with the rest of the suite) and the namespace is gone."""
    # lvcreate --snapshot starts dmeventd (snapshot monitoring) when none runs: started inside
    # the namespace, it would outlive it and keep the overlay alive. Start it first, outside.
    if "dmeventd" not in process_names():
        run("dmeventd", check=False)
    mandb_was_on = MANDB_AUTO_UPDATE.exists()
    MANDB_AUTO_UPDATE.unlink(missing_ok=True)
    namespace = Namespace()
    try:
        namespace.upper = namespace.make_usr_writable()
        yield namespace
    finally:
        try:
            if dpkg_status(namespace) not in ("not known", "un", "pn"):
                run("dpkg", "--purge", "domu-snapshot", check=False, ns=namespace)
        finally:
            namespace.close()
            if mandb_was_on:
                MANDB_AUTO_UPDATE.touch()


def test_deb_package_installs_runs_and_purges(ns, make_guest, guest_vg):
    deb = deb_file()
    assert dpkg_status(ns) in ("not known", "un", "pn"), "domu-snapshot is installed already on the shared root"
    assert not WANTS_LINK.exists() and not ns.path("/usr/sbin/domu-snapshot").exists()

    # -- install, with the Depends as the host has them (make deps installs them)
    run("dpkg", "-i", deb, ns=ns)
    assert dpkg_status(ns) == "ii"
    files = package_files(ns)
    assert ns.upper.joinpath("sbin/domu-snapshot").is_file(), "dpkg did not write through the overlay"

    # -- the files are where policy and the package's description say
    for command in ("domu-snapshot", "foreach-domu"):
        path = Path("/usr/sbin") / command
        assert str(path) in files and os.access(ns.path(path), os.X_OK), f"{path} not installed as an executable"
        assert not ns.path(f"/usr/bin/{command}").exists(), f"/usr/bin/{command}: admin commands belong in /usr/sbin"
        assert ns.path(path).read_text().startswith("#!/usr/bin/python3"), f"{path} does not run Debian's python3"
    for name in ("__init__.py", "cli.py", "lifecycle.py", "bareos/job.py"):
        assert str(DIST_PACKAGES / "domu_snapshot" / name) in files
    man = {"/usr/share/man/man8/domu-snapshot.8.gz", "/usr/share/man/man8/foreach-domu.8.gz",
           "/usr/share/man/man5/domu-snapshot.conf.5.gz"}
    assert man <= set(files), f"man pages missing: {man - set(files)}"
    examples = ns.path("/usr/share/doc/domu-snapshot/examples")
    wanted = {p.name for p in [*REPO.glob("etc/bareos/*"), *REPO.glob("etc/bacula/*"), REPO / "etc/domu-snapshot.conf"]}
    assert wanted <= {p.name for p in examples.iterdir()}, f"examples missing: {wanted - set(os.listdir(examples))}"
    assert ns.path("/usr/share/doc/domu-snapshot/copyright").is_file()
    stray = [f for f in files if f and not f.startswith(("/usr/", "/lib/systemd/system", "/etc/domu-snapshot.conf"))
             and f not in ("/.", "/etc", "/lib", "/lib/systemd", "/usr")]
    assert not stray and not [f for f in files if f.startswith("/usr/local")], f"files outside /usr: {stray}"

    # the conffile is the repository's example
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", "domu-snapshot", ns=ns).stdout
    assert "/etc/domu-snapshot.conf" in conffiles, f"not a conffile: {conffiles!r}"
    assert filecmp.cmp("/etc/domu-snapshot.conf", REPO / "etc/domu-snapshot.conf", shallow=False)

    # one installed core: the plugin file bareos-fd loads, and no second copy next to it
    assert ns.path(PLUGIN).is_file() and filecmp.cmp(ns.path(PLUGIN), REPO / "bareos_plugin" / PLUGIN.name, shallow=False)
    assert not ns.path(PLUGIN.parent / "domu_snapshot").exists(), "a second copy of the core next to the plugin"
    assert [f for f in files if f.endswith("/domu_snapshot/__init__.py")] == [str(DIST_PACKAGES / "domu_snapshot/__init__.py")]
    # the package is this working tree's (a stale .deb would test old code)
    stale = [f for f in files if f.startswith(f"{DIST_PACKAGES}/domu_snapshot/") and f.endswith(".py")
             and not filecmp.cmp(ns.path(f), REPO / f[len(f"{DIST_PACKAGES}/"):], shallow=False)]
    assert not stale, f"{deb.name} is older than the working tree ({stale}): run `make deb`"

    # the cleanup unit: the package's path, enabled at boot
    unit = Path("/lib/systemd/system") / UNIT
    assert str(unit) in files and "ExecStart=/usr/sbin/domu-snapshot cleanup\n" in ns.path(unit).read_text()
    assert WANTS_LINK.is_symlink() and Path(os.path.realpath(WANTS_LINK)) == Path(os.path.realpath(unit)), \
        f"{WANTS_LINK}: the unit is not enabled"

    # -- the commands run from the installed module, not from the repository
    where = run("python3", "-c", "import domu_snapshot; print(domu_snapshot.__file__)", ns=ns).stdout.strip()
    assert where == str(DIST_PACKAGES / "domu_snapshot" / "__init__.py"), where
    helped = run("/usr/sbin/domu-snapshot", "--help", env=dict(ENV, PYTHONVERBOSE="1"), ns=ns)
    assert "usage: domu-snapshot" in helped.stdout
    imported = re.findall(r"code object from '([^']*/domu_snapshot/[^']*)'", helped.stderr)
    assert any("/cli." in p for p in imported), helped.stderr[-2000:]
    assert all(p.startswith(f"{DIST_PACKAGES}/domu_snapshot/") for p in imported), imported
    assert str(REPO) not in helped.stderr, "the installed command imported something from the repository"
    foreach = run("/usr/sbin/foreach-domu", "--help", check=False, ns=ns)
    assert foreach.returncode in (0, 2) and "foreach-domu" in foreach.stdout + foreach.stderr, foreach
    assert "Traceback" not in foreach.stderr, foreach.stderr

    # -- the demo's steps from the installed files, with the installed /etc/domu-snapshot.conf
    guest = make_guest("msdos-ext4-1m")
    listed = domu_snapshot(ns, "list")
    assert listed.returncode == 0 and guest.lv in listed.stdout, listed.stdout + listed.stderr
    mounted = domu_snapshot(ns, "mount", guest.lv)
    try:
        assert mounted.returncode == 0, mounted.stdout + mounted.stderr
        root = Path(MOUNT_ROOT, VG, guest.lv)
        assert run("mountpoint", "-q", root, check=False, ns=ns).returncode == 0, f"{root} is not mounted"
        ls = run("ls", "-la", root / "etc", ns=ns)
        assert "hostname" in ls.stdout, ls.stdout
        assert ns.path(root / "etc/hostname").stat().st_size == guest.tree["etc/hostname"]["size"]
    finally:
        unmounted = domu_snapshot(ns, "unmount", guest.lv)
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    assert guest_vg.leftovers() == []
    assert run("findmnt", "--list", "--noheadings", "-o", "TARGET", check=False, ns=ns).stdout.count(MOUNT_ROOT) == 0

    # -- one Bareos plugin job from the installed plugin file and core, in Debian's python3 (as
    # bareos-fd embeds it), driven by the harness's stand-in for bareos-fd: only tests/ (for the
    # harness) is added to sys.path, never the repository, so the core can only be the package's
    job = run("python3", "-c", PLUGIN_JOB, REPO / "tests", PLUGIN.parent, MOUNT_ROOT, VG, guest.lv,
              timeout=600, check=False, ns=ns)
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
    run("dpkg", "--purge", "domu-snapshot", ns=ns)
    assert dpkg_status(ns) in ("not known", "un", "pn"), dpkg_status()
    left = [f for f in files if f.startswith(("/usr/sbin/", "/usr/lib/python3/dist-packages/domu_snapshot",
                                              "/usr/lib/bareos/", "/usr/share/doc/domu-snapshot",
                                              "/usr/share/man/", "/lib/systemd/system/", "/etc/"))
            and os.path.lexists(ns.path(f)) and not os.path.isdir(ns.path(f))]
    assert not left, f"left after purge: {left}"
    for path in ("/usr/sbin/domu-snapshot", "/usr/sbin/foreach-domu", "/etc/domu-snapshot.conf", WANTS_LINK,
                 DIST_PACKAGES / "domu_snapshot", PLUGIN, "/usr/share/doc/domu-snapshot",
                 "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/" + UNIT):
        assert not os.path.lexists(ns.path(path)), f"{path} left after purge"
    if made_default_root:
        assert not Path("/var/lib/domu-snapshot").exists(), "purge left the (empty) default mount root"
