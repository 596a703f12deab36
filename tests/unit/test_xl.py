"""Xen hosts with the xl toolstack (issue 16): a domain's disks grouped from `xl list -l`, quiesce by
`xl pause`/`xl unpause` (always unpaused) or `xl sysrq s`, the domain's configuration saved.

Xen cannot run in this test bed, so `xl` is a stand-in (tests/xl_standin.py) whose output is
taken from Xen's own source for that JSON and table (see its docstring). The VM suite runs the
same around real snapshots (tests/vm/test_xl.py)."""

import json
import os

import pytest

from domu_snapshot import lvm, quiesce, xl
from domu_snapshot.config import Config, load_config
from domu_snapshot.errors import DomuError, GuestError
from domu_snapshot.lifecycle import Disk, Guest, Runner
from tests import xl_standin

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = {"lv_name": "domu-web-root", "vg_name": "vg0", "lv_attr": "-wi-ao----", "lv_path": "/dev/vg0/domu-web-root",
       "lv_dm_path": "/dev/mapper/vg0-domu--web--root", "origin": "", "snap_percent": "", "data_percent": "",
       "lv_tags": "", "lv_size": "1073741824", "lv_active": "active", "lv_kernel_major": "-1",
       "lv_kernel_minor": "-1", "segtype": "linear", "pool_lv": "", "vg_extent_size": "4194304",
       "vg_free": "0", "lv_uuid": "x", "metadata_percent": "", "lv_metadata_size": "", "lv_health_status": "",
       "lv_when_full": ""}


def lv(name):
    return lvm._parse(dict(ROW, lv_name=name, lv_path=f"/dev/vg0/{name}",
                           lv_dm_path=f"/dev/mapper/vg0-{name.replace('-', '--')}"))


@pytest.fixture
def standin(tmp_path):
    """(xl path, read state): web has two disks (one named by its /dev/mapper path), db one,
    a stopped domain one; Domain-0 none."""
    domains = [
        {"name": "Domain-0", "domid": 0, "uuid": "00000000-0000-0000-0000-000000000000", "disks": [], "paused": False},
        {"name": "web", "domid": 3, "uuid": "6b1c5d4e-0000-4000-8000-000000000003",
         "disks": ["/dev/vg0/domu-web-root", "/dev/mapper/vg0-domu--web--data"], "paused": False},
        {"name": "db", "domid": 4, "uuid": "6b1c5d4e-0000-4000-8000-000000000004", "disks": ["/dev/vg0/domu-db"],
         "paused": False},
        {"name": "old", "domid": None, "uuid": "6b1c5d4e-0000-4000-8000-000000000009", "disks": ["/dev/vg0/domu-old"],
         "paused": False},
    ]
    path, state_path = xl_standin.install(str(tmp_path), {"domains": domains}, REPO)

    class Standin:
        xl = path

        @staticmethod
        def state():
            return xl_standin.state_of(state_path)

        @staticmethod
        def calls():
            return [argv for argv, _snaps in xl_standin.state_of(state_path).get("calls", [])]

        @staticmethod
        def change(**kw):
            state = xl_standin.state_of(state_path)
            state.update(kw)
            xl_standin._save(state_path, state)

        @staticmethod
        def set_paused(name, paused):
            state = xl_standin.state_of(state_path)
            for d in state["domains"]:
                if d["name"] == name:
                    d["paused"] = paused
            xl_standin._save(state_path, state)
    return Standin


# ------------------------------------------------------------------ xl list -l

def test_disks_of_one_domain_are_grouped_in_its_disk_order(standin):
    lvs = [lv("domu-db"), lv("domu-web-data"), lv("domu-web-root"), lv("domu-old"), lv("domu-plain")]
    found = xl.map_domains(xl.list_long(standin.xl), lvs)
    assert sorted(found) == ["db", "old", "web"]
    assert [v.name for v in found["web"].lvs] == ["domu-web-root", "domu-web-data"]
    assert found["web"].active and not found["old"].active
    assert found["web"].uuid == "6b1c5d4e-0000-4000-8000-000000000003"
    saved = json.loads(found["web"].xml)
    assert saved["config"]["c_info"]["name"] == "web" and saved["domid"] == 3


