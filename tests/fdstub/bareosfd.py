"""Stand-in for Bareos's C extension module `bareosfd`, for tests only (never shipped).

Public names and values are exactly those of the reference
(../shared/reference/bareos-fd-python-api.md), checked against the Bareos source
(core/src/plugins/filed/python/module/bareosfd.{h,cc}, core/src/filed/fd_plugins.h,
core/src/include/filetypes.h). Behaviour copied from the source because plugins trip on it:

- the packet types have fixed attributes (no others can be set), typed like their C members:
  `bool` members take only True/False, int members take only ints (a float mtime is a TypeError),
  string members (`cmd`, `ofname`, `IoPacket.fname`, ...) are read-only, and out-of-range ints are
  truncated with a RuntimeWarning as CPython's structmember does;
- `StatPacket(...)` keywords drop the `st_` prefix; `SavePacket(...)` has no `statp` keyword;
- outside a running job (no context installed by the harness) every function raises RuntimeError;
- `GetValue` returns None for variables it does not know and for the write-only `bVarFileSeen`;
  `SetValue` accepts only bVarSinceTime, bVarCheckChanges and bVarFileSeen.

The test harness (tests/fd_harness.py) installs a job with `_install(job)`: `job.values` answers
GetValue, and JobMessage/DebugMessage/SetValue/RegisterEvents/... calls are recorded on it.
Names starting with `_` are the harness's, not part of the Bareos API.
"""

import stat as _stat
import time as _time
import warnings as _warnings

# --- return codes ---------------------------------------------------------------------------
bRC_OK = 0
bRC_Stop = 1
bRC_Error = 2
bRC_More = 3
bRC_Term = 4
bRC_Seen = 5
bRC_Core = 6
bRC_Skip = 7
bRC_Cancel = 8

# --- job message types ----------------------------------------------------------------------
M_ABORT = 1
M_DEBUG = 2
M_FATAL = 3
M_ERROR = 4
M_WARNING = 5
M_INFO = 6
M_SAVED = 7
M_NOTSAVED = 8
M_SKIPPED = 9
M_MOUNT = 10
M_ERROR_TERM = 11
M_TERM = 12
M_RESTORED = 13
M_SECURITY = 14
M_ALERT = 15
M_VOLMGMT = 16

# --- events ---------------------------------------------------------------------------------
bEventJobStart = 1
bEventJobEnd = 2
bEventStartBackupJob = 3
bEventEndBackupJob = 4
bEventStartRestoreJob = 5
bEventEndRestoreJob = 6
bEventStartVerifyJob = 7
bEventEndVerifyJob = 8
bEventBackupCommand = 9
bEventRestoreCommand = 10
bEventEstimateCommand = 11
bEventLevel = 12
bEventSince = 13
bEventCancelCommand = 14
bEventRestoreObject = 15
bEventEndFileSet = 16
bEventPluginCommand = 17
bEventOptionPlugin = 18
bEventHandleBackupFile = 19
bEventNewPluginOptions = 20

# --- GetValue/SetValue variables --------------------------------------------------------------
bVarJobId = 1
bVarFDName = 2
bVarLevel = 3
bVarType = 4
bVarClient = 5
bVarJobName = 6
bVarJobStatus = 7
bVarSinceTime = 8
bVarAccurate = 9
bVarFileSeen = 10
bVarVssClient = 11
bVarWorkingDir = 12
bVarWhere = 13
bVarRegexWhere = 14
bVarExePath = 15
bVarVersion = 16
bVarDistName = 17
bVarPrevJobName = 18
bVarPrefixLinks = 19
bVarCheckChanges = 20
bVarUsedConfig = 21

# --- file types -----------------------------------------------------------------------------
FT_LNKSAVED = 1
FT_REGE = 2
FT_REG = 3
FT_LNK = 4
FT_DIREND = 5
FT_SPEC = 6
FT_NOACCESS = 7
FT_NOFOLLOW = 8
FT_NOSTAT = 9
FT_NOCHG = 10
FT_DIRNOCHG = 11
FT_ISARCH = 12
FT_NORECURSE = 13
FT_NOFSCHG = 14
FT_NOOPEN = 15
FT_RAW = 16
FT_FIFO = 17
FT_DIRBEGIN = 18
FT_INVALIDFS = 19
FT_INVALIDDT = 20
FT_REPARSE = 21
FT_PLUGIN = 22
FT_DELETED = 23
FT_BASE = 24
FT_RESTORE_FIRST = 25
FT_JUNCTION = 26
FT_PLUGIN_CONFIG = 27
FT_PLUGIN_CONFIG_FILLED = 28

