"""Guest disks as real hypervisor hosts have them, for the VM test bed (run as root in the VM).

A `GuestVG` is a volume group on a loop-backed PV (a sparse image in /run, i.e. RAM). Each guest
LV gets a whole disk image laid out like a real domU disk (see LAYOUTS), with its ext3/ext4 (or XFS)
filesystem populated with a known tree while mounted and captured *as a running guest's disk
would be*: the superblock says needs_recovery and the journal holds committed transactions that
have not been checkpointed, so only a journal replay shows the whole tree.

How the crash image is made: the filesystem lives in a scratch file on a loop device, is
populated with an fsync per file (data=ordered: data on disk before the commit) and one final
fsync that commits the last transaction; the scratch file is then copied *while still mounted*.
The loop device writes through the scratch file's page cache, so the copy is exactly what had
reached the "disk" at that moment. (An LVM snapshot of a mounted filesystem would freeze it and
come out clean; FS_IOC_SHUTDOWN marks the journal aborted.) The disk image is assembled in a
file (partition table by sfdisk, which on a file never talks to the kernel: partitioning an LV
could add device-mapper partition mappings that keep it busy) and copied into the LV.

    vg = GuestVG("domutest").create()
    g = vg.add_guest("domu-web", "msdos-ext4-1m")      # -> GuestDisk
    ...
    vg.destroy()

    with build_standard() as vg:                         # the standard set of issue 2
        for g in vg.guests.values(): ...

`compare_tree(root, g.tree)` lists the differences between a mounted or restored tree and the
expected one. `python -m tests.guestdisks build|destroy ...` does the same from a shell.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import mmap
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

MiB = 1024 * 1024
SECTOR = 512
# /run is a fresh tmpfs in the VM; /tmp there is an overlay over the host's /tmp (stale files).
WORKROOT = Path(os.environ.get("DOMU_GUESTDISKS_DIR", "/run/domu-guestdisks"))
BASE_MTIME = 1_600_000_000          # 2020-09-13; every entry gets its own mtime from here
UUID_NS = uuid.UUID("6f1c7a52-3c1e-4a53-9a43-d0b1e5c0a001")


class FixtureError(RuntimeError):
    pass


def run(argv: list[str], *, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a command (argument list), raise FixtureError with its stderr when it fails."""
    env = dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1")
    p = subprocess.run(argv, input=input, capture_output=True, env=env)
    if check and p.returncode != 0:
        raise FixtureError(f"{' '.join(argv)} -> exit {p.returncode}: "
                           f"{p.stderr.decode(errors='replace').strip() or p.stdout.decode(errors='replace').strip()}")
    return p


def out(argv: list[str]) -> str:
    return run(argv).stdout.decode()


# --------------------------------------------------------------------------------------------
# Layouts. Sector numbers are 512-byte sectors of the guest disk; `total` is the disk's sectors.

@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    description: str
    default_mib: int
    label: str | None                  # "msdos", "gpt" or None (no partition table)
    fstype: str | None                 # "ext3", "ext4", "xfs" or None (nothing to mount)
    partition: int | None              # partition number holding the ext fs; None = whole LV / none

    def table(self, total: int) -> list[tuple[int, int, str, str]]:
        """Partition entries in order: (start, end, sfdisk type, GPT name)."""
        return _TABLES[self.name](total) if self.label else []

    def sfdisk_script(self, total: int, seed: str) -> str:
        """sfdisk input; disk and partition ids derived from the seed (reproducible images)."""
        if self.label == "gpt":
            head = ["label: gpt", f"label-id: {str(uuid.uuid5(UUID_NS, seed + '|disk')).upper()}"]
        else:
            head = ["label: dos", f"label-id: 0x{uuid.uuid5(UUID_NS, seed + '|disk').hex[:8]}"]
        lines = head + ["unit: sectors", ""]
        for n, (start, end, ptype, name) in enumerate(self.table(total), 1):
            line = f"start={start}, size={end - start + 1}, type={ptype}"
            if self.label == "gpt":
                line += f", uuid={str(uuid.uuid5(UUID_NS, f'{seed}|part{n}')).upper()}, name={name}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def regions(self, total: int) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
        """(ext fs (start, end) sectors or None, [swap (start, end)]) - end inclusive."""
        return _REGIONS[self.name](total)


LAYOUTS = {lay.name: lay for lay in [
    Layout("msdos-ext3-63", "old Xen domU: msdos, ext3 at sector 63, swap in a logical partition "
           "inside an extended one", 64, "msdos", "ext3", 1),
    Layout("msdos-ext4-1m", "msdos, ext4 at 1 MiB", 48, "msdos", "ext4", 1),
    Layout("gpt-ext4", "GPT: BIOS-boot partition, swap, then ext4", 64, "gpt", "ext4", 3),
    Layout("whole-ext4", "ext4 on the whole LV, no partition table", 40, None, "ext4", None),
    Layout("whole-ext3", "ext3 on the whole LV, no partition table", 40, None, "ext3", None),
    Layout("swap", "swap on the whole LV, nothing to mount", 16, None, None, None),
    # mkfs.xfs (xfsprogs >= 5.19) refuses a data section under 300 MB: 327 MiB of a sparse LV
    Layout("msdos-swap-xfs", "RHEL-like: msdos, swap at 1 MiB, then XFS (issue 15)", 336, "msdos", "xfs", 2),
    # LVM inside the guest (add_guest(..., inner_vg=NAME)): the tree is on the guest VG's LV root
    Layout("msdos-boot-lvm", "Debian guided LVM: msdos, /boot ext4 (clean, its own tree), then an "
           "LVM PV holding VG <inner_vg> with LVs swap, home (ext4, clean, its own tree) and root (ext4)",
           80, "msdos", "ext4", 2),
    Layout("msdos-lvm", "msdos, one LVM PV holding VG <inner_vg> with LVs root (ext4) and swap",
           48, "msdos", "ext4", 1),
    # the RHEL/Alma/Rocky installer's default; both XFS at mkfs.xfs's least size (see above)
    Layout("gpt-efi-xfs-lvm", "RHEL-like: GPT, EFI system partition (vfat), /boot xfs (clean, its own "
           "tree), then an LVM PV holding VG <inner_vg> with LVs root (xfs) and swap", 664, "gpt", "xfs", 3),
]}
LVM_LAYOUTS = ("msdos-boot-lvm", "msdos-lvm", "gpt-efi-xfs-lvm")
_BOOT_S = 16 * MiB // SECTOR
_EFI_S = 8 * MiB // SECTOR
_XFS_BOOT_S = 320 * MiB // SECTOR

_SWAP_S = 8 * MiB // SECTOR
_GPT_TAIL = 34                          # backup GPT: 32 sectors of entries + header, plus one


def _msdos63_regions(total):
    ext_end = total - _SWAP_S - 1
    return (63, ext_end), [(ext_end + 1 + 63, total - 1)]


