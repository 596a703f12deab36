"""The core lifecycle through the `domu-snapshot` CLI, on real LVM in the VM test bed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from domu_snapshot import commands
from tests import guestdisks

pytestmark = pytest.mark.vm

VG = "domutest"
MOUNT_ROOT = "/tmp/domu snapshot mnt"  # a space on purpose: paths are never split


def cli(*args, env=None, timeout=600):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
            "--quiesce", "none", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def findmnt(target):
    proc = subprocess.run(["findmnt", "--json", "--mountpoint", target, "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"],
                          capture_output=True, text=True)
    return json.loads(proc.stdout)["filesystems"][0] if proc.returncode == 0 else None


def loop_offset(device):
    rows = json.loads(subprocess.run(["losetup", "--json", "--list", "-O", "NAME,OFFSET,SIZELIMIT"],
                                     capture_output=True, text=True, check=True).stdout)["loopdevices"]
    row = next(r for r in rows if r["name"] == device)
    return int(row["offset"]), int(row["sizelimit"])


def mount_root_entries():
    if not os.path.isdir(MOUNT_ROOT):
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(MOUNT_ROOT):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


def assert_nothing_left(guest_vg):
    assert guest_vg.leftovers() == []
    assert mount_root_entries() == []


@pytest.fixture
def clean(guest_vg):
    """Every test starts and ends with nothing of ours on the system."""
    assert_nothing_left(guest_vg)
    yield
    cli("cleanup")
    assert_nothing_left(guest_vg)


def standard(guests):
    return sorted(name for name in guests if name.startswith("domu-"))


# --------------------------------------------------------------- mounting

def test_every_layout_mounts_the_right_filesystem_read_only(guest_vg, guests, clean):
    names = standard(guests)
    proc = cli("mount", *names)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in names:
        g = guests[name]
        target = os.path.join(MOUNT_ROOT, VG, name)
        if g.fstype is None:
            assert f"SKIPPED {name}" in proc.stderr and "only swap" in proc.stderr
            assert findmnt(target) is None
            continue
        assert f"OK      {name}" in proc.stdout
        mounted = findmnt(target)
        assert mounted is not None, f"{name} not mounted at {target}"
        options = set(mounted["options"].split(","))
        assert {"ro", "nosuid", "nodev", "noexec"} <= options
        assert mounted["fstype"] == g.fstype
        assert mounted["source"].startswith("/dev/loop")
        assert loop_offset(mounted["source"]) == (g.offset, g.fs_size)
        # The journal was replayed on the snapshot: every file of the guest is there, as written.
        assert guestdisks.compare_tree(target, g.tree) == []
        with pytest.raises(OSError) as refused:
            open(os.path.join(target, "new-file"), "w")
        assert refused.value.errno == 30  # EROFS
    assert oct(os.stat(MOUNT_ROOT).st_mode & 0o777) == "0o700"
    assert oct(os.stat(os.path.join(MOUNT_ROOT, VG)).st_mode & 0o777) == "0o700"

    status = json.loads(cli("status", "--json").stdout)
    assert sorted(os.path.basename(m["mount_path"]) for m in status["mounted"]) == \
        sorted(n for n in names if guests[n].fstype)
    assert status["leftovers"] == []

    proc = cli("unmount", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_nothing_left(guest_vg)
    # Nothing was ever written to an origin, nor to the LV without the prefix.
    for name, g in guests.items():
        assert guestdisks.device_sha256(g.lv_path) == g.sha256, f"{name} changed"


def test_list_shows_partition_and_offset(guests, clean):
    proc = cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["lv"]: row for row in json.loads(proc.stdout)}
    assert guestdisks.UNPREFIXED_LV not in rows
    for name in standard(guests):
        g = guests[name]
        if g.fstype:
            expected_number = 0 if g.partition is None else g.partition
            assert (rows[name]["partition"], rows[name]["offset"], rows[name]["fs"]) == \
                (expected_number, g.offset, g.fstype)
        else:
            assert rows[name]["offset"] is None and "no ext4/ext3" in rows[name]["problem"]
        assert rows[name]["mounted"] is False


def test_dry_run_changes_nothing(guest_vg, guests, clean):
    proc = cli("--dry-run", "mount", "--all")
    assert proc.returncode == 0, proc.stderr
    assert ("would run: lvcreate --snapshot --name domu-modern-dsnap --addtag domu_snapshot "
            "--addtag domu_snapshot_cli ") in proc.stdout
    assert_nothing_left(guest_vg)


def test_inactive_guest_is_reported_and_untouched(guest_vg, make_guest, clean):
    g = make_guest("msdos-ext4-1m", name="domu-sleeping", active=False)
    proc = cli("mount", "domu-sleeping")
    assert proc.returncode == 0
    assert "SKIPPED domu-sleeping" in proc.stderr and "not active" in proc.stderr
    lv = next(lv for lv in guest_vg.lvs() if lv["lv_name"] == "domu-sleeping")
    assert lv["lv_attr"][4] != "a"
    subprocess.run(["lvchange", "-ay", f"{VG}/domu-sleeping"], check=True)
    assert guestdisks.device_sha256(g.lv_path) == g.sha256


# ------------------------------------------------------------ bad input

def test_unknown_guest_is_a_usage_error(clean):
    proc = cli("mount", "domu-nosuch")
    assert proc.returncode == 2
    assert "unknown guest 'domu-nosuch'" in proc.stderr


def test_vg_too_small_creates_nothing(guest_vg, guests, clean):
    proc = cli("--snapshot-size", "2G", "mount", "domu-modern", "domu-gpt")
    assert proc.returncode == 1
    assert f"VG {VG} has" in proc.stderr and "short by" in proc.stderr
    assert "FAILED  domu-modern" in proc.stderr and "FAILED  domu-gpt" in proc.stderr
    assert_nothing_left(guest_vg)


def test_over_long_name_fails_before_lvm_is_asked(guest_vg, make_guest, clean):
    # LVM accepts this LV (its device-mapper name, hyphens doubled, is 121 characters) but the
    # snapshot's `-cow` device name would be 131: past the kernel's 127.
    name = "domu-" + "-".join(["x"] * 36)
    make_guest("whole-ext4", name=name, size_mib=8)
    proc = cli("mount", name)
    assert proc.returncode == 1
    assert "snapshot name failed" in proc.stderr and "device-mapper name" in proc.stderr
    assert "lvrename" in proc.stderr
    assert_nothing_left(guest_vg)


def test_non_root_gets_a_clear_error():
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "list"],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 2
    assert "must run as root" in proc.stderr


# ------------------------------------------------------- fault injection

def _wrap(tmp_path, tool, script):
    """A `tool` earlier on PATH that runs `script` (sh) and may call the real one as $REAL."""
    real = shutil.which(tool)
    wrapper = tmp_path / "bin" / tool
    wrapper.parent.mkdir(exist_ok=True)
    wrapper.write_text(f"#!/bin/sh\nREAL={real}\n{script}\n")
    wrapper.chmod(0o755)
    env = dict(os.environ)
    env["DOMU_SNAPSHOT_TOOL_PATH"] = f"{wrapper.parent}:{commands.TOOL_PATH}"  # tools are not looked up on PATH
    return env


FAIL = 'echo "injected failure of $(basename $0)" >&2; exit 5'

SETUP_FAULTS = {
    "lvcreate": ("lvcreate", FAIL, "snapshot failed"),
    "losetup": ("losetup", 'case "$*" in *--find*) ' + FAIL + ';; esac; exec $REAL "$@"', "loop device failed"),
    "e2fsck": ("e2fsck", 'echo "injected failure of e2fsck" >&2; exit 8', "journal replay failed"),
    "mount": ("mount", FAIL, "mount failed"),
}


@pytest.mark.parametrize("step", sorted(SETUP_FAULTS))
def test_failing_setup_step_leaves_nothing(guest_vg, tmp_path, clean, step):
    tool, script, message = SETUP_FAULTS[step]
    proc = cli("mount", "domu-modern", env=_wrap(tmp_path, tool, script))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAILED  domu-modern: {message}" in proc.stderr
    assert f"injected failure of {tool}" in proc.stderr
    # Right after the failing run, not only after cleanup.
    assert_nothing_left(guest_vg)


def test_partition_probe_failure_leaves_nothing(guest_vg, tmp_path, clean):
    crash = tmp_path / "python-crash"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    env = dict(os.environ, DOMU_SNAPSHOT_PROBE_PYTHON=str(crash))
    proc = cli("mount", "domu-modern", env=env)
    assert proc.returncode == 1
    assert "partition probe failed" in proc.stderr and "crashed (SIGSEGV)" in proc.stderr
    assert_nothing_left(guest_vg)


@pytest.mark.parametrize("tool", ["umount", "lvremove", "losetup"])
def test_failing_teardown_step_is_reported_then_cleanup_removes_all(guest_vg, tmp_path, clean, tool):
    proc = cli("mount", "domu-modern")
    assert proc.returncode == 0, proc.stderr
    script = FAIL if tool != "losetup" else 'case "$*" in *--detach*) ' + FAIL + ';; esac; exec $REAL "$@"'
    proc = cli("unmount", "domu-modern", env=_wrap(tmp_path, tool, script))
    assert proc.returncode == 1
    assert "FAILED  domu-modern" in proc.stderr and f"injected failure of {tool}" in proc.stderr
    assert "domu-snapshot cleanup" in proc.stderr  # says what to do
    assert guest_vg.leftovers() != []
    proc = cli("cleanup")
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(guest_vg)


@pytest.mark.parametrize("tool", ["lvcreate", "losetup", "e2fsck", "mount"])
def test_kill_9_mid_run_then_cleanup_leaves_nothing(guest_vg, tmp_path, clean, tool):
    # The real command runs, then its caller is killed outright: nothing can tidy up.
    script = '$REAL "$@"; rc=$?; kill -9 $PPID; exit $rc'
    if tool == "losetup":
        script = 'case "$*" in *--find*) $REAL "$@"; kill -9 $PPID;; *) exec $REAL "$@";; esac'
    proc = cli("mount", "domu-modern", env=_wrap(tmp_path, tool, script))
    assert proc.returncode == -signal.SIGKILL
    assert guest_vg.leftovers() != [] or mount_root_entries() != []
    status = json.loads(cli("status", "--json").stdout)
    assert status["mounted"] or status["leftovers"]
    proc = cli("cleanup")
    assert proc.returncode == 0, proc.stderr
    assert_nothing_left(guest_vg)


# ---------------------------------------------------------------- overflow

def test_overflowed_snapshot_is_reported_and_removed(guest_vg, make_guest, clean):
    g = make_guest("msdos-ext4-1m", name="domu-busy", size_mib=48)
    proc = cli("--snapshot-size", "4M", "mount", "domu-busy")
    assert proc.returncode == 0, proc.stderr
    # The guest keeps writing: 12 MiB into its disk, three times the snapshot's room.
    with open(g.lv_path, "r+b", buffering=0) as disk:
        disk.seek(16 * 1024 * 1024)
        for _ in range(12):
            disk.write(os.urandom(1024 * 1024))
        os.fsync(disk.fileno())
    status = cli("status")
    assert "OVERFLOWED" in status.stdout
    proc = cli("unmount", "domu-busy")
    assert proc.returncode == 1
    assert "FAILED  domu-busy" in proc.stderr and "overflowed" in proc.stderr
    assert "not reliable" in proc.stderr and "snapshot_size" in proc.stderr
    assert_nothing_left(guest_vg)


def test_json_documents_tell_a_monitoring_check_what_happened(guest_vg, make_guest, clean):
    """--json on mount, unmount, cleanup and check: stdout is one document (messages go to
    stderr), one object per guest with its status, failed step, message, hint and disks."""
    g = make_guest("msdos-ext4-1m", name="domu-json", size_mib=48)
    proc = cli("--snapshot-size", "4M", "mount", "domu-json", "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert "OK      domu-json" in proc.stderr
    (guest,) = document["guests"]
    assert (guest["guest"], guest["action"], guest["status"], guest["failed_step"]) == ("domu-json", "mount", "ok", None)
    (disk,) = guest["disks"]
    assert disk["mounted"] and disk["partition"] == g.partition and disk["offset"] == g.offset
    assert disk["mount_path"] == os.path.join(MOUNT_ROOT, VG, "domu-json") and findmnt(disk["mount_path"])
    assert document["summary"] == {"exit_code": 0, "meaning": "every guest ok"}
    with open(g.lv_path, "r+b", buffering=0) as origin:           # the guest overflows its snapshot
        origin.seek(16 * 1024 * 1024)
        for _ in range(12):
            origin.write(os.urandom(1024 * 1024))
        os.fsync(origin.fileno())
    proc = cli("unmount", "domu-json", "--json")
    document = json.loads(proc.stdout)
    (guest,) = document["guests"]
    assert proc.returncode == 1 and document["summary"]["exit_code"] == 1
    assert (guest["status"], guest["failed_step"]) == ("failed", "snapshot overflow")
    assert "overflowed" in guest["message"] and "snapshot_size" in guest["hint"]
    assert_nothing_left(guest_vg)
    document = json.loads(cli("cleanup", "--json").stdout)
    assert document["guests"] == [] and document["summary"]["exit_code"] == 0
    proc = cli("check", "--json")
    document = json.loads(proc.stdout)
    checks = {c["check"]: c["ok"] for c in document["checks"]}
    assert checks["tool lvcreate"] and checks["no leftovers"] and document["summary"]["exit_code"] == proc.returncode


# -------------------------------------------------------------- concurrency

def test_second_run_waits_then_fails_naming_the_holder(guest_vg, guests, clean):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
            "--quiesce", "none", "--lock-timeout", "1", "mount", "domu-modern", "domu-gpt", "domu-oldxen"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = [(p.pid,) + p.communicate(timeout=900) + (p.returncode,) for p in (first, second)]
    # Either may win the lock (start-up order is not run order); the other waits 1 s and fails.
    winners = [r for r in runs if r[3] == 0]
    losers = [r for r in runs if r[3] != 0]
    assert len(winners) == 1 and len(losers) == 1, runs
    assert losers[0][3] == 1
    assert f"another domu-snapshot run (pid {winners[0][0]})" in losers[0][2]
    snapshots = [lv["lv_name"] for lv in guest_vg.lvs() if lv["lv_name"].endswith("-dsnap")]
    assert sorted(snapshots) == ["domu-gpt-dsnap", "domu-modern-dsnap", "domu-oldxen-dsnap"]
    assert cli("unmount", "--all").returncode == 0


# ------------------------------------------------------------ snapshot owners

def test_cli_snapshots_carry_its_tag_and_cleanup_removes_every_owner(guest_vg, clean):
    """`domu-snapshot mount` tags its snapshot as the CLI's; `cleanup` (and the boot-time service,
    which runs it) still removes everything that is ours: CLI-held, plugin-made, untagged."""
    proc = cli("mount", "domu-modern")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, tags in (("domu-gpt", ["domu_snapshot", "domu_snapshot_plugin"]), ("domu-oldxen", ["domu_snapshot"])):
        argv = ["lvcreate", "-q", "--snapshot", "--name", f"{name}-dsnap", "--size", "8M"]
        for tag in tags:
            argv += ["--addtag", tag]
        guestdisks.run(argv + [f"{VG}/{name}"])
    tags = {lv["lv_name"]: sorted(t for t in lv["lv_tags"].split(",") if t)
            for lv in guest_vg.lvs() if lv["lv_name"].endswith("-dsnap")}
    assert tags == {"domu-modern-dsnap": ["domu_snapshot", "domu_snapshot_cli"],
                    "domu-gpt-dsnap": ["domu_snapshot", "domu_snapshot_plugin"],
                    "domu-oldxen-dsnap": ["domu_snapshot"]}
    proc = cli("cleanup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 leftover guest(s) torn down" in proc.stdout
    assert_nothing_left(guest_vg)
