"""Extended attributes and POSIX ACLs through the plugin, on a real ext4 filesystem.

A small ext4 image is loop-mounted for the module (ext4 keeps user.*, trusted.*, security.* and
POSIX ACLs whatever the host's /tmp is). Backups and restores go through tests/fd_harness, which
calls get_acl/get_xattr/set_acl/set_xattr as bareos-fd does.
"""

import errno
import os
import stat
import struct
import subprocess

import pytest

from tests import fd_harness
from tests.fd_harness import FakeGuest, FileDaemon, Record, bareosfd

# security.capability as the kernel stores it (VFS_CAP_REVISION_2, effective): cap_net_raw (13),
# what ping carries
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
SELINUX = b"system_u:object_r:ping_exec_t:s0\0"


def run(*argv):
    subprocess.run(list(argv), check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def ext4(tmp_path_factory):
    base = tmp_path_factory.mktemp("xattr-ext4")
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", str(image))
    run("mount", "-t", "ext4", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        try:
            run("umount", str(mnt))
        except subprocess.CalledProcessError:
            run("umount", "-l", str(mnt))


@pytest.fixture
def area(ext4, request):
    """A fresh directory on the ext4 mount for one test."""
    path = ext4 / request.node.name.replace("[", "_").replace("]", "_")
    path.mkdir()
    return path


@pytest.fixture(autouse=True)
def no_config_file(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "no-such.conf"))


def definition():
    return fd_harness.example_plugin_definition(module_path=str(fd_harness.PLUGIN_DIR))


def xattrs(path):
    """name -> value of a path's own attributes (a symlink's, not its target's)."""
    return {name: os.getxattr(path, name, follow_symlinks=False)
            for name in os.listxattr(path, follow_symlinks=False)}


def getfacl(path):
    out = subprocess.run(["getfacl", "--numeric", "--absolute-names", "--omit-header",
                          str(path)], check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.split("\n")


def backup(monkeypatch, root):
    fd_harness.install_dir_runner(monkeypatch, [FakeGuest("domu-a", [root])])
    fd = FileDaemon(definition())
    result = fd.backup()
    assert result.status == "T", result.job.messages
    return fd, result


def restored(where, path):
    return where / str(path).lstrip("/")


def build_guest(root):
    (root / "bin").mkdir(parents=True)
    (root / "srv" / "shared").mkdir(parents=True)
    ping = root / "bin" / "ping"
    ping.write_bytes(b"\x7fELF not really")
    os.chmod(ping, 0o755)
    os.setxattr(ping, "security.capability", CAP_NET_RAW)
    os.setxattr(ping, "security.selinux", SELINUX)
    notes = root / "srv" / "notes.txt"
    notes.write_text("text\n")
    os.setxattr(notes, "user.comment", b"hello \xff binary")
    os.setxattr(notes, "user.empty", b"")
    os.setxattr(notes, "trusted.origin", b"guest")
    run("setfacl", "-m", "u:1234:rwx,g:4321:r", str(notes))
    shared = root / "srv" / "shared"
    os.setxattr(shared, "user.dir", b"on a directory")
    run("setfacl", "-m", "u:1234:rwx", str(shared))
    run("setfacl", "-d", "-m", "u:1234:rx,g:4321:rx", str(shared))
    (root / "plain").write_text("no attributes\n")
    return {"ping": ping, "notes": notes, "shared": shared, "plain": root / "plain"}


def test_attributes_and_acls_survive_backup_and_restore(monkeypatch, area):
    paths = build_guest(area / "guest")
    before = {key: (xattrs(path), getfacl(path)) for key, path in paths.items()}
    assert "system.posix_acl_default" in before["shared"][0]  # the ACLs are really there
    fd, result = backup(monkeypatch, area / "guest")
    assert result.job.errors == [] and result.job.texts(bareosfd.M_WARNING) == []
    by_name = result.by_name()
    assert all(r.acl is None for r in result.records)  # ACLs go in the xattr stream
    notes = dict(by_name[str(paths["notes"])].xattrs)
    assert notes[b"user.empty"] is None  # an empty value travels as "no value"
    assert {b"user.comment", b"trusted.origin", b"system.posix_acl_access"} <= set(notes)

    where = area / "restore"
    job, statuses = fd.restore(result.records, str(where))
    assert job.errors == [], job.messages
    for key, path in paths.items():
        target = restored(where, path)
        assert (xattrs(target), getfacl(target)) == before[key], key
    assert fd_harness.compare_trees(area / "guest", restored(where, area / "guest")) == []
    # set after chown and after the data was written, which would have cleared it
    assert os.getxattr(restored(where, paths["ping"]), "security.capability") == CAP_NET_RAW


def test_entries_without_attributes_cost_one_listxattr_each(monkeypatch, area):
    root = area / "guest"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a").write_text("a")
    (root / "d" / "b").write_bytes(b"")
    (root / "d" / "l").symlink_to("a")
    (root / "two").write_text("x")
    os.setxattr(root / "two", "user.one", b"1")
    os.setxattr(root / "two", "user.two", b"2")
    listed, read = [], []
    real_list, real_get = os.listxattr, os.getxattr

    def listxattr(path, *, follow_symlinks=True):
        listed.append((str(path), follow_symlinks))
        return real_list(path, follow_symlinks=follow_symlinks)

    def getxattr(path, name, *, follow_symlinks=True):
        read.append((str(path), name, follow_symlinks))
        return real_get(path, name, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "listxattr", listxattr)
    monkeypatch.setattr(os, "getxattr", getxattr)
    _fd, result = backup(monkeypatch, root)
    names = [r.fname for r in result.records]
    assert sorted(listed) == sorted((name, False) for name in names)
    assert read == [(str(root / "two"), "user.one", False), (str(root / "two"), "user.two", False)]
    # one get_xattr call per entry, one more per further attribute; get_acl for all but symlinks
    assert result.calls.count("get_xattr") == len(names) + 1
    assert result.calls.count("get_acl") == len(names) - 1
    assert dict(result.by_name()[str(root / "two")].xattrs) == {b"user.one": b"1",
                                                                b"user.two": b"2"}
    assert [r.fname for r in result.records if r.xattrs] == [str(root / "two")]


def test_symlink_gets_its_own_attributes_not_its_targets(monkeypatch, area):
    root = area / "guest"
    root.mkdir()
    outside = area / "outside"
    outside.write_text("elsewhere")
    os.setxattr(outside, "user.outside", b"must not be read")
    target = root / "target"
    target.write_text("t")
    os.setxattr(target, "user.target", b"t")
    link = root / "link"
    link.symlink_to(target)
    os.setxattr(link, "trusted.link", b"own", follow_symlinks=False)  # user.* is refused on links
    (root / "away").symlink_to(outside)
    fd, result = backup(monkeypatch, root)
    by_name = result.by_name()
    assert by_name[str(link)].xattrs == [(b"trusted.link", b"own")]
    assert by_name[str(root / "away")].xattrs is None
    assert by_name[str(target)].xattrs == [(b"user.target", b"t")]

    where = area / "restore"
    job, _statuses = fd.restore(result.records, str(where))
    assert job.errors == [], job.messages
    assert xattrs(restored(where, target)) == {"user.target": b"t"}
    # restore.cc hands over attributes of extracted files and directories only, so the link's
    # own one is lost in the file daemon; it must not land on the target either
    assert xattrs(restored(where, link)) == {}
    assert xattrs(outside) == {"user.outside": b"must not be read"}


def test_attribute_that_cannot_be_restored_is_reported_and_others_still_set(area):
    where = area / "restore"
    st = {"st_dev": 1, "st_ino": 10, "st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_uid": 0,
          "st_gid": 0, "st_rdev": 0, "st_size": 2, "st_atime": 1_600_000_000,
          "st_mtime": 1_600_000_000, "st_ctime": 1_600_000_000, "st_blksize": 4096,
          "st_blocks": 0}
    record = Record(fname="/guest/f", type=bareosfd.FT_REG, stat=st, data=b"ok", file_index=1,
                    xattrs=[(b"bogus.name", b"1"), (b"security.capability", b"garbage"),
                            (b"user.fine", b"2")])
    fd = FileDaemon(definition())
    job, statuses = fd.restore([record], str(where))
    assert statuses == {"/guest/f": "extract"}
    path = where / "guest" / "f"
    assert xattrs(path) == {"user.fine": b"2"}
    errors = job.texts(bareosfd.M_ERROR)
    assert len(errors) == 1, job.messages  # one message for the file
    assert str(path) in errors[0] and "bogus.name (Operation not supported)" in errors[0]
    assert "security.capability (Invalid argument)" in errors[0]
    assert not any("(xattr error" in text for text in errors)  # the plugin answered bRC_OK


def test_directory_attributes_are_not_written_outside_where(area):
    """The fd hands a directory's attributes over even when create_file refused it."""
    where = area / "restore"
    escape = area / "escape"
    escape.mkdir()
    (where / "x").mkdir(parents=True)  # so that where/x/../../escape does reach it
    st = {"st_dev": 1, "st_ino": 11, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2,
          "st_uid": 0, "st_gid": 0, "st_rdev": 0, "st_size": 0, "st_atime": 1_600_000_000,
          "st_mtime": 1_600_000_000, "st_ctime": 1_600_000_000, "st_blksize": 4096,
          "st_blocks": 0}
    fname = "/x/../../escape"
    record = Record(fname=fname, type=bareosfd.FT_DIREND, stat=st, link=fname + "/",
                    file_index=1, xattrs=[(b"user.evil", b"1")])
    fd = FileDaemon(definition())
    job, statuses = fd.restore([record], str(where))
    assert statuses == {fname: "error"}
    assert "set_xattr" in fd.calls
    assert any("restore refused" in text for text in job.errors)
    assert xattrs(escape) == {}


def test_unreadable_attribute_is_reported_and_the_others_saved(monkeypatch, area):
    root = area / "guest"
    root.mkdir()
    f = root / "f"
    f.write_text("x")
    for name in ("user.a", "user.bad", "user.c"):
        os.setxattr(f, name, b"v")
    (root / "g").write_text("y")
    real_get, real_list = os.getxattr, os.listxattr

    def getxattr(path, name, *, follow_symlinks=True):
        if name == "user.bad":
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_get(path, name, follow_symlinks=follow_symlinks)

    def listxattr(path, *, follow_symlinks=True):
        if str(path).endswith("/g"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))
        return real_list(path, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "getxattr", getxattr)
    monkeypatch.setattr(os, "listxattr", listxattr)
    fd_harness.install_dir_runner(monkeypatch, [FakeGuest("domu-a", [root])])
    result = FileDaemon(definition()).backup()
    assert result.status == "W"  # errors reported, the job goes on (not "f")
    assert sorted(result.by_name()[str(f)].xattrs) == [(b"user.a", b"v"), (b"user.c", b"v")]
    errors = result.job.texts(bareosfd.M_ERROR)
    assert len(errors) == 2, result.job.messages
    assert any(str(f) in t and "user.bad" in t and "not saved" in t for t in errors)
    assert any(str(root / "g") in t and "cannot list" in t for t in errors)
    assert result.job.fatal == []


def test_without_xattrsupport_nothing_is_asked_for(monkeypatch, area):
    """The FileSet's xattrsupport=no keeps the file daemon from calling get_xattr, and ACLs
    travel as extended attributes: then neither is saved."""
    root = area / "guest"
    root.mkdir()
    (root / "f").write_text("x")
    os.setxattr(root / "f", "user.a", b"1")
    run("setfacl", "-m", "u:1234:r", str(root / "f"))
    fd_harness.install_dir_runner(monkeypatch, [FakeGuest("domu-a", [root])])
    result = FileDaemon(definition(), xattr=False).backup()
    assert result.status == "T", result.job.messages
    assert "get_xattr" not in result.calls and "get_acl" in result.calls
    assert all(r.xattrs is None and r.acl is None for r in result.records)


def test_harness_converts_packets_like_bareosfd_cc():
    """PyXattrPacketToNative takes bytearrays only: a bytes name drops the pair silently, an
    empty or non-bytearray value becomes an empty one; get_acl is not asked for symlinks."""
    answers = iter([(bytearray(b"user.a"), bytearray(b"1"), bareosfd.bRC_More),
                    (b"user.bytes", bytearray(b"2"), bareosfd.bRC_More),
                    (bytearray(b"user.empty"), bytearray(), bareosfd.bRC_More),
                    (bytearray(b"user.b"), b"bytes value", bareosfd.bRC_OK)])

    def get_xattr(xp):
        xp.name, xp.value, rc = next(answers)
        return rc

    fd = FileDaemon("python3:module_name=xattr_conversion_probe")
    fd._start_job("F", "B")
    try:
        fd.module = type("Module", (), {"get_acl": staticmethod(lambda ap: bareosfd.bRC_OK),
                                        "get_xattr": staticmethod(get_xattr)})
        record = Record(fname="/f", type=bareosfd.FT_REG, stat={})
        fd._acl_xattr(record)
        assert record.xattrs == [(b"user.a", b"1"), (b"user.empty", None), (b"user.b", None)]
        assert fd.calls == ["get_acl"] + ["get_xattr"] * 4
        fd.calls.clear()
        fd.module.get_xattr = staticmethod(lambda xp: bareosfd.bRC_OK)
        fd._acl_xattr(Record(fname="/l", type=bareosfd.FT_LNK, stat={}))
        assert fd.calls == ["get_xattr"]
    finally:
        fd._end_job()
