"""The real-Bareos suite runs the shipped examples etc/bareos/*.conf with only their `# EDIT` lines
replaced (tests/bareos_bed.py): the replacement itself, and its refusal of anything else."""
from __future__ import annotations

import os

import pytest

from tests import bareos_bed

pytestmark = pytest.mark.vm

EXAMPLES = [bareos_bed.PLUGIN_EXAMPLE, bareos_bed.HELPERS_EXAMPLE, bareos_bed.CLIENT_EXAMPLE]


def _values(text):
    return {key: f"/bed/{key.replace(' ', '_')}" for key in bareos_bed.marked_keys(text)}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_edit_changes_marked_lines_only(example):
    text = example.read_text()
    edited = bareos_bed.edit_marked(text, _values(text))
    assert bareos_bed.unmarked_changes(text, edited) == []
    changed = [a for a, b in zip(text.split("\n"), edited.split("\n")) if a != b]
    assert len(changed) == len([l for l in text.split("\n")
                                if "# EDIT" in l and not l.lstrip().startswith("#")])
    assert bareos_bed.marked_keys(edited).keys() == bareos_bed.marked_keys(text).keys()


def test_an_unmarked_line_changed_is_refused():
    text = bareos_bed.PLUGIN_EXAMPLE.read_text()
    edited = bareos_bed.edit_marked(text, _values(text)).replace("Accurate = yes", "Accurate = no")
    assert edited != bareos_bed.edit_marked(text, _values(text))
    assert bareos_bed.unmarked_changes(text, edited), "a changed unmarked line went unnoticed"


def test_every_marked_key_needs_a_value_and_no_other_is_taken():
    text = bareos_bed.PLUGIN_EXAMPLE.read_text()
    values = _values(text)
    with pytest.raises(KeyError):
        bareos_bed.edit_marked(text, {k: v for k, v in values.items() if k != "client"})
    with pytest.raises(KeyError):
        bareos_bed.edit_marked(text, {**values, "not marked": "x"})


def test_plugin_fileset_options_come_out_as_given():
    text = bareos_bed.PLUGIN_EXAMPLE.read_text()
    edited = bareos_bed.edit_marked(text, {**_values(text), "mount_root": "/srv/a:b", "guest LV prefix": "vm-"})
    [fileset] = bareos_bed.resource_blocks(edited, "FileSet")
    assert '":prefix=vm-"' in fileset and '":mount_root=/srv/a\\\\:b"' in fileset
    assert '":module_name=bareos-fd-domu-snapshot"' in fileset


def test_no_bareos_is_an_error_of_one_line(tmp_path):
    """Without a Bareos the suite must fail, never pass or skip: locate() raises, in one line."""
    env = {"DOMU_BAREOS_TARBALL": str(tmp_path / "none.tar.xz")}
    with pytest.raises(bareos_bed.BareosMissing) as e:
        bareos_bed.locate(tmp_path, env=env, system_fd=str(tmp_path / "no-bareos-fd"))
    assert "\n" not in str(e.value) and "DOMU_BAREOS_HOME" in str(e.value)
    with pytest.raises(bareos_bed.BareosMissing):
        bareos_bed.locate(tmp_path, env={"DOMU_BAREOS_HOME": str(tmp_path)})


def test_the_bareos_found_is_a_usable_tree(tmp_path):
    """Whatever the source (DOMU_BAREOS_HOME, Debian's packages, the shared tarball unpacked)."""
    inst = bareos_bed.locate(tmp_path)
    assert (inst.plugins / "python3-fd.so").is_file() and os.access(inst.sbin / "bareos-fd", os.X_OK)
    assert (inst.ddl / "creates" / "postgresql.sql").is_file()
    assert inst.python is None or list(inst.python.glob("bareosfd*.so"))
