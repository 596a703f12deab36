"""The plugin's options: the FileSet's Plugin string, and a Job's "FD Plugin Options" on top."""

import re

from ..errors import DomuError

# Options passed to the core as configuration overrides (the CLI's), and the plugin's own.
CORE_OPTIONS = ("prefix", "vg", "include", "exclude", "snapshot_size", "chunk_size", "partition",
                "mount_root", "quiesce", "libvirt_uri", "allow_empty")
PLUGIN_OPTIONS = ("config", "prepare")
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
        if key not in CORE_OPTIONS + PLUGIN_OPTIONS:
            known = ", ".join(sorted(CORE_OPTIONS + PLUGIN_OPTIONS))
            raise DomuError(f"unknown plugin option {key!r} (known: {known})")
        options[key] = value.replace("\\:", ":")
    check_options(options)
    return options


def check_options(options):
    mode = options.get("prepare", "each")
    if mode not in PREPARE_MODES:
        raise DomuError(f"prepare must be 'each' or 'all', not {mode!r}")


class Options:
    """The plugin's options as python-fd hands them over: first the FileSet's string, then (for
    a Job with "FD Plugin Options") the override string alone through bEventNewPluginOptions,
    then the FileSet's string again at each backup/restore command. The override replaces only
    the keys it names; the FileSet's string coming back does not undo it."""

    def __init__(self):
        self.fileset_text = None
        self.fileset = {}
        self.overrides = {}

    def parse(self, text):
        """Parse one string; returns the effective options. Raises DomuError."""
        parsed = parse_options(text)
        if self.fileset_text is None:
            self.fileset_text, self.fileset = text, parsed
        elif text != self.fileset_text:
            self.overrides.update(parsed)
        options = {**self.fileset, **self.overrides}
        check_options(options)
        return options


def config_overrides(options):
    return {key: value for key, value in options.items() if key in CORE_OPTIONS}
