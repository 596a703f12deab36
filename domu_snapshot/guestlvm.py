"""LVM inside a guest disk: the guest's own VG on the snapshot, renamed, activated, mounted.

A guest installed with "guided LVM" (Debian, Ubuntu) or by RHEL's installer has a partition that
is an LVM physical volume holding the guest's VG. On the snapshot's (writable) loop device over
that partition:

1. the PV's metadata is read here, in Python and read-only (`read_metadata`): the guest's VG name,
   its PVs and LVs. A VG with more PVs than this one partition is refused before anything is
   written (its other PVs are on disks not snapshotted with it).
2. `vgimportclone` renames the VG to a name of ours (`inner_vg_name`: INNER_PREFIX, a hash of the
   host's vg/lv, the host LV's name) and gives it new UUIDs: on the snapshot only. Guest VG names
   clash (every Ubuntu guest has `ubuntu-vg`, a guest's may be named like a host VG) and cloned
   guests share UUIDs; after the import the host never sees two VGs of one name from us.
3. the chosen LV is activated, its journal replayed (fsck.replay on the inner LV: it lives on the
   snapshot) and it is mounted read-only at the guest's path.

Every LVM command here is limited to the loop device with `--devices` (LVM 2.03.12 and later):
it never scans the host's devices, never sees an origin or a host VG of the same name.

The host's udev (69-lvm.rules) runs `pvscan --cache --autoactivation event` on a loop device's
first change event and, when the VG is complete, `vgchange -aay <guest VG>` under the guest's
ORIGINAL name. That cannot be prevented from here without changing the host's lvm.conf (a loop
device must be writable for vgimportclone, and udev reads the system's configuration, not our
--devices). So after attaching, udev is settled and, when device-mapper devices hold the loop
device (the host auto-activated the guest's VG), they are deactivated, limited to that loop
device, before the import. Teardown (`deactivate`) does the same from the system alone: any
device-mapper device holding a loop device over one of our snapshots is deactivated before the
loop device is detached, whatever name its VG has.
"""

import dataclasses
import hashlib
import json
import os
import re
import struct

from . import commands

INNER_PREFIX = "domusnap_"  # VG names we give guest VGs; recognisable, never an installer's
TAG = "domu_snapshot_inner"  # tag of a guest VG we renamed (on the snapshot only)
MODES = ("auto", "yes", "no")
# segment types of an LV we can activate and mount (linear is "striped" with one stripe)
MOUNTABLE_SEGTYPES = frozenset({"striped", "linear", "thin"})
VG_NAME_MAX = 64  # ours; the dm name of <vg>-<lv> must stay within lvm.DM_NAME_MAX
EVERY_LV_MAX = 16  # guest_filesystems = all: LVs of a guest VG activated at most (a guest is untrusted)

_LABEL = b"LABELONE"
_LABEL_TYPE = b"LVM2 001"
_MDA_MAGIC = b" LVM2 x[5A%r0N*>"
_MDA_HEADER_SIZE = 512
_METADATA_MAX = 16 * 1024 * 1024  # a guest's PV is untrusted: bounded reads
_NAME = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")


def lvm_name(name):
    """Whether `name` is a VG or LV name LVM accepts (its characters; never "." or "..")."""
    return bool(_NAME.match(name)) and name not in (".", "..")


class MetadataError(Exception):
    """The PV's label or metadata could not be read or makes no sense."""


# ------------------------------------------------------------------ on-disk metadata (read-only)

def has_pv_label(device, offset=0):
    """Whether an LVM2 PV label is in the first four sectors at `offset` of `device`."""
    try:
        return _label(_read(device, offset, 2048)) is not None
    except (OSError, MetadataError):
        return False


def _read(device, offset, size):
    with open(device, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)


def _label(head):
    for sector in range(4):
        raw = head[sector * 512:(sector + 1) * 512]
        if len(raw) == 512 and raw[:8] == _LABEL and raw[24:32] == _LABEL_TYPE:
            return sector, struct.unpack_from("<I", raw, 20)[0]
    return None


@dataclasses.dataclass
class GuestLV:
    name: str
    visible: bool
    segtypes: tuple
    # where its first segment starts, for a linear one: (PV key in the metadata, extent), else None
    start: tuple = None
    start_extents: int = 0  # that segment's length in extents

    @property
    def mountable(self):
        # a crafted name never reaches an LVM command or a path (mount.every_path)
        return self.visible and bool(self.segtypes) and all(s in MOUNTABLE_SEGTYPES for s in self.segtypes) \
            and lvm_name(self.name)


