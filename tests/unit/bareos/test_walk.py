"""The plugin's walk over a real directory tree (built in tmp; nothing of the filesystem mocked)."""

import ast
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests import fd_harness
from tests.fd_harness import bareosfd

from domu_snapshot.bareos import walk as plugin  # noqa: E402  (bareosfd: the stand-in)
BAD = b"caf\xe9"  # Latin-1 "café": not UTF-8


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "guest"
    (root / "etc" / "deep" / "er").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "deep" / "er" / "file").write_bytes(b"\0" * 5000)
    (root / "empty").write_bytes(b"")
    os.link(root / "etc" / "hosts", root / "hosts.link")
    (root / "outside").symlink_to("/etc")          # a directory symlink: never followed
    (root / "dangling").symlink_to("no/such/file")
    os.mkfifo(root / "fifo")
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(root / "sock"))
    bound.close()
    raw = os.fsencode(root)
    with open(raw + b"/" + BAD + b".txt", "wb") as handle:   # non-UTF-8 file name
        handle.write(b"x")
    os.mkdir(raw + b"/dir-" + BAD)                           # non-UTF-8 directory with contents
    for name in (b"a", b"b"):
        with open(raw + b"/dir-" + BAD + b"/" + name, "wb"):
            pass
    os.symlink(b"/target-" + BAD, raw + b"/badlink")          # non-UTF-8 symlink target
    return root


def walk(root, dev_id=7):
    """(entries, job messages, stats) of the plugin's one walker over `root`."""
    messages, stats = [], plugin.GuestStats()
    bareosfd._install(fd_harness.Job({}))
    try:
        entries = list(plugin.disk_entries(str(root), dev_id, stats,
                                           lambda level, text: messages.append((level, text))))
    finally:
        bareosfd._uninstall()
    return entries, messages, stats


def test_directories_come_after_their_contents(tree):
    entries, _messages, _stats = walk(tree)
    paths = [e.path for e in entries]
    assert paths[-1] == str(tree)
    for index, path in enumerate(paths):
        below = [p for p in paths if p.startswith(path + "/")]
        assert all(paths.index(p) < index for p in below), path
    assert len(paths) == len(set(paths))


def test_symlinks_are_not_followed(tree):
    entries, _messages, _stats = walk(tree)
    paths = {e.path for e in entries}
    assert str(tree / "outside") in paths
    assert not any(p.startswith(str(tree / "outside") + "/") for p in paths)
    kinds = {os.path.basename(e.path): (e.ftype, e.link, e.no_read) for e in entries}
    assert kinds["outside"] == (bareosfd.FT_LNK, "/etc", True)
    assert kinds["dangling"] == (bareosfd.FT_LNK, "no/such/file", True)


