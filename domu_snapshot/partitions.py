"""Finding the filesystem inside a guest disk with pyparted, read-only.

Partition tables are written by guests, so they are untrusted input to
native code (libparted). `probe_isolated` runs the probe in a short-lived
child process: a crash there fails one guest instead of killing a
long-lived caller such as bareos-fd. The child prints a JSON description;
`choose` (pure Python, no device access) picks the partition to mount.

Run as `python -m domu_snapshot.partitions DEVICE` to see the probe.
"""

import dataclasses
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib

from . import commands
from .errors import ProbeError

EXT_TYPES = ("ext2", "ext3", "ext4")


# ---------------------------------------------------------------- child side

# libparted's exception option bits (PedExceptionOption).
_OPT_NO = 0x04
_OPT_RETRY = 0x10
_OPT_IGNORE = 0x20

# Messages of read errors libparted met during this probe (see _refuse_fixes).
_device_errors = []


def _refuse_fixes(exc_type, options, message):
    """libparted asks before "fixing" tables (e.g. a GPT backup header not at
    the end of a grown LV). Fixing writes; we only ever read: answer Ignore
    when offered, No when asked yes/no, otherwise Cancel.

    A read error (libparted offers Retry) is never ignored: libparted would go on
    without the sectors it could not read, e.g. lose the logical partitions behind
    an unreadable EBR, and a disk would look like swap only. It is cancelled and
    remembered, and the probe reports it as its error."""
    import parted

    if options & _OPT_RETRY:
        _device_errors.append(" ".join(str(message).split()))
        return parted.EXCEPTION_RESOLVE_CANCEL
    if options & _OPT_IGNORE:
        return parted.EXCEPTION_RESOLVE_IGNORE
    if options & _OPT_NO:
        return parted.EXCEPTION_RESOLVE_NO
    return parted.EXCEPTION_RESOLVE_CANCEL


def probe(path):
    """Describe the partition table on `path` (a dict); never commits anything."""
    import parted

    parted.register_exn_handler(_refuse_fixes)
    device = parted.getDevice(path)
    result = {
        "path": path,
        "sector_size": device.sectorSize,
        "length": device.length,
        "label": None,
        "partitions": [],
        "error": None,
        "read_error": False,  # the error is the device's (I/O), not the table's
    }
    del _device_errors[:]
    try:
        absurd = _absurd_gpt_header(path, device.sectorSize, device.length)
        if absurd:
            result["error"] = absurd
            return result
        try:
            disk = parted.newDisk(device)
        except Exception as exc:  # pyparted raises several unrelated types here
            result["error"] = _read_error() or _first_line(exc) or type(exc).__name__
            result["read_error"] = bool(_device_errors)
            return result
        result["label"] = disk.type
        for part in disk.partitions:
            geometry = part.geometry
            fs = part.fileSystem.type if part.fileSystem else None
            result["partitions"].append({
                "number": part.number,
                "kind": _kind(part.type),
                "start": geometry.start,
                "length": geometry.length,
                "fs": fs,
            })
        if _device_errors:
            # a table read in part (or a filesystem not recognised for a read error) is no table
            result["error"] = _read_error()
            result["read_error"] = True
            result["partitions"] = []
        return result
    finally:
        # libparted caches devices by /dev/dm-N; minors are reused after
        # lvremove, and a stale entry has crashed a later newDisk.
        device.removeFromCache()


# The Linux kernel refuses GPT entry arrays above KMALLOC_MAX_SIZE (4 MiB) and entries of
# another size than 128 bytes (block/partitions/efi.c). libparted has no such bound: a header
# with valid CRCs claiming 2^31 entries made it checksum gigabytes for minutes.
_GPT_ARRAY_MAX = 4 * 1024 * 1024


def _absurd_gpt_header(path, sector_size, length):
    """Why a GPT header libparted would accept (signature and CRC valid) is absurd, or None."""
    for lba in (1, length - 1):
        try:
            with open(path, "rb") as handle:
                handle.seek(lba * sector_size)
                raw = handle.read(sector_size)
        except OSError:
            continue
        if len(raw) < 92 or raw[:8] != b"EFI PART":
            continue
        header_size, crc = struct.unpack_from("<II", raw, 12)
        if not 92 <= header_size <= len(raw):
            continue
        if zlib.crc32(raw[:16] + b"\0\0\0\0" + raw[20:header_size]) & 0xFFFFFFFF != crc:
            continue
        count, size = struct.unpack_from("<II", raw, 80)
        if size < 128 or size % 128 or count * size > _GPT_ARRAY_MAX:
            return (f"the GPT header at sector {lba} claims {count} entries of {size} bytes each: "
                    f"not a partition table (the Linux kernel refuses it too)")
    return None


def _read_error():
    if not _device_errors:
        return None
    more = f" (and {len(_device_errors) - 1} more)" if len(_device_errors) > 1 else ""
    return f"read error on the disk: {_device_errors[0]}{more}"


