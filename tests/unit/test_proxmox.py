"""Proxmox VE hosts (issue 16): VM disk names, grouping by VMID, exclusions, snapshot naming that
Proxmox does not take for a volume, VM config `agent:` lines, and the guest-agent / QMP clients
against hostile peers (garbage, stale replies, huge lines, silence: every wait bounded).

The peers here are small socket servers of the test's own, because they must misbehave on
purpose; the real qemu-ga and qemu-system are in tests/vm/test_proxmox.py."""

import json
import os
import socket
import threading
import time

import pytest

from domu_snapshot import lvm, proxmox, qga, qmp
from domu_snapshot.config import Config, load_config
from domu_snapshot.errors import DomuError, GuestError
from domu_snapshot.lifecycle import Runner
from tests.unit.test_lvm import volume


# ------------------------------------------------------------------ names and configs

@pytest.mark.parametrize("name, templates, expected", [
    ("vm-100-disk-0", False, ("vm", "100", 0)),
    ("vm-100-disk-12", False, ("vm", "100", 12)),
    ("base-101-disk-0", False, None),
    ("base-101-disk-0", True, ("base", "101", 0)),
    ("vm-100-state-before_upgrade", True, None),
    ("vm-100-cloudinit", True, None),
    ("dsnap-vm-100-disk-0", True, None),
    ("vm-100-disk-0-dsnap", True, None),
    ("snap_vm-100-disk-0_weekly", True, None),
    ("domu-web", True, None),
    ("vm-0100-disk-0", True, None),
])
def test_vm_disk_names(name, templates, expected):
    assert proxmox.disk_vmid(name, templates) == expected


def test_snapshot_names_under_proxmox_are_no_proxmox_volume_and_default_naming_is_unchanged():
    assert lvm.snapshot_name("vm-100-disk-0", "prefix") == "dsnap-vm-100-disk-0"
    assert not proxmox.PVE_VOLUME.match(lvm.snapshot_name("vm-100-disk-0", "prefix"))
    assert proxmox.PVE_VOLUME.match(lvm.snapshot_name("vm-100-disk-0"))  # why the default cannot stay
    assert lvm.snapshot_name("domu-web") == "domu-web-dsnap"
    assert lvm.named_origin("dsnap-vm-100-disk-0") == "vm-100-disk-0"
    assert lvm.named_origin("domu-web-dsnap") == "domu-web"
    assert lvm.named_origin("dsnap-") == "" and lvm.named_origin("vm-100-disk-0") == ""


def test_the_name_length_guard_holds_for_the_prefix_naming():
    ok = "vm-1-disk-" + "0" * 4
    assert lvm.check_snapshot_name("v", ok, "prefix") is None
    too_long = "vm-1-disk-" + "0" * (lvm.LV_NAME_MAX - len(lvm.PREFIX) - len("vm-1-disk-") + 1)
    assert "LVM allows 127" in lvm.check_snapshot_name("v", too_long, "prefix")
    # fits LVM's 127 but not device-mapper's once the hyphens are doubled
    dm_long = "vm-100-disk-" + "1" * 100
    assert len(lvm.snapshot_name(dm_long, "prefix")) <= lvm.LV_NAME_MAX
    assert "device-mapper name 'a--b--c-dsnap--vm--100" in lvm.check_snapshot_name("a-b-c", dm_long, "prefix")


def test_create_snapshot_argv_uses_the_naming(monkeypatch):
    seen = []
    monkeypatch.setattr(lvm.commands, "run", lambda argv, **kw: seen.append(argv))
    thin = volume("vm-100-disk-0", vg="pvetest", attr="Vwi-a-tz--", segtype="thin", pool="data")
    lvm.create_snapshot(thin, "10%ORIGIN", "", "cli", "prefix")
    assert seen[0][:4] == ["lvcreate", "--snapshot", "--name", "dsnap-vm-100-disk-0"]
    assert seen[0][-1] == "pvetest/vm-100-disk-0" and "--ignoreactivationskip" in seen[0]


@pytest.mark.parametrize("value, expected", [
    ("1", (True, True)), ("0", (False, True)), ("enabled=1,fstrim_cloned_disks=1", (True, True)),
    ("enabled=0,type=virtio", (False, True)), ("1,freeze-fs-on-backup=0", (True, False)),
    ("enabled=yes", (True, True)), ("", (False, True)), (None, (False, True)), ("garbage", (False, True)),
])
def test_agent_lines(value, expected):
    assert proxmox.agent_setting(value) == expected


