"""Bareos python-fd plugin of domu-snapshot: file-level backups of LVM-backed guests.

FileSet: Plugin = "python3:module_path=/usr/lib/bareos/plugins:module_name=bareos-fd-domu-snapshot:..."
bareos-fd imports this module in a sub-interpreter of its own per job and calls these functions
by name; each forwards to the job's PluginJob (package domu_snapshot.bareos, see its docstring).
"""

from domu_snapshot.bareos.job import PluginJob

_job = None


def load_bareos_plugin(plugindef):
    global _job
    _job = PluginJob()
    return _job.load()


def parse_plugin_definition(plugindef):
    return _job.parse_plugin_definition(plugindef)


def handle_plugin_event(event):
    return _job.handle_plugin_event(event)


def start_backup_file(savepkt):
    return _job.start_backup_file(savepkt)


def end_backup_file():
    return _job.end_backup_file()


def plugin_io(iop):
    return _job.plugin_io(iop)


def check_file(fname):
    return _job.check_file(fname)


def start_restore_file(cmd):
    return _job.restore.start_restore_file(cmd)


def end_restore_file():
    return _job.restore.end_restore_file()


def create_file(restorepkt):
    return _job.restore.create_file(restorepkt)


def set_file_attributes(restorepkt):
    return _job.restore.set_file_attributes(restorepkt)


def get_acl(acl):
    return _job.xattrs.get_acl(acl)


def set_acl(acl):
    return _job.xattrs.set_acl(acl)


def get_xattr(xattr):
    return _job.xattrs.get_xattr(xattr)


def set_xattr(xattr):
    return _job.xattrs.set_xattr(xattr)


def handle_backup_file(savepkt):
    return _job.handle_backup_file(savepkt)


def restore_object_data(rop):
    return _job.restore_object_data(rop)
