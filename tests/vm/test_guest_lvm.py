"""LVM inside the guest disk (issue 15), on real LVM in the VM test bed, through the CLI.

Guests: domu-lvdeb (Debian guided LVM: /boot ext4, then a PV whose VG is named `domutest` like
the test bed's host VG), domu-lvubu1 and domu-lvubu2 (one PV each, VG `ubuntu-vg`, built from one
image: the same PV and VG UUIDs, as cloned guests have). The root LV's journal needs replay.
"""

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from tests import guestdisks
from tests.vm.test_core import MOUNT_ROOT, VG, cli, findmnt, mount_root_entries

pytestmark = pytest.mark.vm

DEB, UBU1, UBU2 = "domu-lvdeb", "domu-lvubu1", "domu-lvubu2"


def host_vgs():
    """The VG names the host's LVM shows (sorted, duplicates kept)."""
    proc = subprocess.run(["vgs", "--reportformat", "json", "-o", "vg_name"], capture_output=True, text=True,
                          check=True)
    return sorted(row["vg_name"] for row in json.loads(proc.stdout)["report"][0]["vg"])


def inner_dm_devices():
    proc = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True, check=True)
    return sorted(line.split()[0] for line in proc.stdout.splitlines()
                  if line.strip() and "No devices" not in line and ("domusnap" in line or "ubuntu--vg" in line
                                                                     or line.startswith("domutest-root")))


def note(text):
    run_dir = os.environ.get("DOMU_VM_RUN_DIR")
    if run_dir:
        with open(os.path.join(run_dir, "guest-lvm-findings.txt"), "a") as handle:
            handle.write(text.rstrip() + "\n")


@pytest.fixture(scope="module")
def lvm_guests(guest_vg):
    made = {
        DEB: guest_vg.add_guest(DEB, "msdos-boot-lvm", inner_vg=VG),
        UBU1: guest_vg.add_guest(UBU1, "msdos-lvm", inner_vg="ubuntu-vg", seed="ubuntu"),
        UBU2: guest_vg.add_guest(UBU2, "msdos-lvm", inner_vg="ubuntu-vg", seed="ubuntu"),
    }
    udev = subprocess.run(["udevadm", "control", "--ping"], capture_output=True, text=True)
    config = subprocess.run(["lvmconfig", "--typeconfig", "full", "global/event_activation", "devices/scan_lvs",
                             "devices/use_devicesfile"], capture_output=True, text=True)
    note(f"udevd answers: {udev.returncode == 0}; /run/systemd/system: {os.path.isdir('/run/systemd/system')}; "
         f"lvm: {' '.join(config.stdout.split())}")
    yield made
    for name in made:
        guest_vg.remove_guest(name)


@pytest.fixture
def clean_lvm(guest_vg, lvm_guests):
    before = host_vgs()
    assert len(set(before)) == len(before), before
    yield before
    cli("cleanup")
    assert guest_vg.leftovers() == []
    assert mount_root_entries() == []
    assert inner_dm_devices() == []
    assert host_vgs() == before
    for g in lvm_guests.values():
        assert g.unchanged(), f"origin {g.lv_path} changed"


def write_config(tmp_path, text):
    path = tmp_path / "domu-snapshot.conf"
    path.write_text("[domu-snapshot]\n" + text)
    return str(path)


def assert_mounted_from_inner_lv(target, g):
    info = findmnt(target)
    assert info is not None, f"{target} not mounted"
    assert info["source"].startswith("/dev/mapper/domusnap_"), info
    assert info["fstype"] == "ext4"
    assert set("ro,nosuid,nodev,noexec".split(",")) <= set(info["options"].split(","))
    assert guestdisks.compare_tree(target, g.tree) == []
    with pytest.raises(OSError):
        open(os.path.join(target, "etc", "new-file"), "w")


