"""External ext journals (issue 13) on real LVM: a guest whose ext4 filesystem keeps its journal
on another device is refused before any e2fsck or mount, and that journal is never written.

VG `domuextj` holds:
- `extjournal`: an ext4 journal device (mke2fs -O journal_dev), not a guest (no prefix);
- `domu-ej-extj`: a guest disk with an msdos table whose ext4 partition (at 1 MiB) uses
  `extjournal` as its journal. While the tool runs, the test has that filesystem mounted like the
  running guest (through a loop device at the partition offset, noatime; its journal through a loop
  device over `extjournal`, as a hypervisor holds a guest's disks: open, but not claimed
  exclusively), with files written and synced: its superblock says needs_recovery and the journal
  LV is the guest's live journal, which e2fsck would find through blkid (by the journal UUID) and
  replay into (the journal's superblock is then written);
- `domu-ej-jdev`: a journal device as a guest disk, with `partition = whole` in a [guest] section
  (so the superblock check, not the partition choice, is what refuses it);
- `domu-ej-plain`: an ordinary guest (msdos, ext4, dirty journal), mounted as usual.

One `list --json`, one `mount --all`, one `unmount --all`, then the plugin path (stand-in file
daemon, in this process) for the external-journal guest and the ordinary one.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import fd_harness, guestdisks
from tests.fd_harness import FileDaemon, bareosfd

pytestmark = pytest.mark.vm

VG = "domuextj"
PREFIX = "domu-ej-"
JOURNAL_LV = "extjournal"
EXTJ = PREFIX + "extj"
JDEV = PREFIX + "jdev"
PLAIN = PREFIX + "plain"
ROOT = "/run/domu-extj-mnt"
WORK = Path("/run/domu-extj")
MiB = guestdisks.MiB
EXTJ_MIB = 32
OFFSET = MiB  # the ext4 partition of EXTJ starts at sector 2048


def cli(*args, timeout=900):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--config", str(WORK / "domu-snapshot.conf"),
            "--vg", VG, "--prefix", PREFIX, "--mount-root", ROOT, "--quiesce", "none", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return proc


def run(argv):
    return guestdisks.out(argv).strip()


def guest_lines(proc, name):
    """The lines naming guest `name` (stdout and stderr)."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if re.search(rf"\b{re.escape(name)}\b", line)]


def root_entries():
    found = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return found


class Running:
    """The guest's filesystem mounted as the running guest has it (loop device at the partition
    offset on the origin LV): only the test writes through it."""

    def __init__(self, lv_path, journal_path):
        self.lv_path = lv_path
        self.journal_path = journal_path
        self.target = WORK / "running"
        self.loop = None
        self.journal_loop = None

    def attach(self):
        """(filesystem's loop device, journal's loop device)."""
        self.journal_loop = run(["losetup", "--find", "--show", self.journal_path])
        self.loop = run(["losetup", "--find", "--show", "--offset", str(OFFSET),
                         "--sizelimit", str(EXTJ_MIB * MiB - OFFSET), self.lv_path])
        return self.loop, self.journal_loop

    def mount(self):
        self.target.mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "ext4", "-o", "noatime", self.loop, str(self.target)])

    def stop(self):
        if os.path.ismount(self.target):
            run(["umount", str(self.target)])
        for device in (self.loop, self.journal_loop):
            if device:
                run(["losetup", "--detach", device])
        self.loop = self.journal_loop = None


def leftovers(gvg, running):
    """What the tool left on the VG: LVs besides the test's own, loop devices and mounts except
    the running guest's, anything under the mount root."""
    own = {f"LV {VG}/{JOURNAL_LV}", f"LV {VG}/{EXTJ}", f"LV {VG}/{JDEV}"}
    if running.loop:
        own |= {f"loop device {running.loop}", f"loop device {running.journal_loop}", f"mount {running.target}"}
    return [x for x in gvg.leftovers() if x not in own] + root_entries()


@pytest.fixture(scope="module")
def bed():
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "domu-snapshot.conf").write_text(f"[guest {JDEV}]\npartition = whole\n")
    gvg = guestdisks.GuestVG(VG, size_mib=256).create()
    running = None
    try:
        plain = gvg.add_guest(PLAIN, "msdos-ext4-1m", dirty=True)
        journal = f"/dev/{VG}/{JOURNAL_LV}"
        run(["lvcreate", "-q", "-y", "-n", JOURNAL_LV, "-L", "8M", VG])
        run(["mke2fs", "-q", "-F", "-b", "4096", "-O", "journal_dev", journal])
        run(["lvcreate", "-q", "-y", "-n", JDEV, "-L", "8M", VG])
        run(["mke2fs", "-q", "-F", "-b", "4096", "-O", "journal_dev", f"/dev/{VG}/{JDEV}"])
        # the table is written in a file (sfdisk on a file never talks to the kernel), then copied in
        image = WORK / "extj.img"
        with open(image, "wb") as handle:
            handle.truncate(EXTJ_MIB * MiB)
        guestdisks.run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)],
                       input=b"label: dos\nunit: sectors\n\nstart=2048, type=83\n")
        run(["lvcreate", "-q", "-y", "-n", EXTJ, "-L", f"{EXTJ_MIB}M", VG])
        guestdisks._write_image_to_device(image, f"/dev/{VG}/{EXTJ}")
        running = Running(f"/dev/{VG}/{EXTJ}", journal)
        fs_loop, journal_loop = running.attach()
        run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-E", "lazy_itable_init=0",
             "-J", f"device={journal_loop}", fs_loop])
        running.mount()
        for i in range(20):
            (running.target / f"file{i:02d}.txt").write_text(f"written by the running guest {i}\n" * 100)
        (running.target / "dir").mkdir()
        run(["sync"])
        yield gvg, plain, journal, running
    finally:
        if root_entries() or [x for x in gvg.leftovers() if "dsnap" in x]:
            cli("cleanup")
        if running is not None:
            running.stop()
        left = gvg.destroy()
        assert set(left) <= {f"LV {VG}/{JOURNAL_LV}", f"LV {VG}/{EXTJ}", f"LV {VG}/{JDEV}"}, left


