"""Restore through the plugin: CF_CORE under `where`, paths that would escape are refused."""

import os
import stat

import pytest

from tests import fd_harness
from tests.fd_harness import Record, bareosfd

from domu_snapshot.bareos import restore as plugin  # noqa: E402  (after the stand-in)
DEFINITION = f"python3:module_path={fd_harness.PLUGIN_DIR}:module_name={fd_harness.PLUGIN_MODULE}:" \
             "mount_root=/var/lib/domu-snapshot/mnt"


def _stat(mode, size=0, uid=0, gid=0, mtime=1_600_000_000):
    return {"st_dev": 1, "st_ino": 10, "st_mode": mode, "st_nlink": 1, "st_uid": uid,
            "st_gid": gid, "st_rdev": 0, "st_size": size, "st_atime": mtime, "st_mtime": mtime,
            "st_ctime": mtime, "st_blksize": 4096, "st_blocks": 0}


def regular(fname, data, mode=0o640, **kw):
    return Record(fname=fname, type=bareosfd.FT_REG, stat=_stat(stat.S_IFREG | mode, len(data), **kw),
                  data=data)


def symlink(fname, target):
    return Record(fname=fname, type=bareosfd.FT_LNK, stat=_stat(stat.S_IFLNK | 0o777), link=target)


def directory(fname, mode=0o755, **kw):
    return Record(fname=fname, type=bareosfd.FT_DIREND, stat=_stat(stat.S_IFDIR | mode, **kw),
                  link=fname + "/")


@pytest.mark.parametrize("path, where, expected", [
    ("/r/var/lib/x", "/r", None),
    ("/tmp/../r/var/lib/x", "/tmp/../r", None),
    ("/r/var/../../etc/passwd", "/r", "'..' component"),
    ("/elsewhere/x", "/r", "outside where"),
    ("/var/lib/x", "", "original paths is refused"),
    ("/var/lib/x", "/", "original paths is refused"),
    ("/var/lib/domu-snapshot/mnt/r/x", "/var/lib/domu-snapshot/mnt/r", "inside the mount root"),
    ("relative/x", "/r", "not an absolute path"),
])
def test_restore_path_problem(path, where, expected):
    problem = plugin.restore_path_problem(path, where, "/var/lib/domu-snapshot/mnt")
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_symlink_inside_where_is_not_followed(tmp_path):
    where = tmp_path / "where"
    (where / "a").mkdir(parents=True)
    (where / "a" / "link").symlink_to(tmp_path / "outside")
    problem = plugin.restore_path_problem(str(where / "a" / "link" / "passwd"), str(where))
    assert "refusing to write" in problem
    assert plugin.restore_path_problem(str(where / "a" / "new" / "f"), str(where)) is None


def test_restore_writes_under_where_and_sets_attributes(monkeypatch, tmp_path):
    calls = fd_harness.install_dir_runner(monkeypatch, [])
    where = tmp_path / "where"
    base = "/var/lib/domu-snapshot/mnt/vg0/domu-a"
    records = [
        regular(f"{base}/etc/motd", b"hello\n", mode=0o604, uid=1234, gid=2345, mtime=1_500_000_000),
        symlink(f"{base}/etc/localtime", "/usr/share/zoneinfo/UTC"),
        directory(f"{base}/etc", mode=0o711, uid=3, gid=4, mtime=1_400_000_000),
    ]
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore(records, str(where))
    assert job.errors == []
    assert statuses == {records[0].fname: "extract", records[1].fname: "created",
                        records[2].fname: "created"}
    motd = os.lstat(f"{where}{base}/etc/motd")
    assert (stat.S_IMODE(motd.st_mode), motd.st_uid, motd.st_gid, int(motd.st_mtime)) == \
        (0o604, 1234, 2345, 1_500_000_000)
    assert open(f"{where}{base}/etc/motd", "rb").read() == b"hello\n"
    assert os.readlink(f"{where}{base}/etc/localtime") == "/usr/share/zoneinfo/UTC"
    etc = os.lstat(f"{where}{base}/etc")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, int(etc.st_mtime)) == (0o711, 3, 1_400_000_000)
    assert calls == []  # a restore never makes a Runner: no LV is touched


def test_escaping_paths_are_refused(monkeypatch, tmp_path):
    fd_harness.install_dir_runner(monkeypatch, [])
    where = tmp_path / "where"
    outside = tmp_path / "outside"
    outside.mkdir()
    records = [
        regular("/../../outside/evil", b"x"),             # where + fname climbs out
        symlink("/guest/etc", str(outside)),               # a symlink in the restored tree ...
        regular("/guest/etc/passwd", b"root::0:0::/:/bin/sh\n"),  # ... must not redirect this
    ]
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore(records, str(where))
    assert statuses[records[0].fname] == "error"
    assert statuses[records[1].fname] == "created"
    assert statuses[records[2].fname] == "error"
    refused = [text for text in job.errors if "restore refused" in text]
    assert len(refused) == 2
    assert os.listdir(outside) == []
    assert not (tmp_path / "outside" / "evil").exists()


