"""A stand-in for bareos-fd driving a python-fd plugin, for tests.

It does what the C side does (core/src/plugins/filed/python/python-fd.cc, core/src/filed/
fd_plugins.cc, backup.cc, restore.cc, accurate*.cc, findlib/create_file.cc of Bareos 22..25),
as far as a plugin can observe it:

- option handling: the plugin definition `python3:module_path=..:module_name=..:k=v` is split at
  unescaped colons; `module_path` (put first on sys.path) and `module_name` (imported by name) are
  consumed; Python gets the rest as `k=v:k=v:` (trailing colon; `\\:` left as is). A fresh import
  per job stands in for the per-job sub-interpreter.
- events reach the plugin only once it is loaded and only if registered; after a cancel only
  bEventEndBackupJob/bEventEndRestoreJob still do (bEventJobEnd does not, unless asked to).
- backup: the PluginSave loop (start_backup_file, Incremental/Differential change check turning
  entries into FT_NOCHG/FT_DIRNOCHG, hard links with nlink > 1 keyed by (st_dev, st_ino) sent as
  FT_LNKSAVED, plugin_io OPEN/READ/CLOSE with in-core reads from the returned descriptor,
  get_acl (not for symlinks) and the get_xattr bRC_More loop for every entry sent, with
  bareosfd.cc's bytearray-only conversions, end_backup_file), the conversions that fail a job
  (fname/link must be UTF-8 str, statp a StatPacket, flags a bytearray), accurate "seen" marking
  and the deleted-file check through check_file at the end.
- restore: start_restore_file, create_file; for CF_CORE the harness creates the file under
  `where` like findlib's CreateFile (parents, regular files opened through plugin_io IO_OPEN,
  symlinks, hard links, fifos, directories with owner and mode), writes the data, then calls
  set_file_attributes. The create_status set there is NOT copied back by bareosfd.cc, so the
  core does not apply owner/mode/times after a python plugin's restore: the plugin has to.
  `core_sets_attributes=True` pretends it did (to tell a plugin bug from a core gap).
  ACL and xattr streams go to set_acl/set_xattr after set_file_attributes and IO_CLOSE for
  extracted files, at once for directories, and not at all for other entries, as restore.cc does.

Made to do what bareos-fd 25.1.0 did in the real-daemon suite (tests/vm/test_bareos_real.py):
the FileSet's HardLinks default is no (inc_conf.cc: FO_NO_HARDLINK unless "HardLinks = yes"),
a Job's "FD Plugin Options" arrive as bEventNewPluginOptions with only the override string
between bEventEndFileSet and bEventStartBackupJob, a restore with regexwhere has an empty
`where`, an empty `regexwhere` (packet and bVarRegexWhere: filed/dir_cmd.cc RestoreCmd fills only
jcr->where_bregexp) and rewritten names (`tells_regexwhere=True` plays a file daemon that
would tell), an FT_FIFO restore would block for ever (a ProtocolError here),
JobStatus is W after an M_ERROR or M_WARNING and f after an M_FATAL, estimate gets no
bEventStartBackupJob, and each job imports the module afresh (its own sub-interpreter).

Where it still differs from the real daemon:
- regexwhere is applied with Python's `re`, not POSIX regcomp (the same for the strip_prefix,
  add_prefix and add_suffix forms bconsole writes);
- no catalog, volumes or director: JobFiles, "FD Files Written" and the restore's file selection
  are the test's business; Catalog only answers the accurate list;
- after an M_FATAL the real file daemon treats the job as canceled (IsJobCanceled): it skips the
  deleted-file check (so does the harness) and sends no bEventJobEnd (the harness still does);
- one Python interpreter for all jobs (the entry module and domu_snapshot.bareos are imported
  afresh per job, but C extensions, threads and the core's modules stay), where bareos-fd makes a
  sub-interpreter per job.

Everything the plugin says is recorded on the Job (messages, debug messages, SetValue calls, ...).
The backup stream is kept in memory as a list of Record.
"""

import dataclasses
import errno
import importlib
import os
import re
import stat
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
FDSTUB = HERE / "fdstub"
if str(FDSTUB) not in sys.path:
    sys.path.insert(0, str(FDSTUB))

import bareosfd  # noqa: E402  (the stand-in, from tests/fdstub)

READ_CHUNK = 64 * 1024
# IoStatus::do_io_in_core, also when a test removes bareosfd.iostat_do_in_core (pre-22 modules)
IOSTAT_DO_IN_CORE = 1
# Events the C side registers for itself at newPlugin (python-fd.cc).
C_SIDE_EVENTS = {bareosfd.bEventLevel, bareosfd.bEventSince, bareosfd.bEventNewPluginOptions,
                 bareosfd.bEventPluginCommand, bareosfd.bEventJobStart,
                 bareosfd.bEventRestoreCommand, bareosfd.bEventEstimateCommand,
                 bareosfd.bEventBackupCommand, bareosfd.bEventRestoreObject}
CALLED_IF_CANCELED = {bareosfd.bEventEndBackupJob, bareosfd.bEventEndVerifyJob,
                      bareosfd.bEventEndRestoreJob}
# FileSet option bits (include/fileopts.h) the harness looks at.
FO_MTIMEONLY = 11
FO_ACL = 14
FO_NO_HARDLINK = 15
FO_XATTR = 27
MAX_XATTR_STREAM = 1024 * 1024  # findlib/xattr.h
STAT_FIELDS = ("st_dev", "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev",
               "st_size", "st_atime", "st_mtime", "st_ctime", "st_blksize", "st_blocks")


class ProtocolError(AssertionError):
    """The plugin broke the calling convention in a way the real C side would choke on."""


class PluginCrash(Exception):
    """A Python exception escaped from a plugin entry point (the fd logs it as M_FATAL)."""


# --- the plugin definition, as python-fd.cc parses it -------------------------------------------

def split_definition(definition):
    """Split `python3:module_path=..:module_name=..:k=v` like python-fd.cc's parse_plugin_definition.

    Returns (module_path, module_name, options string handed to Python)."""
    colon = definition.find(":")
    if colon < 0:
        raise ValueError(f"illegal plugin definition {definition!r}")
    rest = definition[colon + 1:]
    module_path = module_name = None
    options = []
    pos = 0
    while pos < len(rest):
        eq = rest.find("=", pos)
        if eq < 0:
            raise ValueError(f"illegal argument {rest[pos:]!r} without value")
        argument = rest[pos:eq]
        scan = eq + 1
        while True:
            nxt = rest.find(":", scan)
            if nxt < 0:
                end, pos = len(rest), len(rest)
                break
            if rest[nxt - 1] != "\\":
                end, pos = nxt, nxt + 1
                break
            scan = nxt + 1
        value = rest[eq + 1:end]
        # strncasecmp(argument, name, strlen(argument)): a prefix of a known name matches it
        if argument and "module_path".startswith(argument.lower()):
            module_path = module_path if module_path is not None else value
        elif argument and "module_name".startswith(argument.lower()):
            module_name = module_name if module_name is not None else value
        else:
            options.append(f"{argument}={value}")
    return module_path, module_name, (":".join(options) + ":") if options else ""


