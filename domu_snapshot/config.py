"""Configuration: /etc/domu-snapshot.conf (INI) with command-line overrides.

The file has one `[domu-snapshot]` section for the run and optional
`[guest NAME]` sections whose keys override the run's for that guest
(partition, snapshot_size, chunk_size, quiesce).
"""

import configparser
import dataclasses
import os
import re

from .errors import DomuError

DEFAULT_CONFIG_FILE = "/etc/domu-snapshot.conf"
MAIN_SECTION = "domu-snapshot"
GUEST_SECTION = re.compile(r"^guest\s+(?P<name>\S+)$")

QUIESCE_LEVELS = ("auto", "agent", "suspend", "sync", "none")
GUEST_KEYS = ("partition", "snapshot_size", "chunk_size", "quiesce")


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
    partition: str = "auto"  # "auto" or a partition number; "0"/"whole" = whole LV
    filesystems: list = dataclasses.field(default_factory=lambda: ["ext4", "ext3"])
    mount_root: str = "/var/lib/domu-snapshot/mnt"
    lock_file: str = "/run/domu-snapshot/lock"  # in a root-only directory (lock.py)
    lock_timeout: float = 60.0
    quiesce: str = "auto"
    libvirt_uri: str = ""
    quiesce_timeout: float = 10.0
    settle_timeout: float = 10.0
    busy_retries: int = 5
    syslog: bool = True
    dry_run: bool = False
    guests: dict = dataclasses.field(default_factory=dict)  # name -> {key: value}

    def for_guest(self, name, key):
        """A per-guest value when `[guest NAME]` sets it, else the run's value."""
        return self.guests.get(name, {}).get(key, getattr(self, key))


_LIST_KEYS = {"vgs", "include", "exclude", "filesystems"}
_FLOAT_KEYS = {"lock_timeout", "quiesce_timeout", "settle_timeout"}
_INT_KEYS = {"busy_retries"}
_BOOL_KEYS = {"syslog", "dry_run"}
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


_FIELDS = {f.name for f in dataclasses.fields(Config)} - {"guests"}


def _apply(cfg, items, origin):
    for raw_key, value in items:
        key = _ALIASES.get(raw_key.replace("-", "_"), raw_key.replace("-", "_"))
        if key not in _FIELDS:
            raise DomuError(f"{origin}: unknown option {raw_key!r}")
        if value is None:
            continue
        setattr(cfg, key, _convert(key, value, origin))


def validate(cfg):
    if not cfg.prefix and not cfg.include:
        raise DomuError("an empty prefix would select every LV: set prefix or include globs")
    if not os.path.isabs(cfg.mount_root):
        raise DomuError(f"mount_root must be an absolute path, not {cfg.mount_root!r}")
    if os.path.normpath(cfg.mount_root) == "/":
        raise DomuError("mount_root must not be /")
    for name in [None] + list(cfg.guests):
        where = f"[guest {name}]" if name else "configuration"
        quiesce = cfg.for_guest(name, "quiesce") if name else cfg.quiesce
        if quiesce not in QUIESCE_LEVELS:
            raise DomuError(f"{where}: quiesce must be one of {', '.join(QUIESCE_LEVELS)}, not {quiesce!r}")
        partition = cfg.for_guest(name, "partition") if name else cfg.partition
        if partition not in ("auto", "whole") and not str(partition).isdigit():
            raise DomuError(f"{where}: partition must be 'auto', 'whole' or a number, not {partition!r}")
    for fs in cfg.filesystems:
        if fs not in ("ext2", "ext3", "ext4"):
            raise DomuError(f"filesystems: only ext2, ext3 and ext4 can be journal-replayed and mounted, not {fs!r}")
    return cfg


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
            cfg.guests[match.group("name")] = values
    elif explicit:
        raise DomuError(f"configuration file {path} does not exist")
    if overrides:
        _apply(cfg, [(k, v) for k, v in overrides.items()], "command line")
    return validate(cfg)
