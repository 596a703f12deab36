"""Bareos python-fd plugin: file-level backup of LVM-backed guests through snapshots.

FileSet:  Plugin = "python3:module_path=/usr/lib/bareos/plugins:module_name=bareos-fd-domu-snapshot:..."
Options (mirror the CLI's; `\\:` escapes a colon inside a value):
  prefix=domu-   vg=vg0,vg1   include=glob,glob   exclude=glob,glob   snapshot_size=10%ORIGIN
  chunk_size=    partition=auto|whole|N   mount_root=/var/lib/domu-snapshot/mnt
  config=/etc/domu-snapshot.conf   prepare=each|all   quiesce=auto|agent|suspend|sync|none
  libvirt_uri=qemu:///system

Backup: on bEventStartBackupJob the plugin reaps leftovers of crashed runs and discovers the guests.
Snapshots it makes carry the tag domu_snapshot_plugin: the plugin holds the run lock for its whole
job, so one found at job start is from a dead job. What `domu-snapshot mount` made (helpers mode,
tag domu_snapshot_cli, and the mounts and loop devices over it) is left alone with an M_WARNING
per guest: a helpers-mode job may be reading it. A guest of this job that is held that way fails
(M_ERROR, not backed up, nothing of it touched); the other guests go on.
Then, one guest at a time (prepare=each, the default), it prepares the guest (snapshot, partition,
loop, journal replay, read-only mount at <mount_root>/<vg>/<lv>), hands every entry below the mount
to the file daemon, and tears the guest down before the next one; prepare=all prepares every guest
first. Paths are the real paths under the mount root, so the catalog matches helpers mode.

Entries: directories FT_DIREND after their contents (link = path + "/"), regular files FT_REG (data
read by the file daemon itself from the descriptor returned by IO_OPEN, "in core"), empty files
FT_REGE, symlinks FT_LNK (target from readlink, never followed), fifos FT_SPEC (recreated by the
file daemon with mkfifo; FT_FIFO would make it read from the fifo); stat values from lstat. Device nodes and sockets are not saved: the guest mount is nodev, and a restore would create
live device files on the host; each guest's M_WARNING line counts and names them. Names (and
symlink targets) that are not valid UTF-8 cannot pass the file daemon's API: each is reported in an
M_ERROR job message with its bytes, and counted. Hard links are left to the file daemon (nlink > 1,
keyed by st_dev/st_ino): st_dev is replaced by a number unique to each guest disk in this job, as
loop devices are reused from one guest to the next and would otherwise make unrelated files of two
guests look like hard links of one another. Each guest ends with one M_INFO line: partition and
offset, journal result, entries walked, files read by the file daemon (in an Incremental only the
changed ones), snapshot peak use, time. Notes that are no fault (no libvirt on the host, a guest
skipped by design) are M_INFO, so a job that saved every guest ends "Backup OK".

Job status: a guest that was not backed up completely (prepare failed, its walk broke, its
snapshot overflowed, teardown failed) is an M_ERROR when it happens; once every other guest was
saved the job ends with one M_FATAL naming the lost guests, so its JobStatus is f ("Backup
Error"). The file daemon sends an entry's attributes before its data, so the catalog holds
entries of a half-read guest without their data; restores of the latest state and the next
Incremental's base use only jobs that ended T or W, so the lost guest's last good versions stay
current. A job that selects no guest fails the same way (unless allow_empty is set).

Options: the FileSet's string arrives first; a Job's "FD Plugin Options" (bEventNewPluginOptions)
override it key by key; the FileSet's string arriving again at the backup command changes
nothing. `estimate` sends no bEventStartBackupJob: the walk then starts at the first
start_backup_file.

Extended attributes: get_xattr hands over every attribute of each entry (llistxattr/lgetxattr,
never through a symlink), one per call with bRC_More: user.*, trusted.*, security.* (SELinux
labels, file capabilities) and the POSIX ACLs, which Linux keeps as the attributes
system.posix_acl_access/_default and which travel that way (get_acl hands over nothing; why: see
the ACL section below). The file daemon asks only when the FileSet's xattrsupport is on (the
default), so xattrsupport = no also drops the ACLs. An entry without attributes costs one
llistxattr. An attribute or list that cannot be read is named in an M_ERROR message and the rest
is saved. On restore the file daemon hands them back for regular files and directories only
(restore.cc ignores the xattr stream of symlinks, fifos and hard-link repeats); set_xattr sets
them with lsetxattr after owner, mode and times, refuses paths outside `where` like create_file,
and names the attributes it could not set in one M_ERROR message per file.

Accurate mode: the file daemon asks check_file() only for files of earlier backups that this job
did not send. They are reported deleted (bRC_OK) only when they lie below a guest disk whose walk
completed; below a guest that failed, overflowed or was not read completely they are reported as
seen (bRC_Seen) so that their last good versions stay current.

Restore goes through the file daemon (create_file answers CF_CORE) into `where`, or with a
regexwhere (bconsole strip_prefix/add_prefix) below its add_prefix: `where` is empty then and the
names arrive rewritten. Entries whose path would leave that directory (.. components, symlinks in
the restored tree) are refused; a restore to the original paths (no `where`), or a regexwhere
without an add_prefix, is refused. python-fd does not pass the create_status set in
set_file_attributes back to the file daemon, so the plugin applies owner, mode and times itself.
A restore never touches LVs.

Imports only `bareosfd` and the core library (`domu_snapshot`).
"""