# --- what the plugin sees through bareosfd -------------------------------------------------------

class Job:
    """The running job as bareosfd exposes it; records everything the plugin says."""

    def __init__(self, values, since=0):
        self.values = dict(values)
        self.since = since
        self.check_changes = True
        self.registered_events = set()
        self.instance_count = 1
        self.messages = []        # (type, text) from JobMessage, plus the fd's own (M_FATAL ...)
        self.debug_messages = []
        self.calls = []           # (name, args) for SetValue, RegisterEvents, AddExclude, ...
        self.seen_by_plugin = set()
        self.canceled = False

    # bareosfd hooks
    def record(self, name, *args):
        self.calls.append((name, args))

    def job_message(self, mtype, text):
        self.messages.append((mtype, text))

    def file_seen(self, fname):
        self.seen_by_plugin.add(fname)

    def mark_all_seen(self):
        self.seen_by_plugin.add("*all*")

    def accept_file(self, savepkt):
        return bareosfd.bRC_OK

    def check_changes_for(self, savepkt):
        return bareosfd.bRC_OK

    # queries for tests
    def texts(self, *types):
        return [text for mtype, text in self.messages if not types or mtype in types]

    @property
    def errors(self):
        return self.texts(bareosfd.M_ERROR, bareosfd.M_FATAL, bareosfd.M_ERROR_TERM)

    @property
    def fatal(self):
        return self.texts(bareosfd.M_FATAL, bareosfd.M_ABORT, bareosfd.M_ERROR_TERM)


@dataclasses.dataclass
class Record:
    """One entry of the backup stream (attributes + data)."""

    fname: str
    type: int
    stat: dict
    link: str = ""
    data: bytes = None          # None: no data stream
    file_index: int = 0
    link_fi: int = 0
    error: str = ""             # the fd could not read it
    acl: bytes = None           # STREAM_ACL_PLUGIN content (without the NUL the fd appends)
    xattrs: list = None         # STREAM_XATTR_PLUGIN: [(name, value or None)]

    @property
    def accurate_key(self):
        return self.link if stat.S_ISDIR(self.stat["st_mode"]) else self.fname


@dataclasses.dataclass
class BackupResult:
    job: Job
    level: str
    records: list
    deleted: list               # names sent as FT_DELETED (accurate)
    unchanged: list             # names turned into FT_NOCHG/FT_DIRNOCHG
    check_file_calls: list      # (fname, rc)
    events: list                # events delivered to Python, in order
    calls: list                 # entry points called, in order (name only)
    status: str                 # JobStatus: "T" ok, "W" ok with warnings (any M_ERROR or
                                # M_WARNING), "f" fatal, "A" canceled
    cmd: str

    @property
    def with_data(self):
        return [r for r in self.records if r.data is not None]

    def by_name(self):
        return {r.fname: r for r in self.records}


class Catalog:
    """Accumulates backups like the catalog does, to give the next job its accurate list."""

    def __init__(self):
        self.files = {}          # accurate key -> stat dict

    def add(self, result):
        for record in result.records:
            self.files[record.accurate_key] = dict(record.stat)
        for name in result.deleted:
            self.files.pop(name, None)
        return self

    def accurate_list(self):
        return dict(self.files)


# --- the file daemon ---------------------------------------------------------------------------