_REGIONS = {
    "msdos-ext3-63": _msdos63_regions,
    "msdos-ext4-1m": lambda total: ((2048, total - 1), []),
    "gpt-ext4": lambda total: ((20480, total - _GPT_TAIL), [(4096, 20479)]),
    "whole-ext4": lambda total: ((0, total - 1), []),
    "whole-ext3": lambda total: ((0, total - 1), []),
    "swap": lambda total: (None, [(0, total - 1)]),
    "msdos-swap-xfs": lambda total: ((2048 + _SWAP_S, total - 1), [(2048, 2048 + _SWAP_S - 1)]),
    # LVM layouts: the PV partition (the root filesystem is inside it, on the guest VG's LV root)
    "msdos-boot-lvm": lambda total: ((2048 + _BOOT_S, total - 1), []),
    "msdos-lvm": lambda total: ((2048, total - 1), []),
    "gpt-efi-xfs-lvm": lambda total: ((2048 + _EFI_S + _XFS_BOOT_S, total - _GPT_TAIL), []),
}

_GPT_BIOS, _GPT_SWAP, _GPT_LINUX = ("21686148-6449-6E6F-744E-656564454649", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
                                   "0FC63DAF-8483-4772-8E79-3D69D8477DE4")
_GPT_EFI, _GPT_LVM = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "E6D6D379-F507-44C2-A23C-238F2A3DF928"


def _msdos63_table(total):
    (fs_start, fs_end), [(sw_start, sw_end)] = _msdos63_regions(total)
    # primary ext3, extended over the rest, logical swap after the extended's first track (EBR)
    return [(fs_start, fs_end, "83", ""), (fs_end + 1, total - 1, "5", ""), (sw_start, sw_end, "82", "")]


_TABLES = {
    "msdos-ext3-63": _msdos63_table,
    "msdos-ext4-1m": lambda t: [(2048, t - 1, "83", "")],
    "gpt-ext4": lambda t: [(2048, 4095, _GPT_BIOS, "bios"), (4096, 20479, _GPT_SWAP, "swap"),
                           (20480, t - _GPT_TAIL, _GPT_LINUX, "root")],
    "msdos-swap-xfs": lambda t: [(2048, 2048 + _SWAP_S - 1, "82", ""), (2048 + _SWAP_S, t - 1, "83", "")],
    "msdos-boot-lvm": lambda t: [(2048, 2048 + _BOOT_S - 1, "83", ""), (2048 + _BOOT_S, t - 1, "8e", "")],
    "msdos-lvm": lambda t: [(2048, t - 1, "8e", "")],
    "gpt-efi-xfs-lvm": lambda t: [(2048, 2048 + _EFI_S - 1, _GPT_EFI, "efi"),
                                  (2048 + _EFI_S, 2048 + _EFI_S + _XFS_BOOT_S - 1, _GPT_LINUX, "boot"),
                                  (2048 + _EFI_S + _XFS_BOOT_S, t - _GPT_TAIL, _GPT_LVM, "lvm")],
}


# --------------------------------------------------------------------------------------------
# The tree every guest filesystem carries. Content depends on the seed, so guests differ.

@dataclasses.dataclass(frozen=True)
class Entry:
    path: str
    kind: str                 # "dir", "file", "symlink", "hardlink"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0             # files
    target: str = ""          # symlink target, or the path a hard link points to


def tree_spec() -> list[Entry]:
    """Parents before children. Covers: nested dirs, files of 0 B to 100 KiB, modes, owners,
    absolute/relative/dangling symlinks, a hard link across dirs, names with a space and
    non-ASCII characters, an empty directory."""
    D, F = "dir", "file"
    return [
        Entry("etc", D, 0o755),
        Entry("etc/hostname", F, 0o644, size=32),
        Entry("etc/fstab", F, 0o644, size=600),
        Entry("etc/ssh", D, 0o755),
        Entry("etc/ssh/ssh_host_ed25519_key", F, 0o600, size=1500),
        Entry("home", D, 0o755),
        Entry("home/user", D, 0o750, 1000, 1000),
        Entry("home/user/notes.txt", F, 0o640, 1000, 1000, size=5 * 1024),
        Entry("home/user/café ü.txt", F, 0o644, 1000, 1000, size=3000),
        Entry("home/user/with space.txt", F, 0o664, 1000, 1000, size=700),
        Entry("home/user/empty", F, 0o600, 1000, 1000, size=0),
        Entry("home/user/report.txt", F, 0o644, 1000, 1000, size=20 * 1024),
        Entry("home/user/.profile", F, 0o644, 1000, 1000, size=800),
        Entry("srv", D, 0o755),
        Entry("srv/www", D, 0o775, 33, 33),
        Entry("srv/www/index.html", F, 0o664, 33, 33, size=2 * 1024),
        Entry("srv/www/report-link.txt", "hardlink", target="home/user/report.txt"),
        Entry("usr", D, 0o755),
        Entry("usr/local", D, 0o755),
        Entry("usr/local/bin", D, 0o755),
        Entry("usr/local/bin/tool", F, 0o755, size=30 * 1024),
        Entry("var", D, 0o755),
        Entry("var/log", D, 0o755),
        Entry("var/log/syslog", F, 0o640, 0, 4, size=100 * 1024),
        Entry("var/cache", D, 0o755),
        Entry("var/cache/empty-dir", D, 0o700),
        Entry("data", D, 0o755),
        *[Entry(f"data/blob-{i:02d}.bin", F, 0o644, size=s)
          for i, s in enumerate([1024, 4096, 4097, 65536, 12345], 1)],
        Entry("data/readonly.txt", F, 0o444, size=100),
        Entry("links", D, 0o755),
        Entry("links/hostname-abs", "symlink", target="/etc/hostname"),
        Entry("links/hostname-rel", "symlink", target="../etc/hostname"),
        Entry("links/dangling", "symlink", target="no/such/file"),
        Entry("boot", D, 0o755),   # where the Debian-like guest's fstab mounts its /boot
    ]


def content(seed: str, path: str, size: int) -> bytes:
    if size == 0:
        return b""
    if path == "etc/fstab":
        return guest_fstab(seed, size)
    return hashlib.shake_256(f"{seed}\0{path}".encode()).digest(size)


def guest_fstab(seed: str, size: int) -> bytes:
    """The /etc/fstab of a tree of `seed`, `size` bytes, as a Debian installer writes it for the
    msdos-boot-lvm layout: / and /boot by UUID (the UUIDs build_disk_image gives them), /home by
    label, swap by its LV, proc, and a data disk that is not part of the guest's disk."""
    text = (f"# /etc/fstab: static file system information.\n"
            f"# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n"
            f"UUID={uuid.uuid5(UUID_NS, f'{seed}|ext4')} /               ext4    errors=remount-ro 0       1\n"
            f"UUID={uuid.uuid5(UUID_NS, f'{seed}|boot')} /boot           ext4    defaults        0       2\n"
            f"LABEL=home      /home           ext4    defaults        0       2\n"
            f"/dev/mapper/guest--vg-swap none            swap    sw              0       0\n"
            f"proc            /proc           proc    defaults        0       0\n"
            f"/dev/vdb1       /srv/data       ext4    defaults,nofail 0       2\n").encode()
    assert len(text) < size, len(text)
    return text + b"#" * (size - len(text) - 1) + b"\n"


def _mtimes() -> dict[str, int]:
    return {e.path: BASE_MTIME + 3607 * i for i, e in enumerate(tree_spec(), 1)}