import collections
import errno
import os
import re
import stat
import threading
import time

import bareosfd

from domu_snapshot.config import load_config
from domu_snapshot.errors import DomuError

PLUGIN = "domu-snapshot"
DEBUG_LEVEL = 100

# Options passed to the core as configuration overrides (the CLI's), and the plugin's own.
CORE_OPTIONS = ("prefix", "vg", "include", "exclude", "snapshot_size", "chunk_size", "partition",
                "mount_root", "quiesce", "libvirt_uri")
PLUGIN_OPTIONS = ("config", "prepare")
# Consumed by the C side; tolerated in case a file daemon passes them on.
C_SIDE_OPTIONS = ("module_path", "module_name")
PREPARE_MODES = ("each", "all")
EVENTS = (
    bareosfd.bEventStartBackupJob,
    bareosfd.bEventEndBackupJob,
    bareosfd.bEventCancelCommand,
    bareosfd.bEventJobEnd,
)


# --- options ------------------------------------------------------------------------------------

def parse_options(text):
    """`key=value:key=value:` (as python-fd passes it) -> dict. As on the C side, a colon after a
    backslash does not end a value; `\\:` stands for a colon."""
    options = {}
    for piece in re.split(r"(?<!\\):", text or ""):
        if not piece:
            continue
        if "=" not in piece:
            raise DomuError(f"plugin option {piece!r} has no value (expected key=value)")
        key, value = piece.split("=", 1)
        key = key.strip().lower().replace("-", "_")
        if key in C_SIDE_OPTIONS:
            continue
        if key not in CORE_OPTIONS + PLUGIN_OPTIONS:
            known = ", ".join(sorted(CORE_OPTIONS + PLUGIN_OPTIONS))
            raise DomuError(f"unknown plugin option {key!r} (known: {known})")
        options[key] = value.replace("\\:", ":")
    check_options(options)
    return options


def check_options(options):
    mode = options.get("prepare", "each")
    if mode not in PREPARE_MODES:
        raise DomuError(f"prepare must be 'each' or 'all', not {mode!r}")


class Options:
    """The plugin's options as python-fd hands them over: first the FileSet's string, then (for
    a Job with "FD Plugin Options") the override string alone through bEventNewPluginOptions,
    then the FileSet's string again at each backup/restore command. The override replaces only
    the keys it names; the FileSet's string coming back does not undo it."""

    def __init__(self):
        self.fileset_text = None
        self.fileset = {}
        self.overrides = {}

    def parse(self, text):
        """Parse one string; returns the effective options. Raises DomuError."""
        parsed = parse_options(text)
        if self.fileset_text is None:
            self.fileset_text, self.fileset = text, parsed
        elif text != self.fileset_text:
            self.overrides.update(parsed)
        options = {**self.fileset, **self.overrides}
        check_options(options)
        return options


def config_overrides(options):
    return {key: value for key, value in options.items() if key in CORE_OPTIONS}


# --- walking a guest's mount ----------------------------------------------------------------------

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


def walk_tree(top, problem):
    """Yield (path, lstat) for everything below `top` and `top` itself; directories come after
    their contents; symlinks are never followed.

    problem(kind, path, detail) hears about what cannot be yielded: "name" (not valid UTF-8;
    detail = entries lost with it), "scandir" (unreadable directory; detail = OSError),
    "lstat" (detail = OSError)."""
    # One frame per open directory; the inner for loop runs over a directory's children and
    # breaks out to descend, so the common case (a non-directory) costs one lstat and a yield.
    # DirEntry.stat(follow_symlinks=False) is the lstat, without building the path again.
    top_st = os.lstat(top)
    try:
        children = _list_dir(top)
    except OSError as exc:
        problem("scandir", top, exc)
        children = []
    stack = [(top, top_st, iter(children))]
    while stack:
        dir_path, dir_st, children = stack[-1]
        for child in children:
            try:
                st = child.stat(follow_symlinks=False)
            except OSError as exc:
                problem("lstat", child.path, exc)
                continue
            if not is_utf8(child.name):
                problem("name", child.path,
                        1 + (_count_below(child.path) if _S_ISDIR(st.st_mode) else 0))
                continue
            if _S_ISDIR(st.st_mode):
                try:
                    grandchildren = _list_dir(child.path)
                except OSError as exc:
                    problem("scandir", child.path, exc)
                    grandchildren = []
                stack.append((child.path, st, iter(grandchildren)))
                break
            yield child.path, st
        else:
            stack.pop()
            yield dir_path, dir_st


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


