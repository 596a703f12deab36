"""Mounting the guest filesystem read-only, and finding our mounts (findmnt)."""

import json
import os

from . import commands

# A guest's filesystem is untrusted: no setuid, no device nodes, no programs.
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"


def mount(device, target, fstype, options=MOUNT_OPTIONS):
    commands.run(["mount", "-t", fstype, "-o", options, device, target], changes_system=True)


def unmount(target, retries=5):
    commands.retry_busy(lambda: commands.run(["umount", target], changes_system=True), attempts=retries)


def under(root):
    """Mounts at or below `root` as (target, source), deepest first (one findmnt call)."""
    proc = commands.run(["findmnt", "--list", "--json", "--output", "TARGET,SOURCE"], ok_codes=(0, 1))
    if not proc.stdout.strip():
        return []
    root = os.path.normpath(root)
    found = []
    for row in json.loads(proc.stdout).get("filesystems", []):
        target = row.get("target") or ""
        if target == root or target.startswith(root + os.sep):
            found.append((target, row.get("source") or ""))
    found.sort(key=lambda item: item[0].count(os.sep), reverse=True)
    return found


def make_dirs(path, root):
    """Create `path` and its parents below `root`, each 0700 (guest data is not for other users)."""
    path = os.path.normpath(path)
    root = os.path.normpath(root)
    chain = []
    current = path
    while current != root and current != os.path.dirname(current):
        chain.append(current)
        current = os.path.dirname(current)
    os.makedirs(root, mode=0o700, exist_ok=True)
    for directory in reversed(chain):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        if os.path.islink(directory) or not os.path.isdir(directory):
            raise OSError(f"{directory} exists and is not a directory")


def remove_empty_dirs(path, root):
    """rmdir `path` and its empty parents up to (not including) `root`. Never recursive."""
    path = os.path.normpath(path)
    root = os.path.normpath(root)
    while path != root and path.startswith(root + os.sep):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:
            return  # not empty or still a mount point: leave it
        path = os.path.dirname(path)