def expected_tree(seed: str) -> dict[str, dict]:
    """{relative path: attributes} of the tree `populate(root, seed)` writes.
    Attributes: type (dir/file/symlink), mode (permission bits), uid, gid, mtime (int seconds);
    files: size, sha256, and `hardlink` (a group name shared by the paths of one inode);
    symlinks: target (mode not compared: always 0777)."""
    mt = _mtimes()
    tree: dict[str, dict] = {}
    for e in tree_spec():
        if e.kind == "dir":
            tree[e.path] = dict(type="dir", mode=e.mode, uid=e.uid, gid=e.gid, mtime=mt[e.path])
        elif e.kind == "file":
            tree[e.path] = dict(type="file", mode=e.mode, uid=e.uid, gid=e.gid, mtime=mt[e.path],
                                size=e.size, sha256=hashlib.sha256(content(seed, e.path, e.size)).hexdigest())
        elif e.kind == "hardlink":
            tree[e.target]["hardlink"] = e.target
            tree[e.path] = dict(tree[e.target])
        elif e.kind == "symlink":
            tree[e.path] = dict(type="symlink", target=e.target, uid=0, gid=0, mtime=mt[e.path])
    return tree


def populate(root: str | Path, seed: str) -> dict[str, dict]:
    """Write the tree under `root` (a mounted filesystem); every file is fsynced so that its data
    is on disk before the metadata commit. Returns expected_tree(seed)."""
    root = Path(root)
    mt = _mtimes()
    spec = tree_spec()
    for e in spec:
        p = root / e.path
        if e.kind == "dir":
            p.mkdir()
        elif e.kind == "file":
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, content(seed, e.path, e.size))
                os.fchown(fd, e.uid, e.gid)
                os.fchmod(fd, e.mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        elif e.kind == "hardlink":
            os.link(root / e.target, p)
        elif e.kind == "symlink":
            os.symlink(e.target, p)
            os.lchown(p, 0, 0)
    for e in spec:
        if e.kind == "dir":
            os.chown(root / e.path, e.uid, e.gid)
            os.chmod(root / e.path, e.mode)
    # times last, directories deepest first: creating entries changes a directory's mtime
    for e in spec:
        if e.kind in ("file", "symlink"):
            os.utime(root / e.path, (mt[e.path], mt[e.path]), follow_symlinks=False)
    for e in sorted((e for e in spec if e.kind == "dir"), key=lambda e: -e.path.count("/")):
        os.utime(root / e.path, (mt[e.path], mt[e.path]))
    os.chmod(root, 0o755)
    os.utime(root, (BASE_MTIME, BASE_MTIME))
    # The root's change is the newest: committing it commits the running transaction.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return expected_tree(seed)


def compare_tree(root: str | Path, expected: dict[str, dict], *, owner: bool = True, mtime: bool = True,
                 dir_mtime: bool = True, ignore: tuple[str, ...] = ("lost+found",)) -> list[str]:
    """Differences between the tree under `root` and `expected` (from expected_tree), as
    human-readable lines; [] when equal. Never follows symlinks. `ignore`: top-level names
    that are not compared (mkfs's lost+found)."""
    root = Path(root)
    diffs: list[str] = []
    seen: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in ignore]
            filenames = [f for f in filenames if f not in ignore]
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            seen[rel] = os.lstat(os.path.join(dirpath, name))
    for rel in sorted(set(expected) - set(seen)):
        diffs.append(f"missing: {rel}")
    for rel in sorted(set(seen) - set(expected)):
        diffs.append(f"unexpected: {rel}")
    inodes: dict[str, set] = {}
    for rel in sorted(set(seen) & set(expected)):
        st, exp = seen[rel], expected[rel]
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) \
            else "symlink" if stat.S_ISLNK(st.st_mode) else f"other({stat.S_IFMT(st.st_mode):o})"
        if kind != exp["type"]:
            diffs.append(f"{rel}: type {kind}, expected {exp['type']}")
            continue
        if kind != "symlink" and stat.S_IMODE(st.st_mode) != exp["mode"]:
            diffs.append(f"{rel}: mode {stat.S_IMODE(st.st_mode):o}, expected {exp['mode']:o}")
        if owner and (st.st_uid, st.st_gid) != (exp["uid"], exp["gid"]):
            diffs.append(f"{rel}: owner {st.st_uid}:{st.st_gid}, expected {exp['uid']}:{exp['gid']}")
        if mtime and (dir_mtime or kind != "dir") and kind != "symlink" and int(st.st_mtime) != exp["mtime"]:
            diffs.append(f"{rel}: mtime {int(st.st_mtime)}, expected {exp['mtime']}")
        if kind == "symlink":
            target = os.readlink(root / rel)
            if target != exp["target"]:
                diffs.append(f"{rel}: symlink to {target!r}, expected {exp['target']!r}")
        elif kind == "file":
            if st.st_size != exp["size"]:
                diffs.append(f"{rel}: size {st.st_size}, expected {exp['size']}")
            else:
                digest = _file_sha256(root / rel)
                if digest != exp["sha256"]:
                    diffs.append(f"{rel}: content differs (sha256 {digest[:12]}..., expected {exp['sha256'][:12]}...)")
            group = exp.get("hardlink")
            if group:
                inodes.setdefault(group, set()).add((st.st_dev, st.st_ino))
            elif st.st_nlink != 1:
                diffs.append(f"{rel}: {st.st_nlink} links, expected 1")
    for group, ids in sorted(inodes.items()):
        members = sorted(p for p, e in expected.items() if e.get("hardlink") == group)
        if len(ids) != 1:
            diffs.append(f"hard link group {group}: {', '.join(members)} are not one inode")
        elif seen[members[0]].st_nlink != len(members):
            diffs.append(f"hard link group {group}: {seen[members[0]].st_nlink} links, expected {len(members)}")
    return diffs


def _file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            h.update(block)
    return h.hexdigest()