def _kind(part_type):
    import parted

    if part_type & parted.PARTITION_EXTENDED:
        return "extended"
    if part_type & parted.PARTITION_LOGICAL:
        return "logical"
    return "primary"


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m domu_snapshot.partitions DEVICE", file=sys.stderr)
        return 2
    json.dump(probe(argv[0]), sys.stdout)
    sys.stdout.write("\n")
    return 0


# --------------------------------------------------------------- parent side

def _python():
    """An interpreter for the probe child. Inside bareos-fd sys.executable is
    the daemon itself, not Python."""
    configured = os.environ.get("DOMU_SNAPSHOT_PROBE_PYTHON")
    if configured:
        return configured
    exe = sys.executable or ""
    if os.path.basename(exe).startswith("python") and os.access(exe, os.X_OK):
        return exe
    return shutil.which("python3", path=commands.TOOL_PATH) or "/usr/bin/python3"


# -I: no cwd, PYTHONPATH or user site on sys.path (a json.py planted there would run as root);
# the package is found through the directory passed explicitly (a venv, or bareos' module_path).
_CHILD = "import sys; sys.path.insert(0, sys.argv[1]); from domu_snapshot.partitions import main; sys.exit(main(sys.argv[2:]))"


def probe_argv(path):
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [_python(), "-I", "-c", _CHILD, package_parent, path]


def probe_isolated(path, timeout=60):
    """`probe(path)` in a child process; ProbeError if it fails or crashes."""
    try:
        proc = subprocess.run(probe_argv(path), capture_output=True, text=True, errors="replace",
                              env=commands.child_environment(), cwd="/", start_new_session=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise _too_slow(path, timeout) from None
    except OSError as exc:
        raise _not_started(exc) from None
    return _probe_output(path, proc.returncode, proc.stdout, proc.stderr)


def _too_slow(path, timeout):
    return ProbeError(f"reading the partition table of {path} took more than {timeout} s",
                      "the table may be malformed; choose the partition with partition=N or exclude the guest")


def _not_started(exc):
    return ProbeError(f"the partition-table reader could not start ({exc})",
                      "set DOMU_SNAPSHOT_PROBE_PYTHON to a python3 with pyparted")


def _probe_output(path, returncode, stdout, stderr):
    """The probe's description from a finished child, or the ProbeError its end says."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        raise ProbeError(f"the partition-table reader crashed ({name}) on {path}: the table is malformed",
                         "inspect the disk by hand; the backup of this guest was not made")
    if returncode != 0:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {returncode}"
        raise ProbeError(f"reading the partition table of {path} failed: {detail}",
                         "check that pyparted is installed for this Python")
    try:
        return json.loads(stdout)
    except ValueError:
        raise ProbeError(f"the partition-table reader gave unreadable output for {path}",
                         "run `python3 -m domu_snapshot.partitions DEVICE` on the snapshot to see what it "
                         "prints; the backup of this guest was not made") from None


# The same child, started before its device exists: it loads Python, this module and libparted
# while the snapshot is being made, then reads the device path from stdin and probes it once.
# A crash still takes only that child; each probe gets a fresh one.
_WARM_CHILD = ("import sys; sys.path.insert(0, sys.argv[1]); from domu_snapshot.partitions import main; "
               "import parted; path = sys.stdin.readline().rstrip('\\n'); sys.exit(main([path]))")


class ProbeChild:
    """A probe child started ahead of its device (see _WARM_CHILD); one probe, then it is done."""

    def __init__(self):
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self._proc = None
        try:
            self._proc = subprocess.Popen([_python(), "-I", "-c", _WARM_CHILD, package_parent],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, errors="replace", env=commands.child_environment(), cwd="/",
                                          start_new_session=True, close_fds=True)
        except OSError:
            self._proc = None  # probe() falls back to a child of its own, which reports the error

    def probe(self, path, timeout=60):
        """`probe(path)` in this child; ProbeError as probe_isolated raises them."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            self._reap(proc)
            return probe_isolated(path, timeout)  # never started, or died waiting: a fresh one
        try:
            stdout, stderr = proc.communicate(path + "\n", timeout=timeout)
        except subprocess.TimeoutExpired:
            self._reap(proc)
            raise _too_slow(path, timeout) from None
        except BrokenPipeError:
            self._reap(proc)
            return probe_isolated(path, timeout)
        return _probe_output(path, proc.returncode, stdout, stderr)

    def close(self):
        """End an unused child (it is waiting for a path that will not come)."""
        proc, self._proc = self._proc, None
        self._reap(proc)

    @staticmethod
    def _reap(proc):
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError, OSError):
            pass


@dataclasses.dataclass
class Choice:
    number: int  # 0 = the filesystem covers the whole device (no table)
    fs: str
    offset: int  # bytes
    size: int  # bytes
    label: str
    sector_size: int

    def describe(self):
        where = "whole disk" if self.number == 0 else f"partition {self.number} ({self.label})"
        return f"{where}, {self.fs} at byte {self.offset}"

    def where(self, device):
        """`device` and where on it, for messages: "vg/lv partition 1", "vg/lv (whole disk)"."""
        return f"{device} (whole disk)" if self.number == 0 else f"{device} partition {self.number}"


