"""quiesce.py against libvirt's own test driver (test:///<file>): no daemon, real API.

Each test opens its own connection: the test driver keeps per-connection state.
Domain calls go through a thin recorder so the order of freeze/thaw against
the snapshot step can be asserted; the calls themselves reach the driver.
"""

import os
import stat
import threading
import time
from types import SimpleNamespace

import pytest

libvirt = pytest.importorskip("libvirt")

from domu_snapshot import quiesce  # noqa: E402
from domu_snapshot.config import Config  # noqa: E402
from domu_snapshot.errors import GuestError  # noqa: E402

TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


def domain_xml(name, sources, agent=True, runstate=None, uuid=None):
    disks = "".join(
        f"<disk type='block' device='disk'><source dev='{src}'/><target dev='vd{chr(97 + i)}' bus='virtio'/></disk>"
        for i, src in enumerate(sources))
    state = f"<test:runstate>{runstate}</test:runstate>" if runstate else ""
    uuid_el = f"<uuid>{uuid}</uuid>" if uuid else ""
    return (f"<domain type='test' xmlns:test='{TEST_NS}'><name>{name}</name>{uuid_el}<memory>65536</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os>"
            f"<devices>{disks}{AGENT if agent else ''}</devices>{state}</domain>")


def lv(vg, name, lv_path=None, dm_path=None):
    return {"vg": vg, "lv": name, "lv_path": lv_path or f"/dev/{vg}/{name}",
            "lv_dm_path": dm_path or f"/dev/mapper/{quiesce.dm_name(vg, name)}"}


@pytest.fixture
def node(tmp_path):
    """Write a test-driver node file from domain XML snippets; returns its test:/// URI."""
    def make(*domains):
        path = tmp_path / "domains.xml"
        path.write_text("<node>" + "".join(domains) + "</node>")
        return f"test://{path}"
    return make


class Recorder:
    """Wraps a real test-driver domain; appends tracked calls to `events`, can inject faults."""

    TRACKED = ("fsFreeze", "fsThaw", "suspend", "resume", "sendKey")

    def __init__(self, dom, events, fail=(), delay=None):
        self._dom, self._events, self._fail, self._delay = dom, events, set(fail), delay or {}

    def __getattr__(self, name):
        attr = getattr(self._dom, name)
        if name not in self.TRACKED:
            return attr

        def call(*args):
            time.sleep(self._delay.get(name, 0))
            self._events.append(name if not args or name != "sendKey" else (name, tuple(args[2])))
            if name in self._fail:
                raise libvirt.libvirtError(f"injected {name} failure")
            return attr(*args)
        return call


class RecordingConnection:
    def __init__(self, conn, events, **faults):
        self._conn, self._events, self._faults = conn, events, faults
        self.doms = {}

    def lookupByName(self, name):
        rec = Recorder(self._conn.lookupByName(name), self._events, **self._faults)
        self.doms[name] = rec
        return rec

    def __getattr__(self, name):
        return getattr(self._conn, name)


def quiescer(uri, events=None, window=5.0, logs=None, **faults):
    conn = libvirt.open(uri)
    wrapped = RecordingConnection(conn, events if events is not None else [], **faults)
    log = (lambda level, msg: logs.append((level, msg))) if logs is not None else None
    return quiesce.Quiescer(uri, window=window, log=log, connection=wrapped), conn


def thawed(conn, name):
    """True when no filesystem of the domain is frozen (test driver: thaw of nothing returns 0)."""
    return conn.lookupByName(name).fsThaw() == 0


# ------------------------------------------------------------------------------------------ mapping

