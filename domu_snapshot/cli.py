"""`domu-snapshot` and `foreach-domu`: the command line.

Exit codes: 0 every guest ok; 1 some guest failed (the others are still
mounted and listed); 2 usage or configuration error, or not root.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys

from . import __version__, commands, filesystems, guestlvm, logs, loop, mount, partitions, report
from .commands import CommandError
from .config import QUIESCE_LEVELS, effective_config, load_config
from .errors import DomuError, LockBusy, ProbeError, one_line
from .lifecycle import Runner
from .lock import RunLock

EXIT_OK, EXIT_GUEST_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_MEANING = {EXIT_OK: "every guest ok", EXIT_GUEST_FAILED: "some guest failed or a check found a problem "
                "(see its entry); the others are done", EXIT_USAGE: "usage or configuration error, or not root"}
EXIT_CODES_TEXT = ("exit codes: 0 every guest ok; 1 some guest failed (the others are done and listed), "
                   "or a problem was found; 2 usage or configuration error, or not root")

# description, example(s) of each subcommand, for its --help
_COMMANDS = {
    "list": ("Guests found (prefix, --vg, --include, --exclude), the partition and offset that would be "
             "mounted, and whether each is mounted now. Reads each origin's table through a read-only "
             "loop device; changes nothing.",
             "domu-snapshot list\n  domu-snapshot --vg vg0 list --json"),
    "mount": ("Snapshot each guest's LVs (quiesced through libvirt where configured), replay the journal "
              "on the snapshot and mount its filesystem read-only at <mount_root>/<vg>/<lv>. One line "
              "per guest; a failed guest is torn down again, the others stay mounted.",
              "domu-snapshot mount --all\n  domu-snapshot mount domu-web01 --json"),
    "unmount": ("Unmount guests, detach their loop devices and remove their snapshots (with --all: every "
                "guest of the selection, leftovers of crashed runs included).",
                "domu-snapshot unmount --all\n  domu-snapshot unmount domu-web01"),
    "status": ("What is mounted under the mount root, from which snapshot and how full it is, and what "
               "is left over.", "domu-snapshot status --json"),
    "cleanup": ("Tear down everything of this tool that is left (every VG, whatever the selection): "
                "what the boot-time service runs.", "domu-snapshot cleanup"),
    "check": ("Preflight: tools, kernel modules, pyparted, guests found, free space for their "
              "snapshots, the run lock, leftovers.", "domu-snapshot check\n  domu-snapshot check --json"),
    "config": ("Validate the configuration file and print the effective configuration, with where each "
               "value comes from (default, file and section, command line). Needs no root.",
               "domu-snapshot config\n  domu-snapshot --config /etc/domu-snapshot.conf config --json"),
}

REQUIRED_TOOLS = ("lvs", "lvcreate", "lvremove", "losetup", "e2fsck", "mount", "umount", "findmnt", "udevadm")


def _parser():
    # SUPPRESS: a subcommand's parser must not reset options given before it.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    opt = common.add_argument_group("options (each overrides the configuration file)")
    opt.add_argument("--config", metavar="FILE", help="configuration file (default /etc/domu-snapshot.conf)")
    opt.add_argument("--prefix", help="guest LVs are the LVs whose name starts with this (default domu-)")
    opt.add_argument("--vg", action="append", dest="vgs", metavar="VG", help="only this VG (repeatable)")
    opt.add_argument("--include", action="append", metavar="GLOB", help="only LVs matching (lv or vg/lv)")
    opt.add_argument("--exclude", action="append", metavar="GLOB", help="never LVs matching (lv or vg/lv)")
    opt.add_argument("--snapshot-size", metavar="SIZE", help="e.g. 2G or 10%%ORIGIN (default)")
    opt.add_argument("--chunk-size", metavar="SIZE", help="snapshot chunk size, e.g. 64k")
    opt.add_argument("--partition", metavar="N", help="auto (first ext3/ext4), whole, or a partition number")
    opt.add_argument("--mount-root", metavar="DIR", help="mount guests at DIR/<vg>/<lv>")
    opt.add_argument("--lock-timeout", type=float, metavar="SECONDS", help="wait this long for another run")
    opt.add_argument("--quiesce", choices=QUIESCE_LEVELS, help="quiesce guests through libvirt (default auto)")
    opt.add_argument("--libvirt-uri", metavar="URI", help="e.g. qemu:///system or xen:///system")
    opt.add_argument("--quiesce-timeout", type=float, metavar="SECONDS", help="longest freeze or pause")
    opt.add_argument("--dry-run", action="store_true", help="print the commands that would change anything")
    opt.add_argument("--allow-empty", action="store_true",
                     help="`mount --all` selecting no guest exits 0 (default: 1, naming what it looked at)")
    opt.add_argument("--no-syslog", action="store_false", dest="syslog", help="do not log to syslog")
    out = common.add_argument_group("output")
    out.add_argument("-q", "--quiet", action="store_true", help="console: only warnings and errors "
                     "(syslog keeps every line)")
    out.add_argument("-v", "--verbose", action="store_true", help="console: also each command as it runs")

    parser = argparse.ArgumentParser(
        prog="domu-snapshot", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Snapshot guest LVs and mount their filesystems read-only for file-level backups.",
        epilog="examples:\n  domu-snapshot list\n  domu-snapshot mount --all && <back up the mount root> "
               "; domu-snapshot unmount --all\n\n" + EXIT_CODES_TEXT)
    parser.add_argument("--version", action="version", version=f"domu-snapshot {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name, summary):
        description, examples = _COMMANDS[name]
        return sub.add_parser(name, parents=[common], help=summary, description=description,
                              epilog=f"examples:\n  {examples}\n\n{EXIT_CODES_TEXT}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    json_help = "one JSON document on stdout (messages go to stderr)"
    p = command("list", "guests, their partition and offset, mounted or not")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("mount", "snapshot and mount guests")
    p.add_argument("guests", nargs="*", metavar="GUEST")
    p.add_argument("--all", action="store_true", help="every guest")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("unmount", "unmount guests and remove their snapshots")
    p.add_argument("guests", nargs="*", metavar="GUEST")
    p.add_argument("--all", action="store_true", help="every guest, and any leftover")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("status", "what is mounted, what is left over")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("cleanup", "remove leftovers of crashed runs")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("check", "preflight: tools, kernel, space, lock, leftovers")
    p.add_argument("--json", action="store_true", help=json_help)
    p = command("config", "validate the configuration, print the effective values and their origin")
    p.add_argument("--json", action="store_true", help=json_help)
    return parser


_OVERRIDES = ("prefix", "vgs", "include", "exclude", "snapshot_size", "chunk_size", "partition", "mount_root",
              "lock_timeout", "quiesce", "libvirt_uri", "quiesce_timeout", "dry_run", "syslog", "allow_empty")


class Output:
    """The CLI's log (see logs.py): the console, and syslog unless --no-syslog; called as
    out(level, message) like every log of the core."""

    def __init__(self, use_syslog, quiet=False, verbose=False, json_mode=False):
        handlers = [logs.ConsoleHandler(quiet=quiet, verbose=verbose, json_mode=json_mode)]
        if use_syslog:
            handlers.append(logs.SyslogHandler())
        logs.use(*handlers)

    def __call__(self, level, message):
        logs.emit(level, message)


def _disk_record(disk_result):
    choice = disk_result.choice
    return {"vg": disk_result.disk.vg, "lv": disk_result.disk.lv, "mount_path": disk_result.mount_path,
            "mounted": disk_result.mounted, "partition": choice.number if choice else None,
            "fs": choice.fs if choice else None, "offset": choice.offset if choice else None,
            "loop_device": disk_result.loop or None, "journal": disk_result.journal or None,
            "snapshot_peak_use_percent": disk_result.peak_percent, "note": disk_result.note or None,
            "guest_lv": disk_result.inner or None,
            # guest_filesystems = all (fstab): each filesystem at its own path below mount_path (where
            # the guest's fstab mounts it: mount_point)
            "filesystems": [{"mount_path": m.path, "what": m.what, "device": m.device or None,
                             "journal": m.journal or None, "mount_point": m.mount_point or None}
                            for m in disk_result.filesystems],
            "not_mounted": disk_result.left_out}


def _result_record(result):
    """A guest's result for --json: what a monitoring check needs without parsing text."""
    error = result.error
    return {"guest": result.guest.name, "domain": result.guest.domain, "action": result.action,
            "status": result.status, "failed_step": error.step if error else None,
            "message": error.message if error else None, "hint": error.hint if error else None,
            "seconds": round(result.seconds, 3), "quiesce": result.quiesce, "freeze_ms": result.freeze_ms,
            "disks": [_disk_record(d) for d in result.disks], "notes": list(result.notes)}