class FileDaemon:
    """Plays bareos-fd for one plugin definition (a FileSet's `Plugin = "..."` string)."""

    def __init__(self, definition, fileset_flags=(), acl=True, xattr=True, client="test-fd",
                 working_dir="/var/lib/bareos", keep_module_options=False, hardlinks=False,
                 plugin_options=None, used_config="/etc/bareos/bareos-fd.d/*/*.conf"):
        """`keep_module_options`: hand Python module_path/module_name too (Bareos 22..25 consume
        them; a plugin should cope either way). `hardlinks`: the FileSet's "HardLinks = yes"
        (Bareos 25's default is no: inc_conf.cc sets FO_NO_HARDLINK unless told otherwise, and
        then both names of a file are saved with data). `plugin_options`: a Job's "FD Plugin
        Options" string (e.g. "python3:include=domu-a"), sent as bEventNewPluginOptions.
        `used_config`: what bVarUsedConfig answers (bareos-fd: its configuration, as a directory
        glob or a file)."""
        self.plugin_options = plugin_options
        self.used_config = used_config
        self.definition = definition
        self.module_path, self.module_name, self.options = split_definition(definition)
        if keep_module_options:
            self.options = definition.split(":", 1)[1].rstrip(":") + ":"
        if not self.module_name:
            raise ValueError("plugin definition names no module_name")
        self.flags = bytearray(5)
        for bit in fileset_flags:
            self.flags[bit >> 3] |= 1 << (bit & 7)
        if acl:
            self.flags[FO_ACL >> 3] |= 1 << (FO_ACL & 7)
        if xattr:
            self.flags[FO_XATTR >> 3] |= 1 << (FO_XATTR & 7)
        if not hardlinks:
            self.flags[FO_NO_HARDLINK >> 3] |= 1 << (FO_NO_HARDLINK & 7)
        self.client = client
        self.working_dir = working_dir
        self.jobid = 0
        self.regexwhere = ""
        self.told_regexwhere = ""        # what the plugin is told of it (bareos-fd 25: nothing)
        self.module = None
        self.job = None
        self.calls = []
        self.events = []

    # -- loading and calling ------------------------------------------------------------------

    def _flag(self, bit):
        return bool(self.flags[bit >> 3] & (1 << (bit & 7)))

    def _start_job(self, level, jobtype, since=0, accurate=False, where=None):
        self.jobid += 1
        values = {
            bareosfd.bVarJobId: self.jobid,
            bareosfd.bVarFDName: self.client,
            bareosfd.bVarLevel: ord(level),
            bareosfd.bVarType: ord(jobtype),
            bareosfd.bVarClient: self.client,
            bareosfd.bVarJobName: f"job-{self.jobid}",
            bareosfd.bVarJobStatus: ord("R"),
            bareosfd.bVarAccurate: int(bool(accurate)),
            bareosfd.bVarWorkingDir: self.working_dir,
            bareosfd.bVarWhere: where,
            bareosfd.bVarRegexWhere: None,
            bareosfd.bVarExePath: "/usr/sbin",
            bareosfd.bVarVersion: "25.1.0 (stand-in)",
            bareosfd.bVarDistName: "stand-in",
            bareosfd.bVarPrevJobName: None,
            bareosfd.bVarPrefixLinks: 0,
            # what bareos-fd 25 reports for a configuration directory (the plugin resolves a
            # relative defaults_file/overrides_file against it; the harness's FileDaemon may set it)
            bareosfd.bVarUsedConfig: self.used_config,
        }
        self.job = Job(values, since=since)
        self.module = None
        self.calls = []
        self.events = []
        bareosfd._install(self.job)

    def _end_job(self):
        bareosfd._uninstall()
        # drop the plugin's modules so the next job imports them afresh (a new sub-interpreter
        # in the fd); the core's stay, so that tests can replace its Runner
        for name in [n for n in sys.modules if n == self.module_name or n == PLUGIN_PACKAGE
                     or n.startswith(PLUGIN_PACKAGE + ".")]:
            sys.modules.pop(name, None)
        self.module = None

    def _call(self, name, *args):
        """Call a module-level entry point like bareosfd.cc: exceptions become M_FATAL + bRC_Error."""
        self.calls.append(name)
        function = getattr(self.module, name, None)
        if function is None or not callable(function):
            raise ProtocolError(f"plugin has no module-level function {name}()")
        try:
            result = function(*args)
        except Exception as exc:  # the fd's PyErrorHandler logs the traceback as M_FATAL
            self.job.messages.append((bareosfd.M_FATAL, "python3-fd: " + "".join(
                traceback.format_exception(type(exc), exc, exc.__traceback__))))
            return bareosfd.bRC_Error
        if not isinstance(result, int) or isinstance(result, bool):
            raise ProtocolError(f"{name}() returned {result!r}, not an int return code")
        return result

    def _load(self, options):
        """PyLoadModule: sys.path, import by name, load_bareos_plugin, then parse_plugin_definition."""
        if self.module_path and (not sys.path or sys.path[0] != self.module_path):
            sys.path.insert(0, self.module_path)
        sys.modules.pop(self.module_name, None)
        try:
            self.module = importlib.import_module(self.module_name)
        except Exception as exc:
            self.job.messages.append((bareosfd.M_FATAL, f"python3-fd: import failed: {exc!r}"))
            raise PluginCrash(f"cannot import {self.module_name}: {exc!r}") from exc
        rc = self._call("load_bareos_plugin", options)
        if rc != bareosfd.bRC_OK:
            return rc
        return self._call("parse_plugin_definition", options)

    def _command_event(self, event):
        """bEventPluginCommand/BackupCommand/RestoreCommand: load once, then parse the options."""
        if self.module is None:
            return self._load(self.options)
        self.events.append(event)
        return self._call("parse_plugin_definition", self.options)

    def event(self, event, even_if_canceled=False):
        """GeneratePluginEvent for a plain event."""
        if self.job.canceled and event not in CALLED_IF_CANCELED and not even_if_canceled:
            return bareosfd.bRC_OK
        if self.module is None:
            return bareosfd.bRC_OK  # not loaded yet: the C side answers itself
        if event not in self.job.registered_events and event not in C_SIDE_EVENTS:
            return bareosfd.bRC_OK
        self.events.append(event)
        return self._call("handle_plugin_event", event)

    def _cancel(self):
        # CancelCmd: the event first (the job is not marked canceled yet), then the status
        self.event(bareosfd.bEventCancelCommand)
        self.job.canceled = True

    # -- backup ---------------------------------------------------------------------------------

    def backup(self, level="F", since=0, accurate=False, catalog=None, cancel_after=None,
               jobend_after_cancel=False, max_entries=10_000_000):
        """Run one backup job. `cancel_after=N`: cancel once the N-th data file is open.

        Returns a BackupResult; the job's messages are on result.job."""
        self._start_job(level, "B", since=since if level in "ID" else 0, accurate=accurate)
        self._jobend_after_cancel = jobend_after_cancel
        accurate_list = catalog.accurate_list() if (catalog and accurate and level in "ID") else None
        seen = set()
        records, unchanged, check_calls = [], [], []
        status = "T"
        try:
            # fileset command: the Plugin= line loads the module (bEventPluginCommand)
            if self._command_event(bareosfd.bEventPluginCommand) != bareosfd.bRC_OK:
                status = "f"
                return self._backup_result(level, records, [], unchanged, check_calls, status)
            self.event(bareosfd.bEventEndFileSet)
            if self.plugin_options is not None:
                # dird SendPluginOptions after the FileSet; python-fd parses the string after its
                # first colon and hands Python only that (no handle_plugin_event for it)
                _path, _name, override = split_definition(self.plugin_options)
                self.events.append(bareosfd.bEventNewPluginOptions)
                if self._call("parse_plugin_definition", override) != bareosfd.bRC_OK:
                    status = "f"
                    return self._backup_result(level, records, [], unchanged, check_calls, status)
            self.event(bareosfd.bEventStartBackupJob)
            if self._command_event(bareosfd.bEventBackupCommand) != bareosfd.bRC_OK:
                status = "f"
            else:
                status = self._save_loop(level, accurate_list, seen, records, unchanged,
                                         cancel_after, max_entries)
            deleted = []
            # AccurateFinish: no deleted-file list once the job is canceled or failed
            # (IsJobCanceled is true after an M_FATAL too)
            if accurate_list is not None and not self.job.canceled and status != "f" \
                    and not self.job.fatal:
                for key in sorted(accurate_list):
                    if key in seen:
                        continue
                    rc = self._call("check_file", key)
                    check_calls.append((key, rc))
                    if rc != bareosfd.bRC_Seen:
                        deleted.append(key)
            self.event(bareosfd.bEventEndBackupJob)
            # bareos-fd does not send JobEnd to a cancelled job; jobend_after_cancel sends it anyway
            self.event(bareosfd.bEventJobEnd, even_if_canceled=self._jobend_after_cancel)
            if self.job.canceled:
                status = "A"
            elif status == "T" and self.job.fatal:
                status = "f"
            elif status == "T" and (self.job.errors or self.job.texts(bareosfd.M_WARNING)):
                status = "W"   # lib/message.cc counts JobErrors/JobWarnings; dird: "OK -- with warnings"
            return self._backup_result(level, records, deleted, unchanged, check_calls, status)
        finally:
            self._end_job()

    def estimate(self, level="F"):
        """bconsole `estimate listing`: PluginEstimate (fd_plugins.cc). python-fd keeps
        bEventEstimateCommand to itself (load + parse_plugin_definition) and no
        bEventStartBackupJob is sent; then start_backup_file/end_backup_file until end_backup_file
        says no more, no data read. Returns (the job, [(fname, type)])."""
        self._start_job(level, "B")
        listed = []
        try:
            if self._command_event(bareosfd.bEventEstimateCommand) != bareosfd.bRC_OK:
                return self.job, listed
            while not self.job.canceled:
                sp = self._new_savepacket()
                if self._call("start_backup_file", sp) != bareosfd.bRC_OK:
                    break
                if sp.type == 0:
                    self.job.messages.append((bareosfd.M_FATAL, "no type in startBackupFile packet"))
                    break
                listed.append((sp.fname, sp.type))
                if self._call("end_backup_file") != bareosfd.bRC_More:
                    break
            self.event(bareosfd.bEventJobEnd)
            return self.job, listed
        finally:
            self._end_job()

    def _backup_result(self, level, records, deleted, unchanged, check_calls, status):
        return BackupResult(job=self.job, level=level, records=records, deleted=deleted,
                            unchanged=unchanged, check_file_calls=check_calls,
                            events=list(self.events), calls=list(self.calls), status=status,
                            cmd=self.definition)

    def _new_savepacket(self):
        # NativeToPySavePacket of a fresh save_pkt
        return bareosfd._make(bareosfd.SavePacket, fname="", link="", statp=None, type=0,
                              flags=bytearray(self.flags), no_read=False, portable=True,
                              accurate_found=False, cmd=self.definition, save_time=0,
                              delta_seq=0, object_name=None, object=None, object_len=0,
                              object_index=0)

    def _to_native(self, sp):
        """PySavePacketToNative: what the C side insists on. Returns None or the error text."""
        if sp.fname is None:
            return "RuntimeError: fname is empty"
        if not isinstance(sp.fname, str):
            return 'TypeError: fname needs to be of type string "utf-8"'
        try:
            sp.fname.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"UnicodeEncodeError: {exc}"
        if sp.link is not None:
            if not isinstance(sp.link, str):
                return 'TypeError: if given, link needs to be of type string "utf-8"'
            try:
                sp.link.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"UnicodeEncodeError: {exc}"
        if not isinstance(sp.statp, bareosfd.StatPacket):
            return "RuntimeError: PyStatPacketToNative() failed"
        if not isinstance(sp.flags, bytearray):
            return "TypeError: flags need to be of type bytearray"
        if len(sp.flags) != 5:
            return "RuntimeError: PyByteArray_Size(flags) failed"
        return None

    def _changed(self, sp, st, level, accurate_list, seen):
        """checkChanges → CheckChanges/AccurateCheckFile. Returns False for an unchanged entry."""
        if not self.job.check_changes:
            return True
        if accurate_list is not None:
            key = sp.link if stat.S_ISDIR(st["st_mode"]) else sp.fname
            previous = accurate_list.get(key)
            if previous is None:
                return True
            seen.add(key)
            # default accurate options: mtime, ctime, size ("mcs")
            return any(previous[f] != st[f] for f in ("st_mtime", "st_ctime", "st_size"))
        save_time = sp.save_time or self.job.since
        if not save_time:
            return True
        if st["st_mtime"] < save_time and (self._flag(FO_MTIMEONLY) or st["st_ctime"] < save_time):
            return False
        return True

    def _save_loop(self, level, accurate_list, seen, records, unchanged, cancel_after, max_entries):
        hardlinks = {}          # (dev, ino) -> [first name, file index]
        file_index = 0
        opened = 0
        for _ in range(max_entries):
            if self.job.canceled:
                return "A"
            sp = self._new_savepacket()
            rc = self._call("start_backup_file", sp)
            if rc == bareosfd.bRC_OK:
                problem = self._to_native(sp)
                if problem:
                    self.job.messages.append((bareosfd.M_FATAL, f"python3-fd: {problem}"))
                    rc = bareosfd.bRC_Error
            if rc == bareosfd.bRC_Stop:
                return "T"
            if rc == bareosfd.bRC_Skip:
                continue
            if rc == bareosfd.bRC_Error:
                self.job.messages.append(
                    (bareosfd.M_FATAL, f'Command plugin "{self.definition}": startBackupFile failed.'))
                return "f"
            if rc != bareosfd.bRC_OK:
                self.job.messages.append(
                    (bareosfd.M_ERROR, f"unhandled returncode {rc} from startBackupFile"))
                return "E"
            if sp.type == 0:
                self.job.messages.append((bareosfd.M_FATAL, "no type in startBackupFile packet"))
                return "f"

            st = {f: getattr(sp.statp, f) for f in STAT_FIELDS}
            ftype, fname, link, no_read = sp.type, sp.fname, sp.link or "", sp.no_read
            if level in "ID":
                if sp.save_time == 0 and self.job.since:
                    sp.save_time = self.job.since
                if not self._changed(sp, st, level, accurate_list, seen):
                    ftype = bareosfd.FT_DIRNOCHG if ftype == bareosfd.FT_DIRBEGIN else bareosfd.FT_NOCHG

            link_fi = 0
            linked = None
            if (not self._flag(FO_NO_HARDLINK) and st["st_nlink"] > 1
                    and stat.S_IFMT(st["st_mode"]) in (stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK,
                                                       stat.S_IFIFO, stat.S_IFSOCK)):
                entry = hardlinks.setdefault((st["st_dev"], st["st_ino"]), [fname, 0])
                if entry[1] == 0:
                    linked = entry
                elif entry[0] == fname:
                    no_read = True
                else:
                    ftype, link, link_fi, no_read = bareosfd.FT_LNKSAVED, entry[0], entry[1], True

            record = self._save_file(fname, ftype, st, link, no_read, link_fi, file_index + 1,
                                     cancel_after, opened)
            if record == "unchanged":
                unchanged.append(fname)
            elif record is not None:
                if record.data is not None or record.error:
                    opened += 1
                file_index += 1
                record.file_index = file_index
                records.append(record)
                if linked is not None:
                    linked[1] = file_index
            rc = self._call("end_backup_file")
            if rc in (bareosfd.bRC_OK, bareosfd.bRC_More) and accurate_list is not None:
                seen.add(fname)
            if rc == bareosfd.bRC_More:
                continue
            return "A" if self.job.canceled else "T"
        raise ProtocolError(f"more than {max_entries} entries: is the plugin looping?")

    def _save_file(self, fname, ftype, st, link, no_read, link_fi, next_index, cancel_after,
                   opened):
        """SaveFile for one plugin entry. Returns a Record, "unchanged", or None (not sent)."""
        if ftype in (bareosfd.FT_NOCHG, bareosfd.FT_DIRNOCHG):
            return "unchanged"
        if ftype == bareosfd.FT_SPEC and stat.S_ISSOCK(st["st_mode"]):
            self.job.messages.append((bareosfd.M_SKIPPED, f"     Socket file skipped: {fname}"))
            return None
        if ftype not in (bareosfd.FT_LNKSAVED, bareosfd.FT_REGE, bareosfd.FT_REG, bareosfd.FT_LNK,
                         bareosfd.FT_DIREND, bareosfd.FT_SPEC, bareosfd.FT_FIFO, bareosfd.FT_RAW,
                         bareosfd.FT_DELETED, bareosfd.FT_REPARSE, bareosfd.FT_JUNCTION):
            self.job.messages.append(
                (bareosfd.M_NOTSAVED, f"     Unknown file type {ftype}; not saved: {fname}"))
            return None
        if ftype == bareosfd.FT_DIREND and not link.endswith("/"):
            raise ProtocolError(f"FT_DIREND {fname!r} needs link = path + '/', got {link!r}")
        record = Record(fname=fname, type=ftype, stat=st, link=link, link_fi=link_fi)
        if no_read:
            self._acl_xattr(record)  # SaveFile asks for them whether or not data was read
            return record
        opened_fd = self._read_data(record, cancel_after, opened)
        if opened_fd is None:
            return record
        fd, in_core = opened_fd
        # a check of the harness (the core does not make it), kept out of _read_data
        if in_core and fd >= 0 and _fd_is_open(fd):
            raise ProtocolError(f"IO_CLOSE left descriptor {fd} of {fname} open")
        if not self.job.canceled:
            self._acl_xattr(record)
        return record

    def _read_data(self, record, cancel_after, opened):
        """sendData for one file: plugin_io IO_OPEN, the reads (by the core itself from the
        descriptor when the plugin asks for in-core I/O, in READ_CHUNK pieces like the core's
        64 KiB buffer), IO_CLOSE; record.data is set unless reading failed. Returns (fd, in_core),
        or None when IO_OPEN failed (record.error says why)."""
        fname = record.fname
        iop = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_OPEN, count=0,
                             flags=os.O_RDONLY, mode=0, fname=fname, filedes=-1)
        rc = self._call("plugin_io", iop)
        if rc == bareosfd.bRC_Error or iop.status < 0:
            err = os.strerror(iop.io_errno) if iop.io_errno else "error"
            self.job.messages.append((bareosfd.M_NOTSAVED, f'     Cannot open "{fname}": ERR={err}.'))
            record.error = err
            return None
        in_core = iop.status == IOSTAT_DO_IN_CORE
        fd = iop.filedes
        if in_core and fd < 0:
            raise ProtocolError(f"IO_OPEN asked for in-core I/O without a descriptor ({fname})")
        if cancel_after is not None and opened + 1 >= cancel_after and not self.job.canceled:
            self._cancel()
        chunks = []
        if not self.job.canceled:
            if in_core:
                while True:
                    try:
                        chunk = os.read(fd, READ_CHUNK)
                    except OSError as exc:
                        record.error = exc.strerror
                        self.job.messages.append(
                            (bareosfd.M_ERROR, f"     Read error on file {fname}. ERR={exc.strerror}"))
                        break
                    if not chunk:
                        break
                    chunks.append(chunk)
            else:
                while True:
                    iop = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_READ, count=READ_CHUNK,
                                         fname=None, filedes=fd)
                    rc = self._call("plugin_io", iop)
                    if rc != bareosfd.bRC_OK or iop.status < 0:
                        record.error = os.strerror(iop.io_errno) if iop.io_errno else "read error"
                        self.job.messages.append(
                            (bareosfd.M_ERROR, f"     Read error on file {fname}. ERR={record.error}"))
                        break
                    if iop.status == 0:
                        break
                    buf = iop.buf
                    if not isinstance(buf, (bytes, bytearray)) or len(buf) > READ_CHUNK \
                            or iop.status > len(buf):
                        raise ProtocolError(f"IO_READ gave status={iop.status} with buf {type(buf)}")
                    chunks.append(bytes(buf[:iop.status]))
        close = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_CLOSE, fname=None, filedes=fd)
        self._call("plugin_io", close)
        if not record.error and not self.job.canceled:
            record.data = b"".join(chunks)
        return fd, in_core

    def _acl_xattr(self, record):
        """backup.cc DoBackupAcl (not for FT_LNK) and DoBackupXattr, with fd_plugins.cc's
        PluginBuildAclStreams / PluginBuildXattrStreams and bareosfd.cc's packet conversions."""
        fname = record.fname
        if self._flag(FO_ACL) and record.type != bareosfd.FT_LNK:
            ap = bareosfd._make(bareosfd.AclPacket, fname=fname, content=None)
            rc = self._call("get_acl", ap)
            content = ap.content
            if content is not None and not isinstance(content, bytearray):
                self.job.messages.append((bareosfd.M_FATAL, "python3-fd: TypeError: acl packet "
                                          "content needs to be of bytearray type"))
            elif rc != bareosfd.bRC_OK:
                self.job.messages.append((bareosfd.M_ERROR, f"(acl error of {fname})"))
            elif content:
                record.acl = bytes(content)
        if not self._flag(FO_XATTR):
            return
        pairs = []
        size = 0
        for _ in range(100000):
            xp = bareosfd._make(bareosfd.XattrPacket, fname=fname, name=None, value=None)
            rc = self._call("get_xattr", xp)
            if rc not in (bareosfd.bRC_OK, bareosfd.bRC_More):
                # bail_out: what was collected for this file is dropped, the fd logs its errmsg
                self.job.messages.append((bareosfd.M_ERROR, f"(xattr error of {fname})"))
                return
            # PyXattrPacketToNative: only bytearrays count; an empty value bytearray (or any
            # other type) leaves the value empty
            name, value = xp.name, xp.value
            if isinstance(name, bytearray) and name:
                value = bytes(value) if isinstance(value, bytearray) and value else None
                pairs.append((bytes(name), value))
                size += 4 + 4 + len(name) + 4 + (len(value) if value else 0)
                if size >= MAX_XATTR_STREAM:
                    self.job.messages.append((bareosfd.M_ERROR, f'Xattr stream on file "{fname}" '
                                              f"exceeds maximum size of {MAX_XATTR_STREAM} bytes"))
                    return
            if rc != bareosfd.bRC_More:
                break
        else:
            raise ProtocolError(f"get_xattr returned bRC_More 100000 times for {fname}")
        record.xattrs = pairs or None

    # -- restore --------------------------------------------------------------------------------

    def restore(self, records, where, replace="a", core_sets_attributes=False, regexwhere="",
                tells_regexwhere=False):
        """Restore `records` (a backup's stream, or a selection of it) under `where`, or with
        `regexwhere` (what bconsole makes of strip_prefix/add_prefix/add_suffix: `where` is
        then empty and the names arrive rewritten, as with bareos-fd 25).

        Returns the Job (messages) and a dict fname -> create status."""
        if regexwhere:
            where = ""
        self.regexwhere = regexwhere
        self.told_regexwhere = regexwhere if tells_regexwhere else ""
        self._start_job(" ", "R", where=where)
        self.job.values[bareosfd.bVarRegexWhere] = self.told_regexwhere or None
        statuses = {}
        try:
            for record in records:
                if record.type == bareosfd.FT_DELETED:
                    continue
                statuses[record.fname] = self._restore_one(record, where, replace,
                                                           core_sets_attributes)
            self.event(bareosfd.bEventEndRestoreJob)
            self.event(bareosfd.bEventJobEnd)
            return self.job, statuses
        finally:
            self._end_job()

    def _restore_one(self, record, where, replace, core_sets_attributes):
        # PluginNameStream (start): RestoreCommand → load or parse, then start_restore_file
        if self._command_event(bareosfd.bEventRestoreCommand) != bareosfd.bRC_OK:
            raise ProtocolError("restore command refused")
        if self._call("start_restore_file", self.definition) != bareosfd.bRC_OK:
            return "start_restore_file failed"
        ofname = _output_name(where, self.regexwhere, record.fname)
        olname = record.link
        if record.type == bareosfd.FT_LNKSAVED:
            olname = _output_name(where, self.regexwhere, record.link)
        try:
            status = self._create_and_fill(record, where, ofname, olname, replace,
                                           core_sets_attributes)
            self._restore_acl_xattr(record, ofname, status)
        finally:
            # PluginNameStream (end)
            self._call("end_restore_file")
        return status

    def _restore_acl_xattr(self, record, ofname, status):
        """restore.cc: ACL and xattr streams of an extracted file are applied after its
        attributes were set and it was closed (PopDelayedDataStreams), those of a directory at
        once (it was never extracted), all others are dropped (symlinks, fifos, hard links)."""
        if status != "extract" and record.type != bareosfd.FT_DIREND:
            return
        if record.acl:
            # SendAclStream sends content_length + 1 bytes: the NUL comes back too
            ap = bareosfd._make(bareosfd.AclPacket, fname=ofname,
                                content=bytearray(record.acl + b"\0"))
            if self._call("set_acl", ap) != bareosfd.bRC_OK:
                self.job.messages.append((bareosfd.M_WARNING, f"(acl error of {ofname})"))
        for name, value in record.xattrs or ():
            xp = bareosfd._make(bareosfd.XattrPacket, fname=ofname, name=bytearray(name),
                                value=bytearray(value) if value else None)
            if self._call("set_xattr", xp) != bareosfd.bRC_OK:
                # PluginParseXattrStreams stops at the first failure; the fd logs its errmsg
                self.job.messages.append((bareosfd.M_ERROR, f"(xattr error of {ofname})"))
                break

    def _restore_packet(self, record, where, ofname, olname, replace):
        statp = bareosfd._make(bareosfd.StatPacket, **record.stat)
        return bareosfd._make(bareosfd.RestorePacket, stream=1, data_stream=1 if record.data else 0,
                              type=record.type, file_index=record.file_index,
                              linkFI=record.link_fi, uid=record.stat["st_uid"], statp=statp,
                              attrEX="", ofname=ofname, olname=olname, where=where or "",
                              regexwhere=self.told_regexwhere or "", replace=ord(replace),
                              create_status=bareosfd.CF_ERROR, filedes=-1)

    def _create_and_fill(self, record, where, ofname, olname, replace, core_sets_attributes):
        rp = self._restore_packet(record, where, ofname, olname, replace)
        rc = self._call("create_file", rp)
        if rc != bareosfd.bRC_OK:
            self.job.messages.append(
                (bareosfd.M_ERROR, f"Plugin createFile call failed. Stat={rc} file={ofname}"))
            return "error"
        status = rp.create_status
        if status == bareosfd.CF_ERROR:
            self.job.messages.append(
                (bareosfd.M_ERROR, f"Plugin createFile call failed. Returned CF_ERROR file={ofname}"))
            return "error"
        if status == bareosfd.CF_SKIP:
            return "skip"
        fd = None
        in_core = False
        if status == bareosfd.CF_CORE:
            status, fd, in_core = self._core_create(record, ofname, olname, replace)
            if status in ("error", "skip"):
                return status
        elif status == bareosfd.CF_EXTRACT:
            status, fd, in_core = "extract", rp.filedes, rp.filedes >= 0
        elif status == bareosfd.CF_CREATED:
            status = "created"
        else:
            raise ProtocolError(f"create_file set create_status={status}")
        if status == "extract" and record.data:
            self._write_data(record, fd, in_core)
        # PluginSetAttributes: a fresh packet; bareosfd.cc does not copy create_status back
        attr_packet = self._restore_packet(record, where, ofname, olname, replace)
        self._call("set_file_attributes", attr_packet)
        if core_sets_attributes:
            _set_attributes(ofname, record)
        if status == "extract":
            close = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_CLOSE, fname=None,
                                   filedes=fd if fd is not None else -1)
            self._call("plugin_io", close)
            if in_core and fd is not None and fd >= 0 and _fd_is_open(fd):
                raise ProtocolError(f"IO_CLOSE left descriptor {fd} of {ofname} open")
        return status

    def _write_data(self, record, fd, in_core):
        data = record.data
        for start in range(0, len(data), READ_CHUNK):
            chunk = data[start:start + READ_CHUNK]
            if in_core:
                view = memoryview(chunk)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                continue
            iop = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_WRITE, count=len(chunk),
                                 buf=bytearray(chunk), fname=None, filedes=fd)
            rc = self._call("plugin_io", iop)
            if rc != bareosfd.bRC_OK or iop.status != len(chunk):
                self.job.messages.append((bareosfd.M_ERROR, f"Write error on {record.fname}"))
                return

    def _core_create(self, record, ofname, olname, replace):
        """findlib/create_file.cc CreateFile, for the types a plugin of ours sends."""
        st = record.stat
        mode = st["st_mode"]
        try:
            existing = os.lstat(ofname)
        except FileNotFoundError:
            existing = None
        if existing is not None and replace == "n" and record.type != bareosfd.FT_DIREND:
            self.job.messages.append((bareosfd.M_INFO, f"File skipped. Already exists: {ofname}"))
            return "skip", None, False
        ftype = record.type
        if ftype == bareosfd.FT_DIREND:
            _makepath(ofname, stat.S_IMODE(mode), stat.S_IMODE(mode) | 0o300, st["st_uid"],
                      st["st_gid"], keep_dir_modes=False)
            return "created", None, False
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            os.unlink(ofname)
        parent = os.path.dirname(ofname)
        parent_mode = 0o300 | stat.S_IMODE(mode)
        _makepath(parent, parent_mode, parent_mode, st["st_uid"], st["st_gid"], keep_dir_modes=True)
        try:
            if ftype in (bareosfd.FT_REG, bareosfd.FT_REGE):
                # bopen() on a plugin bfd goes to plugin_io IO_OPEN
                iop = bareosfd._make(bareosfd.IoPacket, func=bareosfd.IO_OPEN, count=0,
                                     flags=os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode=0,
                                     fname=ofname, filedes=-1)
                rc = self._call("plugin_io", iop)
                if rc == bareosfd.bRC_Error or iop.status < 0:
                    err = os.strerror(iop.io_errno) if iop.io_errno else "error"
                    self.job.messages.append(
                        (bareosfd.M_ERROR, f"Could not create {ofname}: ERR={err}"))
                    return "error", None, False
                in_core = iop.status == IOSTAT_DO_IN_CORE
                if in_core and iop.filedes < 0:
                    raise ProtocolError("IO_OPEN asked for in-core I/O without a descriptor")
                return "extract", iop.filedes, in_core
            if ftype == bareosfd.FT_FIFO:
                # create_file.cc: mkfifo, then bopen(O_WRONLY) to write the saved fifo data,
                # which blocks until a reader comes: for ever (seen with bareos-fd 25)
                raise ProtocolError(f"FT_FIFO restore of {ofname}: the file daemon opens the "
                                    "new fifo for writing and waits for a reader for ever; "
                                    "send plain fifos as FT_SPEC")
            if ftype == bareosfd.FT_SPEC and stat.S_ISFIFO(mode):
                os.mkfifo(ofname, stat.S_IMODE(mode))
                return "created", None, False
            if ftype == bareosfd.FT_SPEC:
                os.mknod(ofname, mode, st["st_rdev"])
                return "created", None, False
            if ftype == bareosfd.FT_LNKSAVED:
                os.link(olname, ofname)
                return "created", None, False
            if ftype == bareosfd.FT_LNK:
                os.symlink(olname, ofname)
                return "created", None, False
        except OSError as exc:
            self.job.messages.append((bareosfd.M_ERROR, f"Could not create {ofname}: ERR={exc}"))
            return "error", None, False
        self.job.messages.append((bareosfd.M_ERROR, f"unhandled type: {ftype}"))
        return "error", None, False


