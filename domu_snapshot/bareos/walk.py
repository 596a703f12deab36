"""One walk over a mounted guest disk: what the file daemon gets for each entry.

Directories come after their contents; symlinks are never followed; stat values are lstat's.
Each directory is entered once, by its (st_dev, st_ino): a crafted filesystem with a second link
to a directory cannot make a walk repeat a tree or run without end. Names in messages are escaped
(errors.shown): they are the guest's.
"""

import collections
import os
import stat
import time

import bareosfd

from ..errors import shown

_S_ISDIR = stat.S_ISDIR
_S_IFMT = 0o170000
_S_IFREG = stat.S_IFREG
_S_IFDIR = stat.S_IFDIR
_S_IFLNK = stat.S_IFLNK
_S_IFIFO = stat.S_IFIFO
_NOT_SAVED = {stat.S_IFCHR: "device node", stat.S_IFBLK: "device node", stat.S_IFSOCK: "socket"}



# One thing to hand to the file daemon: `st` is the lstat result as read, `dev` the st_dev the
# file daemon gets instead (see the module docstring: hard links). A named tuple, made with
# _make in the walk: one is built per entry of every guest, and that is cheaper than a class.
Entry = collections.namedtuple("Entry", "path st dev ftype link no_read")
_new_entry = Entry._make


def is_utf8(text):
    # isascii() is O(1) on str and true for nearly every name; encode only the rest
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _count_below(path):
    """Entries below a directory we cannot save (for the report)."""
    count = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    count += 1
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            pass
    return count


def _entry_name(entry):
    return entry.name


def _list_dir(path):
    """The DirEntry objects of `path`, sorted by name (a stable order for reports and tests)."""
    with os.scandir(path) as entries:
        return sorted(entries, key=_entry_name)


def classify(path, st):
    """(ftype, link, no_read) for an lstat result, or (None, reason, True) for what is not saved."""
    fmt = st.st_mode & _S_IFMT
    if fmt == _S_IFREG:
        if st.st_size == 0:
            return bareosfd.FT_REGE, "", True
        return bareosfd.FT_REG, "", False
    if fmt == _S_IFDIR:
        return bareosfd.FT_DIREND, path.rstrip("/") + "/", True
    if fmt == _S_IFLNK:
        return bareosfd.FT_LNK, os.readlink(path), True
    if fmt == _S_IFIFO:
        # FT_SPEC: the file daemon recreates it with mkfifo. FT_FIFO would mean "read the data
        # flowing through this fifo": a restore then opens the new fifo for writing and waits
        # for a reader for ever (findlib/create_file.cc).
        return bareosfd.FT_SPEC, "", True
    return None, _NOT_SAVED.get(fmt, "unknown file type"), True


class GuestStats:
    def __init__(self):
        self.entries = 0
        self.bytes = 0
        self.bad_names = 0
        self.skipped = []          # (path, why) of device nodes, sockets, ...
        self.unreadable = 0
        self.files_read = 0        # opened by the file daemon for their data
        self.bytes_read = 0
        self.read_errors = 0       # open or read failed: the entry went out without (all) data
        self.relinked_dirs = 0     # second links to a directory already entered (not saved)
        self.started = time.monotonic()
        self._linked = set()

    def count(self, entry):
        self.entries += 1
        if entry.ftype == bareosfd.FT_REG:
            self.count_bytes(entry.st, entry.dev)

    def count_bytes(self, st, dev):
        if st.st_nlink > 1:  # the file daemon reads a hard-linked file once
            key = (dev, st.st_ino)
            if key in self._linked:
                return
            self._linked.add(key)
        self.bytes += st.st_size