# --- create_file status -----------------------------------------------------------------------
CF_SKIP = 1
CF_ERROR = 2
CF_EXTRACT = 3
CF_CREATED = 4
CF_CORE = 5

# --- plugin_io ------------------------------------------------------------------------------
IO_OPEN = 1
IO_READ = 2
IO_WRITE = 3
IO_CLOSE = 4
IO_SEEK = 5

iostat_error = -1
iostat_do_in_plugin = 0
iostat_do_in_core = 1

# Highest event number the C side accepts in RegisterEvents (FD_NR_EVENTS, the last VSS event).
_FD_NR_EVENTS = 31
# Size of SavePacket.flags: NbytesForBits(FO_MAX + 1) with FO_MAX = FO_XXH128 = 33.
_FOPTS_BYTES = 5
# kInvalidFiledescriptor
_INVALID_FD = -1


# --- typed members, as CPython's structmember.c stores them ------------------------------------

class _Member:
    """A slot with the C member's conversion rules. `kind` is the T_* type code's name."""

    _RANGES = {
        "int": (-(2 ** 31), 2 ** 31 - 1),
        "uint": (0, 2 ** 32 - 1),
        "ushort": (0, 2 ** 16 - 1),
        "long": (-(2 ** 63), 2 ** 63 - 1),
        "longlong": (-(2 ** 63), 2 ** 63 - 1),
        "ulonglong": (0, 2 ** 64 - 1),
    }

    def __init__(self, kind):
        self.kind = kind
        self._low, self._high = self._RANGES.get(kind, (1, 0))  # (1, 0): no int is in range

    def __set_name__(self, owner, name):
        self.name = name
        self.slot = "_v_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        return getattr(obj, self.slot)

    def __set__(self, obj, value):
        if self.kind == "string":
            raise TypeError("readonly attribute")
        self._store(obj, value)

    def __delete__(self, obj):
        if self.kind != "object":
            raise TypeError("can't delete numeric/char attribute")
        setattr(obj, self.slot, None)

    def _store(self, obj, value):
        setattr(obj, self.slot, self.convert(value))

    def convert(self, value):
        # an int in range is stored as it is (bool, an int subclass, takes the long way)
        if type(value) is int and self._low <= value <= self._high:
            return value
        kind = self.kind
        if kind == "object":
            return value
        if kind == "string":
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{self.name}: expected str")
            return value
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError("attribute value type must be bool")
            return value
        if not isinstance(value, int):
            # PyLong_AsLong & co. accept only ints (and __index__); floats are refused.
            raise TypeError(f"an integer is required for {self.name}, got {type(value).__name__}")
        value = int(value)
        low, high = self._RANGES[kind]
        if kind in ("long", "longlong") and not low <= value <= high:
            raise OverflowError(f"Python int too large to convert to C long ({self.name})")
        if not low <= value <= high:
            bits = {"int": 32, "uint": 32, "ushort": 16, "ulonglong": 64}[kind]
            _warnings.warn(f"Truncation of value to {kind} ({self.name}={value})", RuntimeWarning,
                           stacklevel=3)
            value &= (1 << bits) - 1
            if kind == "int" and value >= 2 ** 31:
                value -= 2 ** 32
        return value


