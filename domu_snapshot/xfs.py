"""XFS: superblock reading, and log replay by a read-write mount of the snapshot's loop device.

xfs_repair cannot replay a log (only the kernel can), so the replay is a mount and unmount of the
snapshot's loop device, read-write; the guest's filesystem is then mounted read-only. Never on an
origin: the loop device is over the snapshot. `nouuid` always: a snapshot has its origin's UUID,
and XFS refuses a second mount of one UUID (the origin may be mounted on this host, or another
snapshot of it). A log that cannot be replayed fails the guest: `norecovery` would mount the
filesystem as it was before the log's changes, hiding data that the guest had committed.
"""

import dataclasses
import struct
import uuid

from . import commands, fsck, mount

XFS_MAGIC = b"XFSB"
SUPERBLOCK_BYTES = 512  # the fields read here lie in the first sector of the primary superblock

# The replay mount is as restricted as the read-only one (the filesystem is the guest's).
REPLAY_OPTIONS = "rw,nouuid,nosuid,nodev,noexec"
MOUNT_OPTIONS = "ro,nouuid,nosuid,nodev,noexec"


@dataclasses.dataclass
class Superblock:
    size: int  # bytes of the data section (sb_dblocks * sb_blocksize)
    uuid: str
    external_log: bool  # sb_logstart 0: the log is on another device
    realtime_blocks: int  # sb_rblocks: data on a realtime device, which is not in the snapshot
    fs: str = "xfs"
    label: str = ""  # sb_fname (what fstab's LABEL= names)


def parse_superblock(raw):
    """The Superblock in the bytes `raw` (the first sector of an XFS filesystem), or None."""
    if len(raw) < 120 or raw[:4] != XFS_MAGIC:
        return None
    block_size, data_blocks, realtime_blocks = struct.unpack_from(">IQQ", raw, 4)
    log_start = struct.unpack_from(">Q", raw, 48)[0]
    if not 512 <= block_size <= 65536 or block_size & (block_size - 1):
        return None  # not a superblock mkfs.xfs writes: the magic alone is four bytes of chance
    return Superblock(
        size=data_blocks * block_size,
        uuid=str(uuid.UUID(bytes=raw[32:48])),
        external_log=log_start == 0,
        realtime_blocks=realtime_blocks,
        label=fsck.volume_label(raw[108:120]),
    )


def read_superblock(device, offset=0):
    """The XFS superblock of the filesystem at `offset` of `device`, or None if there is none."""
    try:
        with open(device, "rb") as handle:
            handle.seek(offset)
            raw = handle.read(SUPERBLOCK_BYTES)
    except OSError:
        return None
    return parse_superblock(raw)


def refusal(superblock, where):
    """(message, hint) when the XFS filesystem at `where` must not be replayed or mounted, else None."""
    if superblock is None:
        return None
    if superblock.external_log:
        return (f"the xfs filesystem on {where} has an external log (on another device): its log is not in "
                f"the snapshot, and on a running guest it is the guest's live log, so this filesystem is "
                f"neither replayed nor mounted (refused, not backed up)",
                "back this guest up another way (an XFS log cannot be moved inside the filesystem)")
    if superblock.realtime_blocks:
        return (f"the xfs filesystem on {where} has a realtime section on another device: the files kept "
                f"there are not in the snapshot (refused, not backed up)",
                "back this guest up another way")
    return None


def replay(loop_device, target, retries=5):
    """Replay the log: mount the snapshot's loop device read-write at `target`, then unmount.

    Raises CommandError with mount's message when the kernel cannot replay (or read) the log.
    A dirty log is replayed into the snapshot only (a clean one gets a new unmount record there).
    """
    commands.run(["mount", "-t", "xfs", "-o", REPLAY_OPTIONS, loop_device, target], changes_system=True)
    mount.unmount(target, retries)
    return "log replayed if dirty (read-write mount of the snapshot)"


def mount_read_only(loop_device, target):
    mount.mount(loop_device, target, "xfs", MOUNT_OPTIONS)