def _print_json(command, code, **parts):
    document = {"command": command, **parts,
                "summary": {"exit_code": code, "meaning": EXIT_MEANING.get(code, "")}}
    print(json.dumps(document, indent=2))
    return code


def _raise_on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so the guest being prepared is torn down.
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def main(argv=None):
    args = _parser().parse_args(argv)
    json_mode = getattr(args, "json", False)
    try:
        overrides = {key: getattr(args, key) for key in _OVERRIDES if getattr(args, key, None) is not None}
        cfg = load_config(getattr(args, "config", None), overrides)
    except DomuError as exc:
        print(f"domu-snapshot: {exc}", file=sys.stderr)
        if json_mode:
            _print_json(args.command, EXIT_USAGE, error=str(exc))
        return EXIT_USAGE
    if args.command == "config":
        return cmd_config(cfg, args)
    if os.geteuid() != 0:
        print("domu-snapshot: must run as root (it creates LVM snapshots, loop devices and mounts)", file=sys.stderr)
        return EXIT_USAGE
    out = Output(cfg.syslog, quiet=getattr(args, "quiet", False), verbose=getattr(args, "verbose", False),
                 json_mode=json_mode)
    commands.set_dry_run(cfg.dry_run, printer=lambda text: out("info", text))
    commands.set_hooks(trace=lambda argv: out("debug", "run: " + " ".join(argv)),
                       progress=lambda text: out("info", text))
    # owner "cli": helpers mode holds these snapshots between `mount` and `unmount` (lvm.OWNER_TAGS)
    runner = Runner(cfg, log=out, owner="cli")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_on_signal)
    handler = {"list": cmd_list, "mount": cmd_mount, "unmount": cmd_unmount, "status": cmd_status,
               "cleanup": cmd_cleanup, "check": cmd_check}[args.command]
    try:
        return handler(runner, args, out)
    except LockBusy as exc:
        code, text = EXIT_GUEST_FAILED, str(exc)
    except DomuError as exc:
        code, text = EXIT_USAGE, str(exc)
    except CommandError as exc:
        code, text = EXIT_GUEST_FAILED, f"{exc.summary()} -- nothing guest-specific was started; fix the cause and run again"
    except KeyboardInterrupt as exc:
        code, text = EXIT_GUEST_FAILED, (f"interrupted ({exc or 'SIGINT'}); the guest in progress was torn "
                                         f"down; run `domu-snapshot status` to see what is still mounted")
    out("error", text)
    if json_mode:
        _print_json(args.command, code, error=one_line(text))
    return code