class _Packet:
    """Base of the packet types: fixed members, C-like constructor keywords, repr."""

    __slots__ = ()
    _members = ()       # (name, kind, default) in C declaration order
    _init_keywords = ()  # the C type's kwlist
    _fillers = ()        # set by _packet_type

    def __init__(self, *args, **kwargs):
        keywords = self._init_keywords
        if len(args) > len(keywords):
            raise TypeError(f"{type(self).__name__}() takes at most {len(keywords)} arguments")
        values = dict(zip(keywords, args))
        for key, value in kwargs.items():
            if key not in keywords:
                raise TypeError(f"'{key}' is an invalid keyword argument for {type(self).__name__}()")
            if key in values:
                raise TypeError(f"argument for {type(self).__name__}() given by name and position")
            values[key] = value
        given = {}
        for key, value in values.items():
            target = self._keyword_targets.get(key, key)
            if key in self._init_truth:
                value = bool(value)  # the "p" format takes any object's truth value
            if target in self._member_kinds:
                given[target] = value
        self._fill(given)

    def _fill(self, given):
        """Every member from `given` (converted like a C member assignment) or its default."""
        for name, convert, store, default in self._fillers:
            if name in given:
                store(self, convert(given[name]))
            else:
                store(self, default() if callable(default) else default)

    _keyword_targets = {}
    _init_truth = ()

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, _k, _d in self._members)
        return f"{type(self).__name__}({fields})"


def _packet_type(name, members, init_keywords, keyword_targets=None, init_truth=(), doc=""):
    namespace = {
        "_init_truth": frozenset(init_truth),
        "__slots__": tuple("_v_" + member[0] for member in members),
        "_members": tuple(members),
        "_member_kinds": {member[0]: member[1] for member in members},
        "_init_keywords": tuple(init_keywords),
        "_keyword_targets": dict(keyword_targets or {}),
        "__doc__": doc,
        "__module__": __name__,
    }
    for member_name, kind, _default in members:
        namespace[member_name] = _Member(kind)
    cls = type(name, (_Packet,), namespace)
    for member_name, _kind, _default in members:
        cls.__dict__[member_name].__set_name__(cls, member_name)
    # (name, conversion, the slot's own setter, default) per member, for _fill
    cls._fillers = tuple((member_name, cls.__dict__[member_name].convert,
                          cls.__dict__["_v_" + member_name].__set__, default)
                         for member_name, _kind, default in members)
    return cls


def _now():
    return int(_time.time())


StatPacket = _packet_type(
    "StatPacket",
    [
        ("st_dev", "uint", 0),
        ("st_ino", "ulonglong", 0),
        ("st_mode", "ushort", 0o700 | _stat.S_IFREG),
        ("st_nlink", "ushort", 0),
        ("st_uid", "uint", 0),
        ("st_gid", "uint", 0),
        ("st_rdev", "uint", 0),
        ("st_size", "ulonglong", 2 ** 64 - 1),  # C default -1 in an uint64_t
        ("st_atime", "long", _now),
        ("st_mtime", "long", _now),
        ("st_ctime", "long", _now),
        ("st_blksize", "uint", 4096),
        ("st_blocks", "ulonglong", 1),
    ],
    ["dev", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "atime", "mtime", "ctime",
     "blksize", "blocks"],
    keyword_targets={k: "st_" + k for k in ("dev", "ino", "mode", "nlink", "uid", "gid", "rdev",
                                            "size", "atime", "mtime", "ctime", "blksize", "blocks")},
    doc="stat packet; attributes st_*, constructor keywords without the st_ prefix",
)

SavePacket = _packet_type(
    "SavePacket",
    [
        ("fname", "object", None),
        ("link", "object", None),
        ("statp", "object", None),
        ("type", "int", 0),
        ("flags", "object", None),
        ("no_read", "bool", False),
        ("portable", "bool", False),
        ("accurate_found", "bool", False),
        ("cmd", "string", None),
        ("save_time", "uint", 0),
        ("delta_seq", "uint", 0),
        ("object_name", "object", None),
        ("object", "object", None),
        ("object_len", "int", 0),
        ("object_index", "int", 0),
    ],
    ["fname", "link", "type", "flags", "no_read", "portable", "accurate_found", "cmd", "save_time",
     "delta_seq", "object_name", "object", "object_len", "object_index"],
    init_truth=("no_read", "portable", "accurate_found"),
    doc="save packet; `statp` is not a constructor keyword, assign it as an attribute",
)