def test_vm_config_main_section_only_and_firmware_volumes():
    text = ("# a comment\nagent: 1\nboot: order=scsi0\nefidisk0: local-lvm:vm-100-disk-2,efitype=4m,size=4M\n"
            "tpmstate0: local-lvm:vm-100-disk-3,size=4M,version=v2.0\nscsi0: local-lvm:vm-100-disk-0,size=8G\n"
            "\n[before_upgrade]\nagent: 0\nscsi1: local-lvm:vm-100-disk-9\n")
    config = proxmox.parse_config(text)
    assert config["agent"] == "1" and "scsi1" not in config
    assert proxmox.state_volumes(config) == {"vm-100-disk-2", "vm-100-disk-3"}


def test_config_keys(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[domu-snapshot]\nhost = proxmox\npve_templates = yes\npve_config_dir = /x/qemu-server\n"
                    "pve_run_dir = /x/run\n")
    cfg = load_config(str(path))
    assert (cfg.host, cfg.pve_templates, cfg.pve_config_dir, cfg.pve_run_dir) == \
        ("proxmox", True, "/x/qemu-server", "/x/run")
    path.write_text("[domu-snapshot]\nhost = xen\n")
    with pytest.raises(DomuError, match="host must be one of"):
        load_config(str(path))
    path.write_text("[domu-snapshot]\npve_run_dir = relative\n")
    with pytest.raises(DomuError, match="pve_run_dir must be an absolute path"):
        load_config(str(path))
    default = Config()
    assert (default.host, default.pve_templates) == ("auto", False)


def test_host_detection(tmp_path):
    missing = str(tmp_path / "none")
    assert not Runner(Config(pve_config_dir=missing)).proxmox  # the default host: as before
    assert Runner(Config(pve_config_dir=missing)).naming == "suffix"
    (tmp_path / "qemu-server").mkdir()
    detected = Runner(Config(pve_config_dir=str(tmp_path / "qemu-server")))
    assert detected.proxmox and detected.naming == "prefix" and detected.host_kind() == "proxmox"
    assert not Runner(Config(host="libvirt", pve_config_dir=str(tmp_path / "qemu-server"))).proxmox
    assert Runner(Config(host="proxmox", pve_config_dir=missing)).proxmox


# ------------------------------------------------------------------ grouping

def pve_runner(tmp_path, **kw):
    confdir = tmp_path / "qemu-server"
    confdir.mkdir(exist_ok=True)
    cfg = Config(host="proxmox", pve_config_dir=str(confdir), pve_run_dir=str(tmp_path / "run"),
                 mount_root=str(tmp_path / "mnt"), **kw)
    return Runner(cfg), confdir


def candidates(runner, names):
    from domu_snapshot.lifecycle import Disk, Guest
    vols = [volume(n.split("/")[1], vg=n.split("/")[0]) for n in names]
    return [Guest(v.name, [Disk(v.vg, v.name, runner.mount_path(v.vg, v.name), v, runner.naming)])
            for v in vols if runner._is_candidate(v)]


def test_all_disks_of_one_vmid_are_one_guest_and_other_volumes_are_excluded(tmp_path):
    runner, confdir = pve_runner(tmp_path)
    (confdir / "100.conf").write_text("agent: 1\nefidisk0: local-lvm:vm-100-disk-5,efitype=4m\n")
    names = ["pvetest/vm-100-disk-1", "pvetest/vm-101-disk-0", "pvetest/vm-100-state-snap1",
             "pvetest/vm-100-cloudinit", "other/vm-100-disk-0", "pvetest/vm-100-disk-5",
             "pvetest/base-102-disk-0", "pvetest/domu-web", "pvetest/dsnap-vm-100-disk-0", "pvetest/vm-100-disk-0"]
    guests = runner.group_vms(candidates(runner, names))
    assert [(g.name, g.vmid, [d.key for d in g.disks]) for g in guests] == [
        ("vm-100", "100", ["other/vm-100-disk-0", "pvetest/vm-100-disk-0", "pvetest/vm-100-disk-1"]),
        ("vm-101", "101", ["pvetest/vm-101-disk-0"]),
    ]
    disk = guests[0].disks[1]
    assert disk.snapshot_name == "dsnap-vm-100-disk-0"
    assert disk.mount_path == os.path.join(str(tmp_path / "mnt"), "pvetest", "vm-100-disk-0")  # per disk, stable
    assert [g.name for g in runner._select(guests, ["101"])] == ["vm-101"]
    assert [g.name for g in runner._select(guests, ["vm-100-disk-1"])] == ["vm-100"]