def test_mapping_aliases_multidisk_and_unused(node):
    lvs = [lv("vg0", "web-root"), lv("vg0", "web-data"), lv("vg-x", "db-1"), lv("vg0", "lonely")]
    uri = node(
        # one domain names its LVs by /dev/VG/LV and by the doubled-hyphen /dev/mapper name
        domain_xml("web", ["/dev/vg0/web-root", "/dev/mapper/vg0-web--data"]),
        domain_xml("db", ["/dev/mapper/vg--x-db--1", "/var/lib/libvirt/images/scratch.qcow2"]),
        domain_xml("other", ["/dev/vg9/nothing"]),
    )
    q, _ = quiescer(uri)
    found = q.domains(lvs)
    assert sorted(found) == ["db", "web"]
    assert [x["lv"] for x in found["web"].lvs] == ["web-root", "web-data"]
    assert [x["lv"] for x in found["db"].lvs] == ["db-1"]
    assert found["web"].active


def test_mapping_by_realpath_and_device_number(tmp_path, node):
    """/dev/dm-N style names: a symlink resolving to the source, or another node of the same device."""
    dev = tmp_path / "dev"
    (dev / "vg0").mkdir(parents=True)
    (dev / "dm-7").write_text("")
    os.symlink(dev / "dm-7", dev / "vg0" / "a")
    try:
        os.mknod(dev / "dm-8", stat.S_IFBLK | 0o600, os.makedev(250, 8))
        os.mknod(dev / "other-node-of-dm-8", stat.S_IFBLK | 0o600, os.makedev(250, 8))
    except PermissionError:
        pytest.skip("needs CAP_MKNOD")
    lvs = [lv("vg0", "a", lv_path=str(dev / "vg0" / "a")), lv("vg0", "b", lv_path=str(dev / "dm-8"))]
    uri = node(domain_xml("g", [str(dev / "dm-7"), str(dev / "other-node-of-dm-8")]))
    q, _ = quiescer(uri)
    assert [x["lv"] for x in q.domains(lvs)["g"].lvs] == ["a", "b"]


def test_mapping_accepts_lvm_logicalvolume_spelling_and_dm_minor(node):
    """lvm.LogicalVolume says name/path/dm_path/minor; a domain may name the LV /dev/dm-<minor>."""
    vol = SimpleNamespace(vg="vg0", name="a-b", path="/dev/vg0/a-b", dm_path="/dev/mapper/vg0-a--b",
                          major=253, minor=12)
    q, _ = quiescer(node(domain_xml("g", ["/dev/dm-12"])))
    assert q.domains([vol])["g"].lvs == [vol]


def test_lv_in_two_domains_goes_to_the_running_one(node):
    logs = []
    uri = node(domain_xml("clone", ["/dev/vg0/a"], runstate=5),
               domain_xml("real", ["/dev/vg0/a"]))
    q, _ = quiescer(uri, logs=logs)
    found = q.domains([lv("vg0", "a")])
    assert list(found) == ["real"]
    assert any("several domains" in msg and "clone" in msg for _, msg in logs)


def test_domain_xml_is_a_definition_virsh_define_accepts(node, tmp_path):
    uuid = "6a1b2c3d-0000-4000-8000-00000000abcd"
    uri = node(domain_xml("web", ["/dev/vg0/a", "/dev/vg0/b"], uuid=uuid))
    q, conn = quiescer(uri)
    dom = q.domains([lv("vg0", "a"), lv("vg0", "b")])["web"]
    assert " id=" not in dom.xml.splitlines()[0]  # the inactive definition, not runtime state
    saved = tmp_path / "web.domain.xml"
    saved.write_text(dom.xml)
    # "restore": define the file in a fresh, empty connection and read it back
    (tmp_path / "empty.xml").write_text("<node/>")
    other = libvirt.open(f"test://{tmp_path / 'empty.xml'}")
    restored = other.defineXML(saved.read_text())
    assert restored.name() == "web" and restored.UUIDString() == uuid
    back = restored.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    assert back == dom.xml
    assert quiesce.disk_sources(back) == ["/dev/vg0/a", "/dev/vg0/b"]


# ------------------------------------------------------------------------------------------ agent

