import pytest

from domu_snapshot.config import Config, load_config
from domu_snapshot.errors import DomuError


def write(tmp_path, text):
    path = tmp_path / "domu-snapshot.conf"
    path.write_text(text)
    return str(path)


def test_defaults_when_no_file(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.prefix == "domu-"
    assert cfg.snapshot_size == "10%ORIGIN"
    assert cfg.partition == "auto"
    assert cfg.mount_root == "/var/lib/domu-snapshot/mnt"
    assert cfg.vgs == []


def test_file_values_and_guest_sections(tmp_path):
    path = write(tmp_path, """
[domu-snapshot]
prefix = vm-
vg = vg0, vg1
exclude = vm-scratch*
snapshot_size = 2G
mount_root = /srv/backup mnt
lock_timeout = 5

[guest vm-old]
partition = 2
snapshot_size = 20%ORIGIN
""")
    cfg = load_config(path)
    assert cfg.prefix == "vm-"
    assert cfg.vgs == ["vg0", "vg1"]
    assert cfg.exclude == ["vm-scratch*"]
    assert cfg.mount_root == "/srv/backup mnt"
    assert cfg.lock_timeout == 5.0
    assert cfg.for_guest("vm-old", "partition") == "2"
    assert cfg.for_guest("vm-old", "snapshot_size") == "20%ORIGIN"
    assert cfg.for_guest("vm-new", "snapshot_size") == "2G"


def test_command_line_overrides_file(tmp_path):
    path = write(tmp_path, "[domu-snapshot]\nprefix = vm-\n")
    cfg = load_config(path, {"prefix": "domu-", "vgs": ["vgx"], "dry_run": True})
    assert (cfg.prefix, cfg.vgs, cfg.dry_run) == ("domu-", ["vgx"], True)


@pytest.mark.parametrize("text, message", [
    ("[domu-snapshot]\nbogus = 1\n", "unknown option"),
    ("[elsewhere]\n", "unknown section"),
    ("[domu-snapshot]\nlock_timeout = soon\n", "bad value for lock_timeout"),
    ("[domu-snapshot]\nquiesce = freeze-hard\n", "quiesce must be one of"),
    ("[domu-snapshot]\npartition = first\n", "partition must be"),
    ("[domu-snapshot]\nmount_root = relative/path\n", "absolute"),
    ("[domu-snapshot]\nmount_root = /\n", "must not be /"),
    ("[domu-snapshot]\nprefix =\n", "every LV"),
    ("[domu-snapshot]\nfilesystems = xfs\n", "only ext2"),
    ("[guest g]\nmount_root = /x\n", "cannot be set per guest"),
    ("[domu-snapshot\n", "cannot read"),
])
def test_bad_configuration_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(DomuError, match=message):
        load_config(write(tmp_path, text))


def test_named_file_must_exist(tmp_path):
    with pytest.raises(DomuError, match="does not exist"):
        load_config(str(tmp_path / "missing.conf"))


def test_config_dataclass_is_independent_per_instance():
    a, b = Config(), Config()
    a.vgs.append("x")
    assert b.vgs == []