FOREACH_HELP = """usage: foreach-domu [options] mount|unmount

Every guest at once, for a backup job's Client Run Before Job (mount) and Run After Job
(unmount) scripts: the same as `domu-snapshot mount --all` and `domu-snapshot unmount --all`,
with the same options (see domu-snapshot --help). `unmount` also exits 1 for the guests the
last `mount` could not mount, so that the job (RunScript: Fail Job On Error = yes) ends in
error and their last good backup stays the current one.

examples:
  foreach-domu mount
  foreach-domu --vg vg0 --exclude 'domu-scratch*' unmount

""" + EXIT_CODES_TEXT


def foreach_main(argv=None):
    """`foreach-domu mount|unmount [options]`: all guests, for Run Before/After Job scripts."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--version" in argv:
        print(f"foreach-domu (domu-snapshot) {__version__}")
        return EXIT_OK
    actions = [a for a in argv if a in ("mount", "unmount")]
    if len(actions) != 1 or "-h" in argv or "--help" in argv:
        text = FOREACH_HELP if "-h" in argv or "--help" in argv else "usage: foreach-domu [options] mount|unmount"
        print(text, file=sys.stdout if text is FOREACH_HELP else sys.stderr)
        return EXIT_OK if text is FOREACH_HELP else EXIT_USAGE
    argv.remove(actions[0])
    return main([actions[0], "--all"] + argv)


# ----------------------------------------------------------------- commands

def _line(out, result):
    """One line per guest (result, detail, time), then its notes."""
    for level, text in report.lines(result):
        out(level, text)


def cmd_mount(runner, args, out):
    if not args.all and not args.guests:
        raise DomuError("name the guests to mount, or use --all")
    if not runner.cfg.dry_run:
        runner.warm_up_probe()  # its start overlaps the lock, lvs and the first snapshots
    try:
        return _mount(runner, args, out)
    finally:
        runner.end_spare_probe()


def _mount(runner, args, out):
    with runner.lock():
        guests = runner.discover(None if args.all else args.guests)
        if not guests:
            # A helpers-mode job must not back up an empty directory and report OK.
            looked = _selection_text(runner.cfg)
            if not runner.cfg.allow_empty:
                out("error", f"no guest selected ({looked}): nothing was mounted. Check prefix, vg, include "
                             f"and exclude (domu-snapshot list shows the guests found); on a host that may "
                             f"have no guest, pass --allow-empty or set allow_empty = yes")
                if args.all and not runner.cfg.dry_run:
                    _record_mount_failures(runner.cfg, ["(no guest selected)"])
                return _finish(args, "mount", EXIT_GUEST_FAILED, [], error=f"no guest selected ({looked})")
            out("warning", f"no guest selected ({looked}); allowed (allow_empty): nothing mounted")
            if args.all and not runner.cfg.dry_run:
                _record_mount_failures(runner.cfg, [])
            return _finish(args, "mount", EXIT_OK, [])
        errors = runner.check_space(guests, concurrent=True)
        results = []
        for guest in guests:
            with commands.doing(guest.name):
                result = runner.prepare(guest, errors.get(guest.name))
            _line(out, result)
            results.append(result)
        if args.all and not runner.cfg.dry_run:
            _record_mount_failures(runner.cfg, [r.guest.name for r in results if not r.ok])
    return _finish(args, "mount", EXIT_GUEST_FAILED if any(not r.ok for r in results) else EXIT_OK, results)


def _finish(args, command, code, results, **extra):
    """The exit code; with --json, first the document: one object per guest and a summary."""
    if getattr(args, "json", False):
        _print_json(command, code, guests=[_result_record(r) for r in results], **extra)
    return code


# Helpers mode: the guests `mount --all` could not mount, until `unmount --all` reports them. A
# job's Before script cannot fail the job without costing every other guest its backup, and a
# job that ends OK with a guest's directory empty makes Accurate record that guest's files as
# deleted; so the After script's `unmount --all` exits 1 for them, and its RunScript (Fail Job
# On Error = yes) turns the job into an error, which Bareos/Bacula never use as the base of an
# Incremental or for the latest state of a restore. Kept beside the run lock (a root-only dir).
MOUNT_FAILURES = "helpers-mount-failures"


def _mount_failures_path(cfg):
    return os.path.join(os.path.dirname(os.path.abspath(cfg.lock_file)), MOUNT_FAILURES)


def _record_mount_failures(cfg, names):
    path = _mount_failures_path(cfg)
    if not names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))


def _take_mount_failures(cfg):
    """The guests the last `mount --all` lost (and forget them)."""
    path = _mount_failures_path(cfg)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, encoding="utf-8", errors="replace") as handle:
        names = [line.strip() for line in handle if line.strip()]
    os.unlink(path)
    return names


def _selection_text(cfg):
    """What a run looked at: prefix, VGs, include and exclude globs."""
    parts = [f"prefix {cfg.prefix!r}", f"VGs {', '.join(cfg.vgs) if cfg.vgs else 'all'}"]
    if cfg.include:
        parts.append(f"include {', '.join(cfg.include)}")
    if cfg.exclude:
        parts.append(f"exclude {', '.join(cfg.exclude)}")
    return "; ".join(parts)


def cmd_unmount(runner, args, out):
    if not args.all and not args.guests:
        raise DomuError("name the guests to unmount, or use --all")
    with runner.lock():
        if args.all:
            # whatever the system shows as ours within the selection (prefix, vg, include,
            # exclude), leftovers included; `cleanup` takes everything that is ours
            results = runner.reap(selected_only=True)
        else:
            guests = runner.discover(args.guests)
            results = runner.teardown(guests, runner.system_state(reuse_report=True))
        lost = _take_mount_failures(runner.cfg) if args.all and not runner.cfg.dry_run else []
    for result in results:
        _line(out, result)
    if not results:
        out("info", "nothing was mounted")
    if lost:
        out("error", f"not backed up: {', '.join(lost)} (`mount --all` failed for them, see its "
                     f"messages); exit 1 so that the job (RunScript with Fail Job On Error = yes) "
                     f"ends in error and their last good backup stays the current one")
    code = EXIT_GUEST_FAILED if lost or any(not r.ok for r in results) else EXIT_OK
    return _finish(args, "unmount", code, results, not_backed_up=lost)


def cmd_cleanup(runner, args, out):
    with runner.lock():
        results = runner.reap()
    for result in results:
        _line(out, result)
    out("info", f"cleanup: {len(results)} leftover guest(s) torn down" if results else "cleanup: nothing left over")
    return _finish(args, "cleanup", EXIT_GUEST_FAILED if any(not r.ok for r in results) else EXIT_OK, results)


def _logical_sector_size(path):
    """The block device's logical sector size (sysfs); 512 when it cannot be read."""
    try:
        rdev = os.stat(path).st_rdev
        with open(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}/queue/logical_block_size") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 512