def test_agent_freezes_before_first_snapshot_and_thaws_after_last(node):
    events = []
    uri = node(domain_xml("web", ["/dev/vg0/a", "/dev/vg0/b"]))
    q, conn = quiescer(uri, events)

    def snapshots():
        events.append("lvcreate vg0/a")
        assert conn.lookupByName("web").fsFreeze() == 0  # already frozen by us
        events.append("lvcreate vg0/b")
        time.sleep(0.01)
        return "made"

    res = q.run("web", "web", "agent", snapshots)
    assert events == ["fsFreeze", "lvcreate vg0/a", "lvcreate vg0/b", "fsThaw"]
    assert (res.level, res.value, res.overrun) == ("agent", "made", False)
    assert 10 <= res.freeze_ms < 5000
    assert thawed(conn, "web")


def test_auto_uses_the_agent_when_there_is_one(node):
    events = []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events)
    res = q.run("web", "web", "auto", lambda: events.append("lvcreate"))
    assert res.level == "agent" and res.requested == "auto"
    assert events == ["fsFreeze", "lvcreate", "fsThaw"]


def test_thaw_when_the_snapshot_step_fails(node):
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a", "/dev/vg0/b"])), events)

    def failing():
        events.append("lvcreate vg0/a")
        raise RuntimeError("lvcreate vg0/b: Insufficient free space")

    with pytest.raises(RuntimeError, match="Insufficient"):
        q.run("web", "web", "agent", failing)
    assert events == ["fsFreeze", "lvcreate vg0/a", "fsThaw"]
    assert thawed(conn, "web")


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_thaw_on_interrupt(node, interrupt):
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events)

    def interrupted():
        raise interrupt()

    with pytest.raises(interrupt):
        q.run("web", "web", "agent", interrupted)
    assert events == ["fsFreeze", "fsThaw"]
    assert thawed(conn, "web")


def test_watchdog_thaws_when_the_window_is_exceeded(node):
    events, logs = [], []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events, window=0.2, logs=logs)
    seen_during = []

    def slow():
        time.sleep(0.6)
        seen_during.append(list(events))  # thawed by the watchdog while we were still busy
        events.append("lvcreate done")

    res = q.run("web", "web", "agent", slow)
    assert seen_during == [["fsFreeze", "fsThaw"]]
    assert events == ["fsFreeze", "fsThaw", "lvcreate done"]  # released once, not again at the end
    assert res.overrun and res.level == "agent"
    assert 150 <= res.freeze_ms < 590
    assert "window exceeded" in res.summary()
    assert any(level == "warning" and "window" in msg for level, msg in logs)
    assert thawed(conn, "web")


def test_freeze_that_returns_after_the_window_is_undone(node):
    """The agent's freeze itself hangs past the window: the watchdog thaws, and so do we once it returns."""
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events, window=0.1, delay={"fsFreeze": 0.4})
    res = q.run("web", "web", "agent", lambda: events.append("lvcreate"))
    # watchdog thaw, the late freeze landing, our thaw right after it; the snapshots come after that
    assert events == ["fsThaw", "fsFreeze", "fsThaw", "lvcreate"]
    assert res.overrun
    assert thawed(conn, "web")


def test_thaw_failure_is_an_error_that_says_what_to_do(node, monkeypatch):
    monkeypatch.setattr(quiesce, "RELEASE_DELAY", 0)
    events = []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events, fail=["fsThaw"])
    with pytest.raises(GuestError) as info:
        q.run("web", "web", "agent", lambda: None)
    err = info.value
    assert err.guest == "web" and err.step == "quiesce"
    assert "fsThaw" in err.message and "virsh domfsthaw web" in err.hint
    assert events.count("fsThaw") == quiesce.RELEASE_ATTEMPTS


def test_auto_falls_back_when_the_agent_does_not_freeze(node):
    events, logs = [], []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events, logs=logs, fail=["fsFreeze"])
    res = q.run("web", "web", "auto", lambda: events.append("lvcreate"))
    assert res.level == "none" and "did not freeze" in res.note and "injected" in res.note
    assert events[0] == "fsFreeze" and "lvcreate" in events
    assert res.degraded and not logs  # said once, in the result (the Runner shows it)


