"""SIGTERM at several moments of `mount --all` and `unmount --all`, on real LVM: no device-mapper
device is ever left suspended, and `cleanup` leaves nothing.

The VG's PV is a dm-delay device over a loop file, so every I/O LVM makes (metadata commits while
the origin is suspended, the snapshot's zeroing) is slow: `lvcreate` and `lvremove` take seconds,
long enough to be signalled in the middle. Killed there, they would leave the origin suspended.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import guestdisks

pytestmark = pytest.mark.vm

VG = "domuslow"
MOUNT_ROOT = "/tmp/domu-signals-mnt"
DELAY_MS = 30
GUESTS = ("domu-slow1", "domu-slow2")


class SlowVG(guestdisks.GuestVG):
    """A GuestVG whose PV is a dm-delay device (delay 0 while the guests are built)."""

    dm = "domuslow-pv"

    def create(self):
        subprocess.run(["modprobe", "dm-delay"], check=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.pv_image, "wb") as f:
            f.truncate(self.size_mib * guestdisks.MiB)
        self.pv_loop = guestdisks.out(["losetup", "--find", "--show", str(self.pv_image)]).strip()
        # Mapped from 1 MiB into the loop device: LVM looks for PV labels in the first sectors
        # only, so it sees the PV on the dm device alone, not a duplicate on the loop device.
        self.sectors = self.size_mib * guestdisks.MiB // 512 - 2048
        guestdisks.run(["dmsetup", "create", self.dm, "--table", self._table(0)])
        pv = f"/dev/mapper/{self.dm}"
        guestdisks.run(["pvcreate", "-q", "-y", pv])
        guestdisks.run(["vgcreate", "-q", "-y", "-s", "4M", self.vg, pv])
        return self

    def _table(self, ms):
        return f"0 {self.sectors} delay {self.pv_loop} 2048 {ms} {self.pv_loop} 2048 {ms}"

    def set_delay(self, ms):
        guestdisks.run(["dmsetup", "suspend", self.dm])
        try:
            guestdisks.run(["dmsetup", "reload", self.dm, "--table", self._table(ms)])
        finally:
            guestdisks.run(["dmsetup", "resume", self.dm])

    def destroy(self):
        left = guestdisks.destroy_vg(self.vg, self.workdir, expected_lvs=set(self.guests))
        guestdisks.run(["dmsetup", "remove", "--retry", self.dm], check=False)
        if self.pv_loop:
            guestdisks.run(["losetup", "-d", self.pv_loop], check=False)
        return left


@pytest.fixture(scope="module")
def slow_vg():
    gvg = SlowVG(VG, size_mib=160)
    try:
        gvg.create()
        for name in GUESTS:
            gvg.add_guest(name, "msdos-ext4-1m", size_mib=32, dirty=False)
        gvg.set_delay(DELAY_MS)
        yield gvg
    finally:
        if gvg.pv_loop:
            try:
                gvg.set_delay(0)  # a fast teardown
            except guestdisks.FixtureError:
                guestdisks.run(["dmsetup", "resume", gvg.dm], check=False)
        left = gvg.destroy()
    assert not left, f"tests left these on VG {VG}: {left}"


def cli(*args):
    return [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
            "--quiesce", "none", *args]


def suspended_devices():
    proc = subprocess.run(["dmsetup", "info", "-c", "--noheadings", "--separator", " ", "-o", "name,suspended"],
                          capture_output=True, text=True, check=True)
    return [line for line in proc.stdout.splitlines()
            if line.strip() and line.split()[-1] != "Active" and "No devices found" not in line]


def children(pid):
    """{child pid: command name} of `pid` (the CLI runs its tools as direct children)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        comm = text[text.index("(") + 1:text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        if ppid == pid:
            found[int(entry)] = comm
    return found


def loop_devices():
    """Names of the attached loop devices (the kernel's view; no udev, no losetup)."""
    return {name for name in os.listdir("/sys/block")
            if name.startswith("loop") and os.path.exists(f"/sys/block/{name}/loop/backing_file")}


def run_and_signal(argv, tool, nth=1, delay=0.0, timeout=300):
    """Start argv, SIGTERM it `delay` s after its `nth` `tool` child appeared (tool "loop device":
    after its `nth` new loop device was attached; losetup itself may come and go between two polls).
    Returns the finished process, its output, and the child (or loop device) that triggered it."""
    loops_before = loop_devices() if tool == "loop device" else set()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, deadline, signalled = set(), time.monotonic() + timeout, None
    while proc.poll() is None and time.monotonic() < deadline:
        if tool == "loop device":
            seen |= loop_devices() - loops_before
        else:
            seen |= {pid for pid, comm in children(proc.pid).items() if comm == tool}
        if len(seen) >= nth:
            time.sleep(delay)
            signalled = sorted(seen)[-1]
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr, signalled


def assert_cleanup_leaves_nothing(slow_vg):
    proc = subprocess.run(cli("cleanup"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert slow_vg.leftovers() == []
    assert not os.path.isdir(MOUNT_ROOT) or os.listdir(MOUNT_ROOT) == []


# (what the CLI runs, the child whose appearance triggers SIGTERM, which one, seconds after it)
MOMENTS = {
    "before-any-snapshot": (("mount", "--all"), "lvs", 1, 0.0),
    "lvcreate-start": (("mount", "--all"), "lvcreate", 1, 0.0),
    "lvcreate-middle": (("mount", "--all"), "lvcreate", 1, 1.0),
    "second-lvcreate": (("mount", "--all"), "lvcreate", 2, 0.3),
    "loop-attach-of-first-guest": (("mount", "--all"), "loop device", 1, 0.0),
}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_sigterm_during_mount_leaves_no_suspended_device(slow_vg, moment):
    args, tool, nth, delay = MOMENTS[moment]
    assert suspended_devices() == []
    started = time.monotonic()
    rc, stdout, stderr, signalled = run_and_signal(cli(*args), tool, nth, delay)
    seconds = time.monotonic() - started
    print(f"{moment}: exit {rc} after {seconds:.1f}s; stdout {stdout!r}; stderr {stderr!r}")
    assert signalled is not None, f"no {tool} #{nth} seen: {stdout}{stderr}"
    assert suspended_devices() == [], stderr
    if tool != "loop device":
        assert not os.path.exists(f"/proc/{signalled}"), f"{tool} still running after the CLI exited"
    assert "Traceback" not in stderr
    assert rc == 1 and "interrupted (signal SIGTERM)" in stderr, stdout + stderr
    assert_cleanup_leaves_nothing(slow_vg)


def test_sigterm_during_lvremove_of_unmount_leaves_no_suspended_device(slow_vg):
    proc = subprocess.run(cli("mount", "--all"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rc, stdout, stderr, signalled = run_and_signal(cli("unmount", "--all"), "lvremove", 1, 0.3)
    print(f"unmount: exit {rc}; stdout {stdout!r}; stderr {stderr!r}")
    assert signalled is not None, stdout + stderr
    assert suspended_devices() == [], stderr
    assert "Traceback" not in stderr and rc == 1, stdout + stderr
    assert_cleanup_leaves_nothing(slow_vg)


def test_lvcreate_is_slow_enough_to_be_signalled_inside(slow_vg):
    """The premise of the tests above: lvcreate of a snapshot on this VG takes a while."""
    started = time.monotonic()
    guestdisks.run(["lvcreate", "-q", "-s", "-n", "timing-dsnap", "-L", "8M", f"{VG}/{GUESTS[0]}"])
    took = time.monotonic() - started
    guestdisks.run(["lvremove", "-q", "-f", f"{VG}/timing-dsnap"])
    print(f"lvcreate --snapshot took {took:.1f}s with {DELAY_MS} ms per I/O")
    assert took > 1.0
    assert json.loads(guestdisks.out(["lvs", "--reportformat", "json", VG]))["report"][0]["lv"]