def _read_only_loop(disk):
    """A read-only loop device over the origin LV, with the LV's logical sector size (a loop
    device has 512-byte sectors unless told, and the LBAs of a table written on a 4096-byte-sector
    disk count 4 KiB sectors); the caller detaches it."""
    argv = ["losetup", "--read-only", "--find", "--show"]
    sector_size = _logical_sector_size(disk.lv_path)
    if sector_size != 512:
        argv += ["--sector-size", str(sector_size)]
    return commands.run(argv + [disk.lv_path], changes_system=False).stdout.strip()


def _probe_origin(disk, partition, selected, guest_lvm="no", guest_lv="auto"):
    """Partition choice of an origin LV and why its filesystem would be refused (filesystems.refusal:
    (message, hint) or None), read through a read-only loop device (_read_only_loop)."""
    device = _read_only_loop(disk)
    try:
        probed = partitions.probe_isolated(device)
        # LVM inside the guest: what prepare would do (guestlvm.plan reads the PV's metadata only)
        inner = guestlvm.plan(probed, device, guest_lvm, partition, guest_lv)
        if inner is not None and guest_lvm == "yes":
            return inner
        try:
            choice = partitions.choose(probed, partition, selected)
        except ProbeError:
            if inner is not None:
                return inner
            raise
        superblock = filesystems.read_superblock(device, choice.offset, choice.fs)
        return choice, filesystems.refusal(superblock, choice.where(disk.key))
    finally:
        loop.detach(device, undo=True)  # the attach above is a query's: undone in dry-run too