def test_auto_without_agent_channel_is_none_and_says_so(node):
    events, logs = [], []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"], agent=False)), events, logs=logs)
    res = q.run("web", "web", "auto", lambda: events.append("lvcreate"))
    assert (res.level, res.freeze_ms) == ("none", 0.0)
    assert "no qemu-guest-agent channel" in res.note
    assert events == ["lvcreate"] and res.degraded


def test_explicit_agent_unavailable_fails_the_guest_clearly(node):
    events = []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"], agent=False)), events)
    with pytest.raises(GuestError) as info:
        q.run("web", "web", "agent", lambda: events.append("lvcreate"))
    err = info.value
    assert (err.guest, err.step) == ("web", "quiesce")
    assert "agent" in err.message and "qemu-guest-agent" in err.hint and "[guest web]" in err.hint
    assert events == []  # no snapshot taken in an unquiesced state the admin did not want


def test_explicit_freeze_failure_fails_the_guest(node):
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), fail=["fsFreeze"])
    with pytest.raises(GuestError, match="fsFreeze of web: injected"):
        q.run("web", "web", "agent", lambda: None)
    assert thawed(conn, "web")


# ------------------------------------------------------------------------------------------ suspend, sync, states

def test_suspend_pauses_during_the_snapshots_and_resumes(node):
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"], agent=False)), events)
    states = []
    res = q.run("web", "web", "suspend",
                lambda: (states.append(conn.lookupByName("web").state()[0]), time.sleep(0.01)))
    assert states == [libvirt.VIR_DOMAIN_PAUSED]
    assert conn.lookupByName("web").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert events == ["suspend", "resume"] and res.level == "suspend" and res.freeze_ms >= 10


def test_suspend_resumes_after_failure_and_overrun(node):
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), window=0.1)
    with pytest.raises(OSError):
        q.run("web", "web", "suspend", lambda: (_ for _ in ()).throw(OSError("lvcreate failed")))
    assert conn.lookupByName("web").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    res = q.run("web", "web", "suspend", lambda: time.sleep(0.4))
    assert res.overrun and conn.lookupByName("web").state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_already_paused_domain_is_left_paused(node):
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"], runstate=3)), events)
    assert q.run("web", "web", "auto", lambda: None).level == "none"
    res = q.run("web", "web", "suspend", lambda: None)
    assert res.level == "suspend" and "already paused" in res.note
    assert conn.lookupByName("web").state()[0] == libvirt.VIR_DOMAIN_PAUSED and events == []
    with pytest.raises(GuestError, match="paused"):
        q.run("web", "web", "agent", lambda: None)


def test_sync_sends_alt_sysrq_s(node, monkeypatch):
    monkeypatch.setattr(quiesce, "SYNC_SETTLE_SECONDS", 0)
    events = []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events)
    res = q.run("web", "web", "sync", lambda: events.append("lvcreate"))
    assert events == [("sendKey", (56, 99, 31)), "lvcreate"]
    assert res.level == "sync" and res.freeze_ms == 0


@pytest.mark.parametrize("level", ["auto", "agent", "suspend", "sync"])
def test_shut_off_domain_needs_no_quiesce(node, level):
    events = []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"], runstate=5)), events)
    res = q.run("web", "web", level, lambda: events.append("lvcreate"))
    assert res.level == "none" and "shut off" in res.note and events == ["lvcreate"]
    assert not res.degraded  # nothing to warn about


def test_none_touches_nothing(node):
    events = []
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events)
    res = q.run("web", "web", "none", lambda: events.append("lvcreate"))
    assert res.level == "none" and events == ["lvcreate"] and not res.note


# ------------------------------------------------------------------------------------------ no libvirt / no domain

def test_no_domain_for_the_lv(node):
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])))
    assert q.run("plain", None, "auto", lambda: 1).level == "none"
    with pytest.raises(GuestError, match="no libvirt domain uses"):
        q.run("plain", None, "suspend", lambda: 1)


