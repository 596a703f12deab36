"""ext2/3/4 superblock reading and journal replay with e2fsck.

e2fsck only ever runs on the loop device of a snapshot: the replay writes.
"""

import dataclasses
import struct

from . import commands

EXT_MAGIC = 0xEF53
_COMPAT_HAS_JOURNAL = 0x4
_INCOMPAT_RECOVER = 0x4  # needs_recovery: the journal holds transactions
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
    )


def replay(loop_device):
    """Replay the journal on the snapshot's loop device; preen if still needed.

    Returns a short description of what was done. Raises CommandError with
    e2fsck's own message on exit codes 4 and above.
    """
    before = read_superblock(loop_device)
    done = []
    if before is not None and before.needs_recovery:
        _e2fsck(["e2fsck", "-p", "-E", "journal_only", loop_device])
        done.append("journal replayed")
    after = read_superblock(loop_device)
    if after is None or not after.clean or after.has_orphans or after.needs_recovery:
        proc = _e2fsck(["e2fsck", "-p", loop_device])
        done.append("preened" + (" (errors corrected)" if proc.returncode else ""))
    return ", ".join(done) or "clean"


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