def _plan_every(disk, selected, guest_lvm):
    """What guest_filesystems = all would mount of an origin LV, read through a read-only loop
    device: ([{"path", "fs", "offset"}], [what is left out], problem or None, the GuestVG or None). A guest
    LV's filesystem is read where its metadata puts its first linear segment; an LV laid out
    otherwise (thin, striped) shows as "an LV": what it holds shows once it is active."""
    device = _read_only_loop(disk)
    try:
        probed = partitions.probe_isolated(device)
        inner = guestlvm.plan(probed, device, guest_lvm, "auto", "auto")
        try:
            choices = partitions.choose(probed, "every", selected)
        except ProbeError:
            if inner is None:
                raise
            choices = []
        found, problems = [], []
        for choice in choices:
            found.append({"path": mount.every_path(disk.mount_path, choice.number), "fs": choice.fs,
                          "offset": choice.offset})
            refused = filesystems.refusal(filesystems.read_superblock(device, choice.offset, choice.fs),
                                          choice.where(disk.key))
            if refused:
                problems.append(refused[0])
        left_out = partitions.left_out(probed, selected, also={inner[0].number} if inner else ())
        if inner is not None:
            pv, _shown, problem, guest_vg = inner
            if problem:
                problems.append(problem)
            if guest_vg is not None:
                for lv_name in guestlvm.candidates(guest_vg)[:guestlvm.EVERY_LV_MAX]:
                    start = guest_vg.lv_offset(lv_name)
                    superblock = guestlvm.lv_superblock(device, selected, pv.offset + start) if start is not None \
                        else None
                    if start is not None and superblock is None:
                        left_out.append(f"LV {guest_vg.name}/{lv_name} (no {'/'.join(selected)} filesystem)")
                        continue
                    found.append({"path": mount.every_path(disk.mount_path, guest_vg=guest_vg.name, lv=lv_name),
                                  "fs": superblock.fs if superblock else "lv",
                                  "offset": pv.offset + start if start is not None else None})
        if not found:
            problems.append(f"no {'/'.join(selected)} filesystem found (not mounted: {', '.join(left_out) or '-'})")
        return found, left_out, "; ".join(problems) or None, inner[3] if inner else None
    finally:
        loop.detach(device, undo=True)  # the attach above is a query's: undone in dry-run too


