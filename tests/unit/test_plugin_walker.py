"""The plugin's walk over a real directory tree (built in tmp; nothing of the filesystem mocked)."""

import ast
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from tests import fd_harness
from tests.fd_harness import bareosfd

plugin = fd_harness.import_plugin()
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


def walk(root):
    problems = []
    entries = list(plugin.walk_tree(str(root), lambda *p: problems.append(p)))
    return entries, problems


def test_directories_come_after_their_contents(tree):
    entries, _problems = walk(tree)
    paths = [path for path, _st in entries]
    assert paths[-1] == str(tree)
    for index, path in enumerate(paths):
        below = [p for p in paths if p.startswith(path + "/")]
        assert all(paths.index(p) < index for p in below), path
    assert len(paths) == len(set(paths))


def test_symlinks_are_not_followed(tree):
    entries, _problems = walk(tree)
    paths = {path for path, _st in entries}
    assert str(tree / "outside") in paths
    assert not any(p.startswith(str(tree / "outside") + "/") for p in paths)
    kinds = {os.path.basename(p): plugin.classify(p, st) for p, st in entries}
    assert kinds["outside"] == (bareosfd.FT_LNK, "/etc", True)
    assert kinds["dangling"] == (bareosfd.FT_LNK, "no/such/file", True)


def test_classification(tree):
    entries, _problems = walk(tree)
    kinds = {os.path.relpath(p, tree): plugin.classify(p, st) for p, st in entries}
    assert kinds["etc"] == (bareosfd.FT_DIREND, f"{tree}/etc/", True)
    assert kinds["etc/hosts"] == (bareosfd.FT_REG, "", False)
    assert kinds["empty"] == (bareosfd.FT_REGE, "", True)
    assert kinds["fifo"] == (bareosfd.FT_SPEC, "", True)
    assert kinds["sock"] == (None, "socket", True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_device_nodes_are_not_saved(tree):
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.lstat(tree / "null")
    assert plugin.classify(str(tree / "null"), st) == (None, "device node", True)


def test_names_that_are_not_utf8_are_reported_not_lost(tree):
    entries, problems = walk(tree)
    assert all(plugin.is_utf8(path) for path, _st in entries)
    reported = {os.fsencode(path): (kind, detail) for kind, path, detail in problems}
    raw = os.fsencode(tree)
    assert reported[raw + b"/" + BAD + b".txt"] == ("name", 1)
    assert reported[raw + b"/dir-" + BAD] == ("name", 3)   # the directory and its two entries


def test_disk_entries_report_per_file_and_count(tree):
    job = fd_harness.Job({})
    bareosfd._install(job)
    try:
        stats = plugin.GuestStats()
        messages = []
        entries = list(plugin.disk_entries(str(tree), 7, stats,
                                           lambda level, text: messages.append((level, text))))
    finally:
        bareosfd._uninstall()
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


def test_disk_entries_match_walk_tree_and_classify(tree):
    """disk_entries inlines walk_tree and the common cases of classify (for speed): both must
    still agree on every entry, its order, type, link and whether it has data."""
    job = fd_harness.Job({})
    bareosfd._install(job)
    try:
        entries = list(plugin.disk_entries(str(tree), 7, plugin.GuestStats(), lambda *a: None))
    finally:
        bareosfd._uninstall()
    expected = []
    for path, st in walk(tree)[0]:
        ftype, link, no_read = plugin.classify(path, st)
        if ftype is not None and plugin.is_utf8(link):
            expected.append((path, st.st_ino, ftype, link, no_read))
    assert [(e.path, e.st.st_ino, e.ftype, e.link, e.no_read) for e in entries] == expected
    assert len(expected) == 11   # the fixture's savable entries (not a vacuous comparison)


def _walk_as_nobody(root):
    """walk_tree in a child that dropped root (root reads unreadable directories anyway)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            entries, problems = walk(root)
            text = repr(([p for p, _st in entries], [(k, p) for k, p, _d in problems]))
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
    assert problems == [("scandir", str(base / "locked"))]
    assert paths == [str(base / "locked"), str(base / "open"), str(base)]


def test_stat_packet_takes_lstat_values(tree):
    st = os.lstat(tree / "etc" / "hosts")
    packet = plugin.stat_packet(st)
    assert packet.st_ino == st.st_ino and packet.st_size == st.st_size
    assert packet.st_mtime == int(st.st_mtime) and packet.st_nlink == 2
    assert packet.st_mode == st.st_mode
    assert packet.st_dev == st.st_dev & 0xFFFFFFFF
    assert plugin.stat_packet(st, 3).st_dev == 3
