"""Thin pools (issue 13): the pool fields of the `lvs` report, the refusal of snapshots in a pool at
or above its threshold, and the failure of a pool's guests when it ran full during the backup.

Pure logic on reports and system states built here; the VM suite runs the same on real dm-thin
pools (tests/vm/test_thin_pool.py).
"""

import pytest

from domu_snapshot import lvm
from domu_snapshot.config import Config, load_config
from domu_snapshot.errors import DomuError
from domu_snapshot.lifecycle import Disk, Guest, Runner, SystemState

GiB = 1024 ** 3
MiB = 1024 ** 2

# As `lvs --reportformat json --units b --nosuffix -o <lvm._REPORT_FIELDS>` prints them (LVM 2.03).
POOL_ROW = {"lv_name": "data", "vg_name": "pve", "lv_attr": "twi-aotz--", "lv_path": "", "lv_dm_path": "/dev/mapper/pve-data",
            "origin": "", "snap_percent": "", "data_percent": "91.25", "lv_tags": "", "lv_size": "1073741824",
            "lv_active": "active", "lv_kernel_major": "253", "lv_kernel_minor": "4", "segtype": "thin-pool",
            "pool_lv": "", "vg_extent_size": "4194304", "vg_free": "0", "lv_uuid": "x",
            "metadata_percent": "10.55", "lv_metadata_size": "4194304", "lv_health_status": "", "lv_when_full": "queue"}
THIN_ROW = dict(POOL_ROW, lv_name="vm-100-disk-0", lv_attr="Vwi-aotz--", lv_path="/dev/pve/vm-100-disk-0",
                data_percent="40.00", lv_size="34359738368", segtype="thin", pool_lv="data", metadata_percent="",
                lv_metadata_size="", lv_when_full="", lv_kernel_minor="5")


def row(base=POOL_ROW, **kw):
    return lvm._parse(dict(base, **kw))


def test_report_fields_of_pools_and_thin_lvs_are_parsed():
    assert {"data_percent", "metadata_percent", "lv_metadata_size", "lv_health_status", "pool_lv",
            "lv_size", "lv_when_full"} <= set(lvm._REPORT_FIELDS.split(","))
    pool = row()
    assert pool.is_thin_pool and pool.is_pool and not pool.is_thin
    assert (pool.data_percent, pool.metadata_percent, pool.size, pool.metadata_size) == (91.25, 10.55, GiB, 4 * MiB)
    assert pool.when_full == "queue" and pool.health == "" and pool.pool_full == ""
    assert pool.pool_use() == "data 91.2% of 1.00 GiB, metadata 10.6% of 4.0 MiB"
    thin = row(THIN_ROW)
    assert thin.is_thin and not thin.is_thin_pool and thin.pool_key == "pve/data"
    assert thin.metadata_percent is None and thin.metadata_size == 0
    assert row(POOL_ROW, data_percent="", metadata_percent="").pool_use() == \
        "data unknown of 1.00 GiB, metadata unknown of 4.0 MiB"
    classic = row(POOL_ROW, lv_attr="-wi-a-----", segtype="linear", data_percent="", metadata_percent="")
    assert not classic.is_thin_pool and classic.pool_key == "" and classic.pool_full == ""


@pytest.mark.parametrize("fields, full", [
    ({}, ""),
    ({"data_percent": "100.00"}, "data 100% used"),
    ({"metadata_percent": "100.00"}, "metadata 100% used"),
    ({"lv_health_status": "out_of_data"}, "out of data space"),
    ({"lv_health_status": "metadata_read_only"}, "metadata read-only"),
    ({"lv_health_status": "failed"}, "failed"),
    ({"lv_attr": "twi-aotzD-"}, "out of data space"),   # lv_attr[8], should the health field be empty
    ({"lv_attr": "twi-aotzM-"}, "metadata read-only"),
    ({"lv_attr": "twi-aotzF-"}, "failed"),
    ({"data_percent": "100.00", "lv_health_status": "out_of_data"}, "data 100% used, out of data space"),
    # back to writing after a commit freed a few blocks: all but full still counts
    ({"data_percent": "99.69", "lv_size": str(40 * MiB)}, "data 99.69% used, 127 KiB left"),
    ({"data_percent": "99.50"}, "data 99.50% used, 5.1 MiB left"),
    ({"data_percent": "99.00"}, ""),                                  # 1% of 1 GiB left
    ({"data_percent": "99.90", "lv_size": str(1024 * GiB)}, ""),      # 1 GiB left: more than 256 MiB
    ({"data_percent": "99.99", "lv_size": str(1024 * GiB)}, "data 99.99% used, 104.9 MiB left"),
    ({"metadata_percent": "99.95"}, "metadata 99.95% used, 2 KiB left"),
])
def test_a_full_pool_is_recognised(fields, full):
    assert row(**fields).pool_full == full


