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
    "lv_size,lv_active,lv_kernel_major,lv_kernel_minor,segtype,pool_lv,vg_extent_size,vg_free,lv_uuid"
)


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
    )


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


def snapshot_name(origin):
    return origin + SUFFIX


def origin_name(snapshot):
    """The origin LV's name of one of our snapshots (from LVM, else from our naming)."""
    return snapshot.origin or snapshot.name[: -len(SUFFIX)]


def check_snapshot_name(vg, origin):
    """Return None if the snapshot of vg/origin can be named within LVM's and dm's limits, else why not."""
    name = snapshot_name(origin)
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


def create_snapshot(origin, spec, chunk_size="", owner=""):
    """lvcreate a tagged snapshot of `origin`; thin origins get a thin snapshot (no size, -K).
    `owner` ("cli", "plugin" or "") adds the owner tag (see OWNER_TAGS)."""
    if owner and owner not in OWNER_TAGS:
        raise ValueError(f"unknown snapshot owner {owner!r} (known: {', '.join(OWNER_TAGS)})")
    name = snapshot_name(origin.name)
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