def _blocks(path: str | Path):
    """The bytes of a block device or file in 1 MiB blocks, read with O_DIRECT where possible
    (what is on the device, not what the page cache holds)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    buf = mmap.mmap(-1, MiB)                # page-aligned, as O_DIRECT needs
    try:
        while True:
            n = os.readv(fd, [buf])
            if n == 0:
                return
            yield buf[:n]
    finally:
        os.close(fd)
        buf.close()


def device_sha256(path: str | Path) -> str:
    """sha256 of a whole block device or file (O_DIRECT where possible)."""
    h = hashlib.sha256()
    for block in _blocks(path):
        h.update(block)
    return h.hexdigest()


def same_content(a: str | Path, b: str | Path) -> bool:
    """Byte-for-byte equality of two devices/files (much faster than hashing under emulation)."""
    ia, ib = _blocks(a), _blocks(b)
    for x in ia:
        if x != next(ib, None):
            return False
    return next(ib, None) is None


# --------------------------------------------------------------------------------------------
# Guests and the volume group

@dataclasses.dataclass
class GuestDisk:
    vg: str
    lv: str
    layout: str
    size_mib: int
    partition: int | None      # number of the partition with the ext fs; None: whole LV or no fs
    offset: int | None         # byte offset of the ext fs in the LV (0: whole LV; None: no ext fs)
    fs_size: int | None        # bytes of the ext fs region (for losetup --sizelimit)
    fstype: str | None         # "ext3", "ext4", "xfs" or None (nothing to mount)
    dirty: bool                # journal needs replay (needs_recovery set; xfs: the log is dirty)
    seed: str
    fs_uuid: str | None
    swap_partitions: list[int]
    tree: dict[str, dict]      # expected_tree(seed), {} when there is no fs
    image: str                 # the disk image the LV was written from
    log_tail: int | None = None  # xfs, dirty: byte offset in the disk of the log's first record to replay
    inner_vg: str | None = None    # LVM layouts: the guest's VG (its LV root holds `tree`)

    @property
    def lv_path(self) -> str:
        return f"/dev/{self.vg}/{self.lv}"

    def unchanged(self) -> bool:
        """The LV holds exactly the bytes it was built with (an origin nothing wrote to)."""
        return same_content(self.image, self.lv_path)

    @functools.cached_property
    def sha256(self) -> str:
        """sha256 of the LV as built (of its image: hashing under emulation is slow, ~1 s/16 MiB)."""
        return device_sha256(self.image)

    @property
    def name(self) -> str:
        return self.lv

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["lv_path"] = self.lv_path
        return d


STANDARD_GUESTS = [
    # (name without prefix, layout, dirty); "hostdata" keeps no prefix: nothing may touch it
    ("oldxen", "msdos-ext3-63", True),
    ("modern", "msdos-ext4-1m", True),
    ("gpt", "gpt-ext4", True),
    ("whole", "whole-ext4", True),
    ("swap", "swap", True),
]
UNPREFIXED_LV = "hostdata"


class GuestVG:
    """A VG on a loop device over a sparse file; guests are added as LVs.
    Names: vg and lv names are used as given (any prefix the caller wants)."""

    def __init__(self, vg: str = "domutest", *, size_mib: int = 1024, workdir: str | Path | None = None):
        self.vg = vg
        self.size_mib = size_mib
        self.workdir = Path(workdir or WORKROOT / vg)
        self.pv_image = self.workdir / "pv.img"
        self.pv_loop: str | None = None
        self.guests: dict[str, GuestDisk] = {}
        self.pools: set[str] = set()     # thin pools (add_thin_pool); not guests, not leftovers
        self.timings: dict[str, float] = {}

    # -- lifecycle
    def create(self) -> "GuestVG":
        if run(["vgs", self.vg], check=False).returncode == 0:
            raise FixtureError(f"VG {self.vg} exists already (a leftover? `python -m tests.guestdisks destroy --vg {self.vg}`)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.pv_image, "wb") as f:
            f.truncate(self.size_mib * MiB)
        self.pv_loop = out(["losetup", "--find", "--show", str(self.pv_image)]).strip()
        run(["pvcreate", "-q", "-y", self.pv_loop])
        run(["vgcreate", "-q", "-y", "-s", "4M", self.vg, self.pv_loop])
        return self

    def __enter__(self) -> "GuestVG":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def destroy(self) -> list[str]:
        """Remove everything of this VG (also what tests left on it); returns what had to be
        cleaned up beyond the fixture's own guests. Raises if something stays."""
        return destroy_vg(self.vg, self.workdir, expected_lvs=set(self.guests) | self.pools)

    def add_thin_pool(self, name: str, size_mib: int, *, metadata_mib: int = 4, errorwhenfull: bool = False) -> None:
        """A thin pool `name` (as Proxmox VE's `data`); add_guest(..., pool=name) puts thin LVs in it.
        errorwhenfull: a full pool fails writes at once instead of queueing them (60 s by default)."""
        run(["lvcreate", "-q", "-y", "--type", "thin-pool", "-L", f"{size_mib}M", "--poolmetadatasize",
             f"{metadata_mib}M", "-n", name, self.vg])
        self.pools.add(name)
        if errorwhenfull:   # lvcreate refuses --errorwhenfull for thin pools; lvchange takes it
            run(["lvchange", "-q", "--errorwhenfull", "y", f"{self.vg}/{name}"])

    # -- guests
    def add_guest(self, lv: str, layout: str, *, size_mib: int | None = None, seed: str | None = None,
                  dirty: bool = True, active: bool = True, pool: str | None = None,
                  inner_vg: str | None = None) -> GuestDisk:
        """Create LV `lv` holding a disk in `layout` (a key of LAYOUTS). `seed` picks the file
        content (default: the LV name); guests with equal layout, size, seed and dirtiness share
        one built image, which makes many guests cheap. `pool`: a thin LV in that thin pool."""
        lay = LAYOUTS[layout]
        size_mib = -(-(size_mib or lay.default_mib) // 4) * 4     # whole 4 MiB extents
        seed = lv if seed is None else seed
        t0 = time.monotonic()
        if (layout in LVM_LAYOUTS) != bool(inner_vg):
            raise FixtureError(f"layout {layout}: inner_vg is {'required' if layout in LVM_LAYOUTS else 'not used'}")
        image, meta = self._disk_image(lay, size_mib, seed, dirty, inner_vg)
        if pool:
            run(["lvcreate", "-q", "-y", "-n", lv, "-V", f"{size_mib}M", "--thinpool", pool, self.vg])
        else:
            run(["lvcreate", "-q", "-y", "-n", lv, "-L", f"{size_mib}M", self.vg])
        try:
            _write_image_to_device(image, f"/dev/{self.vg}/{lv}")
            if not active:
                run(["lvchange", "-q", "-an", f"{self.vg}/{lv}"])
        except BaseException:
            run(["lvremove", "-q", "-f", f"{self.vg}/{lv}"], check=False)
            raise
        g = GuestDisk(vg=self.vg, lv=lv, layout=layout, size_mib=size_mib, partition=lay.partition,
                      offset=meta["offset"], fs_size=meta["fs_size"], fstype=lay.fstype,
                      dirty=dirty and lay.fstype is not None, seed=seed, fs_uuid=meta["uuid"],
                      swap_partitions=meta["swap_partitions"],
                      tree=expected_tree(seed) if lay.fstype else {}, image=str(image),
                      log_tail=meta.get("log_tail"), inner_vg=inner_vg)
        self.guests[lv] = g
        self.timings[lv] = time.monotonic() - t0
        return g

    def add_guests(self, specs: list[dict], *, workers: int = 2) -> list[GuestDisk]:
        """Several guests: `specs` are add_guest keyword dicts (`lv`, `layout`, ...). Their disk
        images are built `workers` at a time (the VM has 2 cpus; mkfs/mount/populate are per
        image), then the LVs are created one by one (LVM serialises on the VG anyway)."""
        todo = {}
        for spec in specs:
            lay = LAYOUTS[spec["layout"]]
            key = (lay, -(-(spec.get("size_mib") or lay.default_mib) // 4) * 4,
                   spec["lv"] if spec.get("seed") is None else spec["seed"], spec.get("dirty", True))
            todo[key] = None
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
            for f in [pool.submit(self._disk_image, *key) for key in todo]:
                f.result()
        self.timings["images"] = time.monotonic() - t0
        return [self.add_guest(**spec) for spec in specs]

    def remove_guest(self, lv: str) -> None:
        run(["lvremove", "-q", "-f", f"{self.vg}/{lv}"])
        self.guests.pop(lv, None)

    def add_spanning_guest(self, lvs: tuple[str, str], inner_vg: str, *, size_mib: int = 48, seed: str | None = None,
                           dirty: bool = True) -> list[GuestDisk]:
        """Two LVs, one guest's two disks (msdos, one LVM PV partition each), whose PVs form one
        guest VG `inner_vg` with LVs swap and root (ext4, dirty as _make_fs; root spans both PVs): as a VG
        extended over a second disk (vgextend) looks. The first disk's GuestDisk holds the tree."""
        lay = LAYOUTS["msdos-lvm"]
        size_mib = -(-size_mib // 4) * 4
        seed = lvs[0] if seed is None else seed
        key = hashlib.sha256(f"span|{size_mib}|{seed}|{dirty}|{inner_vg}".encode()).hexdigest()[:16]
        images = [WORKROOT / "images" / f"{key}-{n}.img" for n in (0, 1)]
        meta_path = images[0].with_suffix(".json")
        if not (meta_path.exists() and all(i.exists() for i in images)):
            images[0].parent.mkdir(parents=True, exist_ok=True)
            scratch = self.workdir / "scratch" / key
            meta = _build_spanning_images(images, lay, size_mib, seed, dirty, inner_vg, scratch)
            meta_path.write_text(json.dumps(meta))
            shutil.rmtree(scratch)
        meta = json.loads(meta_path.read_text())
        made = []
        for n, (lv, image) in enumerate(zip(lvs, images)):
            run(["lvcreate", "-q", "-y", "-n", lv, "-L", f"{size_mib}M", self.vg])
            try:
                _write_image_to_device(image, f"/dev/{self.vg}/{lv}")
            except BaseException:
                run(["lvremove", "-q", "-f", f"{self.vg}/{lv}"], check=False)
                raise
            g = GuestDisk(vg=self.vg, lv=lv, layout="msdos-lvm", size_mib=size_mib, partition=1,
                          offset=meta["offset"], fs_size=meta["fs_size"], fstype="ext4", dirty=dirty, seed=seed,
                          fs_uuid=meta["uuid"], swap_partitions=[], tree=expected_tree(seed) if n == 0 else {},
                          image=str(image), inner_vg=inner_vg)
            self.guests[lv] = g
            made.append(g)
        return made

    def lvs(self) -> list[dict]:
        """`lvs` report of the VG: lv_name, lv_attr, lv_path, lv_tags, origin, kernel major/minor."""
        rep = json.loads(out(["lvs", "--reportformat", "json", "-o",
                              "lv_name,lv_attr,lv_path,lv_tags,origin,lv_kernel_major,lv_kernel_minor", self.vg]))
        return rep["report"][0]["lv"]

    def leftovers(self) -> list[str]:
        """What is on this VG besides the fixture's guests: other LVs (snapshots), loop devices
        backed by its LVs, mounts of those. [] after a clean teardown by the code under test."""
        lvs = self.lvs()
        found = [f"LV {self.vg}/{lv['lv_name']}" for lv in lvs
                 if lv["lv_name"] not in self.guests and lv["lv_name"] not in self.pools]
        loops, mounts = _users_of(lvs)
        return found + [f"loop device {l}" for l in loops] + [f"mount {m}" for m in mounts]

    # -- image building
    def _disk_image(self, lay: Layout, size_mib: int, seed: str, dirty: bool,
                    inner_vg: str | None = None) -> tuple[Path, dict]:
        key = hashlib.sha256(f"{lay.name}|{size_mib}|{seed}|{dirty}|{inner_vg or ''}".encode()).hexdigest()[:16]
        image = WORKROOT / "images" / f"{key}.img"     # shared by all VGs of this VM
        meta_path = image.with_suffix(".json")
        if image.exists() and meta_path.exists():
            return image, json.loads(meta_path.read_text())
        image.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.workdir / "scratch" / key     # one per image: add_guests builds in parallel
        meta = build_disk_image(image, lay, size_mib, seed, dirty, scratch=scratch, inner_vg=inner_vg)
        meta_path.write_text(json.dumps(meta))     # written last: an image without it is rebuilt
        shutil.rmtree(scratch)                     # our own scratch files; nothing mounted there now
        return image, meta


def build_disk_image(image: Path, lay: Layout, size_mib: int, seed: str, dirty: bool, *, scratch: Path,
                     inner_vg: str | None = None) -> dict:
    """Write a whole guest disk into the sparse file `image`; returns offset/fs_size/uuid/swap."""
    total = size_mib * MiB // SECTOR
    with open(image, "wb") as f:
        f.truncate(total * SECTOR)
    if lay.label:
        # sfdisk on a file: no kernel or udev involved (parted runs `udevadm settle` and dmidecode,
        # seconds each under emulation; on an LV it would also add partition mappings).
        run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)],
            input=lay.sfdisk_script(total, seed).encode())
    fs_region, swap_regions = lay.regions(total)
    fs_uuid = None
    log_tail = None
    scratch.mkdir(parents=True, exist_ok=True)
    for i, (start, end) in enumerate(swap_regions):
        part = scratch / "swap.img"
        with open(part, "wb") as f:
            f.truncate((end - start + 1) * SECTOR)
        run(["mkswap", "-q", "-L", f"swap{i}", "-U", str(uuid.uuid5(UUID_NS, f"{seed}|swap{i}")), str(part)])
        _copy_into(part, image, start * SECTOR)
        part.unlink()
    if lay.name in LVM_LAYOUTS:
        if lay.name == "msdos-boot-lvm":   # /boot: clean, a tree of its own (found mounted: other files)
            _make_fs(image, 2048 * SECTOR, _BOOT_S * SECTOR, "ext4", seed + "-boot",
                     str(uuid.uuid5(UUID_NS, f"{seed}|boot")), False, scratch)
        if lay.name == "gpt-efi-xfs-lvm":  # the EFI system partition, then /boot (xfs, clean)
            _make_vfat(image, 2048 * SECTOR, _EFI_S * SECTOR, seed, scratch)
            _make_xfs(image, (2048 + _EFI_S) * SECTOR, _XFS_BOOT_S * SECTOR, "xfs", seed + "-boot",
                      str(uuid.uuid5(UUID_NS, f"{seed}|boot")), False, scratch)
        pv_start, pv_end = fs_region
        fs_uuid = str(uuid.uuid5(UUID_NS, f"{seed}|{lay.fstype}"))
        pv_size = (pv_end - pv_start + 1) * SECTOR
        _make_guest_vg([(image, pv_start * SECTOR, pv_size)], inner_vg, seed, fs_uuid, dirty, scratch, lay.fstype,
                       home=lay.name == "msdos-boot-lvm")
        return {"offset": pv_start * SECTOR, "fs_size": pv_size, "uuid": fs_uuid, "swap_partitions": []}
    if fs_region:
        start, end = fs_region
        fs_uuid = str(uuid.uuid5(UUID_NS, f"{seed}|{lay.fstype}"))
        make = _make_xfs if lay.fstype == "xfs" else _make_fs
        log_tail = make(image, start * SECTOR, (end - start + 1) * SECTOR, lay.fstype, seed, fs_uuid, dirty, scratch)
    swap_parts = {"msdos-ext3-63": [5], "gpt-ext4": [2], "msdos-swap-xfs": [1]}.get(lay.name, [])
    return {"offset": fs_region[0] * SECTOR if fs_region else None,
            "fs_size": (fs_region[1] - fs_region[0] + 1) * SECTOR if fs_region else None,
            "uuid": fs_uuid, "swap_partitions": swap_parts, "log_tail": log_tail}