def test_the_vm_config_is_saved_with_the_backup_as_it_is_and_only_readable_by_root(tmp_path):
    from domu_snapshot.lifecycle import GuestResult
    runner, confdir = pve_runner(tmp_path)
    text = "agent: 1\nscsi0: local-lvm:vm-100-disk-0,size=8G\n\n[before-upgrade]\nagent: 0\n"
    (confdir / "100.conf").write_text(text)
    guest = runner.group_vms(candidates(runner, ["pvetest/vm-100-disk-0"]))[0]
    result = GuestResult(guest, "mount")
    runner._save_domain_xml(guest, result)
    saved = guest.disks[0].mount_path + ".qemu-server.conf"
    assert result.domain_xml_path == saved and result.domain_xml == text and result.notes == []
    assert open(saved).read() == text  # snapshot sections too: the file qm itself reads back
    assert os.stat(saved).st_mode & 0o777 == 0o600

    (confdir / "100.conf").unlink()  # a VM whose config went away: a note, the backup goes on
    result = GuestResult(guest, "mount")
    runner._save_domain_xml(guest, result)
    assert result.domain_xml == "" and result.domain_xml_path == ""
    assert len(result.notes) == 1 and "config of VM 100" in result.notes[0] and "not in this backup" in result.notes[0]


def test_templates_only_when_configured(tmp_path):
    runner, _ = pve_runner(tmp_path, pve_templates=True)
    guests = runner.group_vms(candidates(runner, ["pvetest/base-102-disk-0", "pvetest/base-102-disk-1"]))
    assert [(g.name, len(g.disks)) for g in guests] == [("base-102", 2)]


def test_teardown_finds_snapshots_by_origin_whichever_naming(tmp_path):
    from domu_snapshot.lifecycle import SystemState
    ours = dict(tags=[lvm.TAG], attr="Vwi-a-tz--", segtype="thin", pool="data")
    snaps = [volume("dsnap-vm-100-disk-0", vg="pvetest", origin="vm-100-disk-0", **ours),
             volume("vm-100-disk-0-dsnap", vg="pvetest", origin="vm-100-disk-0", **ours),
             volume("dsnap-vm-100-disk-1", vg="pvetest", origin="vm-100-disk-1", **ours)]
    state = SystemState([], [], {s.key: s for s in snaps})
    assert sorted(s.name for s in state.snapshots_of("pvetest", "vm-100-disk-0")) == \
        ["dsnap-vm-100-disk-0", "vm-100-disk-0-dsnap"]
    runner, _ = pve_runner(tmp_path)
    guests, _foreign = runner.leftovers(state)
    assert sorted(g.name for g in guests) == ["vm-100-disk-0", "vm-100-disk-1"]


def test_plan_text_says_which_quiesce(tmp_path):
    runner, confdir = pve_runner(tmp_path)
    (confdir / "100.conf").write_text("agent: enabled=1,fstrim_cloned_disks=1\n")
    (confdir / "101.conf").write_text("memory: 512\n")
    assert proxmox.plan_text(runner.cfg, "100", "auto").startswith("agent (guest-fsfreeze")
    assert "none (crash-consistent)" in proxmox.plan_text(runner.cfg, "101", "auto")
    assert "; fails" in proxmox.plan_text(runner.cfg, "101", "agent")
    assert proxmox.plan_text(runner.cfg, "101", "suspend").startswith("suspend (QMP stop/cont")


# ------------------------------------------------------------------ hostile peers

class Peer:
    """A unix-socket server answering each connection with `script(conn, lines)`; records the
    commands it was sent."""

    def __init__(self, path, script):
        self.path, self.script, self.seen = str(path), script, []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        reader = conn.makefile("rb")

        def lines():
            for raw in reader:
                try:
                    message = json.loads(raw)
                except ValueError:
                    continue
                self.seen.append(message.get("execute"))
                yield message
        try:
            self.script(conn, lines())
        except (OSError, StopIteration):
            pass
        finally:
            time.sleep(0.05)
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def send(conn, message):
    conn.sendall((json.dumps(message) + "\n").encode() if not isinstance(message, bytes) else message)


