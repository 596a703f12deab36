"""Teardown touches only what was selected and what is ours; --dry-run changes nothing; a stale
leftover that overflowed is replaced; an empty selection is an error (issue 13). Real LVM, loop
devices and mounts in the VM test bed, through the `domu-snapshot` CLI."""

import hashlib
import json
import os
import subprocess

import pytest

from tests import guestdisks
from tests.vm.test_core import MOUNT_ROOT, VG, assert_nothing_left, clean, cli, findmnt  # noqa: F401

pytestmark = pytest.mark.vm


def snapshots():
    rows = json.loads(subprocess.run(["lvs", "--reportformat", "json", "-o", "lv_name", VG], capture_output=True,
                                     text=True, check=True).stdout)["report"][0]["lv"]
    return sorted(r["lv_name"] for r in rows if r["lv_name"].endswith("-dsnap"))


def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def foreign_mounts(tmp_path):
    """Two mounts under the mount root that are not ours: a tmpfs at <root>/x/y, and an ext4 image
    on a plain loop device (a loop, but not over one of our snapshots) at <root>/<vg>/domu-oldxen,
    the path where the guest domu-oldxen would be mounted."""
    image = tmp_path / "foreign.img"
    run("truncate", "-s", "8M", str(image))
    run("mkfs.ext4", "-q", "-F", str(image))
    device = run("losetup", "--find", "--show", str(image))
    tmpfs_at = os.path.join(MOUNT_ROOT, "x", "y")
    ext4_at = os.path.join(MOUNT_ROOT, VG, "domu-oldxen")
    os.makedirs(tmpfs_at)
    os.makedirs(ext4_at)
    run("mount", "-t", "tmpfs", "-o", "size=1m", "foreign", tmpfs_at)
    run("mount", "-o", "ro", device, ext4_at)
    try:
        yield {"tmpfs": tmpfs_at, "ext4": ext4_at, "loop": device}
    finally:
        for target in (tmpfs_at, ext4_at):
            subprocess.run(["umount", target])
        subprocess.run(["losetup", "--detach", device])
        for path in (tmpfs_at, os.path.dirname(tmpfs_at), ext4_at):
            try:
                os.rmdir(path)
            except OSError:
                pass