def _make_fs(image: Path, offset: int, size: int, fstype: str, seed: str, fs_uuid: str, dirty: bool,
             scratch: Path) -> None:
    """mkfs in a scratch file, mount it, write the tree, and put into `image` at `offset` the
    state of a crash (copied while mounted: dirty) or of a clean unmount (not dirty)."""
    part = scratch / "fs.img"
    with open(part, "wb") as f:
        f.truncate(size)
    # Inode tables initialised by mke2fs: no lazy-init thread writing while the copy is taken.
    run(["mke2fs", "-q", "-F", "-t", fstype, "-L", seed.encode()[:16].decode(errors="ignore"), "-U", fs_uuid,
         "-E", "lazy_itable_init=0,lazy_journal_init=0", str(part)])
    mnt = scratch / "mnt"
    mnt.mkdir(exist_ok=True)
    loop = out(["losetup", "--find", "--show", str(part)]).strip()
    try:
        run(["mount", "-t", fstype, loop, str(mnt)])
        try:
            populate(mnt, seed)
            if dirty:
                _copy_into(part, image, offset)
        finally:
            run(["umount", str(mnt)])
    finally:
        run(["losetup", "-d", loop])
    if not dirty:
        _copy_into(part, image, offset)
    part.unlink()
    if needs_recovery(image, offset) != dirty:
        raise FixtureError(f"{image}@{offset}: needs_recovery is {not dirty}, wanted {dirty}")


