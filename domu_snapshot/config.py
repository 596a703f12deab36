"""Configuration: /etc/domu-snapshot.conf (INI) with command-line overrides.

The file has one `[domu-snapshot]` section for the run and optional
`[guest NAME]` sections whose keys override the run's for that guest
(GUEST_KEYS: partition, snapshot_size, chunk_size, quiesce, the snapshot hooks, guest_lvm,
guest_lv and guest_filesystems).
"""

import configparser
import dataclasses
import math
import os
import re

from . import hooks, lvm
from .errors import DomuError

DEFAULT_CONFIG_FILE = "/etc/domu-snapshot.conf"
MAIN_SECTION = "domu-snapshot"
GUEST_SECTION = re.compile(r"^guest\s+(?P<name>\S+)$")

QUIESCE_LEVELS = ("auto", "agent", "suspend", "sync", "none")
# Which toolstack groups and quiesces guests: auto detects it (Proxmox VE when pve_config_dir
# exists; else libvirt when a daemon answers or libvirt_uri is set; else xl on a Xen control
# domain; else libvirt as far as it answers), plain uses none.
HOST_KINDS = ("auto", "plain", "libvirt", "proxmox", "xl")
GUEST_KEYS = ("partition", "snapshot_size", "chunk_size", "quiesce", "before_snapshot_hook",
              "after_snapshot_hook", "before_hook_failure", "guest_lvm", "guest_lv", "guest_filesystems")
GUEST_LVM_MODES = ("auto", "yes", "no")
GUEST_FILESYSTEMS = ("first", "all", "fstab")


@dataclasses.dataclass
class Config:
    prefix: str = "domu-"
    vgs: list = dataclasses.field(default_factory=list)  # empty: every VG
    include: list = dataclasses.field(default_factory=list)  # globs on LV names
    exclude: list = dataclasses.field(default_factory=list)
    # 10% of the origin is enough for the backup window of most guests;
    # journal replay and heavy guest writes can need more (see README).
    snapshot_size: str = "10%ORIGIN"
    chunk_size: str = ""
    partition: str = "auto"  # "auto", "whole" (= "0", as `list` shows it) or a partition number >= 1
    filesystems: list = dataclasses.field(default_factory=lambda: ["ext4", "ext3"])
    # LVM inside the guest (guestlvm.py): "auto" mounts an LV of the guest's VG only when no ext
    # partition is chosen (a disk that is only a PV); "yes" prefers it to the first ext partition
    # (Debian's guided LVM has /boot first); "no" never. guest_lv: the LV, or auto (root-like first).
    guest_lvm: str = "auto"
    guest_lv: str = "auto"
    # "first": the one filesystem above at the disk's path (the design card's behaviour); "all":
    # every filesystem of `filesystems` on the disk (partitions and the guest VG's LVs), each at
    # its own path below the disk's: part<N>, lvm/<guest vg>/<lv> (mount.every_path); "fstab": those
    # filesystems where the guest's own /etc/fstab mounts them, its root at the disk's path.
    guest_filesystems: str = "first"
    mount_root: str = "/var/lib/domu-snapshot/mnt"
    lock_file: str = "/run/domu-snapshot/lock"  # in a root-only directory (lock.py)
    lock_timeout: float = 60.0
    quiesce: str = "auto"
    libvirt_uri: str = ""
    xl_command: str = "/usr/sbin/xl"
    quiesce_timeout: float = 10.0
    settle_timeout: float = 10.0
    busy_retries: int = 5
    # Commands run before and after a guest's snapshots (hooks.py): "" for none.
    before_snapshot_hook: str = ""
    after_snapshot_hook: str = ""
    hook_timeout: float = 60.0
    before_hook_failure: str = "fail"  # "fail" the guest, or "continue" with its snapshots
    # Thin origins: no snapshot in a pool whose data or metadata use is at or above these (percent);
    # every block a guest writes while its snapshot exists takes a new block of the pool.
    thin_pool_max_data_percent: float = 90.0
    thin_pool_max_metadata_percent: float = 80.0
    # What kind of host (config.HOST_KINDS): "auto" (Proxmox VE when pve_config_dir exists, else
    # libvirt where its daemon runs, else xl on a Xen dom0), "plain", "libvirt", "proxmox", "xl".
    host: str = "auto"
    pve_config_dir: str = "/etc/pve/qemu-server"  # <vmid>.conf (agent: 1, ...)
    pve_run_dir: str = "/var/run/qemu-server"  # <vmid>.qga and <vmid>.qmp sockets
    pve_templates: bool = False  # also back up templates' disks (base-<vmid>-disk-<n>)
    syslog: bool = True
    dry_run: bool = False
    allow_empty: bool = False  # `mount --all` selecting no guest: exit 0 (else 1)
    guests: dict = dataclasses.field(default_factory=dict)  # name -> {key: value}
    # where values came from (`domu-snapshot config`): key or "guest NAME/key" -> origin
    sources: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
    source_file: str = ""  # the configuration file read, "" when none was

    def for_guest(self, name, key):
        """A per-guest value when `[guest NAME]` sets it, else the run's value."""
        return self.guests.get(name, {}).get(key, getattr(self, key))

    def for_disk(self, guest, disk, key):
        """The value for one disk of a guest: `[guest vg/lv]` or `[guest LV]` of that disk first
        (a libvirt domain groups several LVs into one guest named after the domain, and a section
        named after one of its LVs still applies to that disk), then the guest's, then the run's."""
        for name in (disk.key, disk.lv, guest.name, guest.domain):
            value = self.guests.get(name, {}).get(key) if name else None
            if value is not None:
                return value
        return getattr(self, key)

    def for_guest_of(self, guest, key):
        """The value for a whole guest (lifecycle.Guest): `[guest NAME]`, then `[guest DOMAIN]`,
        then the run's."""
        for name in (guest.name, guest.domain):
            value = self.guests.get(name, {}).get(key) if name else None
            if value is not None:
                return value
        return getattr(self, key)