@dataclasses.dataclass
class GuestVG:
    name: str
    pv_count: int
    lvs: list  # GuestLV, in the metadata's order
    exported: bool = False
    uuid: str = ""  # the VG's id, without dashes
    pv_ids: tuple = ()  # its PVs' ids, without dashes
    this_pv: str = ""  # the id of the PV this was read from
    extent_size: int = 0  # sectors of 512 bytes
    pe_starts: dict = dataclasses.field(default_factory=dict)  # PV id -> (key in the metadata, pe_start sectors)

    def lv_offset(self, lv_name):
        """The byte offset, within the PV this was read from, of LV `lv_name`'s first bytes, when
        its first segment is linear, on that PV and at least 64 KiB long (a superblock can be
        read there without activating it: `list`); else None."""
        lv = next((lv for lv in self.lvs if lv.name == lv_name), None)
        found = self.pe_starts.get(self.this_pv)
        if lv is None or lv.start is None or found is None or self.extent_size <= 0:
            return None
        key, pe_start = found
        pv_key, extent = lv.start
        if pv_key != key or lv.start_extents * self.extent_size * 512 < 65536:
            return None
        return (pe_start + extent * self.extent_size) * 512


def _bare_id(value):
    return str(value or "").replace("-", "")


def read_metadata(device, offset=0):
    """The guest VG described by the PV at `offset` of `device` (GuestVG); MetadataError if none."""
    head = _read(device, offset, 2048)
    found = _label(head)
    if found is None:
        raise MetadataError("no LVM2 label")
    sector, pvh = found
    header = _read(device, offset + sector * 512 + pvh, 512)
    if len(header) < 48:
        raise MetadataError("truncated PV header")
    pos = 32 + 8  # pv_uuid, device_size
    lists = [[], []]  # data areas, then metadata areas: (offset, size) lists ended by a zero entry
    for which in (0, 1):
        while True:
            if pos + 16 > len(header):
                raise MetadataError("PV header without end")
            area_offset, area_size = struct.unpack_from("<QQ", header, pos)
            pos += 16
            if area_offset == 0:
                break
            lists[which].append((area_offset, area_size))
    if not lists[1]:
        raise MetadataError("the PV holds no metadata area (its VG's metadata is on another PV)")
    mda_offset, mda_size = lists[1][0]
    guest_vg = parse_vg(_metadata_text(device, offset + mda_offset, mda_size))
    guest_vg.this_pv = header[:32].decode("ascii", "replace")
    return guest_vg


def _metadata_text(device, mda_start, mda_size):
    mda = _read(device, mda_start, _MDA_HEADER_SIZE)
    if len(mda) < 64 or mda[4:20] != _MDA_MAGIC:
        raise MetadataError("no LVM2 metadata area header")
    size = struct.unpack_from("<Q", mda, 32)[0] or mda_size
    rl_offset, rl_size = struct.unpack_from("<QQ", mda, 40)
    if rl_offset == 0 or rl_size == 0:
        raise MetadataError("the metadata area is empty (a PV without a VG)")
    if rl_size > _METADATA_MAX or rl_offset >= size or size > 1 << 40:
        raise MetadataError("metadata location out of range")
    first = min(rl_size, size - rl_offset)
    text = _read(device, mda_start + rl_offset, first)
    if first < rl_size:  # the metadata buffer is circular: the rest follows the header
        text += _read(device, mda_start + _MDA_HEADER_SIZE, rl_size - first)
    return text.rstrip(b"\0").decode("utf-8", errors="replace")


_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\]|\\.)*"|[{}\[\]=,]|[^\s{}\[\]=,"#]+', re.S)


