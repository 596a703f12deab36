"""The `bareosfd` stand-in and the fd harness against the Bareos facts they model.

Expected names and values are those of the reference page (bareos-fd-python-api.md), checked
against the Bareos source (bareosfd.h/.cc, fd_plugins.h, filetypes.h, python-fd.cc).
"""

import os
import warnings

import pytest

from tests import fd_harness
from tests.fd_harness import bareosfd

CONSTANTS = {
    "bRC_OK": 0, "bRC_Stop": 1, "bRC_Error": 2, "bRC_More": 3, "bRC_Term": 4, "bRC_Seen": 5,
    "bRC_Core": 6, "bRC_Skip": 7, "bRC_Cancel": 8,
    "M_ABORT": 1, "M_DEBUG": 2, "M_FATAL": 3, "M_ERROR": 4, "M_WARNING": 5, "M_INFO": 6,
    "M_SAVED": 7, "M_NOTSAVED": 8, "M_SKIPPED": 9, "M_MOUNT": 10, "M_ERROR_TERM": 11, "M_TERM": 12,
    "M_RESTORED": 13, "M_SECURITY": 14, "M_ALERT": 15, "M_VOLMGMT": 16,
    "bEventJobStart": 1, "bEventJobEnd": 2, "bEventStartBackupJob": 3, "bEventEndBackupJob": 4,
    "bEventStartRestoreJob": 5, "bEventEndRestoreJob": 6, "bEventStartVerifyJob": 7,
    "bEventEndVerifyJob": 8, "bEventBackupCommand": 9, "bEventRestoreCommand": 10,
    "bEventEstimateCommand": 11, "bEventLevel": 12, "bEventSince": 13, "bEventCancelCommand": 14,
    "bEventRestoreObject": 15, "bEventEndFileSet": 16, "bEventPluginCommand": 17,
    "bEventOptionPlugin": 18, "bEventHandleBackupFile": 19, "bEventNewPluginOptions": 20,
    "bVarJobId": 1, "bVarFDName": 2, "bVarLevel": 3, "bVarType": 4, "bVarClient": 5,
    "bVarJobName": 6, "bVarJobStatus": 7, "bVarSinceTime": 8, "bVarAccurate": 9,
    "bVarFileSeen": 10, "bVarVssClient": 11, "bVarWorkingDir": 12, "bVarWhere": 13,
    "bVarRegexWhere": 14, "bVarExePath": 15, "bVarVersion": 16, "bVarDistName": 17,
    "bVarPrevJobName": 18, "bVarPrefixLinks": 19, "bVarCheckChanges": 20, "bVarUsedConfig": 21,
    "FT_LNKSAVED": 1, "FT_REGE": 2, "FT_REG": 3, "FT_LNK": 4, "FT_DIREND": 5, "FT_SPEC": 6,
    "FT_NOACCESS": 7, "FT_NOFOLLOW": 8, "FT_NOSTAT": 9, "FT_NOCHG": 10, "FT_DIRNOCHG": 11,
    "FT_ISARCH": 12, "FT_NORECURSE": 13, "FT_NOFSCHG": 14, "FT_NOOPEN": 15, "FT_RAW": 16,
    "FT_FIFO": 17, "FT_DIRBEGIN": 18, "FT_INVALIDFS": 19, "FT_INVALIDDT": 20, "FT_REPARSE": 21,
    "FT_PLUGIN": 22, "FT_DELETED": 23, "FT_BASE": 24, "FT_RESTORE_FIRST": 25, "FT_JUNCTION": 26,
    "FT_PLUGIN_CONFIG": 27, "FT_PLUGIN_CONFIG_FILLED": 28,
    "CF_SKIP": 1, "CF_ERROR": 2, "CF_EXTRACT": 3, "CF_CREATED": 4, "CF_CORE": 5,
    "IO_OPEN": 1, "IO_READ": 2, "IO_WRITE": 3, "IO_CLOSE": 4, "IO_SEEK": 5,
    "iostat_error": -1, "iostat_do_in_plugin": 0, "iostat_do_in_core": 1,
}
FUNCTIONS = {"GetValue", "SetValue", "DebugMessage", "JobMessage", "RegisterEvents",
             "UnRegisterEvents", "GetInstanceCount", "AddExclude", "AddInclude", "AddOptions",
             "AddRegex", "AddWild", "NewOptions", "NewInclude", "NewPreInclude", "AcceptFile",
             "CheckChanges", "SetSeenBitmap", "ClearSeenBitmap"}
PACKETS = {
    "StatPacket": ["st_dev", "st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev",
                   "st_size", "st_atime", "st_mtime", "st_ctime", "st_blksize", "st_blocks"],
    "SavePacket": ["fname", "link", "statp", "type", "flags", "no_read", "portable",
                   "accurate_found", "cmd", "save_time", "delta_seq", "object_name", "object",
                   "object_len", "object_index"],
    "RestorePacket": ["stream", "data_stream", "type", "file_index", "linkFI", "uid", "statp",
                      "attrEX", "ofname", "olname", "where", "regexwhere", "replace",
                      "create_status", "filedes"],
    "IoPacket": ["func", "count", "flags", "mode", "buf", "fname", "status", "io_errno", "lerror",
                 "whence", "offset", "win32", "filedes"],
    "AclPacket": ["fname", "content"],
    "XattrPacket": ["fname", "name", "value"],
    "RestoreObject": ["object_name", "object", "plugin_name", "object_type", "object_len",
                      "object_full_len", "object_index", "object_compression", "stream", "jobid"],
}