def test_unreachable_libvirt(tmp_path):
    logs = []
    q = quiesce.Quiescer(f"test://{tmp_path / 'missing.xml'}", log=lambda lvl, msg: logs.append((lvl, msg)))
    assert q.domains([lv("vg0", "a")]) == {}
    res = q.run("web", "web", "auto", lambda: 1)
    assert res.level == "none" and "cannot connect" in res.note
    assert [lvl for lvl, msg in logs if "cannot connect" in msg and lvl == "warning"] == ["warning"]  # once
    with pytest.raises(GuestError) as info:
        q.run("web", "web", "agent", lambda: 1)
    assert info.value.step == "quiesce" and "libvirt_uri" in info.value.hint


def test_without_libvirt_python(monkeypatch):
    monkeypatch.setitem(quiesce._libvirt_module, "mod", None)
    logs = []
    q = quiesce.Quiescer("qemu:///system", log=lambda lvl, msg: logs.append((lvl, msg)))
    assert q.run("web", "web", "auto", lambda: 1).level == "none"
    assert any(lvl == "warning" and "libvirt-python is not installed" in msg for lvl, msg in logs)
    with pytest.raises(GuestError) as info:
        q.run("web", "web", "suspend", lambda: 1)
    assert "python3-libvirt" in info.value.hint


def test_requested_level_per_guest():
    cfg = Config(quiesce="auto", guests={"web": {"quiesce": "suspend"}, "db-root": {"quiesce": "none"}})
    assert quiesce.requested_level(cfg, "web", "web-root") == "suspend"
    assert quiesce.requested_level(cfg, None, "db-root") == "none"
    assert quiesce.requested_level(cfg, "mail") == "auto"


def test_watchdog_does_not_outlive_the_hold(node):
    q, _ = quiescer(node(domain_xml("web", ["/dev/vg0/a"])))
    before = threading.active_count()
    q.run("web", "web", "agent", lambda: None)
    assert threading.active_count() == before


# ------------------------------------------------------------------------------------------ Runner integration
# (host-side parts only; the LVM path runs in tests/vm/test_quiesce_lvm.py)

def runner_for(uri, tmp_path, **cfg):
    from domu_snapshot.lifecycle import Runner
    logs = []
    config = Config(libvirt_uri=uri, mount_root=str(tmp_path / "mnt"), **cfg)
    return Runner(config, log=lambda level, msg: logs.append((level, msg))), logs


def one_disk_guests(runner, *keys):
    from domu_snapshot.lifecycle import Disk, Guest
    guests = []
    for key in keys:
        vg, name = key.split("/")
        origin = SimpleNamespace(vg=vg, name=name, path=f"/dev/{vg}/{name}", dm_path="", major=None, minor=None)
        guests.append(Guest(name, [Disk(vg, name, runner.mount_path(vg, name), origin)]))
    return guests


def test_runner_groups_the_disks_of_one_domain(node, tmp_path):
    uri = node(domain_xml("web", ["/dev/vg0/domu-web-data", "/dev/vg0/domu-web-root"]),
               domain_xml("mail", ["/dev/vg1/domu-mail"]))
    runner, _ = runner_for(uri, tmp_path)
    guests = runner.group_guests(one_disk_guests(runner, "vg0/domu-web-root", "vg1/domu-mail", "vg0/domu-plain",
                                                 "vg0/domu-web-data"))
    assert [(g.name, g.domain, [d.lv for d in g.disks]) for g in guests] == [
        ("web", "web", ["domu-web-data", "domu-web-root"]),  # the domain's disk order
        ("domu-mail", "mail", ["domu-mail"]),  # one disk: keeps the LV's name
        ("domu-plain", None, ["domu-plain"]),
    ]