def honest_agent(state):
    """qemu-ga's answers, with a freeze state shared by connections."""
    def script(conn, lines):
        for message in lines:
            name = message["execute"]
            if name == "guest-sync":
                send(conn, {"return": message["arguments"]["id"]})
            elif name == "guest-fsfreeze-freeze":
                state["frozen"] = True
                send(conn, {"return": 1})
            elif name == "guest-fsfreeze-thaw":
                state["frozen"] = state.get("stuck", 0) > state.setdefault("thaws", 0)
                state["thaws"] += 1
                send(conn, {"return": 1})
            elif name == "guest-fsfreeze-status":
                send(conn, {"return": "frozen" if state.get("frozen") else "thawed"})
    return script


@pytest.fixture
def sockdir(tmp_path):
    # AF_UNIX paths are short: not under pytest's long tmp_path
    import tempfile
    path = tempfile.mkdtemp(prefix="pve", dir="/tmp")
    yield path
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def test_sync_discards_stale_lines_and_garbage(sockdir):
    def script(conn, lines):
        message = next(lines)
        send(conn, b"\xff\xff garbage {not json\n")
        send(conn, {"return": 12345})  # a stale sync reply of an earlier client
        send(conn, b"[1, 2]\n")
        send(conn, {"return": message["arguments"]["id"]})
        next(lines)
        send(conn, {"return": "thawed"})
    peer = Peer(os.path.join(sockdir, "a.qga"), script)
    try:
        assert qga.Agent(peer.path, 2).status() == "thawed"
        assert peer.seen == ["guest-sync", "guest-fsfreeze-status"]
    finally:
        peer.close()


def test_a_huge_line_is_refused_without_reading_it_all(sockdir):
    def script(conn, lines):
        next(lines)
        conn.sendall(b"x" * (qga.MAX_LINE + 10))
        time.sleep(3)
    peer = Peer(os.path.join(sockdir, "a.qga"), script)
    try:
        with pytest.raises(qga.ProtocolError, match="longer than"):
            qga.Agent(peer.path, 2).status()
    finally:
        peer.close()


def test_endless_output_is_bounded(sockdir):
    def script(conn, lines):
        next(lines)
        while True:
            conn.sendall(b'{"return": 1}\n' * 1000)
    peer = Peer(os.path.join(sockdir, "a.qga"), script)
    try:
        with pytest.raises(qga.ProtocolError, match="more than"):
            qga.Agent(peer.path, 30).status()
    finally:
        peer.close()


@pytest.mark.parametrize("silent_after", [0, 1])
def test_no_reply_is_bounded(sockdir, silent_after):
    def script(conn, lines):
        for i, message in enumerate(lines):
            if i >= silent_after:
                time.sleep(3)
                return
            send(conn, {"return": message["arguments"]["id"]})
    peer = Peer(os.path.join(sockdir, "a.qga"), script)
    try:
        started = time.monotonic()
        with pytest.raises(qga.ProtocolError, match="in time|timed out"):
            qga.Agent(peer.path, 0.5).status()
        assert time.monotonic() - started < 2.5  # the bound, not the peer, ended the wait
    finally:
        peer.close()


def test_an_error_reply_is_an_error(sockdir):
    def script(conn, lines):
        message = next(lines)
        send(conn, {"return": message["arguments"]["id"]})
        next(lines)
        send(conn, {"error": {"class": "GenericError", "desc": "fsfreeze is disabled"}})
    peer = Peer(os.path.join(sockdir, "a.qga"), script)
    try:
        with pytest.raises(qga.ErrorReply, match="fsfreeze is disabled"):
            qga.Agent(peer.path, 2).freeze()
    finally:
        peer.close()


def test_no_socket_is_an_error():
    with pytest.raises(qga.ProtocolError, match="cannot connect"):
        qga.Agent("/nonexistent/100.qga", 1).status()


def qmp_peer(state):
    def script(conn, lines):
        send(conn, {"QMP": {"version": {}, "capabilities": []}})
        for message in lines:
            send(conn, {"event": "NOISE", "data": {}})
            name, ident = message["execute"], message.get("id")
            if name == "query-status":
                send(conn, {"return": {"status": state["status"], "running": state["status"] == "running"},
                            "id": ident})
            elif name == "stop":
                state["status"] = "paused"
                send(conn, {"return": {}, "id": ident})
            elif name == "cont":
                state["status"] = "running"
                send(conn, {"return": {}, "id": ident})
            else:
                send(conn, {"return": {}, "id": ident})
    return script


def hold_cfg(sockdir, confdir, **kw):
    return Config(host="proxmox", pve_config_dir=str(confdir), pve_run_dir=sockdir, quiesce_timeout=2, **kw)


