"""Helpers mode: what `mount --all` lost is kept beside the run lock until `unmount --all`."""

import os

from domu_snapshot import cli
from domu_snapshot.config import Config


def test_lost_guests_are_reported_once_then_forgotten(tmp_path):
    cfg = Config(lock_file=str(tmp_path / "lock"))
    cli._record_mount_failures(cfg, ["domu-web01", "domu-db"])
    assert oct(os.stat(tmp_path / cli.MOUNT_FAILURES).st_mode & 0o777) == "0o600"
    assert cli._take_mount_failures(cfg) == ["domu-web01", "domu-db"]
    assert cli._take_mount_failures(cfg) == []          # the next job starts clean


def test_a_mount_without_losses_clears_an_older_record(tmp_path):
    cfg = Config(lock_file=str(tmp_path / "lock"))
    cli._record_mount_failures(cfg, ["domu-old"])       # an After script that never ran
    cli._record_mount_failures(cfg, [])
    assert cli._take_mount_failures(cfg) == []


def test_a_planted_symlink_is_not_followed(tmp_path):
    cfg = Config(lock_file=str(tmp_path / "lock"))
    target = tmp_path / "victim"
    target.write_text("keep\n")
    os.symlink(target, tmp_path / cli.MOUNT_FAILURES)
    try:
        cli._record_mount_failures(cfg, ["domu-x"])
    except OSError:
        pass
    assert target.read_text() == "keep\n"
