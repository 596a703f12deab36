"""debian/ and man/ agree with the code (the package itself is built and installed by
tests/vm/test_deb_package.py): version, the files debian/* names, the unit's path fix, the man
pages (render without warnings, name every option of the command line)."""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import domu_snapshot
from domu_snapshot import cli, config

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"
MAN_PAGES = ["man/domu-snapshot.8", "man/foreach-domu.8", "man/domu-snapshot.conf.5"]


def _lines(name):
    return [line.strip() for line in (DEBIAN / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_changelog_version_is_the_module_version():
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"^domu-snapshot \(([^)]+)\) (\S+);", first)
    assert match, first
    assert match.group(1) == domu_snapshot.__version__
    assert (DEBIAN / "source/format").read_text().strip() == "3.0 (native)"


def test_files_named_by_debian_exist():
    for line in _lines("domu-snapshot.install"):
        assert (REPO / line.split()[0]).is_file(), line
    for line in _lines("domu-snapshot.examples"):
        assert list(REPO.glob(line)), f"debian/domu-snapshot.examples: nothing matches {line}"
    assert sorted(_lines("domu-snapshot.manpages")) == sorted(MAN_PAGES)


def test_rules_fix_the_units_command_path():
    unit = (REPO / "etc/systemd/domu-snapshot-cleanup.service").read_text()
    rules = (DEBIAN / "rules").read_text()
    # the repository's unit is for pip installs (/usr/local/bin); debian/rules rewrites this line
    assert "ExecStart=/usr/local/bin/domu-snapshot cleanup\n" in unit
    assert "s,^ExecStart=/usr/local/bin/domu-snapshot ,ExecStart=/usr/sbin/domu-snapshot ," in rules


def test_man_pages_render_without_warnings():
    for page in MAN_PAGES:
        proc = subprocess.run(["man", "--warnings", "-l", str(REPO / page)], capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LANG": "C.UTF-8"})
        assert proc.returncode == 0 and not proc.stderr.strip(), f"{page}: {proc.stderr}"
        assert "domu" in proc.stdout


def _long_options(parser):
    found = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.add(name)
                found.update(_long_options(sub))
    return found


def test_man_pages_name_every_option_and_key():
    page = (REPO / "man/domu-snapshot.8").read_text().replace("\\-", "-")
    missing = sorted(o for o in _long_options(cli._parser()) if o not in page)
    assert not missing, f"man/domu-snapshot.8 does not describe: {missing}"
    conf = (REPO / "man/domu-snapshot.conf.5").read_text().replace("\\-", "-")
    keys = set(config.KEYS) - {"vgs"}
    missing = sorted(k for k in keys | set(config.GUEST_KEYS) if not re.search(rf"\b{k}\b", conf))
    assert not missing, f"man/domu-snapshot.conf.5 does not describe: {missing}"