def parse_text(text):
    """LVM's metadata text format (`name = value`, `name { ... }`, lists) as nested dicts."""
    tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("#")]
    pos = 0

    def value():
        nonlocal pos
        token = tokens[pos]
        pos += 1
        if token == "[":
            items = []
            while tokens[pos] != "]":
                if tokens[pos] != ",":
                    items.append(value())
                else:
                    pos += 1
            pos += 1
            return items
        if token.startswith('"'):
            return re.sub(r"\\(.)", r"\1", token[1:-1])
        try:
            return int(token)
        except ValueError:
            return token

    def section(depth):
        nonlocal pos
        if depth > 16:
            raise MetadataError("metadata nested too deep")
        items = {}
        while pos < len(tokens) and tokens[pos] != "}":
            name = tokens[pos]
            pos += 1
            if tokens[pos] == "{":
                pos += 1
                items[name] = section(depth + 1)
                if tokens[pos] != "}":
                    raise MetadataError("unbalanced braces")
                pos += 1
            elif tokens[pos] == "=":
                pos += 1
                items[name] = value()
            else:
                raise MetadataError(f"unexpected {tokens[pos]!r} after {name!r}")
        return items

    try:
        parsed = section(0)
    except IndexError:
        raise MetadataError("metadata text ends early") from None
    if pos != len(tokens):
        raise MetadataError("unbalanced braces")
    return parsed


def parse_vg(text):
    """GuestVG from the metadata text of a PV."""
    parsed = parse_text(text)
    vgs = [(name, body) for name, body in parsed.items() if isinstance(body, dict)]
    if len(vgs) != 1:
        raise MetadataError(f"metadata describes {len(vgs)} VGs")
    name, body = vgs[0]
    pvs = body.get("physical_volumes")
    if not isinstance(pvs, dict) or not pvs:
        raise MetadataError(f"VG {name} lists no physical volumes")
    lvs = []
    for lv_name, lv in (body.get("logical_volumes") or {}).items():
        if not isinstance(lv, dict):
            continue
        status = lv.get("status") if isinstance(lv.get("status"), list) else []
        segments = [seg for key, seg in sorted(lv.items()) if key.startswith("segment") and isinstance(seg, dict)]
        segtypes = tuple(str(seg.get("type", "")) for seg in segments)
        start, length = None, 0
        first = next((seg for seg in segments if seg.get("start_extent") == 0), None)
        stripes = first.get("stripes") if first else None
        if first and first.get("type") == "striped" and first.get("stripe_count") == 1 and isinstance(stripes, list) \
                and len(stripes) == 2 and isinstance(stripes[0], str) and isinstance(stripes[1], int) \
                and stripes[1] >= 0 and isinstance(first.get("extent_count"), int):
            start, length = (stripes[0], stripes[1]), first["extent_count"]
        lvs.append(GuestLV(lv_name, "VISIBLE" in status, segtypes, start, length))
    status = body.get("status") if isinstance(body.get("status"), list) else []
    pv_ids = tuple(_bare_id(pv.get("id")) for pv in pvs.values() if isinstance(pv, dict))
    pe_starts = {_bare_id(pv.get("id")): (key, pv["pe_start"]) for key, pv in pvs.items()
                 if isinstance(pv, dict) and isinstance(pv.get("pe_start"), int) and pv["pe_start"] >= 0}
    extent_size = body.get("extent_size") if isinstance(body.get("extent_size"), int) else 0
    return GuestVG(name, len(pvs), lvs, exported="EXPORTED" in status, uuid=_bare_id(body.get("id")),
                   pv_ids=pv_ids, extent_size=max(extent_size, 0), pe_starts=pe_starts)


# --------------------------------------------------------------------------------- choices

def inner_vg_name(vg, lv):
    """The name the guest VG on the snapshot of host LV vg/lv gets: ours, unique per host LV,
    recognisable (the host LV's name in it), within LVM's character set and VG_NAME_MAX."""
    digest = hashlib.sha256(f"{vg}/{lv}".encode()).hexdigest()[:8]
    tail = re.sub(r"[^A-Za-z0-9+_.-]", "_", lv)
    return f"{INNER_PREFIX}{digest}_{tail}"[:VG_NAME_MAX]


def is_inner_vg(name):
    return name.startswith(INNER_PREFIX)


def candidates(guest_vg, wanted="auto"):
    """Names of the guest LVs to try, in order: `wanted` (an LV name) alone, or (auto) every
    mountable LV, root-like names first, swap-like names last, else the metadata's order."""
    if wanted and wanted != "auto":
        return [lv.name for lv in guest_vg.lvs if lv.name == wanted and lv.mountable]

    def rank(item):
        index, lv = item
        name = lv.name.lower()
        return (0 if "root" in name else 2 if "swap" in name else 1, index)

    ordered = sorted(enumerate(lv for lv in guest_vg.lvs if lv.mountable), key=rank)
    return [lv.name for _index, lv in ordered]