def apply_regexwhere(regexwhere, fname):
    r"""lib/breg.cc: `!from!to!flags` expressions, comma separated, applied in turn (`\!` and
    `\\` escaped, `$1` groups in the replacement, flag i ignores case)."""
    for expression in re.split(r"(?<!\\),", regexwhere):
        sep = expression[0]
        parts = re.split(r"(?<!\\)" + re.escape(sep), expression[1:])
        pattern, replacement, flags = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
        unescape = lambda text: re.sub(r"\\(.)", r"\1", text)
        replacement = re.sub(r"\$(\d)", r"\\\1", unescape(replacement))
        fname = re.sub(unescape(pattern), replacement, fname, count=1,
                       flags=re.IGNORECASE if "i" in flags else 0)
    return fname


def _output_name(where, regexwhere, fname):
    """BuildAttrOutputFnames: regexwhere wins over where."""
    return apply_regexwhere(regexwhere, fname) if regexwhere else _join_where(where, fname)


def _join_where(where, fname):
    """BuildAttrOutputFnames: where + fname (one slash between), or fname itself without where."""
    if not where:
        return fname
    return where.rstrip("/") + "/" + fname.lstrip("/") if fname.startswith("/") else \
        where.rstrip("/") + "/" + fname


def _makepath(path, mode, parent_mode, uid, gid, keep_dir_modes):
    """findlib makepath: create missing directories; new (or, unless keep_dir_modes, the last
    existing) directory gets owner and mode."""
    if os.path.isdir(path):
        if not keep_dir_modes:
            _set_own_mod(path, uid, gid, mode)
        return
    missing = []
    probe = path
    while probe and not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for index, directory in enumerate(reversed(missing)):
        last = index == len(missing) - 1
        os.mkdir(directory, 0o700)
        _set_own_mod(directory, uid, gid, mode if last else parent_mode)