def test_extjournal_refused_journal_untouched_others_mounted(bed):
    gvg, plain, journal, running = bed
    sb = subprocess.run(["dumpe2fs", "-h", running.loop], capture_output=True, text=True).stdout
    journal_uuid = re.search(r"^Journal UUID:\s+(\S+)", sb, re.M).group(1)
    jdev = os.stat(running.journal_loop).st_rdev  # the device the guest's kernel knows it by
    assert guestdisks.needs_recovery(f"/dev/{VG}/{EXTJ}", OFFSET)  # the guest is "running"
    before = guestdisks.device_sha256(journal)
    jdev_before = guestdisks.device_sha256(f"/dev/{VG}/{JDEV}")

    mounted = cli("mount", "--all")
    try:
        # first what matters most: the live journal was not written (replayed into, or its
        # superblock updated) by e2fsck or a mount, whatever the tool says
        assert guestdisks.device_sha256(journal) == before, guest_lines(mounted, EXTJ)
        assert guestdisks.device_sha256(f"/dev/{VG}/{JDEV}") == jdev_before, guest_lines(mounted, JDEV)
        assert mounted.returncode == 1, mounted.stdout + mounted.stderr  # some guests failed
        [line] = guest_lines(mounted, EXTJ)
        assert line.startswith(f"error: FAILED  {EXTJ}: journal check failed: the ext4 filesystem on "
                               f"{VG}/{EXTJ} partition 1 has an external journal (UUID {journal_uuid}, "
                               f"device number {os.major(jdev)}:{os.minor(jdev)})"), line
        assert "tune2fs -O ^has_journal" in line and "another way" in line, line
        [line] = guest_lines(mounted, JDEV)
        assert line.startswith(f"error: FAILED  {JDEV}: journal check failed: {VG}/{JDEV} (whole disk) "
                               f"holds an external ext journal device"), line
        assert "not a filesystem" in line, line
        [line] = [x for x in guest_lines(mounted, PLAIN) if x.startswith("OK")]
        assert "journal replayed" in line, line
        plain_root = f"{ROOT}/{VG}/{PLAIN}"
        assert guestdisks.compare_tree(plain_root, plain.tree) == []
        # nothing of the refused guests is left while the run's mounts stay
        lvs = {lv["lv_name"] for lv in gvg.lvs()}
        assert lvs == {JOURNAL_LV, EXTJ, JDEV, PLAIN, PLAIN + "-dsnap"}, lvs
        assert not os.path.exists(f"{ROOT}/{VG}/{EXTJ}") and not os.path.exists(f"{ROOT}/{VG}/{JDEV}")
    finally:
        unmounted = cli("unmount", "--all")
    # exit 1: the job must end in error, naming the guests `mount --all` failed for
    assert unmounted.returncode == 1, unmounted.stdout + unmounted.stderr
    assert f"not backed up: {EXTJ}, {JDEV} " in unmounted.stderr, unmounted.stderr
    assert [x for x in guest_lines(unmounted, PLAIN) if x.startswith("OK")], unmounted.stdout
    assert leftovers(gvg, running) == []
    assert guestdisks.device_sha256(journal) == before  # never replayed into, never opened by a mount
    assert guestdisks.device_sha256(f"/dev/{VG}/{JDEV}") == jdev_before
    assert plain.unchanged()

    # `list` (read-only loop devices of the origins) says why they would be refused
    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {row["lv"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {EXTJ, JDEV, PLAIN}  # the journal LV has no prefix: not a guest
    assert rows[EXTJ]["partition"] == 1 and rows[EXTJ]["offset"] == OFFSET
    assert "external journal" in rows[EXTJ]["problem"] and journal_uuid in rows[EXTJ]["problem"]
    assert "journal device" in rows[JDEV]["problem"]
    assert rows[PLAIN]["problem"] is None


def test_extjournal_plugin_reports_the_guest_lost(bed, tmp_path, monkeypatch):
    gvg, plain, journal, running = bed
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", "/nonexistent/domu-snapshot.conf")
    before = guestdisks.device_sha256(journal)
    mount_root = tmp_path / "mnt"
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=str(mount_root), vg=VG, prefix=PREFIX,
        quiesce="none", include=f"{EXTJ},{PLAIN}")
    fd = FileDaemon(definition, **fd_harness.example_fileset_options())
    result = fd.backup()
    assert result.status == "f", result.job.messages  # a lost guest fails the job
    errors = result.job.texts(bareosfd.M_ERROR)
    assert len(errors) == 1, errors
    assert EXTJ in errors[0] and "journal check failed" in errors[0] and "external journal" in errors[0], errors[0]
    assert len(result.job.fatal) == 1 and EXTJ in result.job.fatal[0] and PLAIN not in result.job.fatal[0]
    plain_root = f"{mount_root}/{VG}/{PLAIN}"
    assert result.records and all(r.fname.startswith(plain_root) for r in result.records)
    assert guestdisks.device_sha256(journal) == before
    assert leftovers(gvg, running) == []
    assert not [mp for _dev, mp in guestdisks._mountinfo() if mp.startswith(f"{mount_root}/")]