def refusal(guest_vg, where, found=1):
    """(message, hint) when the guest VG on `where` must not be brought up, else None. `found`:
    how many of its PVs are on the disks snapshotted with it (the guest's disks)."""
    if not lvm_name(guest_vg.name):
        return (f"{where} holds a guest VG whose name {guest_vg.name!r} is not an LVM name",
                "set guest_lvm = no for this guest")
    if guest_vg.pv_count > found:
        return (f"{where} holds one PV of guest VG {guest_vg.name}, which has {guest_vg.pv_count} PVs; "
                f"{'only ' + str(found) + ' of them are' if found > 1 else 'the others are not'} on disks "
                f"snapshotted with it, so its LVs are incomplete (refused, nothing of this VG was activated)",
                "make all disks holding the VG's PVs disks of one guest (one libvirt domain or Proxmox VM: "
                "they are then snapshotted together and the VG is brought up from all of them), or set "
                "guest_lvm = no to back up its first partition instead")
    if not candidates(guest_vg):
        return (f"guest VG {guest_vg.name} on {where} has no LV that can be mounted "
                f"(LVs: {', '.join(lv.name for lv in guest_vg.lvs) or 'none'})",
                "set guest_lvm = no, or exclude this guest")
    return None


# ------------------------------------------------------------------------- LVM, --devices only

def devices(loops):
    """The option that limits an LVM command to the loop device(s) (never the host's devices)."""
    return ["--devices", loops if isinstance(loops, str) else ",".join(loops)]


def _listed(loops):
    return [loops] if isinstance(loops, str) else list(loops)


def holders(loop):
    """Device-mapper devices (dm-N) that hold loop device `loop` (/dev/loopN): its active LVs."""
    try:
        return sorted(os.listdir(f"/sys/block/{os.path.basename(loop)}/holders"))
    except OSError:
        return []


def holder_paths(loop):
    """Device paths a mount of an LV on `loop` may show (/dev/dm-N, /dev/mapper/NAME)."""
    paths = set()
    for dm in holders(loop):
        paths.add(f"/dev/{dm}")
        try:
            with open(f"/sys/block/{dm}/dm/name") as handle:
                paths.add("/dev/mapper/" + handle.read().strip())
        except OSError:
            pass
    return paths


def deactivate(loop, retries=5):
    """Deactivate every LV on `loop` (or loops), whatever its VG is called (ours, or the guest's
    original name if the host's udev auto-activated it). Nothing to do (no command) when none is
    active. A VG that spans loop devices is deactivated from any one of them (LVM warns of the
    PVs it does not see, and deactivates), so teardown needs no record of which loops belong
    together."""
    if not any(holders(name) for name in _listed(loop)):
        return False
    commands.retry_busy(lambda: commands.run(["vgchange", "--activate", "n", *devices(loop)],
                                             changes_system=True), attempts=retries)
    commands.settle()
    return True


def vg_report(loop):
    """{vg name: {"missing": missing PV count, "tags": [...], "lvs": {name: dm path}}} of the VGs
    LVM sees on `loop` (or the loops of a VG that spans several) alone (one `lvs` with --devices)."""
    argv = ["lvs", *devices(loop), "--reportformat", "json", "-o",
            "vg_name,lv_name,lv_dm_path,vg_missing_pv_count,vg_tags", "--all"]
    return parse_report(commands.run(argv).stdout, argv)


def parse_report(text, argv=("lvs",)):
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise commands.CommandError(list(argv), 0, text, f"unparseable JSON: {exc}") from None
    vgs = {}
    for block in data.get("report", []):
        for row in block.get("lv", []):
            name = row.get("vg_name", "")
            entry = vgs.setdefault(name, {"missing": 0, "tags": [], "lvs": {}})
            try:
                entry["missing"] = max(entry["missing"], int(row.get("vg_missing_pv_count") or 0))
            except ValueError:
                entry["missing"] = max(entry["missing"], 1)
            entry["tags"] = [t for t in (row.get("vg_tags") or "").split(",") if t]
            lv = row.get("lv_name", "")
            if lv and not lv.startswith("["):
                entry["lvs"][lv] = row.get("lv_dm_path", "")
    return vgs