@pytest.fixture
def job():
    job = fd_harness.Job({bareosfd.bVarLevel: ord("I"), bareosfd.bVarJobId: 7,
                          bareosfd.bVarWhere: "/tmp/r"}, since=1234)
    bareosfd._install(job)
    yield job
    bareosfd._uninstall()


def test_public_names_are_exactly_the_reference():
    public = {name for name in vars(bareosfd) if not name.startswith("_")}
    assert public == set(CONSTANTS) | FUNCTIONS | set(PACKETS)
    for name, value in CONSTANTS.items():
        assert getattr(bareosfd, name) == value, name


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_packet_attributes(name):
    packet = getattr(bareosfd, name)()
    for attribute in PACKETS[name]:
        getattr(packet, attribute)
    with pytest.raises(AttributeError):
        packet.no_such_attribute = 1  # the C types have no __dict__


def test_stat_packet_keywords_drop_the_prefix():
    st = bareosfd.StatPacket(dev=1, ino=2, mode=0o100644, nlink=1, uid=3, gid=4, size=5,
                             atime=6, mtime=7, ctime=8)
    assert (st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_size, st.st_mtime) == \
        (1, 2, 0o100644, 3, 5, 7)
    with pytest.raises(TypeError):
        bareosfd.StatPacket(st_mode=0o100644)
    default = bareosfd.StatPacket()
    assert default.st_mode == 0o100700 and default.st_blksize == 4096


def test_member_types_are_enforced_like_structmember():
    st = bareosfd.StatPacket()
    with pytest.raises(TypeError):
        st.st_mtime = 1.5              # os.stat gives floats: the plugin must pass ints
    sp = bareosfd.SavePacket()
    with pytest.raises(TypeError):
        sp.no_read = 1                 # T_BOOL takes only True/False
    with pytest.raises(TypeError):
        sp.cmd = "x"                   # T_STRING members are read-only
    with pytest.raises(TypeError):
        bareosfd.SavePacket(statp=st)  # not a constructor keyword: assign it
    sp.statp = st
    assert sp.statp is st
    assert bareosfd.SavePacket(no_read=1).no_read is True  # the constructor's "p" format
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning):
            st.st_dev = 1 << 40        # uint32: truncated with a warning
    iop = bareosfd.IoPacket(fname="/x")
    assert iop.filedes == -1 and iop.fname == "/x"
    with pytest.raises(TypeError):
        iop.fname = "/y"


def test_functions_need_a_running_job():
    with pytest.raises(RuntimeError):
        bareosfd.JobMessage(bareosfd.M_INFO, "x")
    with pytest.raises(RuntimeError):
        bareosfd.GetValue(bareosfd.bVarLevel)


def test_get_and_set_value(job):
    assert chr(bareosfd.GetValue(bareosfd.bVarLevel)) == "I"
    assert bareosfd.GetValue(bareosfd.bVarSinceTime) == 1234
    assert bareosfd.GetValue(bareosfd.bVarWhere) == "/tmp/r"
    assert bareosfd.GetValue(bareosfd.bVarFileSeen) is None
    assert bareosfd.GetValue(999) is None
    assert bareosfd.SetValue(bareosfd.bVarSinceTime, 99) == bareosfd.bRC_OK
    assert bareosfd.GetValue(bareosfd.bVarSinceTime) == 99
    assert bareosfd.SetValue(bareosfd.bVarCheckChanges, False) == bareosfd.bRC_OK
    assert bareosfd.GetValue(bareosfd.bVarCheckChanges) is False
    assert bareosfd.SetValue(bareosfd.bVarJobId, 1) == bareosfd.bRC_Error
    bareosfd.JobMessage(bareosfd.M_ERROR, "broken\n")
    assert job.errors == ["broken\n"]
    assert bareosfd.RegisterEvents([bareosfd.bEventJobEnd]) == bareosfd.bRC_OK
    assert bareosfd.bEventJobEnd in job.registered_events
    with pytest.raises(TypeError):
        bareosfd.JobMessage("4", "x")


def test_c_side_option_handling():
    path, name, options = fd_harness.split_definition(
        "python3:module_path=/p:module_name=bareos-fd-x:prefix=d-:mount_root=/a\\:b")
    assert (path, name) == ("/p", "bareos-fd-x")
    # module_path/module_name are consumed; the escape reaches Python unchanged; trailing colon
    assert options == "prefix=d-:mount_root=/a\\:b:"
    assert fd_harness.split_definition("python3:module_name=x")[2] == ""


def test_config_lexer_joins_quoted_pieces_and_unescapes():
    text = ('FileSet {\n  Include {\n    Plugin = "python3"  # c\n'
            '             ":a=b"   # comment\n             ":c=d\\\\:e"\n  }\n}\n')
    assert fd_harness.config_values(text, "Plugin") == ["python3:a=b:c=d\\:e"]


def test_harness_rejects_non_utf8_fname(tmp_path):
    """The C side converts fname with PyUnicode_AsUTF8: a surrogate-escaped str fails the job."""
    fd = fd_harness.FileDaemon("python3:module_name=x")
    sp = fd._new_savepacket()
    sp.fname = os.fsdecode(b"/x/\xff")
    sp.statp = bareosfd.StatPacket()
    assert "UnicodeEncodeError" in fd._to_native(sp)