def disk_entries(root, dev_id, stats, report):
    """Entries of one mounted guest disk. `report(level, text)` sends job messages; returns via
    StopIteration the list of directories that could not be read completely."""
    incomplete = []

    def problem(kind, path, detail):
        if kind == "name":
            stats.bad_names += detail
            more = f" (a directory: {detail - 1} entries below it are not saved either)" if detail > 1 else ""
            report(bareosfd.M_ERROR,
                   f"not saved: name is not valid UTF-8, which Bareos file names must be: "
                   f"{os.fsencode(path)!r}{more}")
        elif kind == "scandir":
            stats.unreadable += 1
            incomplete.append(path)
            report(bareosfd.M_ERROR, f"cannot read directory {path}: {detail.strerror or detail}")
        else:
            stats.unreadable += 1
            incomplete.append(path)
            report(bareosfd.M_ERROR, f"cannot stat {path}: {detail.strerror or detail}")

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
            report(bareosfd.M_ERROR, f"not saved: symlink {path} has a target that is not valid "
                                     f"UTF-8: {os.fsencode(link)!r}")
            return None
        stats.entries += 1
        return _new_entry((path, st, dev_id, ftype, link, no_read))

    # walk_tree(), inlined: this loop runs once per entry of every guest, and a second generator
    # layer with a (path, st) tuple per entry was a measurable part of its cost. Regular files
    # (nearly all entries) are decided inline; everything else goes through other()/classify().
    ft_reg, ft_rege = bareosfd.FT_REG, bareosfd.FT_REGE
    top_st = os.lstat(root)
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


# --- restore path checks ----------------------------------------------------------------------------

# bconsole's add_prefix=DIR becomes the regexwhere expression !^!DIR! (lib/breg.cc, with "!" and
# "\\" escaped by a backslash); strip_prefix and add_suffix become others, joined by commas.
_ADD_PREFIX = re.compile(r"!\^!((?:[^!\\]|\\.)*)!")


def restore_target(where, regexwhere):
    """(the directory a restore writes below, or "" with the reason it is refused)."""
    if regexwhere:
        # `where` is empty then and the file daemon hands over names already rewritten; the
        # only directory they are known to stay in is an add_prefix
        prefixes = _ADD_PREFIX.findall(regexwhere)
        if not prefixes:
            return "", (f"regexwhere={regexwhere} has no add_prefix: restored files could land "
                        f"anywhere on this host (a strip_prefix alone writes over the host's own "
                        f"paths); restore with add_prefix=DIR or where=DIR")
        where = re.sub(r"\\(.)", r"\1", prefixes[-1])
    if not where or os.path.normpath(where) == "/":
        return "", ("restoring to the original paths is refused: they are the snapshot mount "
                    "points; restore with where= a directory")
    return where, None

def restore_path_problem(path, where, mount_root=None, regexwhere=""):
    """Why writing `path` during a restore to `where` (or through `regexwhere`) is refused, or
    None when it is fine."""
    where, refused = restore_target(where, regexwhere)
    if refused:
        return refused
    base = os.path.normpath(where)
    if mount_root:
        root = os.path.normpath(mount_root)
        if base == root or base.startswith(root + "/"):
            return f"where={where} lies inside the mount root {mount_root}; choose another directory"
    if not path or not os.path.isabs(path):
        return f"{path!r} is not an absolute path"
    # the file daemon makes the path as where + the backed-up name; only that name is checked
    prefix = where.rstrip("/") + "/"
    name = path[len(prefix):] if path.startswith(prefix) else path
    if ".." in name.split("/"):
        return f"{path!r} has a '..' component and could leave where={where}"
    normal = os.path.normpath(path)
    if not normal.startswith(base + "/"):
        return f"{path!r} lies outside where={where}"
    # no symlink between where and the entry (a restored symlink must not redirect later entries)
    probe = base
    for part in os.path.relpath(os.path.dirname(normal), base).split("/"):
        if part in ("", "."):
            continue
        probe = os.path.join(probe, part)
        try:
            st = os.lstat(probe)
        except FileNotFoundError:
            break
        except OSError as exc:
            return f"cannot check {probe}: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"{probe} is not a directory (a symlink?); refusing to write {path!r} through it"
    return None


# --- the plugin state ---------------------------------------------------------------------------------

