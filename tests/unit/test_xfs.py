"""XFS (issue 15): superblock reading, what is refused, the replay's commands, configuration, and the
per-filesystem dispatch. The storage side (log replay on a real snapshot) is tests/vm/test_xfs.py."""

import struct
import subprocess
import uuid

import pytest

from domu_snapshot import commands, filesystems, fsck, partitions, xfs
from domu_snapshot.config import load_config
from domu_snapshot.errors import DomuError, ProbeError

MiB = 1024 * 1024
FS_MIB = 320  # mkfs.xfs (xfsprogs >= 5.19) refuses a data section of less than 300 MB
FS_UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"

def mkfs_xfs(path, *options):
    """A real XFS by mkfs.xfs (xfsprogs is in the test bed's packages: Makefile APT_PACKAGES)."""
    with open(path, "wb") as handle:
        handle.truncate(FS_MIB * MiB)  # sparse: mkfs.xfs writes a few MiB of it
    subprocess.run(["mkfs.xfs", "-q", "-f", "-m", f"uuid={FS_UUID}", *options, str(path)], check=True)
    return path


def first_sector(path):
    with open(path, "rb") as handle:
        return handle.read(512)


# ------------------------------------------------------------------ superblock

def test_superblock_gives_the_label_fstab_may_name(tmp_path):
    sb = xfs.read_superblock(str(mkfs_xfs(tmp_path / "fs.img", "-L", "boot")))
    assert (sb.uuid, sb.label) == (FS_UUID, "boot")


def test_superblock_of_mkfs_xfs_gives_size_and_uuid_at_the_partition_offset(tmp_path):
    fs = mkfs_xfs(tmp_path / "fs.img")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as handle:  # a guest disk: the filesystem at 1 MiB, as a partition
        handle.truncate(MiB + FS_MIB * MiB)
        handle.seek(MiB)
        handle.write(first_sector(fs))
    sb = xfs.read_superblock(str(disk), MiB)
    assert (sb.fs, sb.size, sb.uuid, sb.label) == ("xfs", FS_MIB * MiB, FS_UUID, "")
    assert not sb.external_log and sb.realtime_blocks == 0
    assert xfs.refusal(sb, "vg/lv partition 1") is None
    assert xfs.read_superblock(str(disk), 0) is None  # nothing at the start of the disk


def test_an_external_log_is_refused_naming_where(tmp_path):
    log = tmp_path / "log.img"
    with open(log, "wb") as handle:
        handle.truncate(80 * MiB)
    sb = xfs.read_superblock(str(mkfs_xfs(tmp_path / "fs.img", "-l", f"logdev={log},size=64m")))
    assert sb.external_log
    message, hint = xfs.refusal(sb, "vg0/domu-db partition 2")
    assert "vg0/domu-db partition 2" in message and "external log" in message and "not backed up" in message
    assert hint


def test_a_realtime_section_is_refused(tmp_path):
    rt = tmp_path / "rt.img"
    with open(rt, "wb") as handle:
        handle.truncate(64 * MiB)
    sb = xfs.read_superblock(str(mkfs_xfs(tmp_path / "fs.img", "-r", f"rtdev={rt}")))
    assert sb.realtime_blocks > 0
    message, _hint = xfs.refusal(sb, "vg0/domu-rt (whole disk)")
    assert "realtime" in message and "vg0/domu-rt (whole disk)" in message


def superblock_bytes(block_size=4096, data_blocks=81920, log_start=65541, realtime_blocks=0):
    raw = bytearray(512)
    raw[:4] = b"XFSB"
    struct.pack_into(">IQQ", raw, 4, block_size, data_blocks, realtime_blocks)
    raw[32:48] = uuid.UUID(FS_UUID).bytes
    struct.pack_into(">Q", raw, 48, log_start)
    return bytes(raw)


def test_superblock_fields_from_bytes():
    sb = xfs.parse_superblock(superblock_bytes())
    assert (sb.size, sb.uuid, sb.external_log) == (81920 * 4096, FS_UUID, False)
    assert xfs.parse_superblock(superblock_bytes(log_start=0)).external_log


@pytest.mark.parametrize("raw", [
    b"", bytes(512), b"XFSB" + bytes(50),                      # nothing, zeros, short
    superblock_bytes(block_size=0), superblock_bytes(block_size=3000),   # not a block size mkfs makes
    superblock_bytes(block_size=1 << 20),
    b"EXT4" + superblock_bytes()[4:],
])
def test_no_xfs_superblock(raw):
    assert xfs.parse_superblock(raw) is None


