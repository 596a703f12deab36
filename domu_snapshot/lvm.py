"""LVM: one JSON report per run, snapshot create/remove, name limits.

Only snapshots this tool created (named `<origin><SUFFIX>` and carrying
TAG) are ever removed; origins are only ever read.
"""

import dataclasses
import json
import math
import re

from . import commands

TAG = "domu_snapshot"
SUFFIX = "-dsnap"
# Proxmox VE hosts (naming "prefix"): its LVM storages take every LV matching ^(vm|base)-(\d+)-
# for a volume of that VM, so `vm-100-disk-0-dsnap` would show up as a disk of VM 100. No
# Proxmox storage takes `dsnap-...` (LVM-thin's own snapshots are `snap_<volume>_<name>`).
PREFIX = "dsnap-"
NAMINGS = ("suffix", "prefix")
# Who made a snapshot: a second tag next to TAG. The plugin holds the run lock for its whole job,
# so a plugin-made snapshot found by a holder of the lock is from a dead job. `domu-snapshot mount`
# (helpers mode) keeps its snapshot until `domu-snapshot unmount` while no process holds anything,
# so a plugin job must leave it alone. A snapshot without an owner tag (older versions) is anyone's.
OWNER_TAGS = {"cli": "domu_snapshot_cli", "plugin": "domu_snapshot_plugin"}

# Device-mapper names are at most 127 characters (DM_NAME_LEN 128 with NUL);
# LVM's own LV names are limited the same way.
DM_NAME_MAX = 127
LV_NAME_MAX = 127
# A classic snapshot adds these device-mapper devices next to the LVs.
_DM_SUFFIXES = ("-cow", "-real")

_REPORT_FIELDS = (
    "lv_name,vg_name,lv_attr,lv_path,lv_dm_path,origin,snap_percent,data_percent,lv_tags,"
    "lv_size,lv_active,lv_kernel_major,lv_kernel_minor,segtype,pool_lv,vg_extent_size,vg_free,lv_uuid,"
    "metadata_percent,lv_metadata_size,lv_health_status,lv_when_full"
)

# A thin pool's lv_health_status (and lv_attr[8]) when it can no longer give blocks to its thin
# LVs: out of data space (writes fail or queue), metadata read-only, or failed.
POOL_HEALTH_FULL = {"out_of_data": "out of data space", "metadata_read_only": "metadata read-only",
                    "failed": "failed"}
_POOL_ATTR_FULL = {"D": "out of data space", "M": "metadata read-only", "F": "failed"}
# A pool that ran out of data space goes back to writing once a commit frees a few blocks (the
# kernel's dm-thin), so after the fact it may show a few chunks free and no out-of-data state:
# less than this left (the smaller of the two) counts as full.
NEARLY_FULL_BYTES = 256 * 1024 ** 2
NEARLY_FULL_FRACTION = 0.01


@dataclasses.dataclass
class LogicalVolume:
    vg: str
    name: str
    attr: str
    path: str
    dm_path: str
    origin: str
    snap_percent: float  # None when not a snapshot
    data_percent: float
    tags: list
    size: int  # bytes
    active: bool
    major: int
    minor: int
    segtype: str
    pool: str
    extent_size: int
    vg_free: int
    # thin pools (data_percent above is the pool's data use): metadata use, sizes, health
    metadata_percent: float = None
    metadata_size: int = 0  # bytes
    health: str = ""  # lv_health_status: "", "out_of_data", "metadata_read_only", "failed", ...
    when_full: str = ""  # thin pools: "error" or "queue" (lv_when_full)

    @property
    def key(self):
        return f"{self.vg}/{self.name}"

    @property
    def volume_type(self):
        return self.attr[0] if self.attr else "-"

    @property
    def is_classic_snapshot(self):
        return self.volume_type in ("s", "S")

    @property
    def is_thin(self):
        return self.volume_type == "V" or self.segtype == "thin"

    @property
    def is_snapshot(self):
        return self.is_classic_snapshot or (self.is_thin and bool(self.origin))

    @property
    def is_hidden(self):
        return self.name.startswith("[") or self.volume_type in ("i", "I", "l", "L", "e", "p", "v")

    @property
    def is_pool(self):
        return self.volume_type in ("t", "d") or self.segtype in ("thin-pool", "cache-pool", "vdo-pool")

    @property
    def is_thin_pool(self):
        return self.segtype == "thin-pool" or (self.volume_type == "t" and not self.segtype)

    @property
    def pool_key(self):
        """vg/pool of a thin LV's pool ("" for anything else)."""
        return f"{self.vg}/{self.pool}" if self.is_thin and self.pool else ""

    @property
    def pool_full(self):
        """Why a thin pool cannot hand out blocks any more (data or metadata at 100%, out of data
        space, metadata read-only, failed), or "" when it can (or this is no thin pool)."""
        if not self.is_thin_pool:
            return ""
        why = []
        for what, percent, size in (("data", self.data_percent, self.size),
                                    ("metadata", self.metadata_percent, self.metadata_size)):
            if percent is None:
                continue
            left = size * (100.0 - percent) / 100.0
            if percent >= 100.0:
                why.append(f"{what} 100% used")
            elif left < min(NEARLY_FULL_BYTES, size * NEARLY_FULL_FRACTION):
                why.append(f"{what} {percent:.2f}% used, {_size(left)} left")
        state = POOL_HEALTH_FULL.get(self.health) or _POOL_ATTR_FULL.get(self.attr[8:9], "")
        if state:
            why.append(state)
        return ", ".join(why)

    def pool_use(self):
        """"data 93.1% of 1.00 GiB, metadata 12.0% of 4.00 MiB" (what a thin pool's lvs shows)."""
        data = "unknown" if self.data_percent is None else f"{self.data_percent:.1f}%"
        meta = "unknown" if self.metadata_percent is None else f"{self.metadata_percent:.1f}%"
        return f"data {data} of {_size(self.size)}, metadata {meta} of {_size(self.metadata_size)}"

    @property
    def ours(self):
        return TAG in self.tags and self.is_snapshot

    @property
    def owner(self):
        """"cli", "plugin" or "" (no owner tag); "cli" wins should both be there (it is protected)."""
        for owner, tag in OWNER_TAGS.items():
            if tag in self.tags:
                return owner
        return ""

    @property
    def invalid(self):
        """A classic snapshot whose copy-on-write area overflowed (LVM marks it invalid)."""
        state = self.attr[4] if len(self.attr) > 4 else "-"
        return self.volume_type == "S" or state in ("I", "S") or (
            self.snap_percent is not None and self.snap_percent >= 100.0
        )