def _set_own_mod(path, uid, gid, mode):
    try:
        os.lchown(path, uid, gid)
    except PermissionError:
        pass  # not root: the fd only complains when it runs as root
    os.chmod(path, mode)


def _set_attributes(path, record):
    """What the core's SetAttributes would do (only with core_sets_attributes=True)."""
    st = record.stat
    try:
        os.lchown(path, st["st_uid"], st["st_gid"])
    except PermissionError:
        pass
    if not stat.S_ISLNK(st["st_mode"]):
        os.chmod(path, stat.S_IMODE(st["st_mode"]))
    os.utime(path, (st["st_atime"], st["st_mtime"]), follow_symlinks=False)


def _fd_is_open(fd):
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno != errno.EBADF
    return True


def compare_trees(left, right, check_owner=True, check_atime=False):
    """Differences between two directory trees (content, type, mode, owner, mtime, symlink
    targets, hard-link structure), as a list of strings (empty when they match)."""
    problems = []

    def walk(root):
        entries = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                entries[os.path.relpath(full, root)] = os.lstat(full)
        return entries

    a, b = walk(left), walk(right)
    for rel in sorted(set(a) | set(b)):
        if rel not in a or rel not in b:
            problems.append(f"{rel}: only in {'right' if rel not in a else 'left'}")
            continue
        sa, sb = a[rel], b[rel]
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            problems.append(f"{rel}: type {oct(sa.st_mode)} != {oct(sb.st_mode)}")
            continue
        if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            problems.append(f"{rel}: mode {oct(sa.st_mode)} != {oct(sb.st_mode)}")
        if check_owner and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
            problems.append(f"{rel}: owner {sa.st_uid}:{sa.st_gid} != {sb.st_uid}:{sb.st_gid}")
        if int(sa.st_mtime) != int(sb.st_mtime):
            problems.append(f"{rel}: mtime {int(sa.st_mtime)} != {int(sb.st_mtime)}")
        if check_atime and int(sa.st_atime) != int(sb.st_atime):
            problems.append(f"{rel}: atime {int(sa.st_atime)} != {int(sb.st_atime)}")
        if stat.S_ISLNK(sa.st_mode):
            ta, tb = os.readlink(os.path.join(left, rel)), os.readlink(os.path.join(right, rel))
            if ta != tb:
                problems.append(f"{rel}: symlink {ta!r} != {tb!r}")
        elif stat.S_ISREG(sa.st_mode):
            with open(os.path.join(left, rel), "rb") as fa, open(os.path.join(right, rel), "rb") as fb:
                if fa.read() != fb.read():
                    problems.append(f"{rel}: content differs")
    # hard links: the same groups of names share an inode on both sides
    def groups(entries):
        by_inode = {}
        for rel, st in entries.items():
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                by_inode.setdefault((st.st_dev, st.st_ino), set()).add(rel)
        return sorted(sorted(g) for g in by_inode.values() if len(g) > 1)

    if groups(a) != groups(b):
        problems.append(f"hard links differ: {groups(a)} != {groups(b)}")
    return problems