class Plugin:
    def __init__(self):
        self.options = {}
        self.option_layers = Options()
        self.cfg = None
        self.runner = None
        self.run_lock = None
        self.guests = []
        self.space_errors = {}
        self.mode = "each"
        self.level = "F"
        self.lock = threading.RLock()
        self.canceled = False
        self.entries = None          # generator of Entry over all guests
        self.next_entry = None       # prefetched by end_backup_file
        self.current = None          # Entry being saved
        self.fd = -1
        self.live = {}               # guest name -> Guest, prepared and not torn down
        self.prepared = {}           # guest name -> GuestResult (prepare=all)
        self.roots = {}              # mount path (or file) -> "walking" | "complete" | "failed"
        self.incomplete = []         # directories not read completely
        self.dev_ids = {}            # mount path -> st_dev stand-in
        self.failures = 0
        self.lost = []               # names of guests not (completely) backed up in this job
        self.started = False         # start_backup ran (bEventStartBackupJob, or estimate)
        self.finished = False        # the end-of-job report was made
        self.stats = None            # GuestStats of the guest being read

    # messages -----------------------------------------------------------------------------------
    def job(self, level, text):
        bareosfd.JobMessage(level, f"{PLUGIN}: {text}\n")

    def debug(self, text, level=DEBUG_LEVEL):
        bareosfd.DebugMessage(level, f"{PLUGIN}: {text}\n")

    def runner_log(self, level, message):
        """The Runner's log: warnings and notes go to the job log (a note, e.g. "no libvirt on
        this host", is M_INFO: an M_WARNING would make every such job end "OK -- with
        warnings", and a job that lost a guest would look like any other night); the rest goes
        to the debug log (the plugin reports each guest's result and failure itself)."""
        level = str(level).lower()
        if level in ("warning", "warn"):
            self.job(bareosfd.M_WARNING, str(message))
        elif level == "info":
            self.job(bareosfd.M_INFO, str(message))
        else:
            self.debug(f"[{level}] {message}", 50)

    def lose(self, guest_name):
        """Count a guest whose files this job did not save completely (see finish_job)."""
        self.failures += 1
        if guest_name not in self.lost:
            self.lost.append(guest_name)

    # backup: start -------------------------------------------------------------------------------
    def start_backup(self):
        # The core's lifecycle is loaded for backups only: a restore never touches LVs.
        from domu_snapshot.commands import CommandError
        from domu_snapshot.lifecycle import Runner

        self.started = True
        level = bareosfd.GetValue(bareosfd.bVarLevel)
        self.level = chr(level) if isinstance(level, int) and level > 0 else "F"
        self.mode = self.options.get("prepare", "each")
        try:
            self.cfg = load_config(self.options.get("config") or None,
                                   overrides=config_overrides(self.options))
        except DomuError as exc:
            self.job(bareosfd.M_FATAL, f"configuration: {exc}")
            return bareosfd.bRC_Error
        # owner "plugin": its snapshots carry the plugin's tag, and what `domu-snapshot mount`
        # holds (helpers mode, another job) is left alone
        self.runner = Runner(self.cfg, log=self.runner_log, owner="plugin")
        try:
            # one run at a time, held until the job's teardown
            self.run_lock = self.runner.lock().acquire()
            for result in self.runner.reap():
                self.report_reaped(result)
            self.guests = list(self.runner.discover())
            self.space_errors = self.runner.check_space(self.guests, concurrent=self.mode == "all")
        except (DomuError, CommandError, OSError) as exc:
            self.job(bareosfd.M_FATAL, f"cannot start: {exc}")
            self.release_lock()
            return bareosfd.bRC_Error
        names = ", ".join(g.name for g in self.guests) or "none"
        self.job(bareosfd.M_INFO, f"level {self.level}, {len(self.guests)} guest(s): {names} "
                                  f"(prepare={self.mode}, mount root {self.cfg.mount_root})")
        self.entries = self.all_entries()
        return bareosfd.bRC_OK

    def report_reaped(self, result):
        if result.status == "held":
            self.job(bareosfd.M_WARNING, "; ".join(result.notes))
        elif result.ok:
            self.job(bareosfd.M_INFO, f"removed what an earlier run left of guest {result.guest.name}")
        else:
            self.job(bareosfd.M_ERROR, f"could not remove what an earlier run left: {result.error}")

    def release_lock(self):
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None

    # backup: the entries -------------------------------------------------------------------------
    def all_entries(self):
        if self.mode == "all":
            for guest in self.guests:
                if self.canceled:
                    return
                self.prepared[guest.name] = self.prepare(guest)
        for guest in self.guests:
            if self.canceled:
                return
            result = self.prepared.pop(guest.name, None) or self.prepare(guest)
            yield from self.guest_entries(guest, result)

    def prepare(self, guest):
        self.live[guest.name] = guest
        for disk in guest.disks:
            self.roots[disk.mount_path] = "failed"  # until its walk completes
        try:
            result = self.runner.prepare(guest, self.space_errors.get(guest.name))
        except Exception as exc:  # prepare tears down after itself; never crash the file daemon
            result = _Failed(guest, f"{guest.name}: prepare failed: {type(exc).__name__}: {exc}")
        if getattr(result, "held_by", ""):
            self.live.pop(guest.name, None)  # another job's snapshot: never ours to tear down
        if not result.ok:
            self.lose(guest.name)
            self.job(bareosfd.M_ERROR, f"guest {guest.name}: NOT backed up: {result.error}")
        elif result.status == "skipped":
            # an inactive LV or a disk with swap only: nothing to save, by design
            self.job(bareosfd.M_INFO, f"guest {guest.name}: skipped: {'; '.join(result.notes)}")
        else:
            for note in result.notes:
                self.job(bareosfd.M_WARNING, f"guest {guest.name}: {note}")
        return result

    def guest_entries(self, guest, result):
        stats = self.stats = GuestStats()
        finished = False
        try:
            if not result.ok or result.status == "skipped":
                finished = True
                return
            xml_path = getattr(result, "domain_xml_path", "")
            if xml_path:
                # the domain definition the core wrote next to the first disk's mount
                self.roots[xml_path] = "walking"
                try:
                    st = os.lstat(xml_path)
                    if stat.S_ISREG(st.st_mode):
                        entry = Entry(xml_path, st, 0, bareosfd.FT_REG, "", st.st_size == 0)
                        stats.count(entry)
                        yield entry
                        self.roots[xml_path] = "complete"
                except OSError as exc:
                    self.job(bareosfd.M_ERROR, f"guest {guest.name}: domain definition "
                                               f"{xml_path}: {exc.strerror}")
            for disk in result.disks:
                if not getattr(disk, "mounted", True):
                    continue
                root = disk.mount_path
                self.roots[root] = "walking"
                self.dev_ids.setdefault(root, len(self.dev_ids) + 1)

                def report(level, text, _guest=guest.name):
                    self.job(level, f"guest {_guest}: {text}")

                walker = disk_entries(root, self.dev_ids[root], stats, report)
                while True:
                    try:
                        entry = next(walker)
                    except StopIteration as stop:
                        self.incomplete.extend(stop.value or [])
                        self.roots[root] = "complete"
                        break
                    except Exception as exc:  # e.g. the mount vanished: this guest only
                        self.roots[root] = "failed"
                        self.lose(guest.name)
                        report(bareosfd.M_ERROR, f"reading {root} failed after {stats.entries} "
                                                 f"entries: {exc}")
                        break
                    if self.canceled:
                        return
                    yield entry
            finished = True
        finally:
            self.finish_guest(guest, result, stats, finished)

    def finish_guest(self, guest, result, stats, finished):
        teardown = self.teardown(guest)
        if not result.ok or result.status == "skipped":
            return
        if teardown is not None and not teardown.ok:
            self.lose(guest.name)
            for disk in guest.disks:
                self.roots[disk.mount_path] = "failed"
            self.job(bareosfd.M_ERROR, f"guest {guest.name}: backup NOT valid: {teardown.error}")
        if stats.unreadable or stats.read_errors:
            self.lose(guest.name)   # some of its files were not saved, or saved without data
        if not finished:
            for path, state in self.roots.items():
                if state == "walking":
                    self.roots[path] = "failed"   # not read completely
            why = "job canceled" if self.canceled else "job ended early"
            self.job(bareosfd.M_WARNING, f"guest {guest.name}: stopped after {stats.entries} "
                                         f"entries ({why})")
            return
        if stats.skipped:
            kinds = "/".join(sorted({why for _path, why in stats.skipped}))
            examples = ", ".join(path for path, _why in stats.skipped[:5])
            more = ", ..." if len(stats.skipped) > 5 else ""
            self.job(bareosfd.M_WARNING,
                     f"guest {guest.name}: {len(stats.skipped)} entries not saved ({kinds}: the guest "
                     f"mount is nodev and a restore would create live device files): {examples}{more}")
        self.job(bareosfd.M_INFO, self.summary(guest, result, teardown, stats))

    def summary(self, guest, result, teardown, stats):
        disks = "; ".join(d.describe() for d in result.disks if getattr(d, "mounted", True))
        peaks = [d.peak_percent for d in getattr(teardown, "disks", [])
                 if getattr(d, "peak_percent", None) is not None]
        seconds = (time.monotonic() - stats.started + float(result.seconds or 0)
                   + float(getattr(teardown, "seconds", 0) or 0))
        # what was sent: in an Incremental the file daemon reads only changed files, and a
        # hard-linked file once
        parts = [f"guest {guest.name}: {disks}",
                 f"{stats.entries} entries ({_size(stats.bytes)}), {stats.files_read} files read "
                 f"({_size(stats.bytes_read)})"]
        if stats.bad_names:
            parts.append(f"{stats.bad_names} not saved (names not UTF-8)")
        if stats.unreadable:
            parts.append(f"{stats.unreadable} unreadable")
        if stats.read_errors:
            parts.append(f"{stats.read_errors} read errors")
        parts.append(f"snapshot peak use {max(peaks):.1f}%" if peaks else "snapshot peak use unknown")
        if result.quiesce and result.quiesce != "none":
            freeze = f" {result.freeze_ms:.0f} ms" if result.freeze_ms is not None else ""
            parts.append(f"quiesce {result.quiesce}{freeze}")
        parts.append(f"{seconds:.1f} s")
        return ", ".join(parts)

    def teardown(self, guest):
        """Idempotent; only for guests this job prepared. Returns the GuestResult or None."""
        if guest.name not in self.live:
            return None
        try:
            report = self.runner.teardown([guest])[0]
        except Exception as exc:  # e.g. the system state could not be read
            self.job(bareosfd.M_ERROR, f"guest {guest.name}: teardown failed: {exc}; run "
                                       f"domu-snapshot cleanup")
            return _Failed(guest, f"{guest.name}: teardown failed: {exc}")
        if report.ok or not self.left_over(guest):
            self.live.pop(guest.name, None)  # e.g. an overflow: reported, but nothing is left
        return report

    def left_over(self, guest):
        """Whether the system still shows a snapshot or mount of the guest."""
        try:
            leftovers, _foreign = self.runner.leftovers()
        except Exception:
            return True
        keys = {(d.vg, d.lv) for g in leftovers for d in g.disks}
        return any((d.vg, d.lv) in keys for d in guest.disks)

    def teardown_all(self, why):
        """EndBackupJob, CancelCommand, JobEnd: stop the walk and release every guest."""
        with self.lock:
            if self.entries is not None:
                entries, self.entries = self.entries, None
                entries.close()      # finish_guest of the guest being read
            self.next_entry = None
            self.close_fd()
            for name in list(self.live):
                report = self.teardown(self.live[name])
                if report is not None and not report.ok:
                    self.job(bareosfd.M_ERROR, f"guest {name}: teardown at {why} left something "
                                               f"behind: {report.error}")
            self.prepared.clear()
            # Released even with leftovers: the lock is an fd of this job's interpreter and must
            # not outlive the job; the next run reaps what is left.
            self.release_lock()

    def cancel(self):
        self.canceled = True
        # The file daemon sends this from another thread, possibly while it reads a file of ours
        # or while the job thread is inside a guest step: then the teardown is left to
        # EndBackupJob, which the file daemon sends once that thread has stopped.
        if self.fd < 0 and self.lock.acquire(blocking=False):
            try:
                self.teardown_all("cancel")
            finally:
                self.lock.release()
        else:
            self.debug("cancel: busy, teardown follows at EndBackupJob")

    def advance(self):
        """The next Entry, or None (then the job's report is made)."""
        with self.lock:
            if self.canceled or self.entries is None:
                return None
            entry = next(self.entries, None)
        if entry is None:
            self.finish_job()
        return entry

    def finish_job(self):
        """Once every guest was read: a job that lost a guest fails (M_FATAL).

        The file daemon sends an entry's attributes before its data, so a guest that failed
        half-way (snapshot overflow, read errors, a broken walk) has new catalog versions of
        its files with no or partial data. Bareos builds restores of the latest state and the
        next Incremental's base from jobs that terminated OK or OK with warnings only (JobStatus
        T/W, cats/dml uar_* and accurate queries), so failing the job keeps the failed guest's
        last good versions current; and "Backup OK -- with warnings" is what a healthy host
        without libvirt would show too. The other guests' files are in this job (restore them
        with its jobid) and are sent again by the next Incremental."""
        if self.finished or self.runner is None or self.canceled:
            return
        self.finished = True
        self.teardown_all("end of the guests")  # all torn down already; frees the run lock
        if self.lost:
            self.job(bareosfd.M_FATAL,
                     f"{len(self.lost)} of {len(self.guests)} guest(s) NOT backed up completely: "
                     f"{', '.join(self.lost)} (see the errors above). The job is marked failed so "
                     f"that their last good backup stays the current one; the other guests' files "
                     f"are in this job. Fix the cause and run the job again")
        elif not self.guests and not getattr(self.cfg, "allow_empty", False):
            self.job(bareosfd.M_FATAL,
                     f"no guest selected (prefix {self.cfg.prefix!r}, VGs "
                     f"{', '.join(self.cfg.vgs) or 'all'}): nothing was backed up; check prefix, "
                     f"vg and include, or set allow_empty = yes for a host that may have none")

    def close_fd(self):
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    # accurate ---------------------------------------------------------------------------------------
    def check_file(self, fname):
        """bRC_Seen keeps a file of an earlier backup that this job did not send; bRC_OK marks it
        deleted. The file daemon asks after the walk, when every guest is torn down again."""
        path = fname.rstrip("/") or "/"
        root = None
        for candidate in self.roots:
            if path == candidate or path.startswith(candidate + "/"):
                if root is None or len(candidate) > len(root):
                    root = candidate
        if root is None:
            return bareosfd.bRC_OK       # not below a guest of this job: gone with its guest
        state = self.roots[root]
        if state == "walking":           # still mounted (cannot happen in the usual order)
            return bareosfd.bRC_Seen if os.path.lexists(path) else bareosfd.bRC_OK
        if state != "complete":
            return bareosfd.bRC_Seen     # guest failed, skipped or overflowed: keep the last good
        for directory in self.incomplete:
            if path == directory or path.startswith(directory.rstrip("/") + "/"):
                return bareosfd.bRC_Seen
        return bareosfd.bRC_OK