def cmd_list(runner, args, out):
    guests = runner.discover()
    mounted = {target for target, _ in mount.under(runner.cfg.mount_root)}
    rows = []
    for guest in guests:
        guest_vgs = []  # (row, GuestVG, guest_lv) of the guest's disks holding a PV
        for disk in guest.disks:
            row = {"guest": guest.name, "domain": guest.domain, "vmid": guest.vmid, "vg": disk.vg, "lv": disk.lv,
                   "size": disk.origin.size, "active": disk.origin.active, "partition": None, "fs": None,
                   "offset": None, "mount_path": disk.mount_path,
                   "mounted": any(t == disk.mount_path or t.startswith(disk.mount_path + os.sep) for t in mounted),
                   "problem": None}
            layout = runner.cfg.for_disk(guest, disk, "guest_filesystems")
            if disk.origin.active and layout in ("all", "fstab"):
                try:
                    every, left_out, problem, guest_vg = _plan_every(disk, runner.cfg.filesystems,
                                                                     runner.cfg.for_disk(guest, disk, "guest_lvm"))
                    # fstab: where each goes is read from the guest's /etc/fstab when it is mounted
                    row.update(partition=layout, filesystems=every, not_mounted=left_out, problem=problem)
                    if guest_vg is not None and guest_vg.pv_count > 1:
                        guest_vgs.append((row, guest_vg, "auto"))
                except (ProbeError, CommandError) as exc:
                    row["problem"] = str(exc)
            elif disk.origin.active:
                try:
                    found = _probe_origin(disk, runner.cfg.for_disk(guest, disk, "partition"),
                                          runner.cfg.filesystems, runner.cfg.for_disk(guest, disk, "guest_lvm"),
                                          runner.cfg.for_disk(guest, disk, "guest_lv"))
                    if len(found) == 4:  # a guest VG: (pv choice, its LVs to try, problem, GuestVG)
                        choice, inner, problem, guest_vg = found
                        row.update(partition=choice.number, fs="lvm", offset=choice.offset, guest_lvs=inner)
                        if problem:
                            row["problem"] = problem
                        if guest_vg is not None:
                            guest_vgs.append((row, guest_vg, runner.cfg.for_disk(guest, disk, "guest_lv")))
                    else:
                        choice, refused = found
                        row.update(partition=choice.number, fs=choice.fs, offset=choice.offset)
                        if refused:
                            row["problem"] = refused[0]
                except (ProbeError, CommandError) as exc:
                    row["problem"] = str(exc)
            else:
                row["problem"] = "inactive"
            rows.append(row)
        _spanning_vgs(guest_vgs)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    # Proxmox VE: one row per disk of a VM, under its VMID; a libvirt or xl domain's disks under
    # the guest's (the domain's) name
    if runner.proxmox:
        first, header = (lambda row: f"{row['vmid'] or '-':>6} {row['lv']:24}"), f"{'VMID':>6} {'DISK':24}"
    elif any(row["domain"] for row in rows):
        first, header = (lambda row: f"{row['guest']:24} {row['lv']:24}"), f"{'GUEST':24} {'DISK':24}"
    else:
        first, header = (lambda row: f"{row['guest']:24}"), f"{'GUEST':24}"
    print(header + f" {'VG':12} {'SIZE':>9} {'PART':>5} {'FS':5} {'OFFSET':>12} MOUNTED")
    for row in rows:
        part = "whole" if row["partition"] == 0 else ("-" if row["partition"] is None else str(row["partition"]))
        print(f"{first(row)} {row['vg']:12} {row['size'] / 1024 ** 3:8.2f}G {part:>5} {row['fs'] or '-':5} "
              f"{'-' if row['offset'] is None else row['offset']:>12} {'yes' if row['mounted'] else 'no'}"
              + (f"  guest LVs: {one_line(row['guest_lvs'])}" if row.get("guest_lvs") else "")
              + (f"  mounts: {_every_text(row)}" if row.get("filesystems") else "")
              + (f"  ({one_line(row['problem'])})" if row["problem"] else ""))
    return EXIT_OK