def test_runner_quiesces_and_records_level_and_time(node, tmp_path):
    from domu_snapshot.lifecycle import GuestResult
    uri = node(domain_xml("web", ["/dev/vg0/a", "/dev/vg0/b"]), domain_xml("db", ["/dev/vg0/c"], agent=False))
    runner, _ = runner_for(uri, tmp_path, guests={"db": {"quiesce": "suspend"}})
    web, db = runner.group_guests(one_disk_guests(runner, "vg0/a", "vg0/b", "vg0/c"))
    conn = runner.quiescer.connection()
    seen = []

    def snapshots(guest):
        return lambda: (seen.append(conn.lookupByName(guest).fsFreeze()), time.sleep(0.01))

    result = GuestResult(web, "mount")
    runner.quiesced(web, result, snapshots("web"))
    assert seen == [0]  # already frozen during the snapshots
    assert result.quiesce == "agent" and result.freeze_ms >= 10 and not result.notes
    assert thawed(conn, "web")
    result = GuestResult(db, "mount")
    seen.clear()
    runner.quiesced(db, result, lambda: seen.append(conn.lookupByName("db").state()[0]))
    assert seen == [libvirt.VIR_DOMAIN_PAUSED] and result.quiesce == "suspend"
    assert conn.lookupByName("db").state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_runner_records_the_level_when_the_snapshots_fail(node, tmp_path):
    from domu_snapshot.lifecycle import GuestResult
    runner, _ = runner_for(node(domain_xml("web", ["/dev/vg0/a"], agent=False)), tmp_path)
    (web,) = runner.group_guests(one_disk_guests(runner, "vg0/a"))
    result = GuestResult(web, "mount")
    with pytest.raises(GuestError):
        runner.quiesced(web, result, lambda: (_ for _ in ()).throw(GuestError("a", "snapshot", "lvcreate failed")))
    assert result.quiesce == "none" and result.freeze_ms is None
    assert result.notes == ["quiesce: no agent freeze: the domain has no qemu-guest-agent channel; "
                            "crash-consistent snapshot"]


def test_runner_writes_the_definition_next_to_the_first_mount_and_removes_it(node, tmp_path):
    from domu_snapshot.lifecycle import GuestResult
    runner, _ = runner_for(node(domain_xml("web", ["/dev/vg0/a", "/dev/vg0/b"])), tmp_path)
    (web,) = runner.group_guests(one_disk_guests(runner, "vg0/a", "vg0/b"))
    result = GuestResult(web, "mount")
    runner._save_domain_xml(web, result)
    path = tmp_path / "mnt" / "vg0" / "a.domain.xml"
    assert result.domain_xml_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert quiesce.disk_sources(path.read_text()) == ["/dev/vg0/a", "/dev/vg0/b"]
    assert path.read_text() == result.domain_xml
    quiesce.remove_domain_xml(web.disks[0].mount_path)
    quiesce.remove_domain_xml(web.disks[0].mount_path)  # idempotent
    assert not path.exists()


def test_stale_definition_files_are_reaped_but_not_symlink_targets(tmp_path):
    vg_dir = tmp_path / "vg0"
    vg_dir.mkdir()
    (vg_dir / "a.domain.xml").write_text("<domain/>")
    (vg_dir / "b.domain.xml.tmp123").write_text("<dom")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, vg_dir / "c.domain.xml")
    quiesce.remove_stale_domain_xml(str(vg_dir))
    assert sorted(os.listdir(vg_dir)) == ["c.domain.xml"] and victim.read_text() == "keep"


def test_write_domain_xml_refuses_to_follow_a_planted_symlink(tmp_path):
    target = tmp_path / "x.domain.xml"
    quiesce.write_domain_xml(str(target), "<domain/>")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, f"{target}.tmp{os.getpid()}")
    with pytest.raises(FileExistsError):
        quiesce.write_domain_xml(str(target), "<domain>new</domain>")
    assert victim.read_text() == "keep" and target.read_text() == "<domain/>\n"


def test_interrupt_right_after_the_freeze_still_thaws(node):
    """Ctrl-C/SIGTERM landing as fsFreeze returns, before the `with` body: __exit__ never runs there."""
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events)
    real = conn.lookupByName("web")

    class InterruptAfterFreeze(Recorder):
        def __getattr__(self, name):
            call = super().__getattr__(name)
            if name != "fsFreeze":
                return call

            def freeze(*args):
                call(*args)
                raise KeyboardInterrupt()
            return freeze

    q._conn.lookupByName = lambda name: InterruptAfterFreeze(real, events)
    with pytest.raises(KeyboardInterrupt):
        q.run("web", "web", "agent", lambda: events.append("lvcreate"))
    assert events == ["fsFreeze", "fsThaw"]
    assert thawed(conn, "web")


