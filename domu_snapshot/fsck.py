"""ext2/3/4 superblock reading and journal replay with e2fsck.

e2fsck only ever runs on the loop device of a snapshot: the replay writes.
"""

import dataclasses
import os
import struct
import uuid

from . import commands
from .errors import ProbeError

EXT_MAGIC = 0xEF53
_COMPAT_HAS_JOURNAL = 0x4
_INCOMPAT_RECOVER = 0x4  # needs_recovery: the journal holds transactions
_INCOMPAT_JOURNAL_DEV = 0x8  # journal_dev: an external journal device, not a filesystem
_INCOMPAT_EXTENTS = 0x40
_INCOMPAT_64BIT = 0x80
_INCOMPAT_FLEX_BG = 0x200
_STATE_VALID = 0x1
_STATE_ERRORS = 0x2

# e2fsck exit codes 0 (clean), 1 (errors corrected) and 2 (corrected, reboot
# advised: meaningless for a snapshot) all leave a mountable filesystem.
E2FSCK_OK = (0, 1, 2)


@dataclasses.dataclass
class Superblock:
    fs: str  # ext2, ext3 or ext4
    size: int  # bytes the filesystem claims
    needs_recovery: bool
    clean: bool
    has_orphans: bool
    journal_uuid: str = ""  # s_journal_uuid: the external journal's UUID, "" when null
    journal_dev: int = 0  # s_journal_dev: the external journal's device number (st_rdev), 0 when none
    journal_inum: int = 0  # s_journal_inum: the internal journal's inode
    is_journal_device: bool = False  # INCOMPAT_JOURNAL_DEV: this IS an external journal
    uuid: str = ""  # s_uuid
    label: str = ""  # s_volume_name (what fstab's LABEL= names)

    @property
    def external_journal(self):
        """Whether e2fsck or the kernel would look for the journal on another device.

        e2fsck takes the journal from another device (found through blkid by its UUID, else by
        the device number) whenever s_journal_uuid is not null, even without has_journal; the
        kernel opens the device s_journal_dev when the journal inode is 0. Either opens a device
        other than the snapshot, read-write: on a running guest, its live journal."""
        return bool(self.journal_uuid) or self.journal_dev != 0


def _device_number(dev):
    return f"{os.major(dev)}:{os.minor(dev)}"


def refusal(superblock, where):
    """(message, hint) when the filesystem at `where` (e.g. "vg/lv partition 1") must not be
    replayed or mounted, else None: a journal device, or a filesystem whose journal is elsewhere."""
    if superblock is None:
        return None
    if superblock.is_journal_device:
        return (f"{where} holds an external ext journal device (journal_dev, UUID {superblock.uuid or 'none'}), "
                f"not a filesystem: nothing to mount",
                "set partition=N to the guest's filesystem, or exclude this LV")
    if superblock.external_journal:
        ident = []
        if superblock.journal_uuid:
            ident.append(f"UUID {superblock.journal_uuid}")
        if superblock.journal_dev:
            ident.append(f"device number {_device_number(superblock.journal_dev)}")
        return (f"the {superblock.fs} filesystem on {where} has an external journal ({', '.join(ident)}): "
                f"e2fsck and the kernel would open that journal device read-write, and on a running guest "
                f"it is the guest's live journal, so this filesystem is neither replayed nor mounted "
                f"(refused, not backed up)",
                "move the journal inside the filesystem during a maintenance window (guest shut down: "
                "tune2fs -O ^has_journal, then tune2fs -j, on the guest's filesystem), or back this guest "
                "up another way")
    return None


def read_superblock(device, offset=0):
    """The ext superblock of the filesystem at `offset`, or None if there is none."""
    try:
        with open(device, "rb") as handle:
            handle.seek(offset + 1024)
            raw = handle.read(1024)
    except OSError:
        return None
    if len(raw) < 1024:
        return None
    magic, state = struct.unpack_from("<HH", raw, 56)
    if magic != EXT_MAGIC:
        return None
    blocks_lo = struct.unpack_from("<I", raw, 4)[0]
    log_block = struct.unpack_from("<I", raw, 24)[0]
    compat, incompat = struct.unpack_from("<II", raw, 92)
    last_orphan = struct.unpack_from("<I", raw, 232)[0]
    blocks_hi = struct.unpack_from("<I", raw, 0x150)[0] if incompat & _INCOMPAT_64BIT else 0
    journal_uuid = raw[0xD0:0xE0]
    journal_inum, journal_dev = struct.unpack_from("<II", raw, 0xE0)
    block_size = 1024 << min(log_block, 16)
    if incompat & (_INCOMPAT_EXTENTS | _INCOMPAT_64BIT | _INCOMPAT_FLEX_BG):
        fs = "ext4"
    elif compat & _COMPAT_HAS_JOURNAL:
        fs = "ext3"
    else:
        fs = "ext2"
    return Superblock(
        fs=fs,
        size=((blocks_hi << 32) | blocks_lo) * block_size,
        needs_recovery=bool(incompat & _INCOMPAT_RECOVER),
        clean=bool(state & _STATE_VALID) and not state & _STATE_ERRORS,
        has_orphans=last_orphan != 0,
        journal_uuid=str(uuid.UUID(bytes=journal_uuid)) if any(journal_uuid) else "",
        journal_dev=journal_dev,
        journal_inum=journal_inum,
        is_journal_device=bool(incompat & _INCOMPAT_JOURNAL_DEV),
        uuid=str(uuid.UUID(bytes=raw[0x68:0x78])) if any(raw[0x68:0x78]) else "",
        label=volume_label(raw[0x78:0x88]),
    )


def volume_label(raw):
    """A superblock's label field: up to the first NUL, undecodable bytes kept (surrogateescape)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def replay(loop_device):
    """Replay the journal on the snapshot's loop device; preen if still needed.

    Returns a short description of what was done. Raises CommandError with
    e2fsck's own message on exit codes 4 and above, ProbeError (e2fsck not run) for a
    filesystem with an external journal or a journal device: e2fsck would open another device.
    """
    before = read_superblock(loop_device)
    refused = refusal(before, loop_device)
    if refused:
        raise ProbeError(*refused)
    done = []
    if before is not None and before.needs_recovery:
        _e2fsck(journal_replay_argv(loop_device))
        done.append("journal replayed")
    after = read_superblock(loop_device)
    if after is None or not after.clean or after.has_orphans or after.needs_recovery:
        proc = _e2fsck(["e2fsck", "-p", loop_device])
        done.append("preened" + (" (errors corrected)" if proc.returncode else ""))
    return ", ".join(done) or "clean"


def journal_replay_argv(loop_device):
    return ["e2fsck", "-p", "-E", "journal_only", loop_device]


def plan(loop_device):
    """Dry-run: what replay() runs when the journal needs it (the superblock is not read)."""
    commands.run(journal_replay_argv(loop_device), changes_system=True)


def _e2fsck(argv):
    """e2fsck -p names the problem it could not fix on stdout ("Root inode is not a directory")
    and only "UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY" on stderr: a failure carries both."""
    try:
        return commands.run(argv, ok_codes=E2FSCK_OK, changes_system=True)
    except commands.CommandError as exc:
        if exc.returncode is None or not exc.stdout.strip() or not exc.stderr.strip():
            raise
        raise commands.CommandError(exc.argv, exc.returncode, "",
                                    exc.stdout.strip() + "\n" + exc.stderr.strip()) from None