def import_clone(loop, new_name, exported=False, retries=5):
    """vgimportclone on the snapshot's loop device (or all loop devices of a VG that spans several
    disks of the guest): new name, new UUIDs (the snapshots only).

    On a host with systemd, udev's auto-activation of the guest VG runs as a separate unit
    (systemd-run --no-block), so it may land after our settle: an import that fails while LVs
    hold the loop device is retried once after deactivating them, and whatever holds the loop
    device after the import (the guest's LVs under its old name) is deactivated too."""
    argv = ["vgimportclone", *devices(loop), "--basevgname", new_name]
    if exported:
        argv.append("--import")
    try:
        commands.run(argv + _listed(loop), changes_system=True)
    except commands.CommandError:
        if not deactivate(loop, retries):
            raise
        commands.run(argv + _listed(loop), changes_system=True)
    deactivate(loop, retries)
    commands.run(["vgchange", *devices(loop), "--addtag", TAG, new_name], changes_system=True)


def activate(loop, vg, lvs):
    commands.run(["lvchange", "--activate", "y", *devices(loop), *[f"{vg}/{lv}" for lv in lvs]],
                 changes_system=True)
    commands.settle()


# ------------------------------------------------------------------------- the guest's disk

def find_pv(probed, device, partition="auto"):
    """The partitions.Choice of the partition holding an LVM PV on `device` (the snapshot), or
    None: the first one by number, or partition `partition` when it is a number. Read-only."""
    from .partitions import Choice

    sector = probed.get("sector_size") if isinstance(probed, dict) else None
    if not isinstance(sector, int) or sector <= 0 or probed.get("read_error"):
        return None
    length = probed.get("length")
    if probed.get("error"):
        # no partition table: a PV on the whole disk (libparted knows no PV "filesystem")
        if isinstance(length, int) and length > 0 and str(partition) in ("auto", "whole", "0") \
                and has_pv_label(device, 0):
            return Choice(0, "LVM2_member", 0, length * sector, "loop", sector)
        return None
    label = probed.get("label") or "unknown"
    wanted = int(partition) if str(partition).isdigit() and str(partition) != "0" else None
    for part in sorted((p for p in probed.get("partitions") or [] if isinstance(p, dict)),
                       key=lambda p: p.get("number") if isinstance(p.get("number"), int) else 0):
        number, start, length = part.get("number"), part.get("start"), part.get("length")
        if not all(isinstance(v, int) for v in (number, start, length)) or part.get("kind") == "extended":
            continue
        if wanted is not None and number != wanted:
            continue
        if start < 0 or length <= 0 or start + length > (probed.get("length") or 0):
            continue
        if has_pv_label(device, start * sector):
            return Choice(0 if label == "loop" else number, "LVM2_member", start * sector, length * sector,
                          label, sector)
    return None


def describe(guest_vg, inner_name, lv):
    return f"guest VG {guest_vg.name} (as {inner_name}), LV {lv}"