@pytest.mark.parametrize("data, meta, refused", [
    ("89.99", "79.99", None),
    ("90.00", "10.00", "data use 90.0% is at or above thin_pool_max_data_percent (90%)"),
    ("10.00", "80.00", "metadata use 80.0% is at or above thin_pool_max_metadata_percent (80%)"),
    ("95.00", "85.00", "data use 95.0% is at or above thin_pool_max_data_percent (90%) and metadata use"),
    ("", "", None),   # unknown (an inactive pool): not refused
    ("100.00", "5.00", "thin pool pve/data is full (data 100% used"),
])
def test_threshold_decision(data, meta, refused):
    why = lvm.pool_too_full(row(data_percent=data, metadata_percent=meta), 90.0, 80.0)
    if refused is None:
        assert why == ""
    else:
        assert refused in why and "pve/data" in why


def test_a_full_pool_is_refused_whatever_the_threshold():
    assert "is full (out of data space" in lvm.pool_too_full(row(data_percent="50", lv_health_status="out_of_data"),
                                                             100.0, 100.0)
    assert lvm.pool_too_full(row(data_percent="98.9"), 100.0, 100.0) == ""


# ------------------------------------------------------------------ configuration

def test_thresholds_are_configuration_keys_with_defaults(tmp_path):
    assert (Config().thin_pool_max_data_percent, Config().thin_pool_max_metadata_percent) == (90.0, 80.0)
    path = tmp_path / "c.conf"
    path.write_text("[domu-snapshot]\nthin_pool_max_data_percent = 75\nthin_pool_max_metadata_percent = 100\n")
    cfg = load_config(str(path))
    assert (cfg.thin_pool_max_data_percent, cfg.thin_pool_max_metadata_percent) == (75.0, 100.0)


@pytest.mark.parametrize("key", ["thin_pool_max_data_percent", "thin_pool_max_metadata_percent"])
@pytest.mark.parametrize("value", ["0", "-5", "100.5", "nan", "inf", "lots"])
def test_thresholds_are_range_checked(tmp_path, key, value):
    path = tmp_path / "c.conf"
    path.write_text(f"[domu-snapshot]\n{key} = {value}\n")
    with pytest.raises(DomuError, match=key):
        load_config(str(path))


# ------------------------------------------------------------------ the space check

def runner_with(volumes, **cfg):
    runner = Runner(Config(mount_root="/nonexistent/mnt", vgs=["pve"], **cfg))
    runner._volumes = volumes
    return runner


def guest_of(lv):
    return Guest(lv.name, [Disk(lv.vg, lv.name, f"/nonexistent/mnt/{lv.vg}/{lv.name}", lv)])


def test_space_check_refuses_guests_in_a_full_pool_only():
    full = row(data_percent="93.50", metadata_percent="20.00")
    roomy = row(lv_name="roomy", data_percent="10.00", metadata_percent="5.00")
    in_full = row(THIN_ROW)
    in_roomy = row(THIN_ROW, lv_name="vm-101-disk-0", pool_lv="roomy")
    classic = row(THIN_ROW, lv_name="vm-102-disk-0", lv_attr="-wi-ao----", segtype="linear", pool_lv="",
                  lv_size=str(64 * MiB), vg_free=str(GiB))
    runner = runner_with([full, roomy, in_full, in_roomy, classic])
    guests = [guest_of(lv) for lv in (in_full, in_roomy, classic)]
    errors = runner.check_space(guests)
    assert list(errors) == ["vm-100-disk-0"]
    error = errors["vm-100-disk-0"]
    assert error.step == "space check" and error.guest == "vm-100-disk-0"
    text = str(error)
    assert "thin pool pve/data" in text and "data use 93.5% is at or above thin_pool_max_data_percent (90%)" in text
    assert "metadata 20.0%" in text and "nothing was created" in text
    assert "lvextend -L +SIZE pve/data" in text and "--poolmetadatasize" in text and "remove thin LVs" in text
    # a higher threshold lets it through
    assert runner_with([full, in_full], thin_pool_max_data_percent=95).check_space([guest_of(in_full)]) == {}


def test_space_check_refuses_a_whole_multi_disk_guest_and_skips_inactive_ones():
    full = row(metadata_percent="85.00", data_percent="1.00")
    disk0, disk1 = row(THIN_ROW, pool_lv="elsewhere"), row(THIN_ROW, lv_name="vm-100-disk-1")
    runner = runner_with([full, disk0, disk1])
    guest = Guest("vm100", [Disk("pve", d.name, f"/nonexistent/mnt/pve/{d.name}", d) for d in (disk0, disk1)], "vm100")
    errors = runner.check_space([guest])
    assert list(errors) == ["vm100"] and "pve/vm-100-disk-1 is a thin LV in thin pool pve/data" in str(errors["vm100"])
    disk1.active = False
    assert runner.check_space([guest]) == {}