def test_unmount_of_a_selection_tears_down_only_the_selection_and_never_a_foreign_mount(
        guest_vg, clean, foreign_mounts):
    proc = cli("mount", "domu-modern", "domu-gpt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modern, gpt = (os.path.join(MOUNT_ROOT, VG, n) for n in ("domu-modern", "domu-gpt"))

    # --include selects domu-modern only: domu-gpt stays mounted, its snapshot stays
    proc = cli("--include", "domu-mod*", "unmount", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK      domu-modern" in proc.stdout and "domu-gpt" not in proc.stdout
    assert findmnt(modern) is None
    assert findmnt(gpt) is not None and findmnt(gpt)["source"].startswith("/dev/loop")
    assert snapshots() == ["domu-gpt-dsnap"]
    assert sorted(os.listdir(os.path.join(MOUNT_ROOT, VG))) == ["domu-gpt", "domu-oldxen"]

    # the guest whose mount path holds a foreign mount: named, its path left alone
    proc = cli("unmount", "domu-oldxen")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not ours, not touched" in proc.stderr
    assert findmnt(foreign_mounts["ext4"])["source"] == foreign_mounts["loop"]

    # --all without a narrower selection: domu-gpt goes; the foreign mounts are named and stay
    proc = cli("unmount", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK      domu-gpt" in proc.stdout
    for target in (foreign_mounts["tmpfs"], foreign_mounts["ext4"]):
        assert f"{target} is mounted under the mount root but is not ours" in proc.stderr
        assert findmnt(target) is not None
    assert findmnt(gpt) is None and snapshots() == []

    # cleanup (the boot-time service): everything ours, whatever the selection; foreign stays
    proc = cli("mount", "domu-modern")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli("--include", "domu-gpt", "cleanup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK      domu-modern" in proc.stdout
    assert findmnt(modern) is None and snapshots() == []
    assert findmnt(foreign_mounts["tmpfs"]) is not None and findmnt(foreign_mounts["ext4"]) is not None
    assert guest_vg.leftovers() == []


def system_view():
    """What a dry run must leave as it found: loop devices, mounts, LVs, the mount root's files."""
    loops = json.loads(run("losetup", "--list", "--json", "-O", "NAME,BACK-FILE,OFFSET,SIZELIMIT,RO") or "{}")
    mounts = json.loads(run("findmnt", "--list", "--json", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS"))
    lvs = run("lvs", "--noheadings", "-o", "lv_name,lv_attr,lv_tags", VG)
    tree = {}
    for dirpath, dirnames, filenames in os.walk(MOUNT_ROOT):
        dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
        tree[dirpath] = "dir %o" % os.stat(dirpath).st_mode
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                tree[path] = hashlib.sha256(handle.read()).hexdigest()
    return {"loops": loops, "mounts": mounts, "lvs": lvs, "mount root": tree}


def test_dry_run_of_list_mount_unmount_cleanup_changes_nothing(guest_vg, clean):
    proc = cli("mount", "domu-modern")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    xml = os.path.join(MOUNT_ROOT, VG, "domu-modern.domain.xml")   # as quiesce saves a definition
    with open(xml, "w") as handle:
        handle.write("<domain><name>modern</name></domain>\n")
    guestdisks.run(["lvcreate", "-q", "--snapshot", "--name", "domu-gpt-dsnap", "--size", "8M", "--addtag",
                    "domu_snapshot", f"{VG}/domu-gpt"])                 # a crash's leftover
    os.mkdir(os.path.join(MOUNT_ROOT, VG, "domu-whole"))              # a stale empty directory
    before = system_view()

    outputs = {}
    for args in (("list",), ("mount", "--all"), ("unmount", "domu-modern"), ("unmount", "--all"), ("cleanup",)):
        proc = cli("--dry-run", *args)
        assert proc.returncode == 0, (args, proc.stdout + proc.stderr)
        outputs[args] = proc.stdout
        assert system_view() == before, f"--dry-run {' '.join(args)} changed the system"
    for args in (("unmount", "domu-modern"), ("unmount", "--all"), ("cleanup",)):
        assert f"would run: umount {MOUNT_ROOT}/{VG}/domu-modern" in outputs[args]
        assert "would run: losetup --detach /dev/loop" in outputs[args]
        assert f"would remove {xml}" in outputs[args]
    assert f"would run: lvremove --yes {VG}/domu-gpt-dsnap" in outputs[("cleanup",)]

    proc = cli("cleanup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not os.path.exists(xml)


def test_mount_all_selecting_no_guest_fails_unless_allowed(guest_vg, clean):
    proc = cli("--include", "nothing-here*", "mount", "--all")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no guest selected" in proc.stderr
    assert f"prefix 'domu-'; VGs {VG}; include nothing-here*" in proc.stderr
    assert "--allow-empty" in proc.stderr
    proc = cli("--include", "nothing-here*", "--allow-empty", "mount", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no guest selected" in proc.stderr
    assert_nothing_left(guest_vg)


def test_stale_leftover_that_overflowed_is_replaced_by_a_fresh_snapshot(guest_vg, make_guest, clean):
    g = make_guest("msdos-ext4-1m", name="domu-stale", size_mib=48)
    # `mount` and then no `unmount` (the job crashed): the snapshot stays, mounted
    proc = cli("--snapshot-size", "4M", "mount", "domu-stale")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # a night of guest writes: 12 MiB rewritten in place (the same bytes, so the origin keeps its
    # content, but every write copies a chunk into the 4 MiB snapshot): it overflows
    with open(g.lv_path, "r+b", buffering=0) as disk:
        disk.seek(16 * 1024 * 1024)
        data = disk.read(12 * 1024 * 1024)
        disk.seek(16 * 1024 * 1024)
        disk.write(data)
        os.fsync(disk.fileno())
    assert "OVERFLOWED" in cli("status").stdout

    proc = cli("mount", "domu-stale")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK      domu-stale" in proc.stdout
    assert "leftover snapshot domutest/domu-stale-dsnap of an earlier run had overflowed" in proc.stderr
    assert "snapshotted afresh" in proc.stderr
    target = os.path.join(MOUNT_ROOT, VG, "domu-stale")
    assert findmnt(target) is not None
    assert guestdisks.compare_tree(target, g.tree) == []
    assert "OVERFLOWED" not in cli("status").stdout
    proc = cli("unmount", "domu-stale")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_nothing_left(guest_vg)
    assert g.unchanged()


def test_an_untagged_lv_named_like_our_snapshot_is_reported_and_untouched(guest_vg, clean):
    guestdisks.run(["lvcreate", "-q", "--yes", "--name", "domu-odd-dsnap", "--size", "4M", VG])
    try:
        proc = cli("list")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"{VG}/domu-odd-dsnap is named like a snapshot of this tool but does not carry its tag" \
            in proc.stderr
        proc = cli("cleanup")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "domu-odd-dsnap" in run("lvs", "--noheadings", "-o", "lv_name", VG)
    finally:
        guestdisks.run(["lvremove", "-q", "--yes", f"{VG}/domu-odd-dsnap"])
