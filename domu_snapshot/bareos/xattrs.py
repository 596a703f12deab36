"""Extended attributes (and with them POSIX ACLs) of guest entries, for the file daemon.

POSIX ACLs travel as what they are on Linux, the extended attributes system.posix_acl_access
and system.posix_acl_default, in the xattr stream: one llistxattr finds them with the others
(no extra call per entry), their kernel form keeps the guest's numeric uids/gids as they are
(no text form to write and parse, no host user database involved), and name/value pairs come
back byte-exact and framed by the file daemon, whereas an ACL stream is one blob per file (a
format of our own for access + default ACL), sent back with an extra NUL. So get_acl hands over
nothing. The file daemon calls get_xattr only when the FileSet's xattrsupport is on (default).
"""

import errno
import os

import bareosfd


def _printable(name):
    return bytes(name).decode("utf-8", "backslashreplace")


class Xattrs:
    """Backup: the attributes of the entry being saved, one per get_xattr call. Restore: the
    attributes that could not be set, per file, reported once at end_restore_file."""

    def __init__(self, owner):
        self.owner = owner       # the PluginJob: messages, the entry being saved, restore checks
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
                self.owner.job(bareosfd.M_ERROR, f"{entry.path}: cannot read extended attribute "
                                              f"{name}: {exc.strerror}; it is not saved")
        return None

    def _list(self, path):
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return []  # a filesystem without extended attributes: there are none to save
            self.owner.job(bareosfd.M_ERROR, f"{path}: cannot list extended attributes: "
                                          f"{exc.strerror}; none are saved")
            return []
        names.reverse()
        return names

    def restore(self, xattr):
        path = xattr.fname
        if not xattr.name or not path:
            return
        if self.owner.restore.problem(path):
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
            self.owner.job(bareosfd.M_ERROR, f"cannot restore extended attributes of {path}: "
                                          + ", ".join(problems))
        self.failed = {}

    def get_acl(self, acl):
        return bareosfd.bRC_OK  # ACLs go with the extended attributes (see above)

    def get_xattr(self, xattr):
        """One attribute per call; bRC_More asks the file daemon to call again for the same entry."""
        entry = self.owner.current
        if entry is None:
            return bareosfd.bRC_OK
        try:
            pair = self.next_pair(entry)
        except Exception as exc:  # a bug here must cost this file's attributes, not the job
            self.owner.job(bareosfd.M_ERROR,
                           f"{entry.path}: extended attributes not saved: {exc!r}")
            self.names = []
            return bareosfd.bRC_OK
        if pair is None:
            return bareosfd.bRC_OK
        name, value = pair
        # python-fd takes bytearrays only (anything else is dropped silently); an empty bytearray
        # fails its conversion, so an empty value goes as None
        xattr.name = bytearray(os.fsencode(name))
        xattr.value = bytearray(value) if value else None
        return bareosfd.bRC_More if self.names else bareosfd.bRC_OK

    def set_acl(self, acl):
        if acl.content:
            self.owner.job(bareosfd.M_WARNING, f"{acl.fname}: ACL stream ignored (this plugin "
                                               "saves ACLs as system.posix_acl_* extended attributes)")
        return bareosfd.bRC_OK

    def set_xattr(self, xattr):
        """Failures are collected and reported per file; bRC_OK lets the file daemon go on with the
        file's other attributes (any other answer stops it and logs a message of its own)."""
        try:
            self.restore(xattr)
        except Exception as exc:
            self.owner.job(bareosfd.M_ERROR,
                           f"{xattr.fname}: extended attribute not restored: {exc!r}")
        return bareosfd.bRC_OK