def test_agent_hold_thaws_when_the_snapshot_fails_and_rethaws_a_lingering_freeze(sockdir, tmp_path):
    (tmp_path / "100.conf").write_text("agent: 1\n")
    agent_state, vm_state = {"stuck": 1}, {"status": "running"}
    peers = [Peer(os.path.join(sockdir, "100.qga"), honest_agent(agent_state)),
             Peer(os.path.join(sockdir, "100.qmp"), qmp_peer(vm_state))]
    try:
        hold = proxmox.Hold(hold_cfg(sockdir, tmp_path), "vm-100", "100", "auto")
        with pytest.raises(RuntimeError):
            with hold as result:
                assert agent_state["frozen"]
                raise RuntimeError("lvcreate failed")
        assert result.level == "agent" and not agent_state["frozen"]
        assert peers[0].seen.count("guest-fsfreeze-thaw") == 2  # the first thaw left it frozen
    finally:
        for peer in peers:
            peer.close()


def test_auto_without_agent_line_is_none_and_suspend_always_resumes(sockdir, tmp_path):
    (tmp_path / "101.conf").write_text("memory: 512\n")
    vm_state = {"status": "running"}
    peer = Peer(os.path.join(sockdir, "101.qmp"), qmp_peer(vm_state))
    try:
        with proxmox.Hold(hold_cfg(sockdir, tmp_path), "vm-101", "101", "auto") as result:
            pass
        assert result.level == "none" and result.degraded and "agent: 1" in result.note
        with pytest.raises(KeyboardInterrupt):
            with proxmox.Hold(hold_cfg(sockdir, tmp_path), "vm-101", "101", "suspend") as result:
                assert vm_state["status"] == "paused"
                raise KeyboardInterrupt
        assert result.level == "suspend" and vm_state["status"] == "running"
        assert "cont" in peer.seen
    finally:
        peer.close()


def test_explicit_agent_without_agent_fails_the_guest_naming_the_config(sockdir, tmp_path):
    (tmp_path / "101.conf").write_text("agent: 0\n")
    peer = Peer(os.path.join(sockdir, "101.qmp"), qmp_peer({"status": "running"}))
    try:
        with pytest.raises(GuestError, match="does not enable the guest agent"):
            with proxmox.Hold(hold_cfg(sockdir, tmp_path), "vm-101", "101", "agent"):
                pass
    finally:
        peer.close()


def test_a_silent_agent_in_auto_gives_a_crash_consistent_snapshot_within_bounds(sockdir, tmp_path):
    (tmp_path / "100.conf").write_text("agent: 1\n")

    def mute(conn, lines):
        for _ in lines:
            time.sleep(5)
    peers = [Peer(os.path.join(sockdir, "100.qga"), mute),
             Peer(os.path.join(sockdir, "100.qmp"), qmp_peer({"status": "running"}))]
    try:
        cfg = hold_cfg(sockdir, tmp_path)
        cfg.quiesce_timeout = 0.3
        hold = proxmox.Hold(cfg, "vm-100", "100", "auto")
        with pytest.raises(GuestError, match="may still be frozen"):
            with hold:
                pass  # never reached: a thaw that cannot be confirmed fails the guest
    finally:
        for peer in peers:
            peer.close()


def test_a_vm_that_is_not_running_needs_no_quiesce(sockdir, tmp_path):
    (tmp_path / "100.conf").write_text("agent: 1\n")
    with proxmox.Hold(hold_cfg(sockdir, tmp_path), "vm-100", "100", "agent") as result:
        pass
    assert result.level == "none" and "not running" in result.note


def test_qmp_client_skips_events_and_matches_ids(sockdir):
    state = {"status": "running"}
    peer = Peer(os.path.join(sockdir, "x.qmp"), qmp_peer(state))
    try:
        monitor = qmp.Monitor(peer.path, 2)
        monitor.stop()
        assert monitor.status() == "paused"
        monitor.cont()
        assert monitor.status() == "running"
    finally:
        peer.close()


def test_an_agent_socket_without_qmp_is_a_running_vm(sockdir, tmp_path):
    (tmp_path / "100.conf").write_text("agent: 1\n")
    state = {}
    peer = Peer(os.path.join(sockdir, "100.qga"), honest_agent(state))
    try:
        with proxmox.Hold(hold_cfg(sockdir, tmp_path), "vm-100", "100", "auto") as result:
            assert state["frozen"]
        assert result.level == "agent" and not state["frozen"]
    finally:
        peer.close()
