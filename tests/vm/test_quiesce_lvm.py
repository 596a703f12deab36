"""Quiesce around real LVM snapshots (in the VM): Runner.prepare on a two-disk libvirt domain.

The domain lives in libvirt's test driver (test:///<file>) with the fixture LVs as its disks.
Two witnesses write to one event file, in the order things happen:
  * a recorder around the libvirt domain (fsFreeze, fsThaw, suspend, resume);
  * an `lvcreate` earlier on PATH that logs each call, can fail or stall one (fault injection),
    and otherwise execs the real lvcreate.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

libvirt = pytest.importorskip("libvirt")

from domu_snapshot import commands, lvm, quiesce  # noqa: E402
from domu_snapshot.config import Config  # noqa: E402
from domu_snapshot.lifecycle import GuestResult, Runner  # noqa: E402
from tests.guestdisks import compare_tree  # noqa: E402
from tests.vm.conftest import PREFIX, VG  # noqa: E402

ROOT, DATA = f"{PREFIX}qa-root", f"{PREFIX}qa-data"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
# Generous: lvcreate takes seconds under emulation; only the overrun test wants a short window.
WINDOW = 600.0


def domain_file(tmp_path, agent=True, runstate=None):
    # The two disks are named the two ways libvirt configurations name LVs.
    state = f"<test:runstate>{runstate}</test:runstate>" if runstate else ""
    xml = (f"<node><domain type='test' xmlns:test='{TEST_NS}'><name>qa</name>"
           "<uuid>0b7e6f1a-9c1d-4e2b-8f00-5a5a5a5a0001</uuid><memory>65536</memory>"
           "<os><type arch='x86_64'>hvm</type></os><devices>"
           f"<disk type='block' device='disk'><source dev='/dev/{VG}/{ROOT}'/><target dev='vda'/></disk>"
           f"<disk type='block' device='disk'><source dev='/dev/mapper/{quiesce.dm_name(VG, DATA)}'/>"
           "<target dev='vdb'/></disk>"
           f"{AGENT if agent else ''}</devices>{state}</domain></node>")
    path = tmp_path / "domains.xml"
    path.write_text(xml)
    return f"test://{path}"


class Events:
    def __init__(self, path):
        self.path = path
        path.write_text("")

    def add(self, text):
        with open(self.path, "a") as f:
            f.write(text + "\n")

    def read(self):
        return self.path.read_text().splitlines()


class RecordedDomain:
    def __init__(self, dom, events):
        self._dom, self._events = dom, events

    def __getattr__(self, name):
        attr = getattr(self._dom, name)
        if name not in ("fsFreeze", "fsThaw", "suspend", "resume"):
            return attr

        def call(*args):
            result = attr(*args)
            self._events.add(name)
            return result
        return call


class RecordedConnection:
    def __init__(self, conn, events):
        self._conn, self._events = conn, events

    def lookupByName(self, name):
        return RecordedDomain(self._conn.lookupByName(name), self._events)

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
def events(tmp_path, monkeypatch):
    """An lvcreate wrapper first on PATH; DOMU_TEST_LVCREATE_FAIL / _STALL name an LV to fail / stall on."""
    log = Events(tmp_path / "events")
    real = shutil.which("lvcreate")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "lvcreate"
    wrapper.write_text(textwrap.dedent(f"""\
        #!{sys.executable} -S
        import os, sys, time
        args = sys.argv[1:]
        target = args[-1] if args else ""
        with open({str(log.path)!r}, "a") as f:
            f.write("lvcreate " + target + "\\n")
        if os.environ.get("DOMU_TEST_LVCREATE_STALL") and target.endswith("/" + os.environ["DOMU_TEST_LVCREATE_STALL"]):
            time.sleep(float(os.environ.get("DOMU_TEST_LVCREATE_STALL_SECONDS", "3")))
            with open({str(log.path)!r}, "a") as f:
                f.write("stalled " + target + "\\n")
        if os.environ.get("DOMU_TEST_LVCREATE_FAIL") and target.endswith("/" + os.environ["DOMU_TEST_LVCREATE_FAIL"]):
            sys.stderr.write("  Volume group \\"{VG}\\" has insufficient free space (injected).\\n")
            sys.exit(5)
        os.execv({real!r}, [{real!r}] + args)
        """))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv(commands.TOOL_PATH_ENV, f"{bindir}:{commands.TOOL_PATH}")  # the core's tool lookup
    # A wrapper the kernel cannot exec is skipped silently by the PATH search: make sure it runs.
    probe = subprocess.run(["lvcreate", "--version"], capture_output=True, text=True)
    assert probe.returncode == 0 and log.read() == ["lvcreate --version"], probe.stderr
    log.path.write_text("")
    return log


@pytest.fixture(scope="module")
def two_disks(guest_vg):
    """Built once for the module: the tests only snapshot these origins, never write to them."""
    disks = (guest_vg.add_guest(ROOT, "whole-ext4", seed="qa"), guest_vg.add_guest(DATA, "msdos-ext4-1m", seed="qa"))
    yield disks
    for disk in disks:
        guest_vg.remove_guest(disk.lv)


def make_runner(tmp_path, uri, events, **cfg):
    settings = dict(prefix=PREFIX, include=[f"{PREFIX}qa-*"], vgs=[VG], mount_root=str(tmp_path / "mnt"),
                    lock_file=str(tmp_path / "lock"), libvirt_uri=uri, quiesce="agent", quiesce_timeout=WINDOW,
                    snapshot_size="8M", syslog=False)
    settings.update(cfg)
    logs = []
    runner = Runner(Config(**settings), log=lambda level, message: logs.append((level, message)))
    conn = libvirt.open(uri)
    # The Runner's own Quiescer, on a connection whose domain calls are recorded.
    runner._quiescer = quiesce.Quiescer(uri, runner.cfg.quiesce_timeout, runner.log,
                                        connection=RecordedConnection(conn, events))
    return runner, conn, logs


def discover_one(runner):
    (guest,) = runner.discover()
    assert guest.name == "qa" and guest.domain == "qa"
    assert [d.lv for d in guest.disks] == [ROOT, DATA]
    return guest


def prepare_one(runner):
    guest = discover_one(runner)
    return guest, runner.prepare(guest)


def snapshots_only(runner):
    """Only the step under test, the guest's snapshots inside its quiesce: the loop/fsck/mount
    steps of prepare would add a minute per test under emulation and prove nothing here."""
    guest = discover_one(runner)
    result = GuestResult(guest, "mount")
    runner._create_snapshots(guest, result)
    return guest, result


def torn_down(runner, guest, guest_vg):
    (report,) = runner.teardown([guest])
    assert report.ok, report.error
    assert guest_vg.leftovers() == []
    assert not os.path.exists(quiesce.domain_xml_path(guest.disks[0].mount_path))


def thawed(conn):
    return conn.lookupByName("qa").fsThaw() == 0


def test_agent_freezes_before_the_first_lvcreate_and_thaws_after_the_last(tmp_path, guest_vg, two_disks, events):
    runner, conn, _ = make_runner(tmp_path, domain_file(tmp_path), events)
    guest, result = prepare_one(runner)
    try:
        assert result.ok, result.error
        assert events.read() == ["fsFreeze", f"lvcreate {VG}/{ROOT}", f"lvcreate {VG}/{DATA}", "fsThaw"]
        assert result.quiesce == "agent" and result.freeze_ms > 0 and not result.notes
        assert thawed(conn)
        # the snapshots are what gets backed up: both disks mounted with the guest's files
        for disk_result, fixture in zip(result.disks, two_disks):
            assert disk_result.mounted
            assert compare_tree(disk_result.mount_path, fixture.tree) == []
        # the definition lies next to the first disk's mount, and a restore of it is the domain again
        path = tmp_path / "mnt" / VG / f"{ROOT}.domain.xml"
        assert result.domain_xml_path == str(path) and path.read_text() == result.domain_xml
        original = conn.lookupByName("qa").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        (tmp_path / "empty.xml").write_text("<node/>")
        fresh = libvirt.open(f"test://{tmp_path / 'empty.xml'}")
        restored = fresh.defineXML(path.read_text())
        assert restored.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE) == original
    finally:
        torn_down(runner, guest, guest_vg)


def test_thaw_after_an_lvcreate_failure(tmp_path, guest_vg, two_disks, events, monkeypatch):
    monkeypatch.setenv("DOMU_TEST_LVCREATE_FAIL", DATA)
    runner, conn, _ = make_runner(tmp_path, domain_file(tmp_path), events)
    guest, result = prepare_one(runner)
    try:
        assert not result.ok and result.error.step == "snapshot"
        assert "injected" in str(result.error)
        assert events.read() == ["fsFreeze", f"lvcreate {VG}/{ROOT}", f"lvcreate {VG}/{DATA}", "fsThaw"]
        assert result.quiesce == "agent"
        assert thawed(conn)
        assert guest_vg.leftovers() == []  # prepare removed the first disk's snapshot again
    finally:
        torn_down(runner, guest, guest_vg)


def test_watchdog_thaws_when_the_snapshots_overrun_the_window(tmp_path, guest_vg, two_disks, events, monkeypatch):
    monkeypatch.setenv("DOMU_TEST_LVCREATE_STALL", ROOT)
    monkeypatch.setenv("DOMU_TEST_LVCREATE_STALL_SECONDS", "4")
    runner, conn, logs = make_runner(tmp_path, domain_file(tmp_path), events, quiesce_timeout=1.0)
    guest, result = snapshots_only(runner)  # the snapshot step goes on, crash-consistent, and says so
    try:
        seen = events.read()
        # thawed by the watchdog while the first lvcreate hung (its start may log after the thaw
        # under emulation), not thawed a second time at the end
        assert seen[0] == "fsFreeze"
        assert sorted(seen[1:3]) == sorted([f"lvcreate {VG}/{ROOT}", "fsThaw"])
        assert seen[3:] == [f"stalled {VG}/{ROOT}", f"lvcreate {VG}/{DATA}"]
        assert 900 <= result.freeze_ms < 4000
        assert any("quiesce_timeout" in note for note in result.notes)
        assert any(level == "warning" and "window" in message for level, message in logs)
        assert thawed(conn)
    finally:
        torn_down(runner, guest, guest_vg)


def test_suspend_pauses_the_domain_around_the_snapshots(tmp_path, guest_vg, two_disks, events):
    runner, conn, _ = make_runner(tmp_path, domain_file(tmp_path, agent=False), events, quiesce="suspend")
    guest, result = snapshots_only(runner)
    try:
        assert events.read() == ["suspend", f"lvcreate {VG}/{ROOT}", f"lvcreate {VG}/{DATA}", "resume"]
        assert result.quiesce == "suspend" and result.freeze_ms > 0
        assert conn.lookupByName("qa").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        torn_down(runner, guest, guest_vg)


def test_auto_without_an_agent_falls_back_and_says_so(tmp_path, guest_vg, two_disks, events):
    runner, _, _ = make_runner(tmp_path, domain_file(tmp_path, agent=False), events, quiesce="auto")
    guest, result = snapshots_only(runner)
    try:
        assert events.read() == [f"lvcreate {VG}/{ROOT}", f"lvcreate {VG}/{DATA}"]
        assert result.quiesce == "none" and result.freeze_ms is None
        assert result.notes == ["quiesce: no agent freeze: the domain has no qemu-guest-agent channel; "
                                "crash-consistent snapshot"]
    finally:
        torn_down(runner, guest, guest_vg)


def test_shut_off_domain_is_snapshotted_without_quiesce(tmp_path, guest_vg, two_disks, events):
    runner, _, _ = make_runner(tmp_path, domain_file(tmp_path, runstate=5), events, quiesce="agent")
    guest, result = snapshots_only(runner)
    try:
        assert events.read() == [f"lvcreate {VG}/{ROOT}", f"lvcreate {VG}/{DATA}"]
        assert result.quiesce == "none" and not result.notes
    finally:
        torn_down(runner, guest, guest_vg)


def test_a_section_named_after_one_lv_of_a_domain_sets_that_disk(tmp_path, guest_vg, two_disks, events):
    """Guest qa is the domain's two LVs: `[guest qa]` sets both disks, `[guest <data LV>]` the data
    disk only (issue 13: sections by LV name apply to libvirt-grouped disks too)."""
    runner, conn, _ = make_runner(tmp_path, domain_file(tmp_path), events, quiesce="none", snapshot_size="4M",
                                  guests={"qa": {"snapshot_size": "8M"}, DATA: {"snapshot_size": "16M"}})
    guest, result = snapshots_only(runner)
    try:
        assert result.ok, result.error
        rows = json.loads(subprocess.run(
            ["lvs", "--reportformat", "json", "--units", "m", "--nosuffix", "-o", "lv_name,lv_size", VG],
            capture_output=True, text=True, check=True).stdout)["report"][0]["lv"]
        sizes = {row["lv_name"]: float(row["lv_size"]) for row in rows}
        assert sizes[ROOT + lvm.SUFFIX] == 8.0 and sizes[DATA + lvm.SUFFIX] == 16.0, sizes
    finally:
        torn_down(runner, guest, guest_vg)