RestorePacket = _packet_type(
    "RestorePacket",
    [
        ("stream", "int", 0),
        ("data_stream", "int", 0),
        ("type", "int", 0),
        ("file_index", "int", 0),
        ("linkFI", "int", 0),
        ("uid", "uint", 0),
        ("statp", "object", None),
        ("attrEX", "string", None),
        ("ofname", "string", None),
        ("olname", "string", None),
        ("where", "string", None),
        ("regexwhere", "string", None),
        ("replace", "int", 0),
        ("create_status", "int", 0),
        ("filedes", "int", _INVALID_FD),
    ],
    ["stream", "data_stream", "type", "file_index", "linkFI", "uid", "statp", "attrEX", "ofname",
     "olname", "where", "regexwhere", "replace", "create_status", "filedes"],
    doc="restore packet; only create_status and filedes go back to the file daemon",
)

IoPacket = _packet_type(
    "IoPacket",
    [
        ("func", "ushort", 0),
        ("count", "int", 0),
        ("flags", "int", 0),
        ("mode", "int", 0),
        ("buf", "object", None),
        ("fname", "string", None),
        ("status", "int", 0),
        ("io_errno", "int", 0),
        ("lerror", "int", 0),
        ("whence", "int", 0),
        ("offset", "longlong", 0),
        ("win32", "bool", False),
        ("filedes", "int", _INVALID_FD),
    ],
    ["func", "count", "flags", "mode", "buf", "fname", "status", "io_errno", "lerror", "whence",
     "offset", "win32", "filedes"],
    init_truth=("win32",),
    doc="I/O packet for plugin_io",
)

AclPacket = _packet_type(
    "AclPacket",
    [("fname", "string", None), ("content", "object", None)],
    ["fname", "content"],
)

XattrPacket = _packet_type(
    "XattrPacket",
    [("fname", "string", None), ("name", "object", None), ("value", "object", None)],
    ["fname", "name", "value"],
)

RestoreObject = _packet_type(
    "RestoreObject",
    [
        ("object_name", "object", None),
        ("object", "object", None),
        ("plugin_name", "string", None),
        ("object_type", "int", 0),
        ("object_len", "int", 0),
        ("object_full_len", "int", 0),
        ("object_index", "int", 0),
        ("object_compression", "int", 0),
        ("stream", "int", 0),
        ("jobid", "uint", 0),
    ],
    ["object_name", "object", "plugin_name", "object_type", "object_len", "object_full_len",
     "object_index", "object_compression", "stream", "jobid"],
)


def _make(cls, **values):
    """Build a packet the way the C side does (it may fill read-only string members)."""
    unknown = set(values) - set(cls._member_kinds)
    if unknown:
        raise AttributeError(f"type object {cls.__name__!r} has no attribute {sorted(unknown)[0]!r}")
    packet = object.__new__(cls)
    packet._fill(values)
    return packet


# --- the running job (installed by the harness) -------------------------------------------------

_job = None


def _install(job):
    """Make `job` the running job: GetValue answers from job.values, calls are recorded on it."""
    global _job
    _job = job


def _uninstall():
    global _job
    _job = None


def _current():
    if _job is None:
        raise RuntimeError("bareosfd: plugin_ctx is unset (not inside a running file daemon job)")
    return _job


def _need_int(value, what):
    if not isinstance(value, int):
        raise TypeError(f"{what}: an integer is required (got type {type(value).__name__})")


def _need_optional_str(value, what):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what}: argument 2 must be str or None, not {type(value).__name__}")


_STRING_VARS = {bVarFDName, bVarWorkingDir, bVarUsedConfig, bVarExePath, bVarVersion, bVarDistName,
                bVarClient, bVarJobName, bVarPrevJobName, bVarWhere, bVarRegexWhere}
_INT_VARS = {bVarJobId, bVarLevel, bVarType, bVarJobStatus, bVarAccurate, bVarPrefixLinks}


def GetValue(var):
    _need_int(var, "GetValue")
    job = _current()
    if var == bVarSinceTime:
        return int(job.since)
    if var == bVarCheckChanges:
        return bool(job.check_changes)
    if var in _INT_VARS:
        value = job.values.get(var)
        return None if value is None else int(value)
    if var in _STRING_VARS:
        value = job.values.get(var)
        return None if value is None else str(value)
    return None  # bVarFileSeen is write-only; unknown variables give None


