"""Use the shipped Bacula example (etc/bacula/) in tests, changing only its "# EDIT <key>" lines.

The example marks each site-specific value with a trailing ``# EDIT <key>`` comment. ``render``
replaces the value on exactly those lines and refuses anything else (an unknown or missing key, a
marked line it cannot parse), so the tests run the example's own RunScript blocks and FileSet
options, and docs and tests cannot drift apart.

Keys: ``mount_root``, ``client``, ``storage``, ``pool``, ``messages``, ``schedule``, ``bootstrap``
(value replaced; ``None`` comments the line out), and ``foreach-domu`` (the program word of the
Command string is replaced, the sub-command after it is kept: ``"foreach-domu mount"`` becomes
``"/venv/bin/foreach-domu --config /tmp/x.conf mount"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "bacula" / "bacula-dir-domu-snapshot.conf"

_MARKED = re.compile(r'^(?P<indent>\s*)(?P<key>[A-Za-z][A-Za-z ]*?)\s*=\s*(?P<value>"(?:[^"\\]|\\.)*"|\S+)'
                     r'(?P<pad>\s*)#\s*EDIT\s+(?P<edit>[\w-]+)\s*$')
COMMAND_KEY = "foreach-domu"


def _quote(value: str) -> str:
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"')


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def marked_lines(text: str) -> List[Dict[str, str]]:
    """The example's "# EDIT" lines: [{'edit': key, 'directive': ..., 'value': ...}]."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if "# EDIT" not in line or line.lstrip().startswith("#"):
            continue
        m = _MARKED.match(line)
        if not m:
            raise ValueError("line %d: cannot parse the marked line %r" % (n, line))
        out.append(dict(edit=m.group("edit"), directive=m.group("key"), value=_unquote(m.group("value")),
                        line=n))
    return out


def render(values: Mapping[str, Optional[str]], text: Optional[str] = None) -> str:
    """The example with its marked values replaced by ``values`` (every marked key must be given)."""
    if text is None:
        text = EXAMPLE.read_text()
    found = {m["edit"] for m in marked_lines(text)}
    missing = found - set(values)
    unknown = set(values) - found
    if missing or unknown:
        raise KeyError("EDIT keys: missing %s, unknown %s (the example has %s)"
                       % (sorted(missing), sorted(unknown), sorted(found)))
    lines = []
    for line in text.splitlines():
        m = _MARKED.match(line) if "# EDIT" in line and not line.lstrip().startswith("#") else None
        if not m:
            lines.append(line)
            continue
        key, value = m.group("edit"), values[m.group("edit")]
        if key == COMMAND_KEY:
            old = _unquote(m.group("value")).split(None, 1)
            new = "%s %s" % (value, old[1]) if len(old) > 1 else value
            lines.append("%s%s = %s   # (test) EDIT %s" % (m.group("indent"), m.group("key"), _quote(new), key))
        elif value is None:
            lines.append("%s# (test) %s" % (m.group("indent"), line.strip()))
        else:
            lines.append("%s%s = %s   # (test) EDIT %s" % (m.group("indent"), m.group("key"), _quote(value), key))
    return "\n".join(lines) + "\n"


def _strip_comment(line: str) -> str:
    """The line without its comment (a '#' outside double quotes starts one)."""
    inq = esc = False
    for i, ch in enumerate(line):
        if esc:
            esc = False
        elif ch == "\\":
            esc = True
        elif ch == '"':
            inq = not inq
        elif ch == "#" and not inq:
            return line[:i].strip()
    return line.strip()


def resource_names(text: str, kind: str) -> List[str]:
    """Names of the top-level resources of one kind (``Job``, ``FileSet``) in a config text."""
    names, depth, current = [], 0, None
    for line in text.splitlines():
        stripped = _strip_comment(line)
        if depth == 0:
            m = re.match(r"^(\w+)\s*\{", stripped)
            if m:
                current = m.group(1)
        if depth == 1 and current and current.lower() == kind.lower():
            m = re.match(r'^Name\s*=\s*("?)(.*?)\1\s*;?$', stripped, re.I)
            if m:
                names.append(m.group(2))
        depth += stripped.count("{") - stripped.count("}")
    return names


def directive(text: str, resource: str, name: str) -> List[str]:
    """Values of a directive anywhere inside the resources of kind ``resource`` (case- and
    blank-insensitive directive names, as Bacula reads them)."""
    want = name.replace(" ", "").lower()
    values, depth, current = [], 0, None
    for line in text.splitlines():
        stripped = _strip_comment(line)
        if depth == 0:
            m = re.match(r"^(\w+)\s*\{", stripped)
            if m:
                current = m.group(1)
        if depth >= 1 and current and current.lower() == resource.lower():
            m = re.match(r'^([A-Za-z][A-Za-z ]*?)\s*=\s*("(?:[^"\\]|\\.)*"|[^#]*)', stripped)
            if m and m.group(1).replace(" ", "").lower() == want:
                values.append(_unquote(m.group(2).strip()))
        depth += stripped.count("{") - stripped.count("}")
    return values