def _make_xfs(image: Path, offset: int, size: int, fstype: str, seed: str, fs_uuid: str, dirty: bool,
              scratch: Path) -> int | None:
    """mkfs.xfs in a scratch file, mount it, write the tree; dirty: shut the filesystem down with its
    log forced (xfs_io shutdown -f) so that the tree's metadata is only in the log, as after a crash
    of the running guest (a mount with norecovery shows an empty root). Copies the result into `image`
    at `offset`; returns, for a dirty log, the byte offset in `image` of the first record to replay."""
    part = scratch / "fs.img"
    with open(part, "wb") as f:
        f.truncate(size)
    run(["mkfs.xfs", "-q", "-f", "-L", seed.encode()[:12].decode(errors="ignore"), "-m", f"uuid={fs_uuid}",
         str(part)])
    mnt = scratch / "mnt"
    mnt.mkdir(exist_ok=True)
    loop = out(["losetup", "--find", "--show", str(part)]).strip()
    try:
        run(["mount", "-t", "xfs", loop, str(mnt)])
        try:
            populate(mnt, seed)
            if dirty:
                run(["xfs_io", "-x", "-c", "shutdown -f", str(mnt)])
        finally:
            run(["umount", str(mnt)])
    finally:
        run(["losetup", "-d", loop])
    log_daddr, tail, head, state = xfs_log_state(part)
    if (state == "DIRTY") != dirty or (dirty and head == tail):
        raise FixtureError(f"{image}@{offset}: the XFS log is {state} (tail {tail}, head {head}), wanted "
                           f"{'dirty' if dirty else 'clean'}")
    _copy_into(part, image, offset)
    part.unlink()
    return offset + (log_daddr + tail) * SECTOR if dirty else None


def xfs_log_state(device: str | Path) -> tuple[int, int, int, str]:
    """(the log's first sector, tail block, head block, "DIRTY" or "CLEAN") of the XFS on `device`
    (xfs_logprint -t; blocks are 512-byte sectors from the log's start)."""
    text = out(["xfs_logprint", "-t", str(device)])
    match = re.search(r"daddr: (\d+).*?log tail: (\d+) head: (\d+) state: <(\w+)>", text, re.S)
    if not match:
        raise FixtureError(f"xfs_logprint -t {device}: no log state in its output: {text[:300]!r}")
    return int(match.group(1)), int(match.group(2)), int(match.group(3)), match.group(4)
def _make_vfat(image: Path, offset: int, size: int, seed: str, scratch: Path) -> None:
    """An EFI system partition: FAT with a volume id from the seed (nothing of it is backed up)."""
    part = scratch / "efi.img"
    with open(part, "wb") as f:
        f.truncate(size)
    run(["mkfs.vfat", "-n", "EFI", "-i", uuid.uuid5(UUID_NS, f"{seed}|efi").hex[:8], str(part)])
    _copy_into(part, image, offset)
    part.unlink()


def _make_guest_vg(places: list[tuple[Path, int, int]], vg: str, seed: str, fs_uuid: str, dirty: bool,
                   scratch: Path, root_fs: str = "ext4", home: bool = False) -> None:
    """A guest VG `vg` on one PV per (image, offset, size) of `places` (several: a VG extended over
    more disks), with LVs swap, (home: an LV home, ext4, clean, holding the tree of seed + "-home")
    and root (`root_fs`: ext4, dirty as _make_fs; xfs, dirty as
    _make_xfs; it spans every PV), each PV built in a scratch file and put into its image at its
    offset. Every LVM command sees only the scratch loop devices (--devices). A VG named like a
    host VG cannot be created here (vgcreate refuses a name whose /dev/<vg> exists): it is built
    under a name of the same length and renamed in the images (_rename_vg_in_image)."""
    build_vg = vg
    if os.path.exists(f"/dev/{vg}"):
        build_vg = vg[:-1] + ("x" if vg[-1] != "x" else "y")
    vg, final_vg = build_vg, vg
    parts = [scratch / f"pv{n}.img" for n in range(len(places))]
    for part, (_image, _offset, size) in zip(parts, places):
        with open(part, "wb") as f:
            f.truncate(size)
    loops = [out(["losetup", "--find", "--show", str(part)]).strip() for part in parts]
    dev = ["--devices", ",".join(loops)]
    mnt = scratch / "mnt"

    def copy_pvs():
        for part, (image, offset, _size) in zip(parts, places):
            _copy_into(part, image, offset)
    try:
        run(["pvcreate", "-q", "-y", *dev, *loops])
        run(["vgcreate", "-q", "-y", *dev, "-s", "1M", vg, *loops])
        run(["lvcreate", "-q", "-y", "-Wy", "-Zy", *dev, "-n", "swap", "-L", "8M", vg])
        if home:
            run(["lvcreate", "-q", "-y", "-Wy", "-Zy", *dev, "-n", "home", "-L", "12M", vg])
        run(["lvcreate", "-q", "-y", "-Wy", "-Zy", *dev, "-n", "root", "-l", "100%FREE", vg])
        root = f"/dev/mapper/{vg.replace('-', '--')}-root"
        run(["mkswap", "-q", "-L", "swap", f"/dev/mapper/{vg.replace('-', '--')}-swap"])
        mnt.mkdir(exist_ok=True)
        if home:   # /home: clean (unmounted before the copy), a tree of its own
            home_lv = f"/dev/mapper/{vg.replace('-', '--')}-home"
            run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "home", "-U", str(uuid.uuid5(UUID_NS, f"{seed}|home")),
                 "-E", "lazy_itable_init=0,lazy_journal_init=0", home_lv])
            run(["mount", "-t", "ext4", home_lv, str(mnt)])
            try:
                populate(mnt, seed + "-home")
            finally:
                run(["umount", str(mnt)])
        if root_fs == "xfs":
            run(["mkfs.xfs", "-q", "-f", "-L", "root", "-m", f"uuid={fs_uuid}", root])
        else:
            run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root", "-U", fs_uuid,
                 "-E", "lazy_itable_init=0,lazy_journal_init=0", root])
        mnt.mkdir(exist_ok=True)
        run(["mount", "-t", root_fs, root, str(mnt)])
        try:
            populate(mnt, seed)
            if dirty and root_fs == "xfs":
                run(["xfs_io", "-x", "-c", "shutdown -f", str(mnt)])  # the tree's metadata only in the log
            elif dirty:
                copy_pvs()
        finally:
            run(["umount", str(mnt)])
        if root_fs == "xfs" and (xfs_log_state(root)[3] == "DIRTY") != dirty:
            raise FixtureError(f"{places[0][0]}: the root LV's XFS log is not {'dirty' if dirty else 'clean'}")
        run(["vgchange", "-q", "-an", *dev, vg])
    finally:
        run(["vgchange", "-q", "-an", *dev], check=False)
        run(["udevadm", "settle", "--timeout=30"], check=False)
        run(["losetup", "-d", *loops])
    if not dirty or root_fs == "xfs":
        copy_pvs()
    for part in parts:
        part.unlink()
    if final_vg != vg:
        for image, offset, _size in places:
            _rename_vg_in_image(image, offset, vg, final_vg)