def test_restore_to_the_original_paths_is_refused(monkeypatch, tmp_path):
    fd_harness.install_dir_runner(monkeypatch, [])
    target = tmp_path / "orig" / "file"
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore([regular(str(target), b"x")], "")
    assert statuses == {str(target): "error"}
    assert any("original paths is refused" in text for text in job.errors)
    assert not target.exists()


def test_restore_without_in_core_io(monkeypatch, tmp_path):
    """A bareosfd without iostat_do_in_core: the plugin writes through IO_WRITE itself."""
    monkeypatch.delattr(bareosfd, "iostat_do_in_core")
    data = os.urandom(200_000)
    record = regular("/g/big", data)
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore([record], str(tmp_path / "w"))
    assert job.errors == [] and statuses == {"/g/big": "extract"}
    assert (tmp_path / "w" / "g" / "big").read_bytes() == data


def _add_prefix(prefix, strip=""):
    """bconsole's strip_prefix/add_prefix as lib/breg.cc's bregexp_build_where writes them."""
    parts = [f"!{strip}!!i"] if strip else []
    return ",".join(parts + [f"!^!{prefix}!"])


def test_strip_and_add_prefix_restore_is_refused_with_one_fatal_line(monkeypatch, tmp_path):
    """bareos-fd 25 with regexwhere: `where` and `regexwhere` are empty and the names arrive
    rewritten, so the plugin cannot know the target: one M_FATAL (the real daemon then ends
    the job) that says to restore with where=, nothing written."""
    fd_harness.install_dir_runner(monkeypatch, [])
    base = "/var/lib/domu-snapshot/mnt/vg0/domu-a"
    target = tmp_path / "r"
    records = [regular(f"{base}/etc/motd", b"hi\n"), directory(f"{base}/etc")]
    regexwhere = _add_prefix(str(target), strip="/var/lib/domu-snapshot/mnt")
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore(records, None, regexwhere=regexwhere)
    assert set(statuses.values()) == {"error"}
    refusals = [t for t in job.fatal if "restore refused" in t]
    assert len(refusals) == 1 and "strip_prefix" in refusals[0] and "restore with where=DIR" in refusals[0]
    assert not target.exists()


def test_strip_and_add_prefix_restore_lands_in_the_prefix(monkeypatch, tmp_path):
    """A file daemon that told the plugin the regexwhere (25.1.0 does not): confined to add_prefix."""
    fd_harness.install_dir_runner(monkeypatch, [])
    base = "/var/lib/domu-snapshot/mnt/vg0/domu-a"
    target = tmp_path / "r"
    records = [regular(f"{base}/etc/motd", b"hi\n"), directory(f"{base}/etc")]
    regexwhere = _add_prefix(str(target), strip="/var/lib/domu-snapshot/mnt")
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore(records, None, regexwhere=regexwhere,
                                                              tells_regexwhere=True)
    assert job.errors == [], job.messages
    assert (target / "vg0" / "domu-a" / "etc" / "motd").read_bytes() == b"hi\n"
    assert set(statuses.values()) == {"extract", "created"}


def test_regexwhere_restore_stays_below_its_prefix(monkeypatch, tmp_path):
    fd_harness.install_dir_runner(monkeypatch, [])
    target, outside = tmp_path / "r", tmp_path / "outside"
    outside.mkdir()
    records = [symlink("/g/etc", str(outside)), regular("/g/etc/passwd", b"x"),
               regular("/g/../../outside/evil", b"x")]
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore(
        records, None, regexwhere=_add_prefix(str(target)), tells_regexwhere=True)
    assert statuses == {"/g/etc": "created", "/g/etc/passwd": "error",
                        "/g/../../outside/evil": "error"}
    assert os.listdir(outside) == []


def test_regexwhere_without_a_prefix_is_refused(monkeypatch, tmp_path):
    """strip_prefix alone would write a guest's /etc over the host's own."""
    fd_harness.install_dir_runner(monkeypatch, [])
    record = regular(f"{tmp_path}/mnt/vg0/g/etc/hostname", b"x")
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore(
        [record], None, regexwhere=f"!{tmp_path}/mnt/vg0/g!!i", tells_regexwhere=True)
    assert statuses == {record.fname: "error"}
    assert any("has no add_prefix" in text for text in job.errors)
    assert not (tmp_path / "etc").exists()


def test_a_fifo_is_recreated_without_reading_it(monkeypatch, tmp_path):
    fd_harness.install_dir_runner(monkeypatch, [])
    record = Record(fname="/g/run/ctl", type=bareosfd.FT_SPEC, stat=_stat(stat.S_IFIFO | 0o620))
    job, statuses = fd_harness.FileDaemon(DEFINITION).restore([record], str(tmp_path / "w"))
    assert job.errors == [] and statuses == {"/g/run/ctl": "created"}
    made = os.lstat(tmp_path / "w" / "g" / "run" / "ctl")
    assert stat.S_ISFIFO(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o620