_LIST_KEYS = {"vgs", "include", "exclude", "filesystems"}
_FLOAT_KEYS = {"lock_timeout", "quiesce_timeout", "settle_timeout", "hook_timeout", "thin_pool_max_data_percent",
               "thin_pool_max_metadata_percent"}
_INT_KEYS = {"busy_retries"}
_BOOL_KEYS = {"syslog", "dry_run", "allow_empty", "pve_templates"}
_ALIASES = {"vg": "vgs"}


def _split_list(value):
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v)]
    return [item for item in re.split(r"[,\s]+", str(value)) if item]


def _convert(key, value, origin):
    try:
        if key in _LIST_KEYS:
            return _split_list(value)
        if key in _FLOAT_KEYS:
            return float(value)
        if key in _INT_KEYS:
            return int(value)
        if key in _BOOL_KEYS:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "yes", "true", "on"):
                return True
            if lowered in ("0", "no", "false", "off"):
                return False
            raise ValueError(f"not a yes/no value: {value!r}")
        return str(value).strip()
    except ValueError as exc:
        raise DomuError(f"{origin}: bad value for {key}: {exc}") from None


_FIELDS = {f.name for f in dataclasses.fields(Config)} - {"guests", "sources", "source_file"}
KEYS = frozenset(_FIELDS)  # the configuration keys (man page check)


def _apply(cfg, items, origin):
    for raw_key, value in items:
        key = _ALIASES.get(raw_key.replace("-", "_"), raw_key.replace("-", "_"))
        if key not in _FIELDS:
            raise DomuError(f"{origin}: unknown option {raw_key!r}")
        if value is None:
            continue
        setattr(cfg, key, _convert(key, value, origin))
        cfg.sources[key] = origin


# Ranges checked when the configuration is loaded: (low, high, low allowed). A value outside
# would not fail later but silently do the wrong thing (busy_retries = 0 made every umount,
# detach and lvremove a no-op; lock_timeout = nan waits forever).
_RANGES = {
    "lock_timeout": (0.0, 7 * 24 * 3600.0, True),
    "quiesce_timeout": (0.0, 24 * 3600.0, False),
    "settle_timeout": (0.0, 3600.0, True),
    "busy_retries": (1, 100, True),
    "hook_timeout": (0.0, 24 * 3600.0, False),
    # 100: refuse only a full pool; 0 would refuse every thin origin
    "thin_pool_max_data_percent": (0.0, 100.0, False),
    "thin_pool_max_metadata_percent": (0.0, 100.0, False),
}

_CHUNK = re.compile(r"^(?P<num>\d+)(?P<unit>[bskmgtpe]?)$", re.I)
_CHUNK_UNITS = {"b": 1, "s": 512, "": 1024, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4,
                "p": 1024 ** 5, "e": 1024 ** 6}


def chunk_bytes(spec):
    """Bytes of an LVM snapshot chunk size (default unit KiB); ValueError unless a power of 2 in 4k..512k."""
    match = _CHUNK.match(str(spec).strip())
    if not match:
        raise ValueError(f"not a size: {spec!r} (use e.g. 64k)")
    size = int(match.group("num")) * _CHUNK_UNITS[match.group("unit").lower()]
    if size < 4096 or size > 512 * 1024 or size & (size - 1):
        raise ValueError(f"{spec!r}: LVM takes a power of 2 from 4k to 512k")
    return size


