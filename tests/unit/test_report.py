"""report.py: the one renderer of a guest's result, for the CLI (and syslog) and the plugin's job
messages."""

from domu_snapshot import report
from domu_snapshot.errors import GuestError
from domu_snapshot.lifecycle import Disk, DiskResult, Guest, GuestResult
from domu_snapshot.partitions import Choice
from domu_snapshot.status import Status


def mounted(name="domu-web01", **fields):
    disk = Disk("vg0", name, f"/srv/domu-snapshot/vg0/{name}")
    result = GuestResult(Guest(name, [disk]), "mount", seconds=2.14, **fields)
    result.disks.append(DiskResult(disk, Choice(2, "ext4", 3 << 20, 1 << 30, "msdos", 512), "/dev/loop3",
                                   "journal replayed", mounted=True))
    return result


def test_a_mounted_guest_names_its_partition_replay_and_path():
    [(level, line)] = report.lines(mounted(quiesce="agent", freeze_ms=12.4))
    assert level == "info"
    assert line == ("OK      domu-web01: vg0/domu-web01: partition 2 (msdos), ext4 at byte 3145728, journal "
                    "replayed -> /srv/domu-snapshot/vg0/domu-web01, quiesce agent 12 ms  (2.1s)")


def test_the_plugin_line_is_the_same_detail_with_what_was_sent():
    result = mounted()
    line = report.detail(result, "11 entries (146.5 KiB), 3 files read (146.5 KiB)", [0.4, 2.5], paths=False,
                         seconds=9.81)
    assert line == ("vg0/domu-web01: partition 2 (msdos), ext4 at byte 3145728, journal replayed, 11 entries "
                    "(146.5 KiB), 3 files read (146.5 KiB), snapshot peak use 2.5%  (9.8s)")
    assert "peak use unknown" in report.detail(result, "", [], paths=False)


def test_a_torn_down_guest_says_its_peak_use_when_lvs_showed_it():
    disk = Disk("vg0", "domu-db", "/srv/x/vg0/domu-db")
    result = GuestResult(Guest("domu-db", [disk]), "unmount", seconds=0.42)
    result.disks.append(DiskResult(disk, peak_percent=7.25))
    assert report.lines(result) == [("info", "OK      domu-db: torn down, snapshot peak use 7.2%  (0.4s)")]
    result.disks[0].peak_percent = None
    assert report.lines(result) == [("info", "OK      domu-db: torn down  (0.4s)")]


def test_failed_skipped_and_held_guests():
    failed = GuestResult.failure(Guest("domu-a", []), "mount", "mount", "`mount` exited 32: bad superblock",
                                 "see dmesg")
    failed.notes.append("cleanup: nothing left")
    assert report.lines(failed) == [
        ("error", f"FAILED  {GuestError('domu-a', 'mount', '`mount` exited 32: bad superblock', 'see dmesg')}  "
                  f"(0.0s)"),
        ("warning", "        domu-a: cleanup: nothing left")]
    skipped = GuestResult(Guest("domu-swap", []), "mount", Status.SKIPPED, notes=["holds only swap"])
    assert report.lines(skipped) == [("warning", "SKIPPED domu-swap: holds only swap")]
    held = GuestResult(Guest("domu-h", []), "unmount", Status.HELD, notes=["left alone"])
    assert report.lines(held) == [("warning", "HELD    domu-h: left alone")]


def test_sizes():
    assert [report.size(n) for n in (19, 150016, 5 << 30, 3 << 40)] == ["19 B", "146.5 KiB", "5.0 GiB", "3.0 TiB"]
