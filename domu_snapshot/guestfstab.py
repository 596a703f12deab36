"""The guest's own /etc/fstab (guest_filesystems = fstab): read from its mounted snapshot, and
resolved to the guest disk's own filesystems only.

Everything here is the guest's and may be crafted: the file is opened without following a
symlink at any component and read up to a bound; an entry names a filesystem only by what the
filesystems themselves carry (UUID, label) or by the guest VG's LV names; a mount point is
placed only where every component below the disk's path is a real directory of the mounted tree.
"""

import dataclasses
import os
import re
import stat

from .guestlvm import dm_name

FSTAB_MAX = 64 * 1024  # bytes: a real fstab is a few hundred
ENTRIES_MAX = 64
DEPTH_MAX = 16  # components of a mount point
_OCTAL = re.compile(r"\\([0-7]{3})")
_FIRST_DISK_PARTITION = re.compile(r"/dev/(?:sd|vd|xvd|hd)a([1-9][0-9]{0,2})")
# Not block filesystems of the guest disk: nothing to look for among its filesystems.
_NOT_A_DISK = {"swap", "proc", "sysfs", "tmpfs", "devpts", "devtmpfs", "nfs", "nfs4", "cifs", "smb3",
               "fuse", "none", "bind", "overlay", "securityfs", "cgroup", "cgroup2", "efivarfs", "debugfs",
               "hugetlbfs", "mqueue", "autofs", "9p", "virtiofs"}


class FstabError(Exception):
    """The guest's fstab cannot be read (too large, not a regular file): says why."""


@dataclasses.dataclass(frozen=True)
class Entry:
    spec: str  # UUID=..., LABEL=..., /dev/mapper/vg-lv, ...
    mount_point: str  # normalised, absolute
    fstype: str
    line: int

    def shown(self):
        return f"line {self.line} ({self.spec!a} on {self.mount_point!a})"


def read(root):
    """The text of `root`/etc/fstab, or None when there is none (or etc or fstab is a symlink,
    or not a directory / regular file). Raises FstabError for one above FSTAB_MAX."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        etc = os.open(os.path.join(root, "etc"), flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        # O_NONBLOCK: a FIFO named fstab must not block the open
        fd = os.open("fstab", flags | os.O_NONBLOCK, dir_fd=etc)
    except OSError:
        return None
    finally:
        os.close(etc)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > FSTAB_MAX:
            raise FstabError(f"its /etc/fstab is {st.st_size} bytes (more than {FSTAB_MAX}): not read")
        raw = os.read(fd, FSTAB_MAX + 1)
    finally:
        os.close(fd)
    return raw.decode("utf-8", "surrogateescape")


def _unescape(field):
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text):
    """The entries of fstab `text` that mount a filesystem somewhere: swap, pseudo and network
    filesystems, bind mounts and malformed lines are left out. At most ENTRIES_MAX."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if len(fields) < 3:
            continue
        spec, where, fstype = (_unescape(f) for f in fields[:3])
        options = fields[3].split(",") if len(fields) > 3 else []
        if fstype in _NOT_A_DISK or "bind" in options or "rbind" in options or not where.startswith("/"):
            continue
        if "\0" in where or "\0" in spec:
            continue
        point = os.path.normpath(where)
        if point.startswith("//"):
            point = "/" + point.lstrip("/")
        entries.append(Entry(spec, point, fstype, number))
        if len(entries) >= ENTRIES_MAX:
            break
    return entries


def names_of(mounted):
    """Every spelling of fstab's first field that means the filesystem `mounted` (mount.Mounted)."""
    names = set()
    if mounted.uuid:
        names |= {f"UUID={mounted.uuid}", f"/dev/disk/by-uuid/{mounted.uuid}"}
    if mounted.label:
        names |= {f"LABEL={mounted.label}", f"/dev/disk/by-label/{mounted.label}"}
    if mounted.guest_lv:
        vg, lv = mounted.guest_lv
        names |= {f"/dev/mapper/{dm_name(vg, lv)}", f"/dev/{vg}/{lv}"}
    return names


def resolve(spec, filesystems, one_disk=False):
    """The one of `filesystems` (mount.Mounted) that `spec` names, or None (also when it names
    more than one: two filesystems with one label, or a clone's UUID). one_disk: the guest has
    this disk only, so its first disk's partition N (/dev/vda2, /dev/sda2, Xen's /dev/xvda2) is
    partition N here."""
    by_number = _FIRST_DISK_PARTITION.fullmatch(spec) if one_disk else None
    if by_number:
        found = [m for m in filesystems if m.partition == int(by_number.group(1))]
        return found[0] if len(found) == 1 else None
    if spec.startswith("UUID="):
        spec = "UUID=" + spec[5:].lower()
    if spec.startswith('LABEL="') and spec.endswith('"') and len(spec) > 7:
        spec = "LABEL=" + spec[7:-1]
    found = [m for m in filesystems if spec in names_of(m)]
    return found[0] if len(found) == 1 else None


def looks_like_disk(spec):
    """Whether an unresolved first field names a block device (a filesystem not on this disk, or
    named in a way not read here: PARTUUID=, /dev/vda2), rather than a pseudo or network one."""
    return spec.startswith(("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"))


def target(disk_path, mount_point):
    """Where `mount_point` of the guest lies below `disk_path`, every component checked (lstat)
    to be a real directory there; raises ValueError saying why not. The tree is read-only: what
    is checked stays so while the mounts are made."""
    parts = [p for p in mount_point.split("/") if p]
    if len(parts) > DEPTH_MAX:
        raise ValueError(f"more than {DEPTH_MAX} components")
    if any(p in (".", "..") for p in parts):
        raise ValueError("it leaves the guest's tree")
    path = disk_path
    for part in parts:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise ValueError(f"/{os.path.relpath(path, disk_path)} is not in the guest's tree "
                             f"({exc.strerror})") from None
        if stat.S_ISLNK(st.st_mode):
            raise ValueError(f"/{os.path.relpath(path, disk_path)} is a symlink in the guest's tree")
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"/{os.path.relpath(path, disk_path)} is not a directory in the guest's tree")
    return path