def test_unreadable_or_short_device_has_no_superblock(tmp_path):
    assert xfs.read_superblock(str(tmp_path / "missing")) is None
    short = tmp_path / "short"
    short.write_bytes(superblock_bytes()[:100])
    assert xfs.read_superblock(str(short)) is None


# -------------------------------------------------------------- replay commands

def test_replay_mounts_the_loop_device_read_write_with_nouuid_then_unmounts():
    printed = []
    commands.set_dry_run(True, printer=printed.append)
    try:
        xfs.replay("/dev/loop7", "/mnt root/vg0/domu-db")
        xfs.mount_read_only("/dev/loop7", "/mnt root/vg0/domu-db")
    finally:
        commands.set_dry_run(False)
    assert printed == [
        "would run: mount -t xfs -o rw,nouuid,nosuid,nodev,noexec /dev/loop7 /mnt root/vg0/domu-db",
        "would run: umount /mnt root/vg0/domu-db",
        "would run: mount -t xfs -o ro,nouuid,nosuid,nodev,noexec /dev/loop7 /mnt root/vg0/domu-db",
    ]
    assert "norecovery" not in " ".join(printed)


# ------------------------------------------------------------------ configuration

def write_config(tmp_path, text):
    path = tmp_path / "domu-snapshot.conf"
    path.write_text(text)
    return str(path)


def test_the_default_stays_ext_only(tmp_path):
    assert load_config(write_config(tmp_path, "")).filesystems == ["ext4", "ext3"]


def test_xfs_is_accepted_in_filesystems(tmp_path):
    cfg = load_config(write_config(tmp_path, "[domu-snapshot]\nfilesystems = ext4, ext3, xfs\n"))
    assert cfg.filesystems == ["ext4", "ext3", "xfs"]
    assert load_config(None, {"filesystems": "xfs"}).filesystems == ["xfs"]


def test_other_filesystems_are_still_refused(tmp_path):
    with pytest.raises(DomuError, match="filesystems: .*xfs.*not 'btrfs'"):
        load_config(write_config(tmp_path, "[domu-snapshot]\nfilesystems = xfs, btrfs\n"))


# ------------------------------------------------------------------ dispatch

def test_each_filesystem_has_its_kind():
    assert all(filesystems.kind(fs) is filesystems.EXT for fs in ("ext2", "ext3", "ext4"))
    assert filesystems.kind("xfs") is filesystems.XFS
    assert filesystems.kind("btrfs") is None and filesystems.kind(None) is None
    assert (filesystems.EXT.replay_step, filesystems.XFS.replay_step) == ("journal replay", "log replay")