def test_debian_like_guest_mounts_its_root_lv_and_the_host_vgs_stay_as_they_were(tmp_path, lvm_guests, clean_lvm):
    g = lvm_guests[DEB]
    conf = write_config(tmp_path, f"[guest {DEB}]\nguest_lvm = yes\n")
    target = os.path.join(MOUNT_ROOT, VG, DEB)

    listed = cli("--config", conf, "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["lv"] == DEB)
    assert row["fs"] == "lvm" and row["partition"] == 2 and row["guest_lvs"].startswith(f"{VG}/root")
    assert row["problem"] is None

    proc = cli("--config", conf, "mount", DEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note(f"{DEB} mount: {proc.stdout.strip()} | {proc.stderr.strip()}")
    assert f"guest VG {VG} (as domusnap_" in proc.stdout and "LV root" in proc.stdout
    assert "journal replayed" in proc.stdout
    assert_mounted_from_inner_lv(target, g)
    during = host_vgs()
    assert len(set(during)) == len(during), f"two VGs of one name: {during}"
    assert [v for v in during if v not in clean_lvm] == [v for v in during if v.startswith("domusnap_")]
    assert len([v for v in during if v.startswith("domusnap_")]) == 1

    proc = cli("unmount", DEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert findmnt(target) is None
    assert inner_dm_devices() == []
    assert host_vgs() == clean_lvm


def test_check_reads_whether_the_host_scans_lvs_on_this_lvm():
    """The test bed's LVM (2.03.16) fails `lvmconfig --typeconfig full` ("Cannot clone NULL config
    node"), which made the `check` warning silent: the setting is read as it is set, or defaults."""
    from domu_snapshot import guestlvm

    full = subprocess.run(["lvmconfig", "--typeconfig", "full", "devices/scan_lvs"], capture_output=True, text=True)
    note(f"lvmconfig --typeconfig full devices/scan_lvs: rc {full.returncode}, {full.stdout.strip()} "
         f"{full.stderr.strip()}")
    assert guestlvm.host_scans_lvs() is False


def test_two_ubuntu_guests_with_the_same_vg_and_uuids_are_mounted_at_once_by_default(lvm_guests, clean_lvm):
    proc = cli("mount", UBU1, UBU2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note(f"ubuntu pair mount: {proc.stdout.strip()} | {proc.stderr.strip()}")
    sources = set()
    for name in (UBU1, UBU2):
        target = os.path.join(MOUNT_ROOT, VG, name)
        assert_mounted_from_inner_lv(target, lvm_guests[name])
        sources.add(findmnt(target)["source"])
    assert len(sources) == 2
    during = host_vgs()
    assert len(set(during)) == len(during), f"two VGs of one name: {during}"
    assert "ubuntu-vg" not in during
    assert len([v for v in during if v.startswith("domusnap_")]) == 2

    status = cli("status", "--json")
    assert status.returncode == 0
    proc = cli("unmount", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert host_vgs() == clean_lvm


def children(pid):
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found[int(entry)] = text[text.index("(") + 1:text.rindex(")")]
    return found


def test_kill_9_during_guest_lv_activation_then_cleanup_leaves_nothing(tmp_path, lvm_guests, clean_lvm):
    # lvchange runs 3 s late (a wrapper first on the tool path): the CLI is killed while it waits
    # for the activation, which then completes with no one left to tear it down but `cleanup`.
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    wrapper = wrappers / "lvchange"
    wrapper.write_text("#!/bin/sh\nsleep 3\nexec /sbin/lvchange \"$@\"\n")
    wrapper.chmod(stat.S_IRWXU)
    env = dict(os.environ, DOMU_SNAPSHOT_TOOL_PATH=f"{wrappers}:/usr/sbin:/usr/bin:/sbin:/bin")
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
            "--quiesce", "none", "mount", UBU1]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    child, deadline = None, time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and child is None:
        child = next((pid for pid, comm in children(proc.pid).items() if comm in ("lvchange", "sh")), None)
        time.sleep(0.02)
    assert child is not None, "the CLI finished before its lvchange ran: " + "".join(proc.communicate())
    proc.kill()
    proc.communicate(timeout=60)
    while os.path.exists(f"/proc/{child}"):  # the LVM command is never killed: it finishes on its own
        time.sleep(0.1)
    active = inner_dm_devices()
    note(f"after kill -9 during activation: inner dm devices {active}")
    assert any(d.startswith("domusnap_") for d in active), "the activation did not complete after the kill"

    proc = cli("cleanup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert inner_dm_devices() == []
    assert host_vgs() == clean_lvm


SPAN_A, SPAN_B = "domu-lvspan-a", "domu-lvspan-b"
SPAN_VG = "datavg"


@pytest.fixture
def spanning(guest_vg):
    """Two disks of one guest whose PVs form one guest VG (root spans both)."""
    made = guest_vg.add_spanning_guest((SPAN_A, SPAN_B), SPAN_VG)
    yield made
    for g in made:
        guest_vg.remove_guest(g.lv)


def domain_config(tmp_path):
    """A configuration whose libvirt (its test driver) has one domain `span` with both disks."""
    from domu_snapshot import quiesce

    xml = ("<node><domain type='test'><name>span</name><uuid>0b7e6f1a-9c1d-4e2b-8f00-5a5a5a5a0002</uuid>"
           "<memory>65536</memory><os><type arch='x86_64'>hvm</type></os><devices>"
           f"<disk type='block' device='disk'><source dev='/dev/{VG}/{SPAN_A}'/><target dev='vda'/></disk>"
           f"<disk type='block' device='disk'><source dev='/dev/mapper/{quiesce.dm_name(VG, SPAN_B)}'/>"
           "<target dev='vdb'/></disk></devices></domain></node>")
    (tmp_path / "domains.xml").write_text(xml)
    return write_config(tmp_path, f"libvirt_uri = test://{tmp_path / 'domains.xml'}\n")


def test_a_guest_vg_spanning_two_disks_of_one_domain_is_brought_up_from_both(tmp_path, spanning, clean_lvm):
    first, second = spanning
    # Each disk alone (nothing groups them): refused before anything of the VG is activated.
    alone = cli("mount", SPAN_A)
    assert alone.returncode == 1, alone.stdout + alone.stderr
    assert f"guest VG {SPAN_VG}, which has 2 PVs" in alone.stderr and "one libvirt domain" in alone.stderr
    assert inner_dm_devices() == [] and host_vgs() == clean_lvm

    conf = domain_config(tmp_path)
    listed = cli("--config", conf, "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {r["lv"]: r for r in json.loads(listed.stdout)}
    assert {rows[lv]["guest"] for lv in (SPAN_A, SPAN_B)} == {"span"}
    assert [rows[lv]["problem"] for lv in (SPAN_A, SPAN_B)] == [None, None]

    target = os.path.join(MOUNT_ROOT, VG, SPAN_A)
    proc = cli("--config", conf, "mount", "span")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"guest VG {SPAN_VG} (as domusnap_" in proc.stdout and f"PVs on {VG}/{SPAN_A}, {VG}/{SPAN_B}" \
            in proc.stdout, proc.stdout
        assert f"{VG}/{SPAN_B}: holds a PV of the guest VG brought up with {VG}/{SPAN_A}" in proc.stdout
        assert "journal replayed" in proc.stdout
        assert_mounted_from_inner_lv(target, first)  # every file, also those on the second PV
        during = host_vgs()
        assert SPAN_VG not in during and len([v for v in during if v.startswith("domusnap_")]) == 1, during
    finally:
        unmounted = cli("--config", conf, "unmount", "span")
    assert unmounted.returncode == 0, unmounted.stdout + unmounted.stderr
    assert findmnt(target) is None and inner_dm_devices() == [] and host_vgs() == clean_lvm
    assert first.unchanged() and second.unchanged()


def test_every_filesystem_of_a_debian_like_guest_in_list_mount_plugin_and_cleanup(tmp_path, lvm_guests, clean_lvm):
    """guest_filesystems = all: /boot (partition 1), the guest VG's root and home LVs, each at its
    own path below the guest's and with its own journal replay; swap left out and named. The
    plugin saves (and restores) the same files that helpers mode's FileSet (One FS = no over the
    mount root) finds below the guest's path; unmount and a crash's cleanup leave nothing."""
    from tests.fd_harness import FileDaemon, example_fileset_options, example_plugin_definition, PLUGIN_DIR

    g = lvm_guests[DEB]
    conf = write_config(tmp_path, f"[guest {DEB}]\nguest_filesystems = all\n")
    base = os.path.join(MOUNT_ROOT, VG, DEB)
    paths = {"part1": guestdisks.expected_tree(f"{g.seed}-boot"), f"lvm/{VG}/root": g.tree,
             f"lvm/{VG}/home": guestdisks.expected_tree(f"{g.seed}-home")}

    listed = cli("--config", conf, "list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["lv"] == DEB)
    assert row["partition"] == "all" and row["problem"] is None, row
    shown = [(os.path.relpath(f["path"], base), f["fs"]) for f in row["filesystems"]]
    assert shown == [("part1", "ext4"), (f"lvm/{VG}/root", "ext4"), (f"lvm/{VG}/home", "ext4")], shown
    assert row["not_mounted"] == [f"LV {VG}/swap (no ext4/ext3 filesystem)"], row
    shown_text = cli("--config", conf, "list").stdout
    assert f"mounts: part1 ext4, lvm/{VG}/root ext4, lvm/{VG}/home ext4; not mounted: LV {VG}/swap" in shown_text, \
        shown_text

    proc = cli("--config", conf, "mount", DEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note(f"{DEB} mount (all): {proc.stdout.strip()} | {proc.stderr.strip()}")
    assert f"not mounted: LV {VG}/swap" in proc.stdout
    assert f"lvm/{VG}/home: LV {VG}/home, ext4, clean" in proc.stdout and f"guest VG {VG} (as domusnap_" in proc.stdout
    assert findmnt(base) is None  # the guest's path is a directory; its filesystems are below it
    sources = set()
    for sub, tree in paths.items():
        target = os.path.join(base, sub)
        info = findmnt(target)
        assert info is not None and info["fstype"] == "ext4", (sub, info)
        assert set("ro,nosuid,nodev,noexec".split(",")) <= set(info["options"].split(","))
        assert guestdisks.compare_tree(target, tree) == [], sub
        sources.add(info["source"])
    assert len(sources) == 3
    assert findmnt(os.path.join(base, "part1"))["source"].startswith("/dev/loop")
    assert "journal replayed" in proc.stdout  # the root LV's, on the snapshot
    during = host_vgs()
    assert len(set(during)) == len(during), f"two VGs of one name: {during}"
    # what helpers mode's FileSet reads (One FS = no): every entry below the guest's path
    helpers_tree = set()
    for top, dirs, files in os.walk(base):
        helpers_tree |= {os.path.join(top, n) for n in dirs + files}
    proc = cli("unmount", DEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mount_root_entries() == [] and inner_dm_devices() == []
    assert host_vgs() == clean_lvm

    plugin = FileDaemon(example_plugin_definition(
        module_path=str(PLUGIN_DIR), mount_root=MOUNT_ROOT, vg=VG, prefix="domu-", include=DEB, quiesce="none",
        guest_filesystems="all", config=conf), **example_fileset_options())
    result = plugin.backup()
    assert result.status == "T", result.job.messages
    saved = {r.fname.rstrip("/") for r in result.records}
    assert saved == {p for p in helpers_tree if any(p == os.path.join(base, s) or p.startswith(os.path.join(base, s) + "/")
                                                     for s in paths)}
    assert helpers_tree - saved == {os.path.join(base, "lvm"), os.path.join(base, "lvm", VG)}
    assert mount_root_entries() == []
    where = tmp_path / "restore"
    job, _statuses = plugin.restore(result.records, str(where))
    assert job.errors == [], job.messages
    for sub, tree in paths.items():
        assert guestdisks.compare_tree(f"{where}{base}/{sub}", tree) == [], sub

    # a crash with everything mounted: cleanup finds it all from the system alone
    proc = cli("--config", conf, "mount", DEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli("cleanup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mount_root_entries() == [] and inner_dm_devices() == []



def test_fstab_assembles_a_debian_like_guest_where_its_own_fstab_mounts_each_filesystem(tmp_path, lvm_guests,
                                                                                         clean_lvm):
    """guest_filesystems = fstab: the guest's root LV at its path, /boot (partition 1, by UUID) and
    /home (its LV, by label) inside it, as its /etc/fstab says; swap, proc and a data disk that is
    not this disk's are not mounted (the last one named). The plugin saves each file once, exactly
    what helpers mode's FileSet reads; a restored /home/user file lies where the guest has it;
    cleanup after the mount (a crash) leaves nothing, the host's VGs as before."""
    from tests.fd_harness import FileDaemon, example_fileset_options, example_plugin_definition, PLUGIN_DIR

    g = lvm_guests[DEB]
    conf = write_config(tmp_path, f"[guest {DEB}]\nguest_filesystems = fstab\n")
    base = os.path.join(MOUNT_ROOT, VG, DEB)
    boot, home = guestdisks.expected_tree(f"{g.seed}-boot"), guestdisks.expected_tree(f"{g.seed}-home")
    # what the root LV shows with /boot and /home mounted over its own (the root's home/user is hidden)
    root = {rel: attrs for rel, attrs in g.tree.items() if rel.split("/")[0] not in ("boot", "home")}
    # srv/www/report-link.txt: its other name, home/user/report.txt, is under the root's hidden /home
    hidden_link = "hard link group home/user/report.txt: 2 links, expected 1"

    listed = cli("--config", conf, "list", "--json")
    row = next(r for r in json.loads(listed.stdout) if r["lv"] == DEB)
    assert row["partition"] == "fstab" and len(row["filesystems"]) == 3, row

    proc = cli("--config", conf, "mount", "--json", DEB)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    note(f"{DEB} mount (fstab): {proc.stdout.strip()} | {proc.stderr.strip()}")
    [disk] = json.loads(proc.stdout)["guests"][0]["disks"]
    assert [(f["mount_path"], f["mount_point"]) for f in disk["filesystems"]] == [
        (base, "/"), (f"{base}/boot", "/boot"), (f"{base}/home", "/home")], disk
    assert "fstab line 8 ('/dev/vdb1' on '/srv/data'): not a filesystem of this disk mounted here" \
        in disk["not_mounted"], disk
    assert findmnt(base)["source"].startswith("/dev/mapper/domusnap_") and findmnt(base)["fstype"] == "ext4"
    assert findmnt(f"{base}/boot")["source"].startswith("/dev/loop")
    assert findmnt(f"{base}/home")["source"].startswith("/dev/mapper/domusnap_")
    for target in (base, f"{base}/boot", f"{base}/home"):
        assert set("ro,nosuid,nodev,noexec".split(",")) <= set(findmnt(target)["options"].split(","))
    assert guestdisks.compare_tree(base, root, ignore=("lost+found", "boot", "home")) == [hidden_link]
    assert guestdisks.compare_tree(f"{base}/boot", boot) == []
    assert guestdisks.compare_tree(f"{base}/home", home) == []
    helpers_tree = set()   # what helpers mode's FileSet reads (One FS = no): every entry below the path
    for top, dirs, files in os.walk(base):
        helpers_tree |= {os.path.join(top, n) for n in dirs + files}
    during = host_vgs()
    assert len(set(during)) == len(during), f"two VGs of one name: {during}"
    proc = cli("cleanup")   # as after a crash: everything found from the system alone
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mount_root_entries() == [] and inner_dm_devices() == []
    assert host_vgs() == clean_lvm

    plugin = FileDaemon(example_plugin_definition(
        module_path=str(PLUGIN_DIR), mount_root=MOUNT_ROOT, vg=VG, prefix="domu-", include=DEB, quiesce="none",
        guest_filesystems="fstab", config=conf), **example_fileset_options())
    result = plugin.backup()
    assert result.status == "T", result.job.messages
    names = [r.fname.rstrip("/") for r in result.records]
    assert len(names) == len(set(names)), "a file saved twice"
    assert set(names) == helpers_tree | {base}
    assert not any("another filesystem" in text for _level, text in result.job.messages)
    assert mount_root_entries() == [] and host_vgs() == clean_lvm
    where = tmp_path / "restore"
    job, _statuses = plugin.restore(result.records, str(where))
    assert job.errors == [], job.messages
    assert guestdisks.compare_tree(f"{where}{base}/home", home) == []
    assert guestdisks.compare_tree(f"{where}{base}/boot", boot) == []
    assert guestdisks.compare_tree(f"{where}{base}", root, ignore=("lost+found", "boot", "home")) == []
