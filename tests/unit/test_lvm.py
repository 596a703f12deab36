import pytest

from domu_snapshot import lvm


def volume(name="domu-web01", vg="vg0", size=10 * 1024**3, extent=4 * 1024**2, attr="-wi-a-----", **kw):
    fields = dict(vg=vg, name=name, attr=attr, path=f"/dev/{vg}/{name}", dm_path="", origin="",
                  snap_percent=None, data_percent=None, tags=[], size=size, active=True, major=253, minor=0,
                  segtype="linear", pool="", extent_size=extent, vg_free=0)
    fields.update(kw)
    return lvm.LogicalVolume(**fields)


def test_dm_name_doubles_hyphens():
    assert lvm.dm_name("vg-a", "domu-web01") == "vg--a-domu--web01"
    assert lvm.dm_name("vg.b+c_d", "lv") == "vg.b+c_d-lv"


def test_snapshot_name_within_limits():
    assert lvm.check_snapshot_name("vg0", "domu-web01") is None


def test_snapshot_name_too_long_for_device_mapper():
    # 100 characters of LV name, 50 of them hyphens that count twice.
    origin = "domu-" + "-".join(["a"] * 48)
    assert len(origin) < lvm.LV_NAME_MAX
    problem = lvm.check_snapshot_name("vg-0", origin)
    assert problem and "device-mapper name" in problem and "127" in problem


def test_longest_accepted_name_is_exactly_at_the_limit():
    vg = "vg"
    # dm name of the snapshot's cow device: "vg-" + name + "-dsnap" + "-cow"
    # (the suffix's own hyphen is doubled too)
    budget = lvm.DM_NAME_MAX - len("vg-") - len(lvm.dm_name("", lvm.SUFFIX)) + 1 - len("-cow")
    assert lvm.check_snapshot_name(vg, "d" * budget) is None
    assert lvm.check_snapshot_name(vg, "d" * (budget + 1)) is not None


@pytest.mark.parametrize("spec, expected", [
    ("2G", ("bytes", 2 * 1024**3)),
    ("512M", ("bytes", 512 * 1024**2)),
    ("512m", ("bytes", 512 * 1024**2)),
    ("100", ("bytes", 100 * 1024**2)),  # LVM's default unit is MiB
    ("1.5g", ("bytes", int(1.5 * 1024**3))),
    ("10%ORIGIN", ("percent", 10.0)),
    ("25%origin", ("percent", 25.0)),
])
def test_parse_size(spec, expected):
    assert lvm.parse_size(spec) == expected


@pytest.mark.parametrize("spec", ["", "lots", "0", "0%ORIGIN", "150%ORIGIN", "10%FREE", "-1G"])
def test_bad_sizes_are_rejected(spec):
    with pytest.raises(ValueError):
        lvm.parse_size(spec)


def test_snapshot_extents_round_up_to_whole_extents():
    origin = volume(size=1000 * 1024**2, extent=4 * 1024**2)
    assert lvm.snapshot_extents(origin, "10%ORIGIN") == 25  # 100 MiB / 4 MiB
    assert lvm.snapshot_extents(origin, "1M") == 1
    assert lvm.snapshot_extents(origin, "5M") == 2


def test_only_tagged_snapshots_are_ours_and_removable():
    origin = volume()
    with pytest.raises(ValueError, match="refusing"):
        lvm.remove_snapshot(origin)
    untagged_snapshot = volume(name="domu-web01-dsnap", attr="swi-a-s---", origin="domu-web01")
    assert not untagged_snapshot.ours
    with pytest.raises(ValueError, match="refusing"):
        lvm.remove_snapshot(untagged_snapshot)
    ours = volume(name="domu-web01-dsnap", attr="swi-a-s---", origin="domu-web01", tags=[lvm.TAG])
    assert ours.ours and ours.is_snapshot


@pytest.mark.parametrize("attr, percent, invalid", [
    ("swi-a-s---", 12.5, False),
    ("swi-a-s---", 100.0, True),
    ("swi-I-s---", None, True),
    ("Swi-I-s---", None, True),
])
def test_overflowed_snapshots_are_detected(attr, percent, invalid):
    lv = volume(name="x-dsnap", attr=attr, snap_percent=percent, origin="x", tags=[lvm.TAG])
    assert lv.invalid is invalid


def test_kinds_of_volume():
    assert volume(attr="twi-a-tz--", segtype="thin-pool").is_pool
    assert volume(name="[lvol0_pmspare]", attr="ewi-------").is_hidden
    thin = volume(attr="Vwi-a-tz--", segtype="thin", pool="pool")
    assert thin.is_thin and not thin.is_snapshot
    thin_snap = volume(attr="Vwi---tz-k", segtype="thin", pool="pool", origin="x")
    assert thin_snap.is_snapshot