def config_values(conf_text, directive):
    """Values of `directive` (e.g. "Plugin") in a Bareos config text, read like lib/lex.cc:
    keywords ignore case and spaces, `#` starts a comment outside quotes, a backslash escapes
    the next character inside quotes, and quoted strings on following lines are concatenated."""
    wanted = directive.replace(" ", "").lower()
    values = []
    pos, n = 0, len(conf_text)
    while pos < n:
        line_end = conf_text.find("\n", pos)
        line_end = n if line_end < 0 else line_end
        line = conf_text[pos:line_end]
        code = line.split("#", 1)[0]
        if "=" in code and code.split("=", 1)[0].replace(" ", "").strip().lower() == wanted:
            cursor = pos + line.index("=") + 1
            value, cursor = _read_value(conf_text, cursor)
            values.append(value)
            pos = conf_text.find("\n", cursor)
            pos = n if pos < 0 else pos + 1
            continue
        pos = line_end + 1
    return values


def _read_value(text, cursor):
    while cursor < len(text) and text[cursor] in " \t":
        cursor += 1
    if cursor >= len(text) or text[cursor] != '"':
        end = cursor
        while end < len(text) and text[end] not in "\n#":
            end += 1
        return text[cursor:end].strip(), end
    parts = []
    while True:
        cursor += 1  # opening quote
        buf = []
        while True:
            if cursor >= len(text):
                raise ValueError("unterminated quoted string")
            ch = text[cursor]
            if ch == "\\":
                buf.append(text[cursor + 1])
                cursor += 2
                continue
            if ch == '"':
                cursor += 1
                break
            buf.append(ch)
            cursor += 1
        parts.append("".join(buf))
        # another quoted string on this or the next line continues the value
        # (lex.cc: CurrentLineContinuesWithQuotes || NextLineContinuesWithQuotes; a comment
        # after a piece does not end the value)
        probe = _skip_blanks(text, cursor)
        if probe < len(text) and text[probe] == '"':
            cursor = probe
            continue
        newline = text.find("\n", cursor)
        if newline >= 0:
            probe = _skip_blanks(text, newline + 1)
            if probe < len(text) and text[probe] == '"':
                cursor = probe
                continue
        return "".join(parts), cursor