def bring_up(guest, disk, snapshot, choice, result, cfg, members=(), every=False):
    """Loop device over the PV partition, the guest VG renamed and its LV activated, replayed and
    mounted at the disk's path. `members`: (disk, snapshot path, PV Choice) of the guest's other
    disks that hold PVs of the same VG (a VG spanning disks): each gets a loop device too, and
    every LVM command sees all of them. every (guest_filesystems = all): each LV's filesystem of
    `filesystems`, at mount.every_path below the disk's path (result.filesystems), the others in
    result.left_out. Raises GuestError; what it created is torn down by the caller's teardown,
    which derives it from the system (the loop devices over our snapshots, their holders)."""
    from . import mount
    from .errors import GuestError

    name = guest.name
    where = choice.where(disk.key)
    try:
        guest_vg = read_metadata(snapshot, choice.offset)
    except (OSError, MetadataError) as exc:
        raise GuestError(name, "guest LVM", f"{where}: the LVM PV's metadata cannot be read: {exc}",
                         "set guest_lvm = no for this guest, or exclude it") from None
    refused = refusal(guest_vg, where, 1 + len(members))
    if refused:
        raise GuestError(name, "guest LVM", *refused)
    wanted = "auto" if every else cfg.for_disk(guest, disk, "guest_lv")
    names = candidates(guest_vg, wanted)
    if not names:
        raise GuestError(name, "guest LVM", f"guest VG {guest_vg.name} on {where} has no mountable LV {wanted!r} "
                         f"(LVs: {', '.join(lv.name for lv in guest_vg.lvs)})", "set guest_lv to one of them, or auto")
    limit = EVERY_LV_MAX if every else 4
    if every and len(names) > limit:
        result.left_out.append(f"{len(names) - limit} more LVs of guest VG {guest_vg.name} (at most {limit})")
    names, seen = _activate(guest, disk, snapshot, choice, result, cfg, members, guest_vg, names[:limit])
    inner = inner_vg_name(disk.vg, disk.lv)
    spans = f" (PVs on {disk.key}, {', '.join(member.key for member, _path, _pv in members)})" if members else ""
    for lv_name in names:
        device = seen["lvs"].get(lv_name) or "/dev/mapper/" + dm_name(inner, lv_name)
        superblock = lv_superblock(device, cfg.filesystems)
        if superblock is None:
            if every:
                result.left_out.append(f"LV {guest_vg.name}/{lv_name} (no {'/'.join(cfg.filesystems)} filesystem)")
            continue
        lv_where = f"{where} LV {guest_vg.name}/{lv_name}"
        if not every:
            result.choice = dataclasses.replace(choice, fs=superblock.fs)
            result.inner = describe(guest_vg, inner, lv_name) + spans
            result.journal = _replay_and_mount(name, device, superblock, lv_where, disk.mount_path, cfg)
            result.mounted = True
            return result
        path = mount.every_path(disk.mount_path, guest_vg=guest_vg.name, lv=lv_name)
        journal = _replay_and_mount(name, device, superblock, lv_where, path, cfg)
        result.filesystems.append(mount.Mounted(
            path, f"LV {guest_vg.name}/{lv_name}, {superblock.fs}", journal, device, superblock.fs,
            superblock.uuid, superblock.label, (guest_vg.name, lv_name)))
        result.inner = f"guest VG {guest_vg.name} (as {inner}){spans}"
    if every:
        return result
    raise GuestError(name, "guest LVM", f"no {'/'.join(cfg.filesystems)} filesystem on the LVs "
                     f"{', '.join(names)} of guest VG {guest_vg.name} on {where}",
                     "set guest_lv to the LV holding the guest's root filesystem, or guest_lvm = no")


def _activate(guest, disk, snapshot, choice, result, cfg, members, guest_vg, names):
    """Loop devices over the PVs, the guest VG renamed on them (vgimportclone) and LVs `names`
    activated: (the names LVM shows, vg_report's entry of the renamed VG)."""
    from . import loop
    from .commands import CommandError
    from .errors import GuestError

    name = guest.name
    where = choice.where(disk.key)
    loops = []
    try:
        result.loop = loop.attach(snapshot, choice.offset, choice.size, choice.sector_size)
        loops.append(result.loop)
        for _member, path, pv in members:
            loops.append(loop.attach(path, pv.offset, pv.size, pv.sector_size))
    except CommandError as exc:
        raise GuestError(name, "loop device", exc.summary(),
                         "check for free loop devices (losetup --list) and that the loop module is loaded") from None
    inner = inner_vg_name(disk.vg, disk.lv)
    step = "guest LVM"
    try:
        # udev's pvscan may have auto-activated the guest VG under its own name (see the module's
        # docstring): settle, and deactivate whatever holds the loop device before the rename.
        commands.settle(cfg.settle_timeout)
        if deactivate(loops, cfg.busy_retries):
            result.inner_note = (f"the host's udev had auto-activated guest VG {guest_vg.name} on "
                                 f"{', '.join(loops)}: deactivated before renaming it")
        step = "guest VG rename"
        import_clone(loops, inner, guest_vg.exported, cfg.busy_retries)
        step = "guest LVM"
        report = vg_report(loops)
        seen = report.get(inner)
        if seen is None or len(report) != 1:
            raise GuestError(name, step, f"after vgimportclone, {', '.join(loops)} show VGs {sorted(report)}, "
                             f"not {inner}", "run domu-snapshot cleanup and report this")
        if seen["missing"]:
            raise GuestError(name, step, f"guest VG {guest_vg.name} on {where} misses {seen['missing']} PV(s)",
                             "back up this guest another way, or set guest_lvm = no")
        names = [n for n in names if n in seen["lvs"]]
        step = "guest LV activation"
        activate(loops, inner, names)
    except CommandError as exc:
        raise GuestError(name, step, exc.summary(),
                         "the guest VG is on the snapshot only; run domu-snapshot cleanup if anything is left") from None
    return names, seen