def _check_guest_value(where, key, value):
    """Per-guest keys (also the run's values): raise DomuError naming the key."""
    if key == "snapshot_size":
        try:
            lvm.parse_size(value)
        except ValueError as exc:
            raise DomuError(f"{where}: bad value for snapshot_size: {exc}") from None
    elif key == "chunk_size":
        if str(value).strip():
            try:
                chunk_bytes(value)
            except ValueError as exc:
                raise DomuError(f"{where}: bad value for chunk_size: {exc}") from None
    elif key == "partition":
        if value not in ("auto", "whole") and not (str(value).isdigit() and len(str(value)) < 4):
            raise DomuError(f"{where}: partition must be 'auto', 'whole' (or 0, the same) or a partition "
                            f"number, not {value!r}")
    elif key == "guest_lvm":
        if value not in GUEST_LVM_MODES:
            raise DomuError(f"{where}: guest_lvm must be one of {', '.join(GUEST_LVM_MODES)}, not {value!r}")
    elif key == "guest_lv":
        if not re.match(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$", str(value)):
            raise DomuError(f"{where}: guest_lv must be auto or an LVM LV name, not {value!r}")
    elif key == "guest_filesystems":
        if value not in GUEST_FILESYSTEMS:
            raise DomuError(f"{where}: guest_filesystems must be one of {', '.join(GUEST_FILESYSTEMS)}, "
                            f"not {value!r}")
    elif key == "quiesce":
        if value not in QUIESCE_LEVELS:
            raise DomuError(f"{where}: quiesce must be one of {', '.join(QUIESCE_LEVELS)}, not {value!r}")
    elif key in ("before_snapshot_hook", "after_snapshot_hook"):
        if str(value).strip():
            try:
                hooks.parse(value)
            except ValueError as exc:
                raise DomuError(f"{where}: bad value for {key}: {exc}") from None
    elif key == "before_hook_failure":
        if value not in hooks.FAILURE_POLICIES:
            raise DomuError(f"{where}: before_hook_failure must be one of {', '.join(hooks.FAILURE_POLICIES)}, "
                            f"not {value!r}")


def validate(cfg):
    if not cfg.prefix and not cfg.include:
        raise DomuError("an empty prefix would select every LV: set prefix or include globs")
    if not os.path.isabs(cfg.mount_root):
        raise DomuError(f"mount_root must be an absolute path, not {cfg.mount_root!r}")
    if os.path.normpath(cfg.mount_root) == "/":
        raise DomuError("mount_root must not be /")
    if cfg.host not in HOST_KINDS:
        raise DomuError(f"configuration: host must be one of {', '.join(HOST_KINDS)}, not {cfg.host!r}")
    for key in ("pve_config_dir", "pve_run_dir"):
        if not os.path.isabs(getattr(cfg, key)):
            raise DomuError(f"configuration: {key} must be an absolute path, not {getattr(cfg, key)!r}")
    for key, (low, high, low_ok) in _RANGES.items():
        value = getattr(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            unit = " (percent)" if key.endswith("_percent") else " of seconds"
            raise DomuError(f"configuration: {key} must be a finite number{unit}, not {value!r}")
        if value < low or (value == low and not low_ok) or value > high:
            bound = f"at least {low:g}" if low_ok else f"more than {low:g}"
            raise DomuError(f"configuration: {key} must be {bound} and at most {high:g}, not {value!r}")
    for name in [None] + list(cfg.guests):
        where = f"[guest {name}]" if name else "configuration"
        for key in GUEST_KEYS:
            _check_guest_value(where, key, cfg.for_guest(name, key) if name else getattr(cfg, key))
    if not os.path.isabs(cfg.xl_command):
        raise DomuError(f"configuration: xl_command must be an absolute path, not {cfg.xl_command!r}")
    for fs in cfg.filesystems:
        if fs not in ("ext2", "ext3", "ext4", "xfs"):
            raise DomuError(f"filesystems: only ext2, ext3, ext4 and xfs can be journal-replayed and mounted, "
                            f"not {fs!r}")
    return cfg


def effective_config(cfg):
    """{section: {key: {"value", "from"}}}: every run key, then each [guest NAME] section's."""
    run = {}
    for field in dataclasses.fields(Config):
        if field.name in ("guests", "sources", "source_file"):
            continue
        run[field.name] = {"value": getattr(cfg, field.name), "from": cfg.sources.get(field.name, "default")}
    sections = {MAIN_SECTION: run}
    for name, values in cfg.guests.items():
        sections[f"guest {name}"] = {key: {"value": value, "from": cfg.sources.get(f"guest {name}/{key}", "")}
                                     for key, value in values.items()}
    return sections


def load_config(path=None, overrides=None):
    """Read the INI file (if it exists, or fail if it was named explicitly) and apply overrides."""
    cfg = Config()
    explicit = path is not None
    path = path or os.environ.get("DOMU_SNAPSHOT_CONFIG") or DEFAULT_CONFIG_FILE
    if os.path.exists(path):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as exc:
            raise DomuError(f"cannot read {path}: {exc}") from None
        for section in parser.sections():
            if section == MAIN_SECTION:
                _apply(cfg, parser.items(section), f"{path} [{section}]")
                continue
            match = GUEST_SECTION.match(section)
            if not match:
                raise DomuError(f"{path}: unknown section [{section}]")
            values = {}
            for key, value in parser.items(section):
                key = key.replace("-", "_")
                if key not in GUEST_KEYS:
                    raise DomuError(f"{path} [{section}]: {key!r} cannot be set per guest")
                values[key] = value.strip()
                cfg.sources[f"guest {match.group('name')}/{key}"] = f"{path} [{section}]"
            cfg.guests[match.group("name")] = values
        cfg.source_file = path
    elif explicit:
        raise DomuError(f"configuration file {path} does not exist")
    if overrides:
        _apply(cfg, [(k, v) for k, v in overrides.items()], "command line")
    return validate(cfg)