class _Failed:
    """A GuestResult-like failure for exceptions the core did not turn into a GuestResult."""

    def __init__(self, guest, message):
        self.guest = guest
        self.ok = False
        self.status = "failed"
        self.error = message
        self.disks = []
        self.notes = []
        self.seconds = 0.0
        self.quiesce = "none"
        self.freeze_ms = None
        self.domain_xml_path = ""


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
    return f"{n} B"


_plugin = Plugin()


# --- entry points called by python-fd -------------------------------------------------------------

def load_bareos_plugin(plugindef):
    global _plugin, _xattrs
    _plugin = Plugin()
    _xattrs = Xattrs()
    bareosfd.RegisterEvents(list(EVENTS))
    return bareosfd.bRC_OK


def parse_plugin_definition(plugindef):
    try:
        _plugin.options = _plugin.option_layers.parse(plugindef)
    except DomuError as exc:
        _plugin.job(bareosfd.M_FATAL, f"plugin options: {exc}; nothing was snapshotted")
        return bareosfd.bRC_Error
    return bareosfd.bRC_OK


def handle_plugin_event(event):
    if event == bareosfd.bEventStartBackupJob:
        return _plugin.start_backup()
    if event == bareosfd.bEventCancelCommand:
        _plugin.cancel()
    elif event in (bareosfd.bEventEndBackupJob, bareosfd.bEventJobEnd):
        _plugin.teardown_all("end of job" if event == bareosfd.bEventJobEnd else "end of backup")
    return bareosfd.bRC_OK