def test_classification(tree):
    entries, _messages, _stats = walk(tree)
    kinds = {os.path.relpath(e.path, tree): (e.ftype, e.link, e.no_read) for e in entries}
    assert kinds["etc"] == (bareosfd.FT_DIREND, f"{tree}/etc/", True)
    assert kinds["etc/hosts"] == (bareosfd.FT_REG, "", False)
    assert kinds["empty"] == (bareosfd.FT_REGE, "", True)
    assert kinds["fifo"] == (bareosfd.FT_SPEC, "", True)   # mkfifo on restore, no data read
    assert "sock" not in kinds
    assert plugin.classify(str(tree / "sock"), os.lstat(tree / "sock")) == (None, "socket", True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_are_not_saved(tree):
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(tree / "null")
    assert plugin.classify(str(tree / "null"), st) == (None, "device node", True)


def test_disk_entries_report_per_file_and_count(tree):
    entries, messages, stats = walk(tree)
    assert all(plugin.is_utf8(e.path) and plugin.is_utf8(e.link) for e in entries)
    names = {os.path.relpath(e.path, tree) for e in entries}
    assert "badlink" not in names and "sock" not in names
    assert {"etc/hosts", "hosts.link", "empty", "fifo", "outside", "dangling", "."} <= names
    errors = [text for level, text in messages if level == bareosfd.M_ERROR]
    assert len(errors) == 3                              # one per name, not one per job
    assert any(repr(os.fsencode(tree) + b"/" + BAD + b".txt") in text for text in errors)
    assert any("2 entries below it" in text for text in errors)
    assert any("symlink" in text and "target-" in text for text in errors)
    assert stats.bad_names == 1 + 3 + 1
    assert stats.skipped == [(str(tree / "sock"), "socket")]
    # the per-disk stand-in for st_dev is what the file daemon gets
    assert {plugin.stat_packet(e.st, e.dev).st_dev for e in entries} == {7}
    # a hard-linked file is counted once in the byte total
    assert stats.bytes == len("127.0.0.1 localhost\n") + 5000 + 0


def test_disk_entries_agree_with_an_independent_listing_and_classify(tree):
    """disk_entries decides regular files inline (for speed): every entry must still be what
    os.walk and classify() say, and nothing savable may be missing."""
    entries, _messages, _stats = walk(tree)
    expected = set()
    for top, dirs, files in os.walk(os.fsencode(tree), topdown=False):
        for name in dirs + files:
            path = os.path.join(top, name)
            if not plugin.is_utf8(os.fsdecode(path)) or b"dir-" + BAD in path:
                continue
            st = os.lstat(path)
            ftype, link, no_read = plugin.classify(os.fsdecode(path), st)
            if ftype is not None and plugin.is_utf8(link):
                expected.add((os.fsdecode(path), st.st_ino, ftype, link, no_read))
    st = os.lstat(tree)
    expected.add((str(tree), st.st_ino) + plugin.classify(str(tree), st))
    got = [(e.path, e.st.st_ino, e.ftype, e.link, e.no_read) for e in entries]
    assert len(got) == len(set(got)) and set(got) == expected
    assert len(expected) == 11   # the fixture's savable entries (not a vacuous comparison)


def _walk_as_nobody(root):
    """The walk in a child that dropped root (root reads unreadable directories anyway)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            entries, messages, _stats = walk(root)
            text = repr(([e.path for e in entries], [t for _level, t in messages]))
            os.write(write_end, text.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    os.waitpid(pid, 0)
    return ast.literal_eval(data.decode())


def test_unreadable_directory_is_reported():
    base = Path(tempfile.mkdtemp(prefix="walk-"))
    try:
        os.chmod(base, 0o755)
        (base / "locked").mkdir()
        (base / "locked" / "f").write_text("x")
        (base / "open").write_text("y")
        os.chmod(base / "locked", 0)
        paths, problems = _walk_as_nobody(str(base))
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base)
    assert len(problems) == 1 and f"cannot read directory {base / 'locked'}" in problems[0]
    assert paths == [str(base / "locked"), str(base / "open"), str(base)]


def test_stat_packet_takes_lstat_values(tree):
    st = os.lstat(tree / "etc" / "hosts")
    packet = plugin.stat_packet(st)
    assert packet.st_ino == st.st_ino and packet.st_size == st.st_size
    assert packet.st_mtime == int(st.st_mtime) and packet.st_nlink == 2
    assert packet.st_mode == st.st_mode
    assert packet.st_dev == st.st_dev & 0xFFFFFFFF
    assert plugin.stat_packet(st, 3).st_dev == 3


@pytest.fixture
def bind_mounts():
    """Bind mounts made by a test, undone afterwards (a bind mount is how a host shows one
    directory at two paths: same st_dev and st_ino, like a directory hard link of a crafted guest)."""
    made = []

    def bind(source, target):
        subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
        made.append(str(target))
    yield bind
    for target in reversed(made):
        subprocess.run(["umount", target], check=True)


def test_a_directory_reached_twice_is_walked_once(tmp_path, bind_mounts):
    root = tmp_path / "guest"
    (root / "a" / "sub").mkdir(parents=True)
    (root / "a" / "sub" / "data.txt").write_text("once\n")
    odd = "b\x1b[2J\nforged line"                # a guest-made name: escape sequence, new line
    (root / odd / "again").mkdir(parents=True)
    (root / "a" / "sub" / "loop").mkdir()
    bind_mounts(root / "a" / "sub", root / odd / "again")     # a DAG: the same directory twice
    bind_mounts(root / "a", root / "a" / "sub" / "loop")      # a cycle: an ancestor inside
    entries, messages, stats = walk(root)
    paths = sorted(os.path.relpath(e.path, root) for e in entries)
    # a/sub/loop and odd/again show directories already entered: named in an error, not saved
    assert paths == sorted([".", "a", "a/sub", "a/sub/data.txt", odd]), paths
    assert stats.relinked_dirs == 2
    relinked = [text for level, text in messages if "another link to the directory" in text]
    assert len(relinked) == 2 and all(level == bareosfd.M_ERROR for level, text in messages
                                      if text in relinked), messages
    again = next(t for t in relinked if "again" in t)
    assert "b\\x1b[2J\\nforged line/again" in again and "\x1b" not in again and "\n" not in again
    assert f"{root}/a/sub" in again


def test_another_filesystem_below_a_guest_is_not_walked(tmp_path, bind_mounts):
    root = tmp_path / "guest"
    (root / "proc").mkdir(parents=True)
    bind_mounts("/proc", root / "proc")
    entries, messages, _stats = walk(root)
    assert sorted(os.path.relpath(e.path, root) for e in entries) == ["."]
    assert [(level, "another filesystem is mounted on" in text) for level, text in messages] == \
        [(bareosfd.M_WARNING, True)]
