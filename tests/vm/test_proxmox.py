"""A Proxmox-VE-shaped host (issue 16) on real LVM-thin, with the real qemu-ga and qemu-system.

VG `pvetest` (not `pve`: the test bed's host could be a Proxmox VE machine), thin pool `data`,
VM 100 with two disks and VM 101 with one, plus VM 100's saved-RAM and cloud-init volumes that
must be left out; a VM config directory (100.conf `agent: 1`, 101.conf without an agent) found
by auto-detection (pve_config_dir exists).

- The agent path: the real qemu-ga listens on <run dir>/100.qga in a mount namespace of its
  own whose only block-device filesystem is one test ext4 (it freezes every such filesystem it
  sees: never the test bed's own). Its freeze is proved by a writer stuck in the kernel
  (uninterruptible) until the thaw; a full `mount vm-100` goes through it, and qemu-ga's
  fsfreeze hook records the snapshots as absent at the freeze and present at the thaw.
- The QMP path: a real `qemu-system-x86_64 -machine none` (no disk) on <run dir>/101.qmp with
  `[guest vm-101] quiesce = suspend`; an lvcreate wrapper asks QEMU its run state at the moment
  of the snapshot (paused), and QEMU runs again afterwards, also when that lvcreate fails.
"""

import json
import os
import subprocess
import sys

import pytest

from domu_snapshot import qga
from tests import guestdisks, pvehost
from tests.pvehost import wait_for

pytestmark = pytest.mark.vm

VG = "pvetest"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WRAPPER = r'''#!/usr/bin/python3 -I
# lvcreate stand-in for the test: records QEMU's run state (QMP query-status) when vm-101's snapshot
# is made, then runs the real lvcreate (or fails, when DOMU_PVE_FAIL_LVCREATE is set).
import json, os, socket, sys
if any(a.endswith("/vm-101-disk-0") for a in sys.argv):
    s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(os.environ["DOMU_PVE_QMP"])
    f = s.makefile("rwb")
    def ask(cmd):
        f.write((json.dumps({"execute": cmd}) + "\n").encode()); f.flush()
        while True:
            reply = json.loads(f.readline())
            if "return" in reply or "error" in reply:
                return reply
    json.loads(f.readline())
    ask("qmp_capabilities")
    with open(os.environ["DOMU_PVE_STATE_LOG"], "a") as log:
        log.write(ask("query-status")["return"]["status"] + "\n")
    s.close()
    if os.environ.get("DOMU_PVE_FAIL_LVCREATE"):
        sys.stderr.write("lvcreate: failed on purpose by the test\n")
        sys.exit(5)
os.execv("/usr/sbin/lvcreate", ["lvcreate"] + sys.argv[1:])
'''


def qmp_status(path):
    """QEMU's run state, by a QMP client of the test's own."""
    import socket
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(path)
        f = s.makefile("rwb")
        json.loads(f.readline())
        for cmd in ("qmp_capabilities", "query-status"):
            f.write((json.dumps({"execute": cmd}) + "\n").encode())
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply:
                    break
        return reply["return"]["status"]


@pytest.fixture(scope="module")
def pve():
    with pvehost.proxmox_host(VG) as host:
        wrappers = os.path.join(host["work"], "bin")
        os.mkdir(wrappers)
        with open(os.path.join(wrappers, "lvcreate"), "w") as f:
            f.write(WRAPPER)
        os.chmod(os.path.join(wrappers, "lvcreate"), 0o755)
        yield dict(host, wrappers=wrappers)


def cli(pve, *args, env=None, timeout=600):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "domu_snapshot.cli", "--config", pve["config"], *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=full_env)


def our_lvs(pve):
    return sorted(lv["lv_name"] for lv in pve["gvg"].lvs() if "domu_snapshot" in lv["lv_tags"])