def _number(value, kind=float):
    value = (value or "").strip()
    if not value:
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return None


def _parse(row):
    return LogicalVolume(
        vg=row["vg_name"],
        name=row["lv_name"],
        attr=row.get("lv_attr", ""),
        path=row.get("lv_path", "") or f"/dev/{row['vg_name']}/{row['lv_name']}",
        dm_path=row.get("lv_dm_path", ""),
        origin=row.get("origin", ""),
        snap_percent=_number(row.get("snap_percent")),
        data_percent=_number(row.get("data_percent")),
        tags=[t for t in row.get("lv_tags", "").split(",") if t],
        size=_number(row.get("lv_size"), int) or 0,
        active=row.get("lv_active", "") == "active",
        major=_number(row.get("lv_kernel_major"), int),
        minor=_number(row.get("lv_kernel_minor"), int),
        segtype=row.get("segtype", ""),
        pool=row.get("pool_lv", ""),
        extent_size=_number(row.get("vg_extent_size"), int) or 4 * 1024 * 1024,
        vg_free=_number(row.get("vg_free"), int) or 0,
        metadata_percent=_number(row.get("metadata_percent")),
        metadata_size=_number(row.get("lv_metadata_size"), int) or 0,
        health=(row.get("lv_health_status") or "").strip(),
        when_full=(row.get("lv_when_full") or "").strip(),
    )


def _size(size):
    if size >= 1024 ** 3:
        return f"{size / 1024 ** 3:.2f} GiB"
    if size >= 1024 ** 2:
        return f"{size / 1024 ** 2:.1f} MiB"
    return f"{size / 1024:.0f} KiB"


def pool_too_full(pool, max_data_percent, max_metadata_percent):
    """Why a snapshot must not be made in thin pool `pool` (a LogicalVolume), or "".

    A thin snapshot costs nothing when made, but every block the running guest writes while it
    exists needs a new block of the pool; a pool that runs full fails (or stalls) the guest's
    own writes. So a pool whose data or metadata use is at or above its threshold is refused.
    Unknown use (an inactive pool: its thin LVs are inactive too) is not refused here."""
    full = pool.pool_full
    if full:
        return f"thin pool {pool.key} is full ({full}; {pool.pool_use()})"
    over = []
    if pool.data_percent is not None and pool.data_percent >= max_data_percent:
        over.append(f"data use {pool.data_percent:.1f}% is at or above thin_pool_max_data_percent "
                    f"({max_data_percent:g}%)")
    if pool.metadata_percent is not None and pool.metadata_percent >= max_metadata_percent:
        over.append(f"metadata use {pool.metadata_percent:.1f}% is at or above "
                    f"thin_pool_max_metadata_percent ({max_metadata_percent:g}%)")
    if not over:
        return ""
    return f"thin pool {pool.key}: {' and '.join(over)} ({pool.pool_use()})"


def report(vgs=()):
    """All LVs of the given VGs (all VGs when empty), from a single `lvs` call."""
    argv = ["lvs", "--reportformat", "json", "--units", "b", "--nosuffix", "-o", _REPORT_FIELDS]
    argv += list(vgs)
    proc = commands.run(argv)
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise commands.CommandError(argv, proc.returncode, proc.stdout, f"unparseable JSON: {exc}") from None
    rows = []
    for block in data.get("report", []):
        rows.extend(block.get("lv", []))
    # Negative kernel major/minor (-1) means inactive.
    volumes = [_parse(row) for row in rows]
    for lv in volumes:
        if lv.major is not None and lv.major < 0:
            lv.major = lv.minor = None
    return volumes