def start_backup_file(savepkt):
    if not _plugin.started:
        # `estimate` sends no bEventStartBackupJob (and python-fd keeps bEventEstimateCommand
        # to itself): the walk starts here then
        if _plugin.start_backup() != bareosfd.bRC_OK:
            return bareosfd.bRC_Error
    entry = _plugin.next_entry or _plugin.advance()
    _plugin.next_entry = None
    if entry is None:
        # Nothing to save at all (no guest, or none could be read; finish_job said so).
        return bareosfd.bRC_Stop
    _plugin.current = entry
    savepkt.fname = entry.path
    savepkt.link = entry.link
    savepkt.statp = stat_packet(entry.st, entry.dev)
    savepkt.type = entry.ftype
    savepkt.no_read = entry.no_read
    return bareosfd.bRC_OK


def end_backup_file():
    # Fetch the next entry now so that "nothing more" is an OK here rather than a bRC_Stop from
    # start_backup_file (which Bareos 22.0 does not accept).
    _plugin.current = None
    _plugin.next_entry = _plugin.advance()
    return bareosfd.bRC_More if _plugin.next_entry is not None else bareosfd.bRC_OK


_IN_CORE = hasattr(bareosfd, "iostat_do_in_core")
_NOATIME = getattr(os, "O_NOATIME", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _CLOEXEC


def plugin_io(iop):
    func = iop.func  # read once: each packet attribute is a conversion on the C side
    try:
        if func == bareosfd.IO_OPEN:
            return _io_open(iop)
        if func == bareosfd.IO_CLOSE:
            _plugin.close_fd()
            iop.status = 0
            return bareosfd.bRC_OK
        if func == bareosfd.IO_READ:
            data = os.read(_plugin.fd, iop.count)
            iop.buf = bytearray(data)
            iop.status = len(data)
            return bareosfd.bRC_OK
        if func == bareosfd.IO_WRITE:
            view = memoryview(iop.buf or b"")[:iop.count]
            while view:
                view = view[os.write(_plugin.fd, view):]
            iop.status = iop.count
            return bareosfd.bRC_OK
        if func == bareosfd.IO_SEEK:
            iop.status = os.lseek(_plugin.fd, iop.offset, iop.whence)
            return bareosfd.bRC_OK
    except OSError as exc:
        iop.io_errno = exc.errno or 0
        iop.status = -1
        if func in (bareosfd.IO_OPEN, bareosfd.IO_READ) and _plugin.stats is not None \
                and _plugin.current is not None:
            _plugin.stats.read_errors += 1   # the entry's attributes are already on their way
        _plugin.job(bareosfd.M_ERROR, f"I/O on {iop.fname or _plugin.current}: {exc.strerror}")
        return bareosfd.bRC_Error
    iop.status = -1
    return bareosfd.bRC_Error


def _io_open(iop):
    _plugin.close_fd()
    if iop.flags & (os.O_WRONLY | os.O_RDWR):
        fd = _open_for_restore(iop.fname)
        if fd is None:
            iop.status = -1
            iop.io_errno = 1  # EPERM
            return bareosfd.bRC_Error
    else:
        fd = _open_for_backup(_plugin.current, iop.fname)
    _plugin.fd = fd
    if _IN_CORE:
        iop.filedes = fd
        iop.status = bareosfd.iostat_do_in_core
    else:
        iop.status = 0
    return bareosfd.bRC_OK


def _open_for_backup(entry, fname):
    if entry is None or entry.path != fname:
        raise OSError(2, f"IO_OPEN for {fname!r}, which is not the entry being saved")
    try:
        fd = os.open(entry.path, _READ_FLAGS | _NOATIME)
    except PermissionError:
        fd = os.open(entry.path, _READ_FLAGS)  # O_NOATIME needs ownership or CAP_FOWNER
    # One fstat (cat makes the same call): the descriptor must be the file that was listed.
    st = os.fstat(fd)
    if st.st_mode & _S_IFMT != _S_IFREG or st.st_ino != entry.st.st_ino:
        os.close(fd)
        raise OSError(116, f"{entry.path} changed since it was listed")
    stats = _plugin.stats
    if stats is not None:
        stats.files_read += 1
        stats.bytes_read += st.st_size
    return fd


def _open_for_restore(path):
    """A descriptor to write `path`, or None when the path is refused (reported)."""
    problem = _restore_problem(path)
    if problem:
        _plugin.job(bareosfd.M_ERROR, f"restore refused: {problem}")
        return None
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC, 0o600)


