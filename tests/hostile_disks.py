"""Hostile and broken guest disks: builders for tests/vm/test_hostile.py (real LVM, in the VM test
bed) and tests/unit/test_hostile_host.py (image files on the host, no root, no loop devices).

Guest disks are written by the guests, so every byte of them is untrusted input. The builders here
make the odd ones by hand, byte for byte where the usual tools refuse (parted will not write an
overlapping or self-referencing table, nor an absurd GPT):

    image = new_image(path, 32)                        # sparse file of 32 MiB
    write_gpt(image, [GptPart(2048, 4095)], entries=2**31)
    expect = CASES["gpt-absurd-entry-count"].build(image)   # -> Expect: what the tool must do

`CASES` maps a case name to a builder that writes a whole guest disk into an image file and returns
an `Expect`: either the partition that must be mounted (number, byte offset, filesystem type and the
content of the marker file /which.txt in it) or the step and message of the guest's error. The same
images go through `partitions.probe_isolated` + `choose` on the host and through the whole CLI in the
VM. What needs a kernel (a 4096-byte-sector VG, guest content with device nodes, 100,000 files) is
built by the VM-side helpers at the end (`SectorVG`, `add_image`, `hostile_content`,
`make_big_tree_lv`).
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
import zlib
from pathlib import Path

from tests import guestdisks

MiB = 1024 * 1024
LINUX_FS = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
LUKS = uuid.UUID("CA7D7CCB-63ED-4C53-861C-1742536059CC")
MARKER = "which.txt"
# Error texts of the core (domu_snapshot/partitions.py and lifecycle.py) the cases expect.
UNRECOGNISED = "no partition table or filesystem recognised"
NO_EXT = "no ext4/ext3 filesystem found"


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return guestdisks.run(argv, **kw)


# ------------------------------------------------------------------------------------ what to expect

@dataclasses.dataclass(frozen=True)
class Expect:
    """The outcome the tool must reach for a disk: a mount of `fs` from partition `number` (0 =
    the whole disk) at byte `offset` holding /which.txt == `marker`; or a failure of the guest at
    `step` whose message contains every string of `message`."""
    number: int | None = None
    offset: int | None = None
    fs: str | None = None
    marker: str | None = None
    step: str | None = None
    message: tuple[str, ...] = ()
    options: tuple[str, ...] = ()        # extra CLI options the case is run with

    @property
    def mounts(self) -> bool:
        return self.step is None


def marker_text(case: str, number: int) -> str:
    return f"case {case}, partition {number}\n"


# ------------------------------------------------------------------------------------ image files

def new_image(path: str | Path, size_mib: int) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    return path


def put(image: str | Path, offset: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(offset)
        f.write(data)


def image_sectors(image: str | Path, sector: int = 512) -> int:
    return os.path.getsize(image) // sector


# msdos (MBR) tables ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MbrPart:
    start: int                  # sectors (from the disk start; in an EBR: see write_ebr)
    length: int                 # sectors
    ptype: int = 0x83           # 0x83 Linux, 0x05 extended, 0x82 swap, 0xEE GPT protective
    boot: bool = False

    def raw(self) -> bytes:
        chs = b"\xfe\xff\xff"       # "use the LBA fields"
        return struct.pack("<B3sB3sII", 0x80 if self.boot else 0, chs, self.ptype, chs,
                           self.start & 0xFFFFFFFF, self.length & 0xFFFFFFFF)


def _table(entries: list[MbrPart | None]) -> bytes:
    entries = list(entries) + [None] * (4 - len(entries))
    return b"".join(e.raw() if e else bytes(16) for e in entries) + b"\x55\xaa"


def write_mbr(image: str | Path, entries: list[MbrPart | None], *, sector: int = 512) -> None:
    """A DOS partition table in sector 0: up to four primary entries (None = empty slot)."""
    put(image, 440, struct.pack("<I", 0x5EED1234) + b"\0\0")   # disk signature
    put(image, 446, _table(entries))


def write_ebr(image: str | Path, lba: int, logical: MbrPart | None, next_ebr: MbrPart | None = None,
              *, sector: int = 512) -> None:
    """An extended boot record at `lba`: `logical.start` counts from this EBR, `next_ebr.start`
    from the start of the extended partition (that is how DOS chains them)."""
    put(image, lba * sector + 446, _table([logical, next_ebr]))


# GPT ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class GptPart:
    first: int                  # first LBA
    last: int                   # last LBA (inclusive)
    type: uuid.UUID = LINUX_FS
    name: str = "root"


def write_gpt(image: str | Path, parts: list[GptPart], *, sector: int = 512, disk_sectors: int | None = None,
              entries: int = 128, entry_size: int = 128, backup: bool = True, protective: bool = True) -> None:
    """A GPT with valid CRCs: protective MBR, header at LBA 1, entry array at LBA 2, and the backup
    array and header at the end of a disk of `disk_sectors` (default: the image's size; a smaller
    value gives the table of a disk that was grown later). `entries` and `entry_size` go into both
    headers as given, absurd or not; the array written is `parts` padded to 128 entries of 128 bytes
    (its CRC is that of what is written)."""
    total = disk_sectors or image_sectors(image, sector)
    array = b""
    for i, p in enumerate(parts):
        name = p.name.encode("utf-16-le")[:72].ljust(72, b"\0")
        unique = uuid.uuid5(guestdisks.UUID_NS, f"{image}|{i}")
        array += p.type.bytes_le + unique.bytes_le + struct.pack("<QQQ", p.first, p.last, 0) + name
    array = array.ljust(128 * 128, b"\0")
    array_sectors = -(-len(array) // sector)
    first_usable = 2 + array_sectors
    last_usable = total - 2 - array_sectors
    array_crc = zlib.crc32(array) & 0xFFFFFFFF
    disk_guid = uuid.uuid5(guestdisks.UUID_NS, f"{image}|disk")

    def header(my_lba: int, alt_lba: int, array_lba: int) -> bytes:
        fields = [b"EFI PART", 0x00010000, 92, 0, 0, my_lba, alt_lba, first_usable, last_usable,
                  disk_guid.bytes_le, array_lba, entries & 0xFFFFFFFF, entry_size & 0xFFFFFFFF, array_crc]
        raw = struct.pack("<8sIIIIQQQQ16sQIII", *fields)
        fields[3] = zlib.crc32(raw) & 0xFFFFFFFF
        return struct.pack("<8sIIIIQQQQ16sQIII", *fields).ljust(sector, b"\0")

    if protective:
        write_mbr(image, [MbrPart(1, min(total - 1, 0xFFFFFFFF), 0xEE)])
    put(image, 1 * sector, header(1, total - 1, 2))
    put(image, 2 * sector, array)
    if backup:
        put(image, (total - 1 - array_sectors) * sector, array)
        put(image, (total - 1) * sector, header(total - 1, 1, total - 1 - array_sectors))


# filesystems ----------------------------------------------------------------------------------------

def mkfs_ext(image: str | Path, offset: int, size: int, *, fstype: str = "ext4", marker: str | None = None,
             block_size: int | None = None, extra: tuple[str, ...] = ()) -> None:
    """mke2fs straight into the image at a byte offset, with /which.txt holding `marker`.
    A clean filesystem (no journal to replay): these cases are about what surrounds it."""
    with tempfile.TemporaryDirectory(prefix="hostile-src-") as src:
        if marker is not None:
            Path(src, MARKER).write_text(marker)
        argv = ["mke2fs", "-q", "-F", "-t", fstype, "-E", f"offset={offset}", "-d", src]
        if block_size:
            argv += ["-b", str(block_size)]
        argv += [*extra, str(image), f"{size // 1024}k"]
        run(argv)


def mkfs_btrfs(image: str | Path, offset: int, size: int) -> None:
    """A btrfs (mixed block groups: small enough for a test disk) copied in at `offset`."""
    with tempfile.TemporaryDirectory(prefix="hostile-btrfs-") as tmp:
        part = new_image(Path(tmp, "btrfs.img"), size // MiB)
        run(["mkfs.btrfs", "-q", "-f", "--mixed", "-L", "guest-data", str(part)])
        guestdisks._copy_into(part, Path(image), offset)


def ext_at(image: str | Path, offset: int) -> str:
    """The device spec debugfs/e2fsck take for a filesystem at a byte offset of a file."""
    return f"{image}?offset={offset}"


def break_root_inode(image: str | Path, offset: int) -> None:
    """Make the root directory's inode a regular file and mark the filesystem not clean:
    `e2fsck -p` then stops with "UNEXPECTED INCONSISTENCY" (exit 4) instead of repairing."""
    spec = ext_at(image, offset)
    run(["debugfs", "-w", "-R", "sif <2> mode 0100644", spec])
    run(["debugfs", "-w", "-R", "ssv state 0", spec])


# ------------------------------------------------------------------------------------ the cases

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    description: str
    size_mib: int
    build: "callable"            # build(image: Path) -> Expect
    sector: int = 512            # logical sector size of the device the disk is meant for


def _ext_partition(image: Path, case: str, number: int, first: int, last: int, fstype: str = "ext4",
                   **kw) -> Expect:
    marker = marker_text(case, number)
    mkfs_ext(image, first * 512, (last - first + 1) * 512, fstype=fstype, marker=marker, **kw)
    return Expect(number, first * 512, fstype, marker)


def build_random_first_mib(image: Path) -> Expect:
    """Random bytes (fixed seed) over the first MiB, an ext4 after it: no table, so no guess."""
    mkfs_ext(image, MiB, image.stat().st_size - MiB, marker="not to be found\n")
    put(image, 0, random.Random(0xD15C).randbytes(MiB))
    return Expect(step="partition", message=(UNRECOGNISED,))


def _absurd_gpt(image: Path, entries: int = 128, entry_size: int = 128) -> Expect:
    total = image_sectors(image)
    _ext_partition(image, "absurd", 1, 2048, total - 2048)
    write_gpt(image, [GptPart(2048, total - 2048)], entries=entries, entry_size=entry_size)
    return Expect(step="partition", message=(UNRECOGNISED, f"claims {entries} entries of {entry_size} bytes"))


def build_gpt_absurd_entry_count(image: Path) -> Expect:
    """Both GPT headers valid (CRCs right) but claiming 2^31 - 1 entries (256 GiB of them):
    libparted checksummed gigabytes of memory for minutes before the core refused such headers."""
    return _absurd_gpt(image, entries=0x7FFFFFFF)


def build_gpt_absurd_entry_size(image: Path) -> Expect:
    """Both GPT headers valid but each entry 256 MiB long."""
    return _absurd_gpt(image, entry_size=256 * MiB)


def build_gpt_zero_entries(image: Path) -> Expect:
    """Both GPT headers valid but claiming 0 entries: libparted 3.5 asserts in ped_malloc(0) and
    aborts the process. Only the crash-isolated probe child dies; the guest fails cleanly."""
    total = image_sectors(image)
    _ext_partition(image, "gpt-zero-entries", 1, 2048, total - 2048)
    write_gpt(image, [GptPart(2048, total - 2048)], entries=0)
    return Expect(step="partition probe", message=("crashed (SIGABRT)", "the table is malformed"))


def build_past_end(image: Path) -> Expect:
    """msdos partition 1 (ext4 inside) ends 8 MiB past the end of the disk. libparted lists it as
    it is; the core refuses it (a loop device would read beyond the LV)."""
    total = image_sectors(image)
    _ext_partition(image, "past-end", 1, 2048, total - 1)
    write_mbr(image, [MbrPart(2048, total - 2048 + 16384)])
    return Expect(step="partition", message=(f"partition 1 ends past the end of the disk (sector {total + 16384} > {total})",))


def build_overlapping(image: Path) -> Expect:
    """msdos partition 2 starts 4 MiB inside partition 1, whose ext4 fills it: libparted lists both;
    partition 1 holds an intact ext4 and is the first one, so it is mounted."""
    total = image_sectors(image)
    half = total // 2
    expect = _ext_partition(image, "overlapping", 1, 2048, half - 1)
    mkfs_ext(image, (half + 8192) * 512, (total - half - 8192) * 512, marker="not partition 1\n")
    write_mbr(image, [MbrPart(2048, half - 2048), MbrPart(half - 8192, total - half + 8192)])
    return expect


def build_grown_gpt(image: Path) -> Expect:
    """A valid GPT of a disk 16 MiB smaller: the LV was grown, the backup header is not at the end.
    parted offers to fix that (a write); it must be refused and partition 2 used as it is."""
    total = image_sectors(image)
    old_total = total - 16 * MiB // 512
    expect = _ext_partition(image, "grown-gpt", 2, 10240, old_total - 2048)
    write_gpt(image, [GptPart(2048, 10239, name="bios"), GptPart(10240, old_total - 2048)], disk_sectors=old_total)
    return expect


def build_ebr_self_loop(image: Path) -> Expect:
    """msdos: ext4 in partition 1, an extended partition 2 whose EBR links to itself (a reader
    that follows the chain blindly never ends). libparted reads the logical partition once."""
    total = image_sectors(image)
    half = total // 2
    expect = _ext_partition(image, "ebr-self-loop", 1, 2048, half - 1)
    write_mbr(image, [MbrPart(2048, half - 2048), MbrPart(half, total - half, 0x05)])
    write_ebr(image, half, MbrPart(2048, 8192), MbrPart(0, total - half, 0x05))
    return expect


def build_zero_length(image: Path) -> Expect:
    """msdos partition 1 is 0 sectors long (type Linux), partition 2 holds the ext4."""
    total = image_sectors(image)
    expect = _ext_partition(image, "zero-length", 2, 4096, total - 1)
    write_mbr(image, [MbrPart(2048, 0), MbrPart(4096, total - 4096)])
    return expect


def build_ext2_no_journal(image: Path) -> Expect:
    """msdos partition 1 is ext2 (no journal): not chosen by default (ext4/ext3), an error that
    names it; with --partition 1 it is mounted as ext2 (see the ext2-partition-1 case)."""
    total = image_sectors(image)
    _ext_partition(image, "ext2", 1, 2048, total - 1, fstype="ext2")
    write_mbr(image, [MbrPart(2048, total - 2048)])
    return Expect(step="partition", message=(NO_EXT, "1:ext2"))


def build_ext2_partition_1(image: Path) -> Expect:
    total = image_sectors(image)
    expect = _ext_partition(image, "ext2-partition-1", 1, 2048, total - 1, fstype="ext2")
    write_mbr(image, [MbrPart(2048, total - 2048)])
    return dataclasses.replace(expect, options=("--partition", "1"))


def build_btrfs_first(image: Path) -> Expect:
    """GPT: btrfs in partition 1, ext4 in partition 2: the ext4 is chosen."""
    total = image_sectors(image)
    btrfs_end = 2048 + 24 * MiB // 512 - 1
    mkfs_btrfs(image, 2048 * 512, 24 * MiB)
    expect = _ext_partition(image, "btrfs-first", 2, btrfs_end + 1, total - 2048)
    write_gpt(image, [GptPart(2048, btrfs_end, name="data"), GptPart(btrfs_end + 1, total - 2048)])
    return expect


def build_fs_larger_than_partition(image: Path) -> Expect:
    """msdos partition 1 holds 8 MiB but the ext4 in it claims 16 MiB."""
    mkfs_ext(image, MiB, 16 * MiB, marker="too big\n")
    write_mbr(image, [MbrPart(2048, 8 * MiB // 512)])
    return Expect(step="partition", message=("claims 16777216 bytes but its partition holds 8388608",))


def build_fsck_unrepairable(image: Path) -> Expect:
    """msdos partition 1: an ext4 whose root inode is a regular file, marked not clean."""
    total = image_sectors(image)
    _ext_partition(image, "fsck", 1, 2048, total - 1)
    break_root_inode(image, 2048 * 512)
    write_mbr(image, [MbrPart(2048, total - 2048)])
    return Expect(step="journal replay", message=("exited 4", "Root inode is not a directory", "UNEXPECTED INCONSISTENCY"))


def build_luks(image: Path) -> Expect:
    """GPT: partition 1 is LUKS2 (header only, never opened), nothing else."""
    total = image_sectors(image)
    first, last = 2048, total - 2048 - 1
    with tempfile.TemporaryDirectory(prefix="hostile-luks-") as tmp:
        key = Path(tmp, "key")
        key.write_bytes(b"guest secret\n")
        part = Path(tmp, "luks.img")
        with open(part, "wb") as f:
            f.truncate((last - first + 1) * 512)
        run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
             "--pbkdf-force-iterations", "1000", "--key-file", str(key), str(part)])
        if part.stat().st_size != (last - first + 1) * 512:
            raise guestdisks.FixtureError("cryptsetup changed the size of the LUKS partition image")
        guestdisks._copy_into(part, image, first * 512)
    write_gpt(image, [GptPart(first, last, LUKS, "crypt")])
    return Expect(step="partition", message=(NO_EXT, "1:unknown"))


def build_gpt_4k(image: Path) -> Expect:
    """GPT of a disk with 4096-byte logical sectors (header at byte 4096, entries at 8192), ext4
    with 4 KiB blocks in partition 1 at LBA 256 (byte 1 MiB). Only a 4096-byte-sector device reads
    it right (SectorVG); as 512-byte sectors it is no table at all."""
    total = image_sectors(image, 4096)
    marker = marker_text("gpt-4k", 1)
    mkfs_ext(image, 256 * 4096, (total - 256 - 8) * 4096, marker=marker, block_size=4096)
    write_gpt(image, [GptPart(256, total - 8 - 1)], sector=4096)
    return Expect(1, 256 * 4096, "ext4", marker)


CASES = {c.name: c for c in [
    Case("random-first-mib", "random bytes in the first MiB", 16, build_random_first_mib),
    Case("gpt-absurd-entry-count", "GPT claiming 2^31-1 entries", 16, build_gpt_absurd_entry_count),
    Case("gpt-absurd-entry-size", "GPT with 256 MiB entries", 16, build_gpt_absurd_entry_size),
    Case("gpt-zero-entries", "GPT claiming 0 entries (libparted aborts)", 16, build_gpt_zero_entries),
    Case("past-end", "partition ending past the disk's end", 16, build_past_end),
    Case("overlapping", "overlapping partitions", 16, build_overlapping),
    Case("grown-gpt", "GPT of a smaller disk (grown LV)", 32, build_grown_gpt),
    Case("ebr-self-loop", "msdos extended partition linking to itself", 16, build_ebr_self_loop),
    Case("zero-length", "0-sector partition before the ext4", 16, build_zero_length),
    Case("ext2-no-journal", "ext2 without journal, default choice", 16, build_ext2_no_journal),
    Case("ext2-partition-1", "ext2 without journal, --partition 1", 16, build_ext2_partition_1),
    Case("btrfs-first", "btrfs partition before the ext4 one", 48, build_btrfs_first),
    Case("fs-larger-than-partition", "filesystem larger than its partition", 20, build_fs_larger_than_partition),
    Case("fsck-unrepairable", "ext4 that e2fsck -p will not repair", 16, build_fsck_unrepairable),
    Case("luks", "a LUKS partition and nothing else", 32, build_luks),
    Case("gpt-4k", "GPT on a 4096-byte-sector disk", 32, build_gpt_4k, sector=4096),
]}


# ------------------------------------------------------------------------------ in the VM (root)

class SectorVG(guestdisks.GuestVG):
    """A GuestVG on a loop PV with `sector_size`-byte logical sectors: its LVs and their snapshots
    have them too (device-mapper takes the largest logical block size of what lies below)."""

    def __init__(self, vg: str, *, sector_size: int = 4096, **kw):
        super().__init__(vg, **kw)
        self.sector_size = sector_size

    def create(self) -> "SectorVG":
        if run(["vgs", self.vg], check=False).returncode == 0:
            raise guestdisks.FixtureError(f"VG {self.vg} exists already")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.pv_image, "wb") as f:
            f.truncate(self.size_mib * MiB)
        self.pv_loop = guestdisks.out(["losetup", "--find", "--show", "--sector-size", str(self.sector_size),
                                       str(self.pv_image)]).strip()
        run(["pvcreate", "-q", "-y", self.pv_loop])
        run(["vgcreate", "-q", "-y", "-s", "4M", self.vg, self.pv_loop])
        return self


def logical_sector_size(device: str) -> int:
    return int(guestdisks.out(["blockdev", "--getss", device]).strip())


def add_image(gvg: guestdisks.GuestVG, lv: str, image: str | Path, expect: Expect | None = None) -> guestdisks.GuestDisk:
    """A guest LV in `gvg` holding exactly the bytes of `image` (its size: whole 4 MiB extents).
    Registered as one of the VG's guests, so leftovers() does not list it; remove it with
    gvg.remove_guest(lv). `GuestDisk.unchanged()` compares the LV with the image."""
    image = Path(image)
    size = image.stat().st_size
    if size % (4 * MiB):
        raise guestdisks.FixtureError(f"{image}: {size} bytes is not a whole number of 4 MiB extents")
    t0 = time.monotonic()
    run(["lvcreate", "-q", "-y", "-n", lv, "-L", f"{size // MiB}M", gvg.vg])
    g = guestdisks.GuestDisk(
        vg=gvg.vg, lv=lv, layout="hostile", size_mib=size // MiB,
        partition=expect.number if expect else None, offset=expect.offset if expect else None,
        fs_size=None, fstype=expect.fs if expect else None, dirty=False, seed=lv, fs_uuid=None,
        swap_partitions=[], tree={}, image=str(image))
    gvg.guests[lv] = g          # from here on destroy() expects it, whatever fails next
    guestdisks._write_image_to_device(image, g.lv_path)
    gvg.timings[lv] = time.monotonic() - t0
    return g


# Guest content: what a hostile guest can put into its own filesystem --------------------------------

@dataclasses.dataclass
class Content:
    """What hostile_content() made (paths relative to the filesystem root)."""
    saved: dict                 # path -> "dir" | "file" | "symlink" | "fifo": what a backup must hold
    symlinks: dict              # path -> target (str, as the guest wrote it)
    devices: list               # device nodes (never usable, never saved)
    setuid: list                # setuid/setgid programs (never runnable)
    scripts: list               # executable scripts (never runnable)
    bad_names: list             # bytes paths that are not UTF-8 (reported, not saved)
    bad_name_entries: int       # entries lost with them (a directory counts its contents too)
    file_data: dict             # path -> bytes of regular files


def hostile_content(root: str | Path, host_block_device: tuple[int, int]) -> Content:
    """Populate `root` (a directory, later fed to mke2fs -d) like a hostile guest would:
    setuid/setgid copies of a real program, a script, device nodes (one pointing at a host block
    device), a fifo, symlinks to /etc/shadow, ../../.., / and an escaping directory, a symlink loop,
    names with a newline, a tab, bytes that are not UTF-8 (also in a symlink target)."""
    root = Path(root)
    c = Content(saved={"": "dir"}, symlinks={}, devices=[], setuid=[], scripts=[], bad_names=[],
                bad_name_entries=0, file_data={})

    def mkdir(rel):
        (root / rel).mkdir()
        c.saved[rel] = "dir"

    def file(rel, data: bytes, mode=0o644):
        p = root / rel
        p.write_bytes(data)
        os.chmod(p, mode)
        c.saved[rel] = "file"
        c.file_data[rel] = data

    def symlink(rel, target):
        os.symlink(target, root / rel)
        c.saved[rel] = "symlink"
        c.symlinks[rel] = target

    for d in ("bin", "dev", "etc", "links", "names"):
        mkdir(d)
    file("etc/shadow", b"root:guest-hash-not-the-host's:19000:0:99999:7:::\n", 0o640)
    program = Path(shutil.which("id") or "/usr/bin/id").read_bytes()
    file("bin/suid-id", program, 0o4755)
    file("bin/sgid-id", program, 0o2755)
    c.setuid += ["bin/suid-id", "bin/sgid-id"]
    file("bin/run-me.sh", b"#!/bin/sh\necho escaped > /tmp/hostile-guest-ran\n", 0o755)
    c.scripts.append("bin/run-me.sh")
    for rel, kind, (major, minor) in [("dev/null", "c", (1, 3)), ("dev/mem", "c", (1, 1)),
                                      ("dev/host-disk", "b", host_block_device)]:
        os.mknod(root / rel, 0o666 | (0o020000 if kind == "c" else 0o060000), os.makedev(major, minor))
        c.devices.append(rel)
    os.mkfifo(root / "dev/fifo", 0o644)
    c.saved["dev/fifo"] = "fifo"
    symlink("links/shadow", "/etc/shadow")
    symlink("links/up", "../../..")
    symlink("links/root", "/")
    symlink("links/escape-dir", "../../../../../../../etc")
    symlink("links/loop-a", "loop-b")
    symlink("links/loop-b", "loop-a")
    symlink("links/self", "self")
    file("names/new\nline.txt", b"a name with a newline\n")
    file("names/tab\tand space.txt", b"a name with a tab\n")
    file("names/caf\u00e9 \u2603.txt", b"valid UTF-8\n")
    broken = os.fsencode(root) + b"/names/"
    with open(broken + b"latin1-\xe9t\xe9.txt", "wb") as f:
        f.write(b"not UTF-8\n")
    os.mkdir(broken + b"dir-\xff\xfe")
    for i in (1, 2):
        with open(broken + b"dir-\xff\xfe/inside-%d.txt" % i, "wb") as f:
            f.write(b"lost with its directory\n")
    os.symlink(b"target-\xff", broken + b"bad-target")
    c.bad_names += [b"names/latin1-\xe9t\xe9.txt", b"names/dir-\xff\xfe", b"names/bad-target"]
    c.bad_name_entries = 1 + 3 + 1
    return c


def content_image(image: str | Path, content_root: str | Path, marker: str) -> Expect:
    """msdos disk: ext4 in partition 1 made from `content_root` (mke2fs -d keeps modes, owners,
    device nodes, fifos and symlinks as they are)."""
    image = Path(image)
    total = image_sectors(image)
    Path(content_root, MARKER).write_text(marker)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-E", f"offset={2048 * 512}", "-d", str(content_root),
         str(image), f"{(total - 2048) * 512 // 1024}k"])
    write_mbr(image, [MbrPart(2048, total - 2048)])
    return Expect(1, 2048 * 512, "ext4", marker)


# Many files, deep trees -----------------------------------------------------------------------------

@dataclasses.dataclass
class BigTree:
    files: int
    per_dir: int
    depth: int

    def file_name(self, n: int) -> str:
        return f"many/d{n // self.per_dir:02d}/f{n % self.per_dir:05d}.txt"

    @staticmethod
    def data(n: int) -> bytes:
        return b"%07d\n" % n

    @property
    def deep_dir(self) -> str:
        return "deep/" + "/".join(f"{i:03d}" for i in range(1, self.depth + 1))


def make_big_tree_lv(gvg: guestdisks.GuestVG, lv: str, mnt: str | Path, *, files: int = 100_000,
                     per_dir: int = 10_000, depth: int = 200, size_mib: int = 128) -> BigTree:
    """A guest LV with ext4 on the whole LV holding `files` small files (`per_dir` to a directory)
    and a directory chain `depth` levels deep. Built through the kernel (mounted by the test at
    `mnt`), the files written by `split` - one process, no per-file interpreter work: mke2fs -d
    and anything in Python take many minutes for this under emulation. The files live in their
    inodes (inline_data), so they take no blocks."""
    tree = BigTree(files, per_dir, depth)
    run(["lvcreate", "-q", "-y", "-n", lv, "-L", f"{size_mib}M", gvg.vg])
    gvg.guests[lv] = guestdisks.GuestDisk(
        vg=gvg.vg, lv=lv, layout="hostile-big", size_mib=size_mib, partition=None, offset=0, fs_size=None,
        fstype="ext4", dirty=False, seed=lv, fs_uuid=None, swap_partitions=[], tree={}, image="")
    device = f"/dev/{gvg.vg}/{lv}"
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", str(files + 1000), "-O", "inline_data",
         "-E", "lazy_itable_init=0,lazy_journal_init=0", device])
    mnt = Path(mnt)
    mnt.mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "ext4", device, str(mnt)])
    try:
        for first in range(0, files, per_dir):
            d = mnt / os.path.dirname(tree.file_name(first))
            d.mkdir(parents=True)
            count = min(per_dir, files - first)
            data = b"".join(tree.data(n) for n in range(first, first + count))
            p = subprocess.run(["split", "-b", "8", "-a", "5", "-d", "--additional-suffix=.txt", "-", "f"],
                               input=data, cwd=d, capture_output=True)
            if p.returncode != 0:
                raise guestdisks.FixtureError(f"split in {d}: {p.stderr.decode(errors='replace')}")
        deep = mnt / tree.deep_dir
        deep.mkdir(parents=True)
        (deep / "bottom.txt").write_bytes(b"200 levels down\n")
    finally:
        run(["umount", str(mnt)])
        mnt.rmdir()
    return tree