def _replay_and_mount(name, device, superblock, where, path, cfg):
    """The guest LV's journal (log) replayed on the snapshot, then it mounted read-only at `path`."""
    from . import filesystems, mount
    from .commands import CommandError
    from .errors import GuestError, ProbeError

    kind = filesystems.kind(superblock.fs)
    refused = kind.refusal(superblock, where)
    if refused:
        raise GuestError(name, kind.check_step, *refused)
    try:
        mount.make_dirs(path, cfg.mount_root)  # before the replay: XFS replays by a mount
    except OSError as exc:
        raise GuestError(name, "mount", f"{path}: {exc}", "check the mount root") from None
    try:
        journal = kind.replay(device, path, cfg.busy_retries)
    except ProbeError as exc:
        raise GuestError(name, "journal check", exc.message, exc.hint) from None
    except CommandError as exc:
        raise GuestError(name, kind.replay_step, exc.summary(), kind.replay_hint) from None
    try:
        kind.mount(device, path, superblock.fs)
    except CommandError as exc:
        raise GuestError(name, "mount", exc.summary(), "see dmesg for the kernel's reason") from None
    return journal


def lv_superblock(device, wanted, offset=0):
    """The superblock of the filesystem on the guest LV `device` (or at `offset` of the PV's
    device: GuestVG.lv_offset) when its type is one of `wanted` (the configuration's
    filesystems), else None."""
    from . import fsck, xfs

    found = fsck.read_superblock(device, offset)
    if found is None and "xfs" in wanted:
        found = xfs.read_superblock(device, offset)
    return found if found is not None and found.fs in wanted else None


def dm_name(vg, lv):
    """The device-mapper name of `lv` in `vg` (/dev/mapper/<it>): each name's hyphens doubled."""
    return vg.replace("-", "--") + "-" + lv.replace("-", "--")


def plan(probed, device, mode, partition, wanted):
    """What `list` shows for a disk's guest VG, read-only from `device` (the origin, through a
    read-only loop device): (pv Choice, "VG/LV, VG/LV2 ..." of the LVs it would try, problem,
    GuestVG or None when unreadable), or None when the disk holds no PV or guest_lvm = no. The
    problem counts this PV alone: for a VG spanning the guest's disks, `list` asks
    plan_problem() again with the PVs found on all of them."""
    if mode == "no":
        return None
    pv = find_pv(probed, device, partition)
    if pv is None:
        return None
    try:
        guest_vg = read_metadata(device, pv.offset)
    except (OSError, MetadataError) as exc:
        return pv, "", f"the LVM PV's metadata cannot be read: {exc}", None
    shown = ", ".join(f"{guest_vg.name}/{n}" for n in candidates(guest_vg, wanted))
    return pv, shown, plan_problem(guest_vg, pv.where("the disk"), wanted), guest_vg


def plan_problem(guest_vg, where, wanted, found=1):
    """Why the guest VG would not be brought up (`found` of its PVs on the guest's disks), or None."""
    refused = refusal(guest_vg, where, found)
    if refused:
        return refused[0]
    if not candidates(guest_vg, wanted):
        return f"guest VG {guest_vg.name} has no mountable LV {wanted!r}"
    return None


def host_scans_lvs():
    """Whether the host's LVM scans LVs for PVs (lvm.conf devices/scan_lvs = 1): then a guest VG
    on a guest's LV is seen, and may be auto-activated, by the host. None when unknown.

    The value set in the host's files (`--typeconfig current`), else LVM's default: `--typeconfig
    full` would say both at once but fails on Debian 12's LVM 2.03.16 ("Cannot clone NULL config
    node", seen in the test bed)."""
    for kind in ("current", "default"):
        try:
            proc = commands.run(["lvmconfig", "--typeconfig", kind, "devices/scan_lvs"], check=False)
        except commands.CommandError:
            return None
        match = re.search(r"scan_lvs\s*=\s*(\d+)", proc.stdout)  # default prints it commented: "# scan_lvs=0"
        if proc.returncode == 0 and match:
            return match.group(1) != "0"
    return None