def test_real_agent_freeze_blocks_a_writer_until_the_thaw(pve):
    agent = qga.Agent(pve["qga"], 60)
    assert agent.status() == "thawed"
    assert agent.freeze() == 1            # exactly the one filesystem of its namespace
    writer = None
    try:
        assert agent.status() == "frozen"
        writer = subprocess.Popen(["dd", "if=/dev/zero", f"of={pve['fsdir']}/written-while-frozen", "bs=4k",
                                   "count=1", "conv=fsync", "status=none"])

        def stuck():
            assert writer.poll() is None, "the write finished while the filesystem was frozen"
            with open(f"/proc/{writer.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "D"   # waiting in the kernel
        wait_for(stuck, "the writer to block on the frozen filesystem")
        assert writer.poll() is None
    finally:
        thawed = agent.thaw()
    assert thawed == 1
    assert writer.wait(timeout=120) == 0
    assert agent.status() == "thawed"
    assert os.path.getsize(f"{pve['fsdir']}/written-while-frozen") == 4096


def test_list_check_and_mount_of_a_vm_through_its_guest_agent(pve):
    listed = cli(pve, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [(r["vmid"], r["guest"], r["lv"]) for r in json.loads(listed.stdout)]
    assert rows == [("100", "vm-100", "vm-100-disk-0"), ("100", "vm-100", "vm-100-disk-1"),
                    ("101", "vm-101", "vm-101-disk-0")]   # no state, cloudinit or other volume
    check = cli(pve, "check")
    assert "host kind proxmox" in check.stdout, check.stdout
    assert f"guest vm-100 ({VG}/vm-100-disk-0, {VG}/vm-100-disk-1): quiesce agent (guest-fsfreeze" in check.stdout
    assert "guest vm-101 (pvetest/vm-101-disk-0): quiesce suspend (QMP stop/cont" in check.stdout

    with open(pve["hooklog"], "w"):
        pass
    proc = cli(pve, "mount", "vm-100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next((x for x in proc.stdout.splitlines() if x.startswith("OK      vm-100")), "")
    assert "quiesce agent" in line, proc.stdout + proc.stderr
    # the hook ran at the freeze (no snapshot yet) and at the thaw (both snapshots made meanwhile)
    with open(pve["hooklog"]) as f:
        assert f.read().split() == ["freeze", "thaw", "dsnap-vm-100-disk-0", "dsnap-vm-100-disk-1"]
    assert qga.Agent(pve["qga"], 60).status() == "thawed"
    assert our_lvs(pve) == ["dsnap-vm-100-disk-0", "dsnap-vm-100-disk-1"]   # no ^(vm|base)-\d+- name
    for lv in ("vm-100-disk-0", "vm-100-disk-1"):
        path = os.path.join(pve["mount_root"], VG, lv)
        assert os.path.ismount(path)
        assert guestdisks.compare_tree(path, pve["gvg"].guests[lv].tree) == []
    # the VM's config goes into the backup next to its first disk's mount, as qm has it
    saved = os.path.join(pve["mount_root"], VG, "vm-100-disk-0.qemu-server.conf")
    with open(os.path.join(pve["work"], "qemu-server", "100.conf")) as f, open(saved) as g:
        assert g.read() == f.read()
    assert os.stat(saved).st_mode & 0o777 == 0o600
    proc = cli(pve, "unmount", "vm-100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert our_lvs(pve) == [] and not os.path.exists(os.path.join(pve["mount_root"], VG))


@pytest.mark.parametrize("fail", [False, True], ids=["snapshot", "failing-snapshot"])
def test_qmp_pauses_the_vm_for_its_snapshot_and_always_resumes_it(pve, fail):
    log = os.path.join(pve["work"], f"qmp-state-{fail}.log")
    env = {"DOMU_SNAPSHOT_TOOL_PATH": f"{pve['wrappers']}:/usr/sbin:/usr/bin:/sbin:/bin",
           "DOMU_PVE_QMP": pve["qmp"], "DOMU_PVE_STATE_LOG": log}
    if fail:
        env["DOMU_PVE_FAIL_LVCREATE"] = "1"
    assert qmp_status(pve["qmp"]) == "running"
    proc = cli(pve, "mount", "101", env=env)
    with open(log) as f:
        assert f.read().split() == ["paused"]          # QEMU's own word, during the snapshot
    assert qmp_status(pve["qmp"]) == "running"
    if fail:
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "FAILED  vm-101" in proc.stderr and "failed on purpose" in proc.stderr, proc.stderr
        assert our_lvs(pve) == []
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "quiesce suspend" in proc.stdout, proc.stdout
    path = os.path.join(pve["mount_root"], VG, "vm-101-disk-0")
    assert guestdisks.compare_tree(path, pve["gvg"].guests["vm-101-disk-0"].tree) == []
    proc = cli(pve, "unmount", "vm-101")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert our_lvs(pve) == []


def test_plugin_job_saves_a_vm_with_its_config_frozen_through_its_agent(pve, tmp_path):
    """Plugin mode on the Proxmox-shaped host (the stand-in file daemon, the shipped Plugin string):
    one job saves both disks of VM 100 in one agent freeze and its qemu-server config, leaves no
    snapshot behind, and a restore gives back the trees and the config as they were."""
    from tests import fd_harness
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), config=pve["config"], mount_root=pve["mount_root"],
        include="vm-100-disk-*")
    fd = fd_harness.FileDaemon(definition, **fd_harness.example_fileset_options())
    with open(pve["hooklog"], "w"):
        pass
    result = fd.backup()
    assert result.status == "T", result.job.messages
    with open(pve["hooklog"]) as f:   # qemu-ga's own hook: frozen before both snapshots, thawed after
        assert f.read().split() == ["freeze", "thaw", "dsnap-vm-100-disk-0", "dsnap-vm-100-disk-1"]
    assert our_lvs(pve) == [] and qga.Agent(pve["qga"], 60).status() == "thawed"
    root = os.path.join(pve["mount_root"], VG)
    names = {r.fname for r in result.records}
    assert not [n for n in names if "vm-101" in n or "state" in n or "cloudinit" in n], sorted(names)

    where = tmp_path / "restore"
    job, _statuses = fd.restore(result.records, str(where))
    assert job.errors == [], job.messages
    for lv in ("vm-100-disk-0", "vm-100-disk-1"):
        assert guestdisks.compare_tree(f"{where}{root}/{lv}", pve["gvg"].guests[lv].tree) == [], lv
    with open(os.path.join(pve["work"], "qemu-server", "100.conf")) as f, \
            open(f"{where}{root}/vm-100-disk-0.qemu-server.conf") as g:
        assert g.read() == f.read()
