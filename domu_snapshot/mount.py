"""Mounting the guest filesystem read-only, and finding our mounts (findmnt)."""

import dataclasses
import json
import os
from typing import Optional

from . import commands

# A guest's filesystem is untrusted: no setuid, no device nodes, no programs.
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"


@dataclasses.dataclass
class Mounted:
    """One filesystem of a guest disk at a path of its own (guest_filesystems = all or fstab)."""

    path: str
    what: str  # "partition 1 (msdos), ext4 at byte 1048576", "guest VG ... LV home, ext4"
    journal: str = ""  # what the replay did ("" when clean)
    device: str = ""  # the loop device or the guest LV's device-mapper device
    fs: str = ""  # ext4, xfs, ...
    uuid: str = ""  # the filesystem's, from its superblock (what fstab's UUID= names)
    label: str = ""
    guest_lv: tuple = ()  # (guest VG, LV) as the guest names them, for an LV of its VG
    partition: Optional[int] = None  # its number in the disk's table, for a partition (0: no table)
    mount_point: str = ""  # guest_filesystems = fstab: where the guest's fstab mounts it ("" if unlisted)


def every_path(disk_path, number=None, guest_vg=None, lv=None):
    """Where guest_filesystems = all mounts a filesystem of a disk: <disk path>/part<N> for a
    partition (whole for a filesystem on the whole disk), <disk path>/lvm/<guest VG>/<LV> for an
    LV of the guest's VG (names LVM accepts: no "/", never "." or "..")."""
    if lv is not None:
        return os.path.join(disk_path, "lvm", guest_vg, lv)
    return os.path.join(disk_path, "whole" if number == 0 else f"part{number}")


def mount(device, target, fstype, options=MOUNT_OPTIONS):
    commands.run(["mount", "-t", fstype, "-o", options, device, target], changes_system=True)


def unmount(target, retries=5):
    commands.retry_busy(lambda: commands.run(["umount", target], changes_system=True), attempts=retries)


def under(root):
    """Mounts at or below `root` as (target, source), deepest first (one findmnt call)."""
    proc = commands.run(["findmnt", "--list", "--json", "--output", "TARGET,SOURCE"], ok_codes=(0, 1))
    if not proc.stdout.strip():
        return []
    root = os.path.normpath(root)
    found = []
    for row in json.loads(proc.stdout).get("filesystems", []):
        target = row.get("target") or ""
        if target == root or target.startswith(root + os.sep):
            found.append((target, row.get("source") or ""))
    found.sort(key=lambda item: item[0].count(os.sep), reverse=True)
    return found


def make_dirs(path, root):
    """Create `path` and its parents below `root`, each 0700 (guest data is not for other users)."""
    path = os.path.normpath(path)
    root = os.path.normpath(root)
    chain = []
    current = path
    while current != root and current != os.path.dirname(current):
        chain.append(current)
        current = os.path.dirname(current)
    os.makedirs(root, mode=0o700, exist_ok=True)
    for directory in reversed(chain):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise OSError(f"{directory} exists and is not a directory")


def remove_empty_tree(path, skip=(), depth=3):
    """rmdir the empty directories below `path` (at most `depth` levels: every_path's), deepest
    first; never a symlink, a mount point or anything in `skip` (the mount targets findmnt shows),
    never a file. Never recursive removal: what is not empty stays."""
    if depth <= 0:
        return
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        child = os.path.join(path, name)
        if child in skip or os.path.islink(child) or not os.path.isdir(child) or os.path.ismount(child):
            continue
        remove_empty_tree(child, skip, depth - 1)
        try:
            os.rmdir(child)
        except OSError:
            pass  # not empty, or busy


def remove_empty_dirs(path, root):
    """rmdir `path` and its empty parents up to (not including) `root`. Never recursive."""
    path = os.path.normpath(path)
    root = os.path.normpath(root)
    while path != root and path.startswith(root + os.sep):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            return  # not empty or still a mount point: leave it
        path = os.path.dirname(path)