def _build_spanning_images(images: list[Path], lay: Layout, size_mib: int, seed: str, dirty: bool, vg: str,
                           scratch: Path) -> dict:
    """The disk images of add_spanning_guest: a table each (`lay`), one guest VG over their PVs."""
    total = size_mib * MiB // SECTOR
    scratch.mkdir(parents=True, exist_ok=True)
    pv_start, pv_end = lay.regions(total)[0]
    pv_size = (pv_end - pv_start + 1) * SECTOR
    for n, image in enumerate(images):
        with open(image, "wb") as f:
            f.truncate(total * SECTOR)
        run(["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)],
            input=lay.sfdisk_script(total, f"{seed}|disk{n}").encode())
    fs_uuid = str(uuid.uuid5(UUID_NS, f"{seed}|span"))
    _make_guest_vg([(image, pv_start * SECTOR, pv_size) for image in images], vg, seed, fs_uuid, dirty, scratch)
    return {"offset": pv_start * SECTOR, "fs_size": pv_size, "uuid": fs_uuid}


def _lvm_crc(data: bytes) -> int:
    """LVM's checksum: CRC-32 from 0xf597a6cf, without zlib's final inversion."""
    return ~zlib.crc32(data, ~0xF597A6CF & 0xFFFFFFFF) & 0xFFFFFFFF


def _rename_vg_in_image(image: Path, pv_offset: int, old: str, new: str) -> None:
    """Rename the VG in the PV's first metadata area (names of one length): the text is patched
    in place and the checksums LVM verifies (the text's, the area header's) are written anew."""
    assert len(old) == len(new)
    with open(image, "r+b") as f:
        f.seek(pv_offset)
        head = f.read(2048)
        sector = next(i for i in range(4) if head[i * 512:i * 512 + 8] == b"LABELONE")
        pvh = pv_offset + sector * 512 + int.from_bytes(head[sector * 512 + 20:sector * 512 + 24], "little")
        f.seek(pvh + 40)
        raw = f.read(200)
        pos = 0
        while int.from_bytes(raw[pos:pos + 8], "little"):   # data areas
            pos += 16
        pos += 16
        mda_start = int.from_bytes(raw[pos:pos + 8], "little")
        mda_size = int.from_bytes(raw[pos + 8:pos + 16], "little")
        f.seek(pv_offset + mda_start)
        area = bytearray(f.read(mda_size))
        rl_offset = int.from_bytes(area[40:48], "little")
        rl_size = int.from_bytes(area[48:56], "little")
        if rl_offset + rl_size > mda_size:
            raise FixtureError("metadata wraps round its buffer: not renamed")
        body = area[512:].replace(old.encode(), new.encode())
        area[512:] = body
        area[56:60] = _lvm_crc(bytes(area[rl_offset:rl_offset + rl_size])).to_bytes(4, "little")
        area[0:4] = _lvm_crc(bytes(area[4:512])).to_bytes(4, "little")
        f.seek(pv_offset + mda_start)
        f.write(area)
        os.fsync(f.fileno())


def needs_recovery(device: str | Path, offset: int = 0) -> bool:
    """The ext superblock's RECOVER (needs_recovery) incompat flag."""
    with open(device, "rb") as f:
        f.seek(offset + 1024)
        sb = f.read(1024)
    if int.from_bytes(sb[0x38:0x3A], "little") != 0xEF53:
        raise FixtureError(f"{device}@{offset}: no ext superblock")
    return bool(int.from_bytes(sb[0x60:0x64], "little") & 0x4)


def _data_extents(fd: int, size: int):
    """(start, end) byte ranges of a sparse file that hold data (SEEK_DATA/SEEK_HOLE)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:      # only a hole is left
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _copy_into(src: Path, dst: Path | str, offset: int) -> None:
    """Copy `src` into `dst` at `offset`, only its data extents and of those only the blocks
    that are not all zero (dst is zero elsewhere). Reading the holes of a 64 MiB image costs
    seconds under emulation."""
    zero = bytes(MiB)
    with open(src, "rb") as s, open(dst, "r+b") as d:
        for start, end in _data_extents(s.fileno(), os.fstat(s.fileno()).st_size):
            pos = start
            while pos < end:
                block = os.pread(s.fileno(), min(MiB, end - pos), pos)
                if not block:
                    break
                if block != zero[:len(block)]:
                    os.pwrite(d.fileno(), block, offset + pos)
                pos += len(block)
        os.fsync(d.fileno())


def _write_image_to_device(image: Path, device: str) -> None:
    """Make the LV's bytes equal the image's: discard (reads back zeros on a loop-backed PV),
    write the non-zero blocks, verify; on a mismatch write every block."""
    if run(["blkdiscard", "-f", device], check=False).returncode == 0:
        _copy_into(image, device, 0)
        if same_content(image, device):
            return
    with open(image, "rb") as s, open(device, "r+b") as d:
        shutil.copyfileobj(s, d, MiB)
        d.flush()
        os.fsync(d.fileno())
    if not same_content(image, device):
        raise FixtureError(f"{device}: content differs from {image} after writing")


# --------------------------------------------------------------------------------------------
# Finding and removing what uses a VG (derived from the system, so it works after a crash)

def _loop_list() -> list[dict]:
    rep = out(["losetup", "--json", "--list", "-O", "NAME,BACK-FILE,MAJ:MIN,OFFSET"]).strip()
    return json.loads(rep)["loopdevices"] if rep else []


def _mountinfo() -> list[tuple[str, str]]:
    """(major:minor, mount point) of every mount; the kernel escapes space, tab, newline, \\."""
    res = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            res.append((fields[2].decode(), os.fsdecode(mp)))
    return res


def _backing_dev(loop: dict) -> str | None:
    """major:minor of a loop device's backing block device. (losetup's BACK-MAJ:MIN is the
    device of the filesystem holding the backing node - devtmpfs for /dev/dm-N - not this.)"""
    path = (loop.get("back-file") or "").removesuffix(" (deleted)")
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None


def _users_of(lvs: list[dict]) -> tuple[list[str], list[str]]:
    """Loop devices backed by these LVs (recursively: loops on loops) and mounts of any of them."""
    devs = {f"{lv['lv_kernel_major']}:{lv['lv_kernel_minor']}" for lv in lvs
            if lv.get("lv_kernel_major") not in (None, "", "-1")}
    loops = []
    changed = True
    all_loops = [(l, _backing_dev(l), l["maj:min"].strip()) for l in _loop_list()]   # losetup pads it
    while changed:
        changed = False
        for l, back, majmin in all_loops:
            if back in devs and majmin not in devs:
                devs.add(majmin)
                loops.append(l["name"])
                changed = True
    mounts = [mp for majmin, mp in _mountinfo() if majmin in devs]
    return loops, mounts


def destroy_vg(vg: str, workdir: str | Path | None = None, *, expected_lvs: set[str] = frozenset()) -> list[str]:
    """Unmount, detach and remove everything on VG `vg`, the VG, its loop PV and the work dir.
    Returns a description of what was found beyond `expected_lvs`; raises if anything stays."""
    workdir = Path(workdir or WORKROOT / vg)
    cleaned: list[str] = []
    if run(["vgs", vg], check=False).returncode == 0:
        rep = json.loads(out(["lvs", "-a", "--reportformat", "json", "-o",
                              "lv_name,lv_kernel_major,lv_kernel_minor", vg]))
        lvs = rep["report"][0]["lv"]
        cleaned += [f"LV {vg}/{lv['lv_name']}" for lv in lvs
                    if lv["lv_name"] not in expected_lvs and not lv["lv_name"].startswith("[")]
        loops, mounts = _users_of(lvs)
        for mp in sorted(mounts, key=len, reverse=True):
            run(["umount", mp], check=False)
            cleaned.append(f"mount {mp}")
        for l in reversed(loops):
            run(["losetup", "-d", l], check=False)
            cleaned.append(f"loop device {l}")
        run(["udevadm", "settle", "--timeout=30"], check=False)
        pvs = [p["pv_name"] for p in json.loads(out(["pvs", "--reportformat", "json", "-o", "pv_name",
                                                      "--select", f"vg_name={vg}"]))["report"][0]["pv"]]
        for attempt in range(5):
            r = run(["vgremove", "-q", "-f", "-f", vg], check=False)
            if r.returncode == 0:
                break
            run(["udevadm", "settle", "--timeout=30"], check=False)
            time.sleep(0.5 * (attempt + 1))
        else:
            raise FixtureError(f"vgremove {vg}: {r.stderr.decode(errors='replace').strip()}")
        for pv in pvs:
            run(["pvremove", "-q", "-f", "-y", pv], check=False)
    # The PV's loop device, and what an interrupted image build left: scratch mounts, loops.
    root = os.path.realpath(workdir)

    def inside(path: str) -> bool:
        return path == root or path.startswith(root + "/")

    for mp in sorted((mp for _, mp in _mountinfo() if inside(os.path.realpath(mp))), key=len, reverse=True):
        run(["umount", mp], check=False)
    for l in _loop_list():
        back = (l.get("back-file") or "").removesuffix(" (deleted)")
        if back and inside(os.path.realpath(back)):
            run(["losetup", "-d", l["name"]], check=False)
    if workdir.exists():
        busy = [mp for _, mp in _mountinfo() if inside(os.path.realpath(mp))]
        if busy:
            raise FixtureError(f"not removing {workdir}: still mounted under it: {busy}")
        shutil.rmtree(workdir)
    return cleaned


def build_standard(vg: str = "domutest", *, prefix: str = "domu-", size_mib: int = 1024) -> GuestVG:
    """The standard set of issue 2 in a new VG: `<prefix>oldxen` (msdos ext3 at sector 63 + swap in
    a logical partition), `<prefix>modern` (msdos ext4 at 1 MiB), `<prefix>gpt` (BIOS boot, swap,
    ext4), `<prefix>whole` (ext4, no table), `<prefix>swap` (swap only), and `hostdata` (clean ext4
    without the prefix, which nothing may touch). Destroys the VG again if a build step fails."""
    gvg = GuestVG(vg, size_mib=size_mib).create()
    try:
        gvg.add_guests([dict(lv=prefix + name, layout=layout, dirty=dirty) for name, layout, dirty in STANDARD_GUESTS]
                       + [dict(lv=UNPREFIXED_LV, layout="whole-ext4", size_mib=16, dirty=False)])
    except BaseException:
        with contextlib.suppress(Exception):
            gvg.destroy()
        raise
    return gvg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.guestdisks", description="Build or remove fixture guests (root, in the VM).")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="the standard set, or N guests of one layout")
    b.add_argument("--vg", default="domutest")
    b.add_argument("--prefix", default="domu-")
    b.add_argument("--size-mib", type=int, default=1024, help="PV size")
    b.add_argument("--count", type=int, help="instead of the standard set: this many guests of --layout")
    b.add_argument("--layout", default="msdos-ext4-1m", choices=sorted(LAYOUTS))
    b.add_argument("--seed", help="with --count: one content seed for all (one image built)")
    b.add_argument("--json", help="write the guests' descriptions (with expected trees) here")
    d = sub.add_parser("destroy")
    d.add_argument("--vg", default="domutest")
    args = p.parse_args(argv)
    if args.cmd == "destroy":
        for line in destroy_vg(args.vg):
            print(f"cleaned: {line}")
        return 0
    t0 = time.monotonic()
    if args.count:
        gvg = GuestVG(args.vg, size_mib=args.size_mib).create()
        gvg.add_guests([dict(lv=f"{args.prefix}g{i:03d}", layout=args.layout, seed=args.seed)
                        for i in range(args.count)])
    else:
        gvg = build_standard(args.vg, prefix=args.prefix, size_mib=args.size_mib)
    for g in gvg.guests.values():
        print(f"{g.lv_path:32} {g.layout:14} part={g.partition} offset={g.offset} {g.fstype or '-'}"
              f"{' dirty' if g.dirty else ''}  {gvg.timings[g.lv]:.1f}s")
    print(f"disk images: {gvg.timings.get('images', 0):.1f}s")
    print(f"built {len(gvg.guests)} guests in {time.monotonic() - t0:.1f}s")
    if args.json:
        Path(args.json).write_text(json.dumps([g.to_json() for g in gvg.guests.values()], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