def _every_text(row):
    """guest_filesystems = all in `list`: "part1 ext4, lvm/vg/root ext4, ...; not mounted: partition 2 (...)"."""
    shown = ", ".join(os.path.relpath(f["path"], row["mount_path"]) + (" (an LV)" if f["fs"] == "lv" else f" {f['fs']}")
                      for f in row["filesystems"])
    left = f"; not mounted: {', '.join(row['not_mounted'])}" if row.get("not_mounted") else ""
    return one_line(shown + left)


def _spanning_vgs(guest_vgs):
    """A guest VG whose PVs lie on several disks of one guest is brought up from all of them
    (prepare): its rows' problem counts the PVs found on the guest's disks."""
    firsts = {}
    for row, guest_vg, wanted in guest_vgs:
        if guest_vg.pv_count < 2:
            continue
        first = firsts.setdefault(guest_vg.uuid, row)
        if first is not row and row.get("filesystems"):
            # guest_filesystems = all: the VG's LVs are mounted below the first of its disks
            row["filesystems"] = [f for f in row["filesystems"] if f["fs"] != "lv"]
        found = {other.this_pv for _row, other, _wanted in guest_vgs
                 if other.uuid == guest_vg.uuid and other.this_pv in guest_vg.pv_ids}
        where = f"{row['vg']}/{row['lv']} partition {row['partition']}"
        row["problem"] = guestlvm.plan_problem(guest_vg, where, wanted, max(1, len(found)))


def _status(runner):
    state = runner.system_state()
    by_rdev = {(s.major, s.minor): s for s in state.snapshots.values() if s.major is not None}
    loops = {}
    for device in state.loops:
        snapshot = by_rdev.get(device.backing_rdev())
        if snapshot:
            loops[device.name] = snapshot
    inner = {}  # LVM inside a guest: the device of a guest LV on one of our loops -> that loop
    for name in loops:
        for path in guestlvm.holder_paths(name):
            inner[os.path.realpath(path)] = name
    mounted, used_loops, used_snaps = [], set(), set()
    for target, source in state.mounts:
        loop_name = inner.get(os.path.realpath(source), source) if source else source
        snapshot = loops.get(loop_name)
        mounted.append({"mount_path": target, "device": source,
                        "snapshot": snapshot.key if snapshot else None,
                        "snapshot_use_percent": snapshot.snap_percent if snapshot else None,
                        "overflowed": bool(snapshot and snapshot.is_classic_snapshot and snapshot.invalid),
                        **_pool_fields(snapshot, state.pools)})
        used_loops.add(loop_name)
        if snapshot:
            used_snaps.add(snapshot.key)
    leftovers = [{"kind": "loop device", "name": name, "snapshot": s.key}
                 for name, s in loops.items() if name not in used_loops]
    leftovers += [{"kind": "snapshot", "name": key} for key in state.snapshots if key not in used_snaps]
    return {"mounted": mounted, "leftovers": leftovers}


def _pool_fields(snapshot, pools):
    """A thin snapshot's pool and why it is full ("" while it has room): a full pool fails the
    guest's writes and may fail reads of the snapshot, so a backup from it is unreliable."""
    pool = pools.get(snapshot.pool_key) if snapshot is not None and snapshot.pool_key else None
    return {"thin_pool": pool.key if pool else None, "thin_pool_full": pool.pool_full if pool else ""}


def cmd_status(runner, args, out):
    status = _status(runner)
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    for m in status["mounted"]:
        use = "" if m["snapshot_use_percent"] is None else f", snapshot {m['snapshot_use_percent']:.1f}% used"
        warn = "  OVERFLOWED: backup from it is unreliable" if m["overflowed"] else ""
        if m["thin_pool_full"]:
            warn += f"  THIN POOL {m['thin_pool']} FULL ({m['thin_pool_full']}): backup from it is unreliable"
        print(f"mounted   {m['mount_path']} ({m['device']} on {m['snapshot']}{use}){warn}")
    for item in status["leftovers"]:
        print(f"leftover  {item['kind']} {item['name']}" + (f" (on {item['snapshot']})" if item.get("snapshot") else ""))
    if not status["mounted"] and not status["leftovers"]:
        print("nothing mounted, nothing left over")
    return EXIT_OK