def _skip_blanks(text, pos):
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def parse_fileset_plugin(conf_text):
    """The first `Plugin = "..."` string of a bareos-dir FileSet."""
    values = config_values(conf_text, "Plugin")
    if not values:
        raise ValueError("no Plugin = line found")
    return values[0]


# --- a Runner double for host tests -----------------------------------------------------------------

REPO = HERE.parent
PLUGIN_DIR = REPO / "bareos_plugin"
PLUGIN_MODULE = "bareos-fd-domu-snapshot"
PLUGIN_PACKAGE = "domu_snapshot.bareos"
ETC_BAREOS = REPO / "etc" / "bareos"


def example_plugin_definition(module_path=None, **extra):
    """The Plugin string of etc/bareos/domu-snapshot-plugin.conf, as it is; module_path replaced
    (the example names the installed location) and `extra` options appended when given."""
    definition = parse_fileset_plugin((ETC_BAREOS / "domu-snapshot-plugin.conf").read_text())
    if module_path is not None:
        module, _name, _options = split_definition(definition)
        definition = definition.replace(f"module_path={module}", f"module_path={module_path}", 1)
    for key, value in extra.items():
        definition += f":{key}={str(value).replace(':', chr(92) + ':')}"
    return definition


def example_fileset_options():
    """FileDaemon keywords for the Options block of etc/bareos/domu-snapshot-plugin.conf."""
    text = (ETC_BAREOS / "domu-snapshot-plugin.conf").read_text()
    def yes(directive, default):
        values = config_values(text, directive)
        return values[0].strip().lower() in ("yes", "true") if values else default
    return {"hardlinks": yes("HardLinks", False), "xattr": yes("XattrSupport", True)}


