"""The plugin's options: the FileSet's Plugin string, and a Job's "FD Plugin Options" on top;
`defaults_file=` below both and `overrides_file=` above both, as Bareos's own python plugins have
them (files of key=value lines, relative to the file daemon's configuration directory)."""

import os
import re

from ..errors import DomuError

# Options passed to the core as configuration overrides (the CLI's), and the plugin's own.
CORE_OPTIONS = ("prefix", "vg", "include", "exclude", "snapshot_size", "chunk_size", "partition",
                "mount_root", "quiesce", "libvirt_uri", "allow_empty", "lock_timeout", "guest_filesystems")
PLUGIN_OPTIONS = ("config", "prepare")
FILE_OPTIONS = ("defaults_file", "overrides_file")
# Consumed by the C side; tolerated in case a file daemon passes them on.
C_SIDE_OPTIONS = ("module_path", "module_name")
PREPARE_MODES = ("each", "all")


def parse_options(text):
    """`key=value:key=value:` (as python-fd passes it) -> dict. As on the C side, a colon after a
    backslash does not end a value; `\\:` stands for a colon."""
    options = {}
    for piece in re.split(r"(?<!\\):", text or ""):
        if not piece:
            continue
        if "=" not in piece:
            raise DomuError(f"plugin option {piece!r} has no value (expected key=value)")
        key, value = piece.split("=", 1)
        key = key.strip().lower().replace("-", "_")
        if key in C_SIDE_OPTIONS:
            continue
        if key not in CORE_OPTIONS + PLUGIN_OPTIONS + FILE_OPTIONS:
            known = ", ".join(sorted(CORE_OPTIONS + PLUGIN_OPTIONS + FILE_OPTIONS))
            raise DomuError(f"unknown plugin option {key!r} (known: {known})")
        options[key] = value.replace("\\:", ":")
    check_options(options)
    return options


def check_options(options):
    mode = options.get("prepare", "each")
    if mode not in PREPARE_MODES:
        raise DomuError(f"prepare must be 'each' or 'all', not {mode!r}")


def read_options_file(path):
    """key=value lines, as Bareos's python plugins read them: blank lines and lines starting with
    #, ; or [ are skipped, a value ending in a backslash continues on the next line, whitespace
    around keys and values is dropped. The keys are this plugin's options."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DomuError(f"cannot read options file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    options = {}
    while lines:
        line = lines.pop(0)
        key, _, value = (part.strip() for part in line.partition("="))
        if not key and not value or key.startswith(("#", ";", "[")):
            continue
        if not key or not value:
            raise DomuError(f"options file {path}: {line.strip()!r} is not key=value")
        while value.endswith("\\") and lines:
            value = value[:-1] + lines.pop(0).strip()
        key = key.lower().replace("-", "_")
        if key not in CORE_OPTIONS + PLUGIN_OPTIONS:
            known = ", ".join(sorted(CORE_OPTIONS + PLUGIN_OPTIONS))
            raise DomuError(f"options file {path}: unknown plugin option {key!r} (known: {known})")
        options[key] = value
    return options


def config_directory(used_config):
    """Where relative options files are: the file daemon's configuration directory (Bareos's
    `bVarUsedConfig`: `/etc/bareos/bareos-fd.d/*/*.conf` or a single file), else /."""
    used_config = used_config or ""
    if used_config.endswith("/*/*.conf"):
        path = used_config[: -len("/*/*.conf")]
    elif os.path.isfile(used_config):
        path = os.path.dirname(used_config)
    else:
        return "/"
    return path if os.path.isdir(path) else "/"


class Options:
    """The plugin's options as python-fd hands them over: first the FileSet's string, then (for
    a Job with "FD Plugin Options") the override string alone through bEventNewPluginOptions,
    then the FileSet's string again at each backup/restore command. The override replaces only
    the keys it names; the FileSet's string coming back does not undo it."""

    def __init__(self, config_dir=lambda: "/"):
        self.config_dir = config_dir  # a function: asked only when a file is named
        self.fileset_text = None
        self.fileset = {}
        self.overrides = {}
        self.files = {}              # "defaults_file" / "overrides_file" -> options read

    def parse(self, text):
        """Parse one string; returns the effective options. Raises DomuError."""
        parsed = parse_options(text)
        for key in FILE_OPTIONS:
            if key in parsed:
                path = os.path.join(self.config_dir(), parsed.pop(key))
                self.files[key] = read_options_file(path)
        if self.fileset_text is None:
            self.fileset_text, self.fileset = text, parsed
        elif text != self.fileset_text:
            self.overrides.update(parsed)
        # an overrides_file holds what must always apply (Bareos: mandatory values)
        options = {**self.files.get("defaults_file", {}), **self.fileset, **self.overrides,
                   **self.files.get("overrides_file", {})}
        check_options(options)
        return options


def config_overrides(options):
    return {key: value for key, value in options.items() if key in CORE_OPTIONS}
