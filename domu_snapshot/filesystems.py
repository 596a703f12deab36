"""What each supported filesystem needs: its superblock, what refuses it, its replay, its mount.

ext2/3/4 (the default) replay their journal with e2fsck (fsck.py); XFS, chosen with
`filesystems = xfs`, replays its log by a read-write mount of the snapshot (xfs.py).
"""

import dataclasses
from typing import Callable

from . import fsck, mount, xfs
from .partitions import EXT_TYPES

SUPPORTED = EXT_TYPES + ("xfs",)


@dataclasses.dataclass(frozen=True)
class Kind:
    read_superblock: Callable  # (device, offset) -> superblock (.fs, .size) or None
    refusal: Callable  # (superblock, where) -> (message, hint) or None
    replay: Callable  # (loop device, mount path, busy retries) -> what was done
    mount: Callable  # (loop device, mount path, fstype)
    check_step: str  # the GuestError step of a refusal (journal or log elsewhere)
    replay_step: str  # the GuestError step of a failed replay
    replay_hint: str
    resize_hint: str  # for a filesystem larger than its partition


EXT = Kind(
    read_superblock=fsck.read_superblock,
    refusal=fsck.refusal,
    replay=lambda loop_device, target, retries: fsck.replay(loop_device),
    mount=lambda loop_device, target, fstype: mount.mount(loop_device, target, fstype),
    check_step="journal check",
    replay_step="journal replay",
    replay_hint="e2fsck could not repair the snapshot's filesystem; check the guest's filesystem from inside "
                "the guest (never fsck the running guest's LV from the host)",
    resize_hint="repair it inside the guest (resize2fs or fix the partition); not backed up",
)

XFS = Kind(
    read_superblock=xfs.read_superblock,
    refusal=xfs.refusal,
    replay=xfs.replay,
    mount=lambda loop_device, target, fstype: xfs.mount_read_only(loop_device, target),
    check_step="log check",
    replay_step="log replay",
    replay_hint="the kernel could not replay the XFS log on the snapshot (dmesg has its reason); it is not "
                "mounted with norecovery, which would hide what the log holds. Check the guest's filesystem "
                "from inside the guest (xfs_repair with the guest shut down; never on the running guest's LV "
                "from the host)",
    resize_hint="repair it inside the guest (fix the partition: XFS cannot shrink); not backed up",
)


def kind(fs):
    """The Kind for a filesystem type as the probe names it ("ext4", "xfs"); None if unsupported."""
    if fs in EXT_TYPES:
        return EXT
    if fs == "xfs":
        return XFS
    return None


def read_superblock(device, offset, fs):
    """The superblock of the `fs` filesystem (the probe's type) at `offset`, or None."""
    handler = kind(fs)
    return handler.read_superblock(device, offset) if handler else None


def refusal(superblock, where):
    """(message, hint) when the filesystem must not be replayed or mounted, else None."""
    if superblock is None:
        return None
    return kind(superblock.fs).refusal(superblock, where)