def test_superblock_is_read_as_the_probed_type(tmp_path):
    xfs_image = str(mkfs_xfs(tmp_path / "xfs.img"))
    ext_image = tmp_path / "ext.img"
    subprocess.run(["truncate", "-s", "8M", str(ext_image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(ext_image)], check=True)
    assert filesystems.read_superblock(xfs_image, 0, "xfs").fs == "xfs"
    assert filesystems.read_superblock(str(ext_image), 0, "ext4").fs == "ext4"
    # a table that names the wrong type finds no superblock of that type
    assert filesystems.read_superblock(xfs_image, 0, "ext4") is None
    assert filesystems.read_superblock(str(ext_image), 0, "xfs") is None
    assert filesystems.read_superblock(xfs_image, 0, "btrfs") is None


def test_refusal_goes_to_the_filesystem_s_own_check():
    external_log = xfs.parse_superblock(superblock_bytes(log_start=0))
    assert "external log" in filesystems.refusal(external_log, "vg/lv")[0]
    journal_device = fsck.Superblock("ext4", 1, False, True, False, is_journal_device=True)
    assert "journal device" in filesystems.refusal(journal_device, "vg/lv")[0]
    assert filesystems.refusal(None, "vg/lv") is None


# ------------------------------------------------------------ partition choice

SWAP_THEN_XFS = {"sector_size": 512, "length": 688128, "label": "msdos", "error": None, "partitions": [
    {"number": 1, "kind": "primary", "start": 2048, "length": 16384, "fs": "linux-swap(v1)"},
    {"number": 2, "kind": "primary", "start": 18432, "length": 669696, "fs": "xfs"},
]}


def test_the_default_refuses_an_xfs_guest_listing_its_partitions():
    with pytest.raises(ProbeError) as refused:
        partitions.choose(SWAP_THEN_XFS)
    assert "no ext4/ext3 filesystem found" in refused.value.message and "2:xfs" in refused.value.message
    with pytest.raises(ProbeError, match="partition 2 holds xfs, not ext2/3/4"):
        partitions.choose(SWAP_THEN_XFS, "2")


def test_xfs_selected_picks_the_xfs_partition():
    for partition in ("auto", "2"):
        choice = partitions.choose(SWAP_THEN_XFS, partition, ["ext4", "ext3", "xfs"])
        assert (choice.number, choice.fs, choice.offset, choice.size) == (2, "xfs", 18432 * 512, 669696 * 512)
    with pytest.raises(ProbeError, match="partition 1 holds linux-swap\\(v1\\), not ext2/3/4 or xfs"):
        partitions.choose(SWAP_THEN_XFS, "1", ["xfs"])


def test_a_whole_disk_xfs_needs_xfs_selected():
    whole = {"sector_size": 512, "length": 655360, "label": "loop", "error": None,
             "partitions": [{"number": 1, "kind": "primary", "start": 0, "length": 655360, "fs": "xfs"}]}
    assert partitions.choose(whole, "whole", ["xfs"]).number == 0
    assert partitions.choose(whole, "auto", ["ext4", "xfs"]).number == 0
    with pytest.raises(ProbeError):
        partitions.choose(whole, "whole")


def printed_plan(tmp_path, setting, lv):
    """The lines --dry-run prints for a guest of one disk vg0/`lv` under the `setting` line."""
    from domu_snapshot.lifecycle import Disk, Guest, Runner
    printed = []
    runner = Runner(load_config(write_config(tmp_path, f"[domu-snapshot]\n{setting}\n"),
                                {"mount_root": str(tmp_path / "mnt")}))
    disk = Disk("vg0", lv, runner.mount_path("vg0", lv), None, runner.naming)
    commands.set_dry_run(True, printer=printed.append)
    try:
        runner._print_plan(Guest(lv, [disk]))
    finally:
        commands.set_dry_run(False)
    return disk, printed


def test_the_dry_run_plan_is_printed_by_the_calls_that_run_the_steps(tmp_path):
    """--dry-run's plan of a disk comes from loop.attach, fsck, mount and xfs themselves (the
    argument lists cannot drift from what a real run executes); placeholders where only the
    snapshot would tell."""
    disk, printed = printed_plan(tmp_path, "filesystems = ext4, xfs", "domu-db")
    target = disk.mount_path
    assert printed == [
        f"would run: losetup --find --show --offset <offset> --sizelimit <size> {disk.snapshot_path}",
        "would run: e2fsck -p -E journal_only <loop device>",
        f"would run: mount -t <ext3|ext4> -o ro,nosuid,nodev,noexec <loop device> {target}",
        "for xfs instead of e2fsck and that mount:",
        f"would run: mount -t xfs -o rw,nouuid,nosuid,nodev,noexec <loop device> {target}",
        f"would run: umount {target}",
        f"would run: mount -t xfs -o ro,nouuid,nosuid,nodev,noexec <loop device> {target}",
    ]


@pytest.mark.parametrize("layout", ["all", "fstab"])
def test_the_dry_run_plan_of_every_filesystem_names_their_paths(tmp_path, layout):
    disk, printed = printed_plan(tmp_path, f"guest_filesystems = {layout}", "domu-deb")
    assert printed[0] == (f"vg0/domu-deb (guest_filesystems = {layout}): for each partition N that holds one of "
                          f"ext4, ext3, and for each LV of a guest VG in it (at {disk.mount_path}/lvm/<guest VG>/<LV>):")
    assert printed[3] == f"would run: mount -t <ext3|ext4> -o ro,nosuid,nodev,noexec <loop device> {disk.mount_path}/part<N>"
    assert (printed[-1].startswith("then, when one of them holds etc/fstab") and len(printed) == 5) \
        if layout == "fstab" else len(printed) == 4


def test_a_guest_lv_is_taken_for_its_filesystem_only_when_that_is_selected(tmp_path):
    """LVM inside a guest (guestlvm.bring_up): the root LV's filesystem, ext or XFS, by its
    superblock, and only when `filesystems` selects it."""
    from domu_snapshot import guestlvm

    xfs_lv = str(mkfs_xfs(tmp_path / "root-xfs.img"))
    ext_lv = tmp_path / "root-ext4.img"
    with open(ext_lv, "wb") as handle:
        handle.truncate(8 * MiB)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", str(ext_lv)], check=True)
    assert guestlvm.lv_superblock(xfs_lv, ("ext4", "ext3", "xfs")).fs == "xfs"
    assert guestlvm.lv_superblock(xfs_lv, ("ext4", "ext3")) is None
    assert guestlvm.lv_superblock(str(ext_lv), ("ext4", "ext3", "xfs")).fs == "ext4"
    assert guestlvm.lv_superblock(str(ext_lv), ("xfs",)) is None