def test_a_runner_on_an_xl_host_makes_one_guest_per_domain(standin):
    runner = Runner(Config(host="xl", xl_command=standin.xl, vgs=["vg0"]))
    lvs = [lv("domu-web-root"), lv("domu-web-data"), lv("domu-plain")]
    guests = runner.group_guests([Guest(v.name, [Disk("vg0", v.name, f"/nonexistent/{v.name}", v)]) for v in lvs])
    assert [(g.name, g.domain, [d.lv for d in g.disks]) for g in guests] == [
        ("web", "web", ["domu-web-root", "domu-web-data"]), ("domu-plain", None, ["domu-plain"])]
    assert runner.host_kind() == "xl" and runner.quiescer.definition_suffix == ".xl.json"


def test_sexp_output_is_refused_with_the_xl_conf_setting_to_change(tmp_path):
    script = tmp_path / "xl"
    script.write_text("#!/bin/sh\necho '(domain (domid 3) (create_info (name web)))'\n")
    os.chmod(script, 0o755)
    with pytest.raises(xl.XlError) as caught:
        xl.list_long(str(script))
    assert "S-expressions" in caught.value.message and 'output_format="json"' in caught.value.hint


def test_when_xl_list_fails_every_lv_is_a_guest_of_its_own_with_a_warning(standin):
    standin.change(fail={"list": "cannot connect to xenstored"})
    logged = []
    q = xl.XlQuiescer(standin.xl, log=lambda level, message: logged.append((level, message)))
    assert q.domains([lv("domu-web-root")]) == {}
    assert logged and logged[0][0] == "warning" and "cannot connect to xenstored" in logged[0][1]


def test_the_configuration_of_a_domain_is_read_fresh_for_the_backup(standin):
    text = xl.XlQuiescer(standin.xl).definition("db")
    assert json.loads(text)["config"]["disks"][0]["pdev_path"] == "/dev/vg0/domu-db"
    assert xl.XlQuiescer(standin.xl).definition("gone", fallback="kept") == "kept"


# ------------------------------------------------------------------ quiesce

def hold(standin, level, action=lambda: None, domain="web", window=10.0):
    q = xl.XlQuiescer(standin.xl, window)
    with q.hold("web", domain, level) as result:
        action()
    return result


def test_suspend_pauses_the_domain_for_the_snapshots_and_unpauses_it(standin):
    seen = []
    result = hold(standin, "suspend", lambda: seen.append(standin.state()["domains"][1]["paused"]))
    assert seen == [True]
    assert result.level == "suspend" and result.freeze_ms is not None
    assert standin.calls()[-2:] == [["pause", "web"], ["unpause", "web"]]
    assert standin.state()["domains"][1]["paused"] is False


@pytest.mark.parametrize("raised", [GuestError("web", "snapshot", "lvcreate failed"), KeyboardInterrupt()])
def test_the_domain_is_unpaused_when_the_snapshots_fail_or_a_signal_comes(standin, raised):
    def fail():
        raise raised
    with pytest.raises(type(raised)):
        hold(standin, "suspend", fail)
    assert standin.calls()[-1] == ["unpause", "web"]
    assert standin.state()["domains"][1]["paused"] is False


def test_snapshots_outlasting_the_window_get_the_domain_unpaused_by_the_watchdog(standin):
    seen = []

    def slow():
        import time
        time.sleep(1.5)
        seen.append(standin.state()["domains"][1]["paused"])
    result = hold(standin, "suspend", slow, window=0.3)
    assert seen == [False]  # unpaused while the snapshots were still being made
    assert result.overrun and result.degraded
    assert standin.calls().count(["unpause", "web"]) == 1