@dataclasses.dataclass
class FakeGuest:
    """What a DirRunner guest does: its "mounted filesystem" is an existing directory per disk."""

    name: str
    trees: list                         # one directory per disk (its mount path)
    prepare_error: tuple = None         # (step, message): prepare fails like the core reports it
    overflow: bool = False              # teardown finds the snapshot overflowed
    peak_percent: float = 2.5
    domain_xml: str = ""                # written next to the first disk's mount, like the core
    held_by: str = ""                   # "cli": held by `domu-snapshot mount` (the core leaves it alone)
    # guest_filesystems = all: the directories below each tree that are its "filesystems" (part1,
    # lvm/vg/home), each walked as a root of its own, as the core reports them (DiskResult.filesystems);
    # fstab: "" (the tree itself, the guest's /) then "boot", "home" inside it
    filesystems: tuple = ()


class DirRunner:
    """Stands in for domu_snapshot.lifecycle.Runner on a host without LVM: "prepare" of a guest
    makes no snapshot and mounts nothing, its disks' mount paths are directories the test built.
    Uses the core's own result types. Calls are recorded in `calls` (shared by the instances)."""

    calls = []

    def __init__(self, cfg, log=None, guests=()):
        from domu_snapshot import lifecycle, partitions
        self.cfg = cfg
        self.log = log or (lambda level, message: None)
        self.lifecycle = lifecycle
        self.partitions = partitions
        self.fakes = {g.name: g for g in guests}
        self.mounted = {}                  # mount path -> Disk

    def lock(self):
        runner = self

        class _Lock:
            def acquire(self, on_wait=None, note="", stop=None):
                runner.calls.append(("lock",))
                return self

            def release(self):
                runner.calls.append(("unlock",))

        return _Lock()

    def reap(self):
        self.calls.append(("reap",))
        lc = self.lifecycle
        results = []
        for fake in self.fakes.values():
            if fake.held_by:  # as the core reports what another owner holds
                result = lc.GuestResult(lc.Guest(fake.name, []), "unmount", status="held",
                                        held_by=fake.held_by)
                from domu_snapshot import ownership
                result.notes.append(ownership.held_message(fake.name, fake.held_by))
                results.append(result)
        return results

    def discover(self, names=None):
        self.calls.append(("discover",))
        lc = self.lifecycle
        return [lc.Guest(g.name, [lc.Disk("vg0", f"{g.name}-disk{i}", str(tree))
                                  for i, tree in enumerate(g.trees)]) for g in self.fakes.values()]

    def check_space(self, guests, concurrent=True):
        self.calls.append(("check_space", concurrent))
        return {}

    def prepare(self, guest, space_error=None):
        from domu_snapshot.errors import GuestError
        self.calls.append(("prepare", guest.name))
        fake = self.fakes[guest.name]
        result = self.lifecycle.GuestResult(guest, "mount", seconds=0.01)
        if fake.held_by:
            result.held_by = fake.held_by
            result.fail(GuestError(guest.name, "snapshot", "held by `domu-snapshot mount` (helpers mode)",
                                   "see the test"))
            return result
        if fake.prepare_error:
            step, message = fake.prepare_error
            result.fail(GuestError(guest.name, step, message, "see the test"))
            return result
        for disk in guest.disks:
            choice = self.partitions.Choice(number=1, fs="ext4", offset=1048576, size=1 << 30,
                                            label="primary", sector_size=512)
            result.disks.append(self.lifecycle.DiskResult(disk, choice=choice, loop="/dev/loop9",
                                                          journal="journal replayed",
                                                          mounted=True))
            if fake.filesystems:
                from domu_snapshot import mount
                result.disks[-1].choice = None
                result.disks[-1].filesystems = [
                    mount.Mounted(os.path.normpath(os.path.join(disk.mount_path, sub)), sub or "/", "clean")
                    for sub in fake.filesystems]
            self.mounted[disk.mount_path] = disk
        if fake.domain_xml:
            path = os.path.normpath(guest.disks[0].mount_path) + ".domain.xml"
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(fake.domain_xml)
            os.chmod(path, 0o600)
            result.domain_xml, result.domain_xml_path = fake.domain_xml, path
        return result

    def teardown(self, guests, state=None):
        from domu_snapshot.errors import GuestError
        results = []
        for guest in guests:
            self.calls.append(("teardown", guest.name))
            fake = self.fakes[guest.name]
            result = self.lifecycle.GuestResult(guest, "unmount", seconds=0.01)
            if fake.domain_xml:
                path = os.path.normpath(guest.disks[0].mount_path) + ".domain.xml"
                if os.path.isfile(path):
                    os.unlink(path)
            for disk in guest.disks:
                was = self.mounted.pop(disk.mount_path, None) is not None
                result.disks.append(self.lifecycle.DiskResult(
                    disk, peak_percent=fake.peak_percent if was else None))
            if fake.overflow and any(d.peak_percent is not None for d in result.disks):
                result.fail(GuestError(guest.name, "snapshot overflow", "snapshot overflowed",
                                       "give snapshots more room"))
            results.append(result)
        return results

    def leftovers(self, state=None):
        lc = self.lifecycle
        guests = [lc.Guest(disk.lv, [lc.Disk(disk.vg, disk.lv, path)])
                  for path, disk in sorted(self.mounted.items())]
        return guests, []


def import_plugin():
    """The plugin module itself (for tests of its helpers), imported like the fd imports it."""
    if str(PLUGIN_DIR) not in sys.path:
        sys.path.insert(0, str(PLUGIN_DIR))
    return importlib.import_module(PLUGIN_MODULE)


def install_dir_runner(monkeypatch, guests):
    """Make the plugin's `Runner` a DirRunner over `guests` (FakeGuest list); returns the calls list."""
    from domu_snapshot import lifecycle
    DirRunner.calls = []
    monkeypatch.setattr(lifecycle, "Runner",
                        lambda cfg, log=None, owner="": DirRunner(cfg, log, guests))
    return DirRunner.calls
