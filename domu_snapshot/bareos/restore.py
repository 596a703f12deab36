"""Restores: where a restored entry may be written, and the restore entry points' work.

The file daemon creates every entry itself (create_file answers CF_CORE) below `where`, or below
the add_prefix of a regexwhere; a path that would leave it is refused.
"""

import os
import re
import stat

import bareosfd

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

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
    given_where = where
    where, refused = restore_target(where, regexwhere)
    if refused and not given_where and not regexwhere and mount_root and path \
            and not os.path.normpath(path).startswith(os.path.normpath(mount_root) + "/"):
        # a name rewritten by the director (strip_prefix/add_prefix/add_suffix/regexwhere):
        # bareos-fd 25 keeps the rewrite to itself (filed/dir_cmd.cc RestoreCmd fills only
        # jcr->where_bregexp; jcr->where and jcr->RegexWhere, which bVarWhere, bVarRegexWhere and
        # the restore packet carry, stay empty), so where the plugin may write is unknown
        return (f"no where= given and {path!r} lies outside the mount root: a strip_prefix/"
                f"add_prefix/add_suffix/regexwhere restore is refused, as bareos-fd tells a plugin "
                f"neither that rewrite nor its target directory (so the plugin cannot keep the "
                f"files inside it), and a restore to the original paths is refused too (they are "
                f"the snapshot mount points); restore with where=DIR instead (the files land in "
                f"DIR{os.path.normpath(mount_root)}/<vg>/<lv>/; move them from there)")
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


class Restore:
    """The restore entry points of one job; python-fd does not pass the create_status set in
    set_file_attributes back to the file daemon, so owner, mode and times are set here."""

    def __init__(self, owner):
        self.owner = owner       # the PluginJob: options, messages, the open descriptor
        self.refused_all = False  # the fatal "no target" message was given

    def problem(self, path, restorepkt=None):
        """restore_path_problem() for this job's where/regexwhere (from the packet when there is
        one: the file daemon fills both there; GetValue otherwise)."""
        where = (restorepkt.where if restorepkt is not None else "") \
            or bareosfd.GetValue(bareosfd.bVarWhere) or ""
        regexwhere = (restorepkt.regexwhere if restorepkt is not None else "") \
            or bareosfd.GetValue(bareosfd.bVarRegexWhere) or ""
        return restore_path_problem(path, where, self.owner.options.get("mount_root"), regexwhere)

    def start_restore_file(self, cmd):
        return bareosfd.bRC_OK

    def end_restore_file(self):
        self.owner.close_fd()
        self.owner.xattrs.report_failed()  # the file daemon has handed over all of this file's attributes
        return bareosfd.bRC_OK

    def target_refused(self, restorepkt):
        """Whether the whole restore has no directory to write below (no where=, or a rewrite
        the file daemon does not disclose): then no entry can be restored."""
        where = restorepkt.where or bareosfd.GetValue(bareosfd.bVarWhere) or ""
        regexwhere = restorepkt.regexwhere or bareosfd.GetValue(bareosfd.bVarRegexWhere) or ""
        return restore_target(where, regexwhere)[1] is not None

    def create_file(self, restorepkt):
        problem = self.problem(restorepkt.ofname, restorepkt)
        if problem is None and restorepkt.type == bareosfd.FT_LNKSAVED:
            problem = self.problem(restorepkt.olname, restorepkt)
        if problem:
            if self.target_refused(restorepkt):
                # every entry would be refused for the same reason: one fatal line ends the job
                # ("Restore Error") instead of an error per entry
                if not self.refused_all:
                    self.refused_all = True
                    self.owner.job(bareosfd.M_FATAL, f"restore refused, nothing restored: {problem}")
            else:
                self.owner.job(bareosfd.M_ERROR, f"restore refused: {problem}")
            restorepkt.create_status = bareosfd.CF_ERROR
            return bareosfd.bRC_OK
        restorepkt.create_status = bareosfd.CF_CORE
        return bareosfd.bRC_OK

    def set_file_attributes(self, restorepkt):
        """Owner, mode and times: python-fd ignores a CF_CORE set here, so the core will not."""
        path = restorepkt.ofname
        problem = self.problem(path, restorepkt)
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
            self.owner.job(bareosfd.M_ERROR, f"cannot set attributes of {path}: {exc.strerror}")
        return bareosfd.bRC_OK

    def open_for_write(self, path):
        """A descriptor to write `path`, or None when the path is refused (reported)."""
        problem = self.problem(path)
        if problem:
            self.owner.job(bareosfd.M_ERROR, f"restore refused: {problem}")
            return None
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW | _CLOEXEC, 0o600)