def _listing(partitions):
    shown = [f"{p['number']}:{p.get('fs') or 'unknown'}" for p in partitions if p.get("kind") != "extended"]
    return ", ".join(shown) or "none"


def choose(probed, partition="auto", filesystems=("ext4", "ext3")):
    """Pick the partition to mount from a probe result; ProbeError says why none fits.

    `partition`: "auto" (first partition, by number, whose filesystem is one of
    `filesystems`), "whole" or "0" (the filesystem covers the whole device, no table: `list`
    shows such a guest's partition as 0) or a partition number (1 and up); these two take any
    ext2/3/4 filesystem, and a filesystem of `filesystems` (xfs). "every": the list of the
    Choices of every partition (by number) whose filesystem is one of `filesystems`.
    """
    if not isinstance(probed, dict):
        raise ProbeError("the partition-table reader returned nothing usable")
    sector = probed.get("sector_size")
    length = probed.get("length")
    if not isinstance(sector, int) or sector <= 0 or not isinstance(length, int) or length <= 0:
        raise ProbeError("the device reports no usable size")
    if probed.get("read_error"):
        raise ProbeError(probed["error"], "see dmesg for the device's errors; the backup of this guest was not made")
    if probed.get("error"):
        raise ProbeError(f"no partition table or filesystem recognised: {probed['error']}",
                         "if the guest uses a filesystem this tool cannot read (LUKS, LVM inside...), exclude it "
                         "(XFS is read with filesystems = xfs)")
    label = probed.get("label") or "unknown"
    raw = probed.get("partitions") or []
    parts = []
    for p in raw:
        if not isinstance(p, dict):
            continue
        number, start, plen = p.get("number"), p.get("start"), p.get("length")
        if not all(isinstance(v, int) for v in (number, start, plen)):
            continue
        parts.append(dict(p))
    parts.sort(key=lambda p: p["number"])
    # libparted's "loop" label: a filesystem on the whole device, no table.
    whole = label == "loop"

    def to_choice(p):
        if p["start"] < 0 or p["length"] <= 0:
            raise ProbeError(f"partition {p['number']} has no usable extent (start {p['start']}, length {p['length']})")
        if p["start"] + p["length"] > length:
            raise ProbeError(
                f"partition {p['number']} ends past the end of the disk "
                f"(sector {p['start'] + p['length']} > {length}): the table is damaged or the LV was shrunk",
                "fix the table inside the guest, or exclude the guest")
        number = 0 if whole else p["number"]
        return Choice(number, p.get("fs"), p["start"] * sector, p["length"] * sector, label, sector)

    # A partition named by number may hold any ext (as before) or any filesystem selected.
    named_ok = EXT_TYPES + tuple(fs for fs in filesystems if fs not in EXT_TYPES)
    if str(partition) in ("whole", "0"):
        if whole and parts and parts[0].get("fs") in named_ok:
            return to_choice(parts[0])
        raise ProbeError(f"partition=whole, but the disk holds a {label} table, not a filesystem")
    if str(partition).isdigit():
        wanted = int(partition)
        for p in parts:
            if p["number"] == wanted and p.get("kind") != "extended":
                if p.get("fs") not in named_ok:
                    accepted = "ext2/3/4" + "".join(f" or {fs}" for fs in named_ok[len(EXT_TYPES):])
                    raise ProbeError(f"partition {wanted} holds {p.get('fs') or 'no recognised filesystem'}, "
                                     f"not {accepted}", f"partitions found: {_listing(parts)}")
                return to_choice(p)
        raise ProbeError(f"partition {wanted} does not exist ({label} table; partitions found: {_listing(parts)})")
    if str(partition) == "every":
        # guest_filesystems = all: each of them (lifecycle mounts one per path), [] when none
        return [to_choice(p) for p in parts
                if p.get("kind") != "extended" and p.get("fs") in filesystems and p["length"] > 0]
    for p in parts:
        if p.get("kind") == "extended" or p.get("fs") not in filesystems:
            continue
        if p["length"] <= 0:
            continue
        return to_choice(p)
    raise ProbeError(
        f"no {'/'.join(filesystems)} filesystem found ({label} table; partitions found: {_listing(parts)})",
        "set partition=N for this guest if the filesystem is there, or exclude the guest")


def left_out(probed, filesystems, also=()):
    """"partition N (fs)" of each partition that guest_filesystems = all does not mount (not one of
    `filesystems`, not an extended partition, not a number in `also`: the guest VG's PV)."""
    parts = sorted((p for p in (probed.get("partitions") or []) if isinstance(p, dict)
                    and isinstance(p.get("number"), int) and p.get("kind") != "extended"),
                   key=lambda p: p["number"])
    return [f"partition {p['number']} ({p.get('fs') or 'no recognised filesystem'})" for p in parts
            if p.get("fs") not in filesystems and p["number"] not in also]


def only_swap(probed):
    """True when the disk holds swap and nothing else: nothing to back up at file level."""
    parts = [p for p in (probed.get("partitions") or []) if isinstance(p, dict) and p.get("kind") != "extended"]
    return bool(parts) and all(str(p.get("fs") or "").startswith("linux-swap") for p in parts)


if __name__ == "__main__":
    sys.exit(main())