def cmd_check(runner, args, out):
    checks = []

    def report(ok, text):
        checks.append({"ok": bool(ok), "check": one_line(text)})
        if not getattr(args, "json", False):
            print(("ok      " if ok else "PROBLEM ") + one_line(text))

    for tool in REQUIRED_TOOLS:
        report(shutil.which(tool, path=commands.tool_path()) is not None, f"tool {tool}")
    report(os.path.exists("/dev/loop-control"), "loop devices (/dev/loop-control)")
    report(os.path.exists("/dev/mapper/control"), "device-mapper (/dev/mapper/control)")
    dm_snapshot = os.path.isdir("/sys/module/dm_snapshot") or \
        commands.run(["modprobe", "--dry-run", "dm-snapshot"], check=False).returncode == 0
    report(dm_snapshot, "kernel module dm-snapshot")
    try:
        import parted  # noqa: F401
        report(True, "pyparted")
    except ImportError:
        report(False, "pyparted (install python3-parted)")
    if guestlvm.host_scans_lvs():
        report(False, "the host's LVM scans LVs (lvm.conf devices/scan_lvs = 1): a guest's own VG on its disk "
                      "is seen, and may be auto-activated, by the host while the guest runs; set scan_lvs = 0 "
                      "(see README: LVM inside the guest)")
    kind, cfg = runner.host_kind(), runner.cfg
    missing = runner.quiescer.unavailable if kind in ("libvirt", "xl") else None
    why = {"proxmox": f"host = {cfg.host}" + (f", {cfg.pve_config_dir} exists" if cfg.host == "auto" else ""),
           "plain": "host = plain: no toolstack",
           "xl": f"host = {cfg.host}" + (", a Xen control domain with xl" if cfg.host == "auto" else "")
           }.get(kind, f"host = {cfg.host}: libvirt where it answers")
    report(not (missing and cfg.host in ("libvirt", "xl")),
           f"host kind {kind} ({why})" + (f"; {missing}" if missing else ""))
    guests = runner.discover()
    if runner.proxmox:
        report(bool(guests), f"{len(guests)} guest(s): Proxmox VE VMs (vm-<vmid>-disk-<n>"
                             + (", base-<vmid>-disk-<n>)" if cfg.pve_templates else ")"))
    else:
        report(bool(guests), f"{len(guests)} guest(s) with prefix {cfg.prefix!r}")
    for guest in guests:
        plan = runner.quiesce_plan(guest)
        disks = ", ".join(d.key for d in guest.disks)
        report("; fails" not in plan, f"guest {guest.name} ({disks}): quiesce {plan}")
    for name, error in runner.check_space(guests, concurrent=True).items():
        report(False, f"space for {name}: {error.message}")
    try:
        with RunLock(runner.cfg.lock_file, 0):
            report(True, f"lock {runner.cfg.lock_file} free")
    except DomuError as exc:
        report(False, str(exc))
    guests_left, foreign = runner.leftovers()
    report(not guests_left, "no leftovers" if not guests_left else
           f"leftovers of {', '.join(g.name for g in guests_left)} (domu-snapshot cleanup)")
    for target in foreign:
        report(False, f"{target} is mounted under the mount root but is not ours")
    code = EXIT_GUEST_FAILED if any(not c["ok"] for c in checks) else EXIT_OK
    if getattr(args, "json", False):
        _print_json("check", code, checks=checks)
    return code


def cmd_config(cfg, args):
    """The effective configuration and where each value came from (needs no root)."""
    values = effective_config(cfg)
    if getattr(args, "json", False):
        return _print_json("config", EXIT_OK, file=cfg.source_file, values=values)
    print(f"# configuration file: {cfg.source_file or '(none: every value is a default)'}")
    for section, entries in values.items():
        print(f"[{section}]")
        width = max((len(key) for key in entries), default=0)
        for key, entry in entries.items():
            value = entry["value"]
            text = ", ".join(value) if isinstance(value, list) else str(value).lower() \
                if isinstance(value, bool) else str(value)
            print(f"{key:<{width}} = {text:<24} # {entry['from']}")
        print()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