def dm_name(vg, lv):
    """The device-mapper name LVM gives vg/lv: hyphens doubled, joined by one hyphen."""
    return vg.replace("-", "--") + "-" + lv.replace("-", "--")


def snapshot_name(origin, naming="suffix"):
    """Our snapshot's name for LV `origin`: `<origin>-dsnap`, or `dsnap-<origin>` (Proxmox VE)."""
    if naming == "prefix":
        return PREFIX + origin
    return origin + SUFFIX


def named_origin(name):
    """The origin an LV of this name would be our snapshot of (either naming), or ""."""
    if name.endswith(SUFFIX) and len(name) > len(SUFFIX):
        return name[: -len(SUFFIX)]
    if name.startswith(PREFIX) and len(name) > len(PREFIX):
        return name[len(PREFIX):]
    return ""


def origin_name(snapshot):
    """The origin LV's name of one of our snapshots (from LVM, else from our naming)."""
    return snapshot.origin or named_origin(snapshot.name)


def check_snapshot_name(vg, origin, naming="suffix"):
    """Return None if the snapshot of vg/origin can be named within LVM's and dm's limits, else why not."""
    name = snapshot_name(origin, naming)
    if len(name) > LV_NAME_MAX:
        return f"snapshot name {name!r} would be {len(name)} characters; LVM allows {LV_NAME_MAX}"
    for lv, suffix in ((name, "-cow"), (origin, "-real"), (name, "")):
        full = dm_name(vg, lv) + suffix
        if len(full) > DM_NAME_MAX:
            return (
                f"device-mapper name {full!r} would be {len(full)} characters; the kernel allows "
                f"{DM_NAME_MAX} (hyphens in VG and LV names count twice)"
            )
    return None


# LVM's own syntax: a number with at most one unit letter (default MiB), or N%ORIGIN.
_SIZE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)(?P<unit>[bskmgtpe]?)\s*$", re.I)
_PERCENT = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)%(?P<of>[a-z]*)\s*$", re.I)
_UNITS = {"b": 1, "s": 512, "": 1024 * 1024, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5, "e": 1024**6}


def parse_size(spec):
    """('bytes', n) for an absolute size like 2G (LVM's default unit is MiB), ('percent', p) for 10%ORIGIN.

    ValueError (saying what is accepted) for anything else. %VG, %FREE and %PVS are LVM syntax
    too, but the space check sizes every snapshot from its origin, so they are refused."""
    text = str(spec or "")
    match = _PERCENT.match(text)
    if match:
        if match.group("of").upper() not in ("ORIGIN",):
            raise ValueError(f"snapshot size {spec!r}: only N%ORIGIN is supported as a percentage "
                             f"(the space check sizes each snapshot from its origin); or an absolute size like 2G")
        percent = float(match.group("num"))
        if not 0 < percent <= 100:
            raise ValueError(f"snapshot size {spec!r}: percentage must be in (0, 100]")
        return "percent", percent
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"snapshot size {spec!r}: use an LVM size like 2G or 512M (units b s k m g t p e, "
                         f"default m), or N%ORIGIN")
    size = float(match.group("num")) * _UNITS[match.group("unit").lower()]
    if size < 1:
        raise ValueError(f"snapshot size {spec!r} must be positive")
    return "bytes", int(size)


def snapshot_extents(origin, spec):
    """Extents a classic snapshot of `origin` gets for size `spec` (rounded up to whole extents)."""
    kind, value = parse_size(spec)
    wanted = origin.size * value / 100.0 if kind == "percent" else value
    return max(1, math.ceil(wanted / origin.extent_size))


def create_snapshot(origin, spec, chunk_size="", owner="", naming="suffix"):
    """lvcreate a tagged snapshot of `origin`; thin origins get a thin snapshot (no size, -K).
    `owner` ("cli", "plugin" or "") adds the owner tag (see OWNER_TAGS)."""
    if owner and owner not in OWNER_TAGS:
        raise ValueError(f"unknown snapshot owner {owner!r} (known: {', '.join(OWNER_TAGS)})")
    name = snapshot_name(origin.name, naming)
    argv = ["lvcreate", "--snapshot", "--name", name, "--addtag", TAG]
    if owner:
        argv += ["--addtag", OWNER_TAGS[owner]]
    if origin.is_thin:
        # Thin snapshots have activation skip set; -K activates it anyway.
        argv += ["--ignoreactivationskip"]
    else:
        argv += ["--extents", str(snapshot_extents(origin, spec))]
        if chunk_size:
            argv += ["--chunksize", chunk_size]
    argv.append(origin.key)
    return commands.run(argv, changes_system=True)


def remove_snapshot(lv, retries=5):
    """lvremove one of our snapshots; refuses anything else (never an origin)."""
    if not lv.ours:
        raise ValueError(f"refusing to remove {lv.key}: not a snapshot tagged {TAG}")
    commands.retry_busy(
        lambda: commands.run(["lvremove", "--yes", lv.key], changes_system=True),
        attempts=retries,
    )
    # Let udev finish with the removed devices: an lvcreate of the same name right after
    # (a leftover replaced by a fresh snapshot) can otherwise fail with "device not cleared".
    commands.settle()
