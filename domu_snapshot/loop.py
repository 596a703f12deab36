"""Loop devices over a snapshot at the filesystem's byte offset (losetup)."""

import dataclasses
import json
import os

from . import commands


@dataclasses.dataclass
class LoopDevice:
    name: str
    back_file: str
    offset: int
    sizelimit: int

    def backing_rdev(self):
        """(major, minor) of the block device behind this loop, or None."""
        path = self.back_file.replace(" (deleted)", "")
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not (st.st_mode & 0o170000) == 0o060000:  # not a block device
            return None
        return os.major(st.st_rdev), os.minor(st.st_rdev)


def attach(device, offset, size, sector_size=512):
    """Attach a read-write loop device (e2fsck replays the journal through it)."""
    argv = ["losetup", "--find", "--show", "--offset", str(offset), "--sizelimit", str(size)]
    if sector_size != 512:
        argv += ["--sector-size", str(sector_size)]
    argv.append(device)
    proc = commands.run(argv, changes_system=True)
    return proc.stdout.strip() or "<loop device>"


def list_all():
    """Every attached loop device (one `losetup --list` call)."""
    proc = commands.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,OFFSET,SIZELIMIT"])
    if not proc.stdout.strip():
        return []  # losetup prints nothing at all when no loop device is attached
    data = json.loads(proc.stdout)
    devices = []
    for row in data.get("loopdevices", []):
        devices.append(LoopDevice(
            name=row.get("name", ""),
            back_file=row.get("back-file") or "",
            offset=int(row.get("offset") or 0),
            sizelimit=int(row.get("sizelimit") or 0),
        ))
    return devices


def detach(name, retries=5, undo=False):
    """losetup --detach. `undo`: the read-only loop device a query attached (`list` probing an
    origin) -- detached in dry-run too, or every `--dry-run list` would leave one behind."""
    commands.retry_busy(lambda: commands.run(["losetup", "--detach", name], changes_system=not undo),
                        attempts=retries)