# ------------------------------------------------------------------ teardown

def our_thin_snapshot(origin="vm-100-disk-0", pool="data"):
    return row(THIN_ROW, lv_name=origin + lvm.SUFFIX, origin=origin, lv_attr="Vri-a-tz-k", pool_lv=pool,
               lv_tags=lvm.TAG, lv_kernel_minor="9")


@pytest.fixture
def removed(monkeypatch):
    removed = []
    monkeypatch.setattr(lvm, "remove_snapshot", lambda lv, retries=5: removed.append(lv.key))
    return removed


def teardown(pool, stale=False):
    runner = runner_with([])
    snap = our_thin_snapshot()
    state = SystemState(mounts=[], loops=[], snapshots={snap.key: snap}, pools={pool.key: pool})
    guest = Guest("vm-100-disk-0", [Disk("pve", "vm-100-disk-0", "/nonexistent/mnt/pve/vm-100-disk-0")])
    return runner.teardown([guest], state, stale=stale)[0]


@pytest.mark.parametrize("fields", [{"data_percent": "100.00"}, {"metadata_percent": "100.00"}, {"data_percent": "99.8"},
                                    {"lv_health_status": "out_of_data"}, {"lv_attr": "twi-aotzF-"}])
def test_a_pool_that_ran_full_fails_its_guests_at_teardown(removed, fields):
    result = teardown(row(**fields))
    assert result.status == "failed" and not result.ok
    assert result.error.step == "thin pool"
    text = str(result.error)
    assert "thin pool pve/data ran full during the backup" in text
    assert "the files read may be incomplete" in text and "not reliable" in text
    assert "stalled (queued)" in text   # lv_when_full queue
    assert removed == ["pve/vm-100-disk-0-dsnap"]  # torn down all the same


def test_a_pool_with_room_left_tears_down_ok(removed):
    result = teardown(row(data_percent="98.00"))
    assert result.ok and result.error is None and removed == ["pve/vm-100-disk-0-dsnap"]


def test_a_stale_snapshot_in_a_full_pool_is_a_note(removed):
    result = teardown(row(data_percent="100.00"), stale=True)
    assert result.ok and any("ran full" in note for note in result.notes)


# ------------------------------------------------------------------ status

def status_of(pool, monkeypatch, capsys, json_mode=False):
    """`domu-snapshot status` of one mounted thin snapshot in `pool` (its loop device's backing
    rdev is the snapshot's)."""
    import argparse
    import json

    from domu_snapshot import cli, loop
    snap = our_thin_snapshot()
    device = loop.LoopDevice("/dev/loop7", "/dev/mapper/pve-vm--100--disk--0--dsnap", 1048576, 0)
    monkeypatch.setattr(loop.LoopDevice, "backing_rdev", lambda self: (snap.major, snap.minor))
    state = SystemState(mounts=[("/srv/domu/pve/vm-100-disk-0", "/dev/loop7")], loops=[device],
                        snapshots={snap.key: snap}, pools={pool.key: pool})
    runner = runner_with([])
    monkeypatch.setattr(runner, "system_state", lambda *a, **kw: state)
    assert cli.cmd_status(runner, argparse.Namespace(json=json_mode), print) == 0
    out = capsys.readouterr().out
    return json.loads(out) if json_mode else out


def test_status_flags_a_mounted_snapshot_whose_pool_ran_full(monkeypatch, capsys):
    text = status_of(row(data_percent="100.00"), monkeypatch, capsys)
    assert "mounted   /srv/domu/pve/vm-100-disk-0" in text
    assert "THIN POOL pve/data FULL (data 100% used): backup from it is unreliable" in text
    record = status_of(row(lv_health_status="out_of_data"), monkeypatch, capsys, json_mode=True)["mounted"][0]
    assert record["thin_pool"] == "pve/data" and "out of data space" in record["thin_pool_full"]


def test_status_of_a_snapshot_in_a_pool_with_room_has_no_warning(monkeypatch, capsys):
    text = status_of(row(data_percent="60.00"), monkeypatch, capsys)
    assert "mounted   /srv/domu/pve/vm-100-disk-0" in text and "FULL" not in text
    record = status_of(row(data_percent="60.00"), monkeypatch, capsys, json_mode=True)["mounted"][0]
    assert record["thin_pool"] == "pve/data" and record["thin_pool_full"] == ""
