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
    ("[domu-snapshot]\nfilesystems = btrfs\n", "only ext2, ext3, ext4 and xfs"),
    ("[guest g]\nmount_root = /x\n", "cannot be set per guest"),
    ("[domu-snapshot\n", "cannot read"),
    # range-checked when loaded (issue 13), each naming the key
    ("[domu-snapshot]\nbusy_retries = 0\n", "busy_retries must be at least 1"),
    ("[domu-snapshot]\nbusy_retries = -3\n", "busy_retries must be at least 1"),
    ("[domu-snapshot]\nlock_timeout = nan\n", "lock_timeout must be a finite number"),
    ("[domu-snapshot]\nlock_timeout = inf\n", "lock_timeout must be a finite number"),
    ("[domu-snapshot]\nlock_timeout = -1\n", "lock_timeout must be at least 0"),
    ("[domu-snapshot]\nquiesce_timeout = -5\n", "quiesce_timeout must be more than 0"),
    ("[domu-snapshot]\nquiesce_timeout = 0\n", "quiesce_timeout must be more than 0"),
    ("[domu-snapshot]\nsettle_timeout = nan\n", "settle_timeout must be a finite"),
    ("[domu-snapshot]\nchunk_size = banana\n", "bad value for chunk_size"),
    ("[domu-snapshot]\nchunk_size = 3k\n", "chunk_size: '3k': LVM takes a power of 2"),
    ("[domu-snapshot]\nchunk_size = 1m\n", "chunk_size: '1m': LVM takes a power of 2"),
    ("[domu-snapshot]\nsnapshot_size = lots\n", "bad value for snapshot_size"),
    ("[domu-snapshot]\nsnapshot_size = 2GiB\n", "bad value for snapshot_size"),
    ("[domu-snapshot]\nsnapshot_size = 0\n", "bad value for snapshot_size"),
    ("[domu-snapshot]\nsnapshot_size = 10%FREE\n", "snapshot_size.*only N%ORIGIN"),
    ("[domu-snapshot]\nsnapshot_size = 200%ORIGIN\n", "snapshot_size.*percentage"),
    ("[guest g]\nsnapshot_size = 8 gigs\n", r"\[guest g\]: bad value for snapshot_size"),
    ("[guest g]\nchunk_size = 7\n", r"\[guest g\]: bad value for chunk_size"),
    ("[guest g]\npartition = -1\n", r"\[guest g\]: partition must be"),
    ("[domu-snapshot]\nallow_empty = maybe\n", "bad value for allow_empty"),
    ("[guest g]\nguest_filesystems = every\n", r"\[guest g\]: guest_filesystems must be one of first, all"),
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


@pytest.mark.parametrize("key, value", [
    ("lock_timeout", float("nan")), ("busy_retries", 0), ("quiesce_timeout", -1.0),
    ("snapshot_size", "banana"), ("chunk_size", "banana"),
])
def test_command_line_values_are_range_checked_too(tmp_path, key, value):
    with pytest.raises(DomuError, match=key):
        load_config(write(tmp_path, ""), {key: value})


@pytest.mark.parametrize("text", [
    "snapshot_size = 2G", "snapshot_size = 512m", "snapshot_size = 100", "snapshot_size = 1.5g",
    "snapshot_size = 20%ORIGIN", "snapshot_size = 4096s", "chunk_size = 64k", "chunk_size = 4096b",
    "chunk_size = 512K", "chunk_size = 8", "busy_retries = 1", "lock_timeout = 0", "partition = 0",
    "partition = whole", "partition = 5", "allow_empty = yes",
])
def test_good_values_are_accepted(tmp_path, text):
    load_config(write(tmp_path, f"[domu-snapshot]\n{text}\n"))


def test_partition_0_means_the_whole_lv():
    """As `list` shows it (0 = whole) and as the configuration documents it: not "auto"."""
    from domu_snapshot import partitions
    from domu_snapshot.errors import ProbeError
    whole = {"sector_size": 512, "length": 2048, "label": "loop",
             "partitions": [{"number": 1, "start": 0, "length": 2048, "fs": "ext4", "kind": "normal"}]}
    table = {"sector_size": 512, "length": 4096, "label": "msdos",
             "partitions": [{"number": 1, "start": 2048, "length": 2048, "fs": "ext4", "kind": "normal"}]}
    assert partitions.choose(whole, "0").number == 0
    assert partitions.choose(whole, "0") == partitions.choose(whole, "whole")
    with pytest.raises(ProbeError, match="partition=whole"):
        partitions.choose(table, "0")  # a table: 0 does not quietly mean "auto"
    assert partitions.choose(table, "auto").number == 1


@pytest.mark.parametrize("args, text, key", [
    (["--lock-timeout", "nan"], "", "lock_timeout"),
    (["--quiesce-timeout", "-1"], "", "quiesce_timeout"),
    (["--snapshot-size", "10%VG"], "", "snapshot_size"),
    (["--chunk-size", "banana"], "", "chunk_size"),
    ([], "[domu-snapshot]\nbusy_retries = 0\n", "busy_retries"),
])
def test_the_cli_exits_2_naming_the_key_before_anything_runs(tmp_path, capsys, args, text, key):
    from domu_snapshot import cli
    path = write(tmp_path, text)
    assert cli.main(["--no-syslog", "--config", path, *args, "unmount", "--all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("domu-snapshot: ") and key in err


def test_a_disk_section_applies_to_that_disk_of_a_grouped_guest(tmp_path):
    """libvirt groups domain db01's LVs into one guest named db01; `[guest LV]` still sets that
    disk's values, before the domain's section, which sets the rest."""
    from domu_snapshot.lifecycle import Disk, Guest
    path = tmp_path / "c.conf"
    path.write_text("[domu-snapshot]\nsnapshot_size = 10%ORIGIN\n"
                    "[guest db01]\nsnapshot_size = 2G\npartition = 1\n"
                    "[guest domu-db01-data]\nsnapshot_size = 8G\npartition = whole\n"
                    "[guest vg1/domu-db01-logs]\nchunk_size = 64k\n")
    cfg = load_config(str(path))
    root, data, logs = (Disk("vg1", lv, f"/m/vg1/{lv}") for lv in ("domu-db01", "domu-db01-data", "domu-db01-logs"))
    guest = Guest("db01", [root, data, logs], domain="db01")
    assert [cfg.for_disk(guest, d, "snapshot_size") for d in guest.disks] == ["2G", "8G", "2G"]
    assert [cfg.for_disk(guest, d, "partition") for d in guest.disks] == ["1", "whole", "1"]
    assert [cfg.for_disk(guest, d, "chunk_size") for d in guest.disks] == ["", "", "64k"]
    alone = Guest("domu-web01", [Disk("vg1", "domu-web01", "/m/vg1/domu-web01")])
    assert cfg.for_disk(alone, alone.disks[0], "snapshot_size") == "10%ORIGIN"