def disk_entries(root, dev_id, stats, report, nested=()):
    """Entries of one mounted guest disk. `report(level, text)` sends job messages; returns via
    StopIteration the list of directories that could not be read completely. `nested`: paths of
    the guest's own filesystems mounted below `root` (guest_filesystems = fstab), left to walks
    of their own without a warning."""
    incomplete = []

    def problem(kind, path, detail):
        if kind == "name":
            stats.bad_names += detail
            more = f" (a directory: {detail - 1} entries below it are not saved either)" if detail > 1 else ""
            report(bareosfd.M_ERROR,
                   f"not saved: name is not valid UTF-8, which Bareos file names must be: "
                   f"{os.fsencode(path)!r}{more}")
        elif kind == "relinked":
            stats.relinked_dirs += 1
            report(bareosfd.M_ERROR,
                   f"not saved: {shown(path)} is another link to the directory {shown(detail)}, which "
                   f"is saved under that name only (a filesystem with directory hard links is "
                   f"damaged or crafted: run e2fsck on the guest)")
        elif kind == "other-fs":
            report(bareosfd.M_WARNING, f"not saved: another filesystem is mounted on {shown(path)} "
                                       f"(only the guest's own filesystem is saved)")
        elif kind == "scandir":
            stats.unreadable += 1
            incomplete.append(path)
            report(bareosfd.M_ERROR, f"cannot read directory {shown(path)}: {detail.strerror or detail}")
        else:
            stats.unreadable += 1
            incomplete.append(path)
            report(bareosfd.M_ERROR, f"cannot stat {shown(path)}: {detail.strerror or detail}")

    def other(path, st):
        """The Entry of anything but a regular file (directories too), or None."""
        try:
            ftype, link, no_read = classify(path, st)
        except OSError as exc:  # readlink
            problem("lstat", path, exc)
            return None
        if ftype is None:
            stats.skipped.append((path, link))
            return None
        if not is_utf8(link):
            stats.bad_names += 1
            report(bareosfd.M_ERROR, f"not saved: symlink {shown(path)} has a target that is not valid "
                                     f"UTF-8: {os.fsencode(link)!r}")
            return None
        stats.entries += 1
        return _new_entry((path, st, dev_id, ftype, link, no_read))

    # walk_tree(), inlined: this loop runs once per entry of every guest, and a second generator
    # layer with a (path, st) tuple per entry was a measurable part of its cost. Regular files
    # (nearly all entries) are decided inline; everything else goes through other()/classify().
    ft_reg, ft_rege = bareosfd.FT_REG, bareosfd.FT_REGE
    top_st = os.lstat(root)
    entered = {(top_st.st_dev, top_st.st_ino): root}   # directory identity -> the path saved
    try:
        children = _list_dir(root)
    except OSError as exc:
        problem("scandir", root, exc)
        children = []
    stack = [(root, top_st, iter(children))]
    while stack:
        for child in stack[-1][2]:
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                problem("lstat", child.path, exc)
                continue
            name = child.name
            if not (name.isascii() or is_utf8(name)):
                problem("name", child.path,
                        1 + (_count_below(child.path) if _S_ISDIR(st.st_mode) else 0))
                continue
            fmt = st.st_mode & _S_IFMT
            if fmt == _S_IFREG:
                stats.entries += 1
                if not st.st_size:
                    yield _new_entry((child.path, st, dev_id, ft_rege, "", True))
                    continue
                if st.st_nlink > 1:
                    stats.count_bytes(st, dev_id)
                else:
                    stats.bytes += st.st_size
                yield _new_entry((child.path, st, dev_id, ft_reg, "", False))
                continue
            if fmt == _S_IFDIR:
                if child.path in nested:
                    continue   # one of the guest's own filesystems, walked as a root of its own
                if st.st_dev != top_st.st_dev:
                    problem("other-fs", child.path, None)
                    continue
                first = entered.setdefault((st.st_dev, st.st_ino), child.path)
                if first != child.path:
                    problem("relinked", child.path, first)
                    continue
                try:
                    grandchildren = _list_dir(child.path)
                except OSError as exc:
                    problem("scandir", child.path, exc)
                    grandchildren = []
                stack.append((child.path, st, iter(grandchildren)))
                break   # descend; this directory's loop resumes when that one is done
            entry = other(child.path, st)
            if entry is not None:
                yield entry
        else:
            dir_path, dir_st, _children = stack.pop()
            entry = other(dir_path, dir_st)
            if entry is not None:
                yield entry
    return incomplete


def stat_packet(st, dev=None):
    """The StatPacket of an lstat result; `dev` replaces st_dev when given."""
    return bareosfd.StatPacket(
        dev=(st.st_dev if dev is None else dev) & 0xFFFFFFFF, ino=st.st_ino, mode=st.st_mode,
        nlink=min(st.st_nlink, 0xFFFF), uid=st.st_uid, gid=st.st_gid, rdev=st.st_rdev & 0xFFFFFFFF,
        size=st.st_size, atime=int(st.st_atime), mtime=int(st.st_mtime), ctime=int(st.st_ctime),
        blksize=st.st_blksize, blocks=st.st_blocks)