def SetValue(var, value):
    _need_int(var, "SetValue")
    job = _current()
    job.record("SetValue", var, value)
    if var == bVarSinceTime:
        _need_int(value, "SetValue(bVarSinceTime)")
        job.since = value
        return bRC_OK
    if var == bVarCheckChanges:
        job.check_changes = value is True
        return bRC_OK
    if var == bVarFileSeen:
        if not isinstance(value, str):
            raise TypeError("SetValue(bVarFileSeen): a str is required")
        value.encode("utf-8")  # PyUnicode_AsUTF8 fails on surrogates
        job.file_seen(value)
        return bRC_OK
    return bRC_Error


def DebugMessage(level, msg=None):
    _need_int(level, "DebugMessage")
    _need_optional_str(msg, "DebugMessage")
    job = _current()
    if msg is not None:
        msg.encode("utf-8")
        job.debug_messages.append((level, msg))
    return None


def JobMessage(type, msg=None):  # noqa: A002 - the C side's argument order and meaning
    _need_int(type, "JobMessage")
    _need_optional_str(msg, "JobMessage")
    job = _current()
    if msg is not None:
        msg.encode("utf-8")
        job.job_message(type, msg)
    return None


def RegisterEvents(events):
    job = _current()
    events = list(events)  # PySequence_Fast: any sequence
    result = bRC_Error
    for event in events:
        _need_int(event, "RegisterEvents")
        if bEventJobStart <= event <= _FD_NR_EVENTS:
            job.registered_events.add(event)
            result = bRC_OK
    job.record("RegisterEvents", tuple(events))
    return result


def UnRegisterEvents(events):
    job = _current()
    events = list(events)
    result = bRC_Error
    for event in events:
        _need_int(event, "UnRegisterEvents")
        if bEventJobStart <= event <= _FD_NR_EVENTS:
            job.registered_events.discard(event)
            result = bRC_OK
    job.record("UnRegisterEvents", tuple(events))
    return result


def GetInstanceCount():
    return _current().instance_count


def _fileset_call(name, *args, required=True):
    """AddExclude & co.: recorded; without their string argument the C side answers bRC_Error."""
    job = _current()
    job.record(name, *args)
    return bRC_OK if required else bRC_Error


def AddExclude(file=None):
    return _fileset_call("AddExclude", file, required=file is not None)


def AddInclude(file=None):
    return _fileset_call("AddInclude", file, required=file is not None)


def AddOptions(opts=None):
    return _fileset_call("AddOptions", opts, required=opts is not None)


def AddRegex(item=None, type=0):  # noqa: A002 - the C side's argument name
    return _fileset_call("AddRegex", item, type, required=item is not None)


def AddWild(item=None, type=0):  # noqa: A002
    return _fileset_call("AddWild", item, type, required=item is not None)


def NewOptions():
    return _fileset_call("NewOptions")


def NewInclude():
    return _fileset_call("NewInclude")


def NewPreInclude():
    return _fileset_call("NewPreInclude")


def _need_savepacket(packet, what):
    if not isinstance(packet, SavePacket):
        raise TypeError(f"{what}: a SavePacket is required")


def AcceptFile(savepkt):
    _need_savepacket(savepkt, "AcceptFile")
    job = _current()
    job.record("AcceptFile", savepkt.fname)
    return job.accept_file(savepkt)


def CheckChanges(savepkt):
    _need_savepacket(savepkt, "CheckChanges")
    job = _current()
    job.record("CheckChanges", savepkt.fname)
    return job.check_changes_for(savepkt)


def SetSeenBitmap(all, fname=None):  # noqa: A002
    job = _current()
    job.record("SetSeenBitmap", bool(all), fname)
    if all:
        job.mark_all_seen()
    elif fname is not None:
        job.file_seen(fname)
    return bRC_OK


def ClearSeenBitmap(all, fname=None):  # noqa: A002
    job = _current()
    job.record("ClearSeenBitmap", bool(all), fname)
    return bRC_OK
