"""The Bareos python-fd plugin: file-level backup of LVM-backed guests through snapshots.

bareos-fd loads bareos_plugin/bareos-fd-domu-snapshot.py, which forwards its entry points to a
PluginJob (job.py) made per job; options.py, walk.py, restore.py and xattrs.py do the parts.
These modules need `bareosfd` (the file daemon's own module) and nothing of Bareos beyond it.

FileSet:  Plugin = "python3:module_path=/usr/lib/bareos/plugins:module_name=bareos-fd-domu-snapshot:..."
Options (mirror the CLI's; `\\:` escapes a colon inside a value):
  prefix=domu-   vg=vg0,vg1   include=glob,glob   exclude=glob,glob   snapshot_size=10%ORIGIN
  chunk_size=    partition=auto|whole|N   mount_root=/var/lib/domu-snapshot/mnt
  config=/etc/domu-snapshot.conf   prepare=each|all   quiesce=auto|agent|suspend|sync|none
  libvirt_uri=qemu:///system   lock_timeout=60 (seconds a job waits for another's run lock)

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
nothing. `estimate` sends no bEventStartBackupJob/EndBackupJob (fd_plugins.cc PluginEstimate):
the walk then starts at the first start_backup_file, each guest is torn down after its walk, and
bEventJobEnd (sent at the end of the estimate's session too) tears down whatever is left.

Concurrent jobs (Client Maximum Concurrent Jobs > 1): each job holds the run lock from its start
to its teardown, with "Bareos job N (name)" written under the pid; another job waits up to
lock_timeout for it with an M_INFO naming the holder, then fails (M_FATAL naming the holder and
the fix, nothing snapshotted). A cancel ends the wait.

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

Restore goes through the file daemon (create_file answers CF_CORE) into `where`. A regexwhere
restore (bconsole strip_prefix/add_prefix) is confined to its add_prefix where the file daemon
says what it is; bareos-fd 25.1.0 tells a plugin neither `where` nor the regexwhere (dir_cmd.cc
RestoreCmd fills only jcr->where_bregexp; jcr->where and jcr->RegexWhere stay unset), so there
such restores are refused with one M_FATAL (the job ends at once) and a hint to use where=. Entries whose path would leave that directory (.. components, symlinks in
the restored tree) are refused; a restore to the original paths (no `where`), or a regexwhere
without an add_prefix, is refused. python-fd does not pass the create_status set in
set_file_attributes back to the file daemon, so the plugin applies owner, mode and times itself.
A restore never touches LVs.

"""