def test_a_domain_paused_by_someone_else_is_left_paused(standin):
    standin.set_paused("web", True)
    result = hold(standin, "suspend")
    assert result.level == "suspend" and "already paused" in result.note
    assert ["pause", "web"] not in standin.calls() and ["unpause", "web"] not in standin.calls()
    assert standin.state()["domains"][1]["paused"] is True


def test_an_unpause_that_fails_fails_the_guest_saying_to_unpause_it_now(standin):
    standin.change(fail={"unpause": "xenstore transaction failed"})
    with pytest.raises(GuestError) as caught:
        hold(standin, "suspend")
    assert caught.value.step == "quiesce" and "xenstore transaction failed" in caught.value.message
    assert "xl unpause web" in caught.value.hint
    assert standin.calls().count(["unpause", "web"]) == quiesce.RELEASE_ATTEMPTS


def test_a_failing_pause_fails_the_guest_and_nothing_stays_paused(standin):
    standin.change(fail={"pause": "domain is dying"})
    called = []
    with pytest.raises(GuestError) as caught:
        hold(standin, "suspend", lambda: called.append(1))
    assert called == [] and "domain is dying" in caught.value.message
    assert standin.state()["domains"][1]["paused"] is False


def test_sync_sends_sysrq_s_and_agent_is_refused(standin):
    result = hold(standin, "sync")
    assert result.level == "sync" and ["sysrq", "web", "s"] in standin.calls()
    with pytest.raises(GuestError, match="xl has no guest-agent freeze"):
        hold(standin, "agent")


def test_auto_does_not_pause_and_says_so(standin):
    result = hold(standin, "auto")
    assert result.level == "none" and "quiesce = suspend" in result.note
    assert all(call[0] == "list" for call in standin.calls())


def test_an_explicit_level_for_an_lv_of_no_domain_fails_the_guest(standin):
    with pytest.raises(GuestError, match="no xl domain uses this guest's LVs"):
        hold(standin, "suspend", domain=None)
    assert hold(standin, "auto", domain=None).level == "none"


# ------------------------------------------------------------------ configuration and detection

def test_host_kind_is_configured_or_detected(standin, tmp_path, monkeypatch):
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert Runner(Config(host="plain")).host_kind() == "plain"
    assert Runner(Config(host="plain")).quiescer.unavailable.startswith("host = plain")
    monkeypatch.setattr(quiesce, "daemon_sockets", lambda: [])
    monkeypatch.setattr(xl, "is_xen_dom0", lambda capabilities=xl.XEN_CAPABILITIES: True)
    assert Runner(Config(xl_command=standin.xl)).host_kind() == "xl"
    assert Runner(Config(xl_command=standin.xl, libvirt_uri="xen:///system")).host_kind() == "libvirt"
    monkeypatch.setattr(quiesce, "daemon_sockets", lambda: ["/run/libvirt/libvirt-sock"])
    assert Runner(Config(xl_command=standin.xl)).host_kind() == "libvirt"  # libvirt's libxl driver runs here
    monkeypatch.setattr(quiesce, "daemon_sockets", lambda: [])
    monkeypatch.setattr(xl, "is_xen_dom0", lambda capabilities=xl.XEN_CAPABILITIES: False)
    assert Runner(Config(xl_command=standin.xl)).host_kind() == "libvirt"  # as before: no toolstack answers


def test_dom0_is_read_from_proc_xen_capabilities(tmp_path):
    caps = tmp_path / "capabilities"
    caps.write_text("control_d\n")
    assert xl.is_xen_dom0(str(caps))
    caps.write_text("")
    assert not xl.is_xen_dom0(str(caps)) and not xl.is_xen_dom0(str(tmp_path / "none"))


@pytest.mark.parametrize("text, key", [("host = xen\n", "host"), ("xl_command = xl\n", "xl_command")])
def test_bad_host_settings_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "c.conf"
    path.write_text("[domu-snapshot]\n" + text)
    with pytest.raises(DomuError, match=key):
        load_config(str(path))