# --- ACLs and extended attributes ----------------------------------------------------------------
#
# POSIX ACLs travel as what they are on Linux, the extended attributes system.posix_acl_access
# and system.posix_acl_default, in the xattr stream: one llistxattr finds them with the others
# (no extra call per entry), their kernel form keeps the guest's numeric uids/gids as they are
# (no text form to write and parse, no host user database involved), and name/value pairs come
# back byte-exact and framed by the file daemon, whereas an ACL stream is one blob per file (a
# format of our own for access + default ACL), sent back with an extra NUL. So get_acl hands over
# nothing. The file daemon calls get_xattr only when the FileSet's xattrsupport is on (default).

def _printable(name):
    return bytes(name).decode("utf-8", "backslashreplace")


class Xattrs:
    """Backup: the attributes of the entry being saved, one per get_xattr call. Restore: the
    attributes that could not be set, per file, reported once at end_restore_file."""

    def __init__(self):
        self.entry = None        # the Entry whose names are pending
        self.names = []          # names still to hand over, last one first
        self.failed = {}         # restored path -> ["name (reason)", ...]

    def next_pair(self, entry):
        """(name, value) of the next readable attribute of `entry`, or None when none is left."""
        if self.entry is not entry:
            self.entry = entry
            self.names = self._list(entry.path)
        while self.names:
            name = self.names.pop()
            try:
                return name, os.getxattr(entry.path, name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    continue  # removed since it was listed: nothing left to save
                _plugin.job(bareosfd.M_ERROR, f"{entry.path}: cannot read extended attribute "
                                              f"{name}: {exc.strerror}; it is not saved")
        return None

    @staticmethod
    def _list(path):
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return []  # a filesystem without extended attributes: there are none to save
            _plugin.job(bareosfd.M_ERROR, f"{path}: cannot list extended attributes: "
                                          f"{exc.strerror}; none are saved")
            return []
        names.reverse()
        return names

    def restore(self, xattr):
        path = xattr.fname
        if not xattr.name or not path:
            return
        if _restore_problem(path):
            return  # create_file refused this path and reported it
        name = bytes(xattr.name)
        value = bytes(xattr.value) if xattr.value is not None else b""
        try:
            # never through a symlink: the attribute belongs to the restored entry itself
            os.setxattr(path, name, value, follow_symlinks=False)
        except FileNotFoundError:
            return  # not created; the file daemon or create_file reported why
        except OSError as exc:
            self.failed.setdefault(path, []).append(f"{_printable(name)} ({exc.strerror})")

    def report_failed(self):
        for path, problems in self.failed.items():
            _plugin.job(bareosfd.M_ERROR, f"cannot restore extended attributes of {path}: "
                                          + ", ".join(problems))
        self.failed = {}


_xattrs = Xattrs()


def get_acl(acl):
    return bareosfd.bRC_OK  # ACLs go with the extended attributes (see above)


def get_xattr(xattr):
    """One attribute per call; bRC_More asks the file daemon to call again for the same entry."""
    entry = _plugin.current
    if entry is None:
        return bareosfd.bRC_OK
    try:
        pair = _xattrs.next_pair(entry)
    except Exception as exc:  # a bug here must cost this file's attributes, not the job
        _plugin.job(bareosfd.M_ERROR, f"{entry.path}: extended attributes not saved: {exc!r}")
        _xattrs.names = []
        return bareosfd.bRC_OK
    if pair is None:
        return bareosfd.bRC_OK
    name, value = pair
    # python-fd takes bytearrays only (anything else is dropped silently); an empty bytearray
    # fails its conversion, so an empty value goes as None
    xattr.name = bytearray(os.fsencode(name))
    xattr.value = bytearray(value) if value else None
    return bareosfd.bRC_More if _xattrs.names else bareosfd.bRC_OK


def set_acl(acl):
    if acl.content:
        _plugin.job(bareosfd.M_WARNING, f"{acl.fname}: ACL stream ignored (this plugin saves "
                                        "ACLs as system.posix_acl_* extended attributes)")
    return bareosfd.bRC_OK


def set_xattr(xattr):
    """Failures are collected and reported per file; bRC_OK lets the file daemon go on with the
    file's other attributes (any other answer stops it and logs a message of its own)."""
    try:
        _xattrs.restore(xattr)
    except Exception as exc:
        _plugin.job(bareosfd.M_ERROR, f"{xattr.fname}: extended attribute not restored: {exc!r}")
    return bareosfd.bRC_OK


def check_file(fname):
    return _plugin.check_file(fname)


def handle_backup_file(savepkt):
    return bareosfd.bRC_OK


def restore_object_data(rop):
    return bareosfd.bRC_OK


# --- restore --------------------------------------------------------------------------------------

def _restore_problem(path, restorepkt=None):
    """restore_path_problem() for this job's where/regexwhere (from the packet when there is
    one: the file daemon fills both there; GetValue otherwise)."""
    where = (restorepkt.where if restorepkt is not None else "") \
        or bareosfd.GetValue(bareosfd.bVarWhere) or ""
    regexwhere = (restorepkt.regexwhere if restorepkt is not None else "") \
        or bareosfd.GetValue(bareosfd.bVarRegexWhere) or ""
    return restore_path_problem(path, where, _plugin.options.get("mount_root"), regexwhere)


def start_restore_file(cmd):
    return bareosfd.bRC_OK


def end_restore_file():
    _plugin.close_fd()
    _xattrs.report_failed()  # the file daemon has handed over all of this file's attributes
    return bareosfd.bRC_OK


def create_file(restorepkt):
    problem = _restore_problem(restorepkt.ofname, restorepkt)
    if problem is None and restorepkt.type == bareosfd.FT_LNKSAVED:
        problem = _restore_problem(restorepkt.olname, restorepkt)
    if problem:
        _plugin.job(bareosfd.M_ERROR, f"restore refused: {problem}")
        restorepkt.create_status = bareosfd.CF_ERROR
        return bareosfd.bRC_OK
    restorepkt.create_status = bareosfd.CF_CORE
    return bareosfd.bRC_OK


def set_file_attributes(restorepkt):
    """Owner, mode and times: python-fd ignores a CF_CORE set here, so the core will not."""
    path = restorepkt.ofname
    problem = _restore_problem(path, restorepkt)
    if problem:
        return bareosfd.bRC_OK  # create_file already refused and reported it
    st = restorepkt.statp
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return bareosfd.bRC_OK  # not created (the file daemon reported why)
    try:
        try:
            os.lchown(path, st.st_uid, st.st_gid)
        except PermissionError:
            if os.geteuid() == 0:
                raise
        if not stat.S_ISLNK(current.st_mode):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime * 10 ** 9, st.st_mtime * 10 ** 9), follow_symlinks=False)
    except OSError as exc:
        _plugin.job(bareosfd.M_ERROR, f"cannot set attributes of {path}: {exc.strerror}")
    return bareosfd.bRC_OK