def test_default_uri_without_any_daemon_socket_skips_libvirt(tmp_path, monkeypatch):
    """No socket in /run/libvirt: libvirt-python is not even loaded, and the reason is said."""
    monkeypatch.setattr(quiesce, "LIBVIRT_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    monkeypatch.setitem(quiesce._libvirt_module, "mod", "must not be used")
    logs = []
    q = quiesce.Quiescer("", log=lambda lvl, msg: logs.append((lvl, msg)))
    assert q.domains([lv("vg0", "a")]) == {}
    res = q.run("web", "web", "auto", lambda: 1)
    assert res.level == "none" and "no libvirt daemon" in res.note
    with pytest.raises(GuestError) as info:
        q.run("web", "web", "agent", lambda: 1)
    assert "virtqemud" in info.value.hint


def test_default_uri_with_a_daemon_socket_connects(tmp_path, monkeypatch):
    monkeypatch.setattr(quiesce, "LIBVIRT_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    (tmp_path / "virtqemud-sock").touch()
    monkeypatch.setitem(quiesce._libvirt_module, "mod", None)     # as if libvirt-python were missing
    q = quiesce.Quiescer("")
    assert q.unavailable == "libvirt-python is not installed"


class BoundRecorder(Recorder):
    """The test driver has no agent timeout (and cannot hang an agent): record the call instead."""

    def agentSetResponseTimeout(self, seconds, flags):
        self._events.append(("agentSetResponseTimeout", seconds, flags))
        return 0


def test_agent_calls_are_bounded_by_the_window_before_the_freeze(node):
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events, window=2.5)
    q._conn.lookupByName = lambda name: BoundRecorder(conn.lookupByName(name), events)
    res = q.run("web", "web", "agent", lambda: events.append("lvcreate"))
    assert events == [("agentSetResponseTimeout", 3, 0), "fsFreeze", "lvcreate", "fsThaw"]
    assert res.agent_timeout == 3 and res.level == "agent"


def test_a_driver_without_agent_timeouts_still_freezes(node):
    """libvirt's test driver answers virDomainAgentSetResponseTimeout with "not supported"."""
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events)
    res = q.run("web", "web", "agent", lambda: events.append("lvcreate"))
    assert events == ["fsFreeze", "lvcreate", "fsThaw"]
    assert res.agent_timeout is None and res.level == "agent"
    assert thawed(conn, "web")


def test_a_freeze_that_never_answers_does_not_hold_the_run(node, monkeypatch):
    """A hung agent (the test driver cannot hang one: the call is delayed past the bound): the
    guest gets its fallback, and the freeze that lands later is thawed by its own thread."""
    monkeypatch.setattr(quiesce, "ENGAGE_GRACE", 0.2)
    events = []
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), events, window=0.1, delay={"fsFreeze": 1.5})
    started = time.monotonic()
    res = q.run("web", "web", "auto", lambda: events.append("lvcreate"))
    assert time.monotonic() - started < 1.2
    assert res.level == "none" and res.degraded and "no answer within 0.3 s" in res.note
    time.sleep(2.0)
    assert events[-2:] == ["fsFreeze", "fsThaw"] and "lvcreate" in events
    assert thawed(conn, "web")


def test_explicit_agent_that_never_answers_fails_the_guest(node, monkeypatch):
    monkeypatch.setattr(quiesce, "ENGAGE_GRACE", 0.2)
    q, conn = quiescer(node(domain_xml("web", ["/dev/vg0/a"])), window=0.1, delay={"fsFreeze": 1.0})
    with pytest.raises(GuestError, match=r"fsFreeze of web: no answer within 0.3 s"):
        q.run("web", "web", "agent", lambda: None)
    time.sleep(1.5)
    assert thawed(conn, "web")
