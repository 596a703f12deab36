"""Describe a directory tree as Bacula should restore it, and compare two descriptions.

Used by the host tests of the harness; the VM suite prefers the fixtures' own expected trees and
compare helper (tests/guestdisks.py) and falls back to this. Never follows symlinks.

Compared: type, content (SHA-256), permission bits (with setuid/setgid/sticky), owner, group,
mtime in whole seconds (Bacula's catalog keeps seconds), symlink targets, and which paths are hard
links of each other. Not compared: atime/ctime, symlink mtimes, directory sizes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Dict, List


def describe(root: str) -> Dict[str, dict]:
    root = os.fspath(root)
    out: Dict[str, dict] = {}
    inodes: Dict[tuple, List[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            e = dict(mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                e.update(type="symlink", target=os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                e.update(type="dir", mtime=int(st.st_mtime))
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                e.update(type="file", size=st.st_size, sha256=h.hexdigest(), mtime=int(st.st_mtime))
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            else:
                e.update(type="other:%o" % stat.S_IFMT(st.st_mode), rdev=st.st_rdev, mtime=int(st.st_mtime))
            out[rel] = e
    # Hard links: each file names the sorted group of paths sharing its inode (inside this tree).
    for group in inodes.values():
        if len(group) > 1:
            for rel in group:
                out[rel]["links"] = tuple(sorted(group))
    return out


def diff(expected: Dict[str, dict], actual: Dict[str, dict]) -> List[str]:
    problems = []
    for rel in sorted(set(expected) | set(actual)):
        if rel not in actual:
            problems.append("missing: %s" % rel)
        elif rel not in expected:
            problems.append("unexpected: %s" % rel)
        else:
            e, a = expected[rel], actual[rel]
            for k in sorted(set(e) | set(a)):
                if e.get(k) != a.get(k):
                    problems.append("%s: %s expected %r, got %r" % (rel, k, e.get(k), a.get(k)))
    return problems
