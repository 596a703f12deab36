"""libvirt failing during discovery (a domain vanishing) is that guest's error or a warning, never
a traceback (issue 13). libvirt's own test driver: the domains really vanish (destroy, undefine)."""

import pytest

libvirt = pytest.importorskip("libvirt")

from domu_snapshot import quiesce  # noqa: E402
from tests.unit.test_quiesce import domain_xml, lv, node, one_disk_guests, runner_for  # noqa: E402,F401


def vanish(dom):
    if dom.isActive():
        dom.destroy()
    dom.undefine()


class VanishingDomain:
    """A real domain handle that vanishes right after its definition was read."""

    def __init__(self, dom):
        self._dom = dom

    def XMLDesc(self, flags=0):
        xml = self._dom.XMLDesc(flags)
        vanish(self._dom)
        return xml

    def __getattr__(self, name):
        return getattr(self._dom, name)


class Connection:
    """The real connection; `gone` vanish before they are listed further, `late` after their XML."""

    def __init__(self, conn, gone=(), late=()):
        self._conn, self._gone, self._late = conn, set(gone), set(late)

    def listAllDomains(self, flags=0):
        doms = self._conn.listAllDomains(flags)
        out = []
        for dom in doms:
            name = dom.name()
            if name in self._gone:
                vanish(dom)
            out.append(VanishingDomain(dom) if name in self._late else dom)
        return out

    def __getattr__(self, name):
        return getattr(self._conn, name)


def runner_with(uri, tmp_path, **vanishing):
    runner, logs = runner_for(uri, tmp_path)
    conn = Connection(libvirt.open(uri), **vanishing)
    runner._quiescer = quiesce.Quiescer(uri, 5.0, runner.log, connection=conn)
    return runner, logs


def test_a_domain_vanishing_after_its_disks_matched_fails_only_its_guest(node, tmp_path):
    uri = node(domain_xml("web", ["/dev/vg0/domu-web-root", "/dev/vg0/domu-web-data"]),
               domain_xml("mail", ["/dev/vg0/domu-mail"]))
    runner, _logs = runner_with(uri, tmp_path, late={"web"})
    guests = runner.group_guests(one_disk_guests(runner, "vg0/domu-web-root", "vg0/domu-web-data", "vg0/domu-mail"))
    by_name = {g.name: g for g in guests}
    assert sorted(by_name) == ["domu-mail", "web"]
    assert by_name["domu-mail"].error is None
    for disk in by_name["web"].disks:
        disk.origin.active = True
    web = runner.prepare(by_name["web"])  # fails before anything is created (no LVM on the host)
    assert web.status == "failed"
    assert web.error.guest == "web" and web.error.step == "discovery"
    assert "libvirt failed on domain web" in str(web.error) and "run the backup" in str(web.error)


def test_a_domain_vanishing_before_its_definition_was_read_is_a_warning(node, tmp_path):
    uri = node(domain_xml("web", ["/dev/vg0/domu-web-root"]), domain_xml("mail", ["/dev/vg0/domu-mail"]))
    runner, logs = runner_with(uri, tmp_path, gone={"web"})
    guests = runner.group_guests(one_disk_guests(runner, "vg0/domu-web-root", "vg0/domu-mail"))
    assert [(g.name, g.domain, g.error) for g in guests] == [("domu-web-root", None, None),
                                                             ("domu-mail", "mail", None)]
    assert any(level == "warning" and "vanished" in msg for level, msg in logs), logs


def test_a_connection_that_fails_to_list_is_a_warning(node, tmp_path):
    uri = node(domain_xml("mail", ["/dev/vg0/domu-mail"]))
    runner, logs = runner_for(uri, tmp_path)
    conn = libvirt.open(uri)
    conn.close()  # every call on it now raises libvirtError
    runner._quiescer = quiesce.Quiescer(uri, 5.0, runner.log, connection=conn)
    guests = runner.group_guests(one_disk_guests(runner, "vg0/domu-mail"))
    assert [(g.name, g.domain) for g in guests] == [("domu-mail", None)]
    assert any(level == "warning" and "cannot list domains" in msg for level, msg in logs), logs
