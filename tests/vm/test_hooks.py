"""Snapshot hooks around real snapshots (issue 16, "any other toolstack"): the before-hook runs
while no snapshot of the guest exists, the after-hook once all of them exist, a failing
before-hook fails only its guest (no snapshot made), and nothing is left. The hooks are real
programs (a small script) and see the system as it is at their moment."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vm

VG = "domutest"
MOUNT_ROOT = "/tmp/domu-hooks-mnt"


def write_hook(path, log):
    """A hook that records its arguments and which of our snapshots exist in VG at that moment."""
    # the snapshots active in the kernel (/sys/block/dm-*/dm/name): /dev/<vg> links come from udev, later
    path.write_text(
        f"#!{sys.executable} -I\nimport glob, json, os, sys\n"
        "names = [open(p).read().strip() for p in glob.glob('/sys/block/*/dm/name')]\n"
        f"snaps = sorted(n[len('{VG}-'):].replace('--', '-') for n in names if n.startswith('{VG}-'))\n"
        "snaps = [n for n in snaps if n.endswith('-dsnap')]\n"
        f"open({str(log)!r}, 'a').write(json.dumps([sys.argv[1:], snaps]) + '\\n')\n"
        "sys.exit(4 if sys.argv[1] == 'refuse' else 0)\n")
    os.chmod(path, 0o755)


def cli(config, *args):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--config", str(config), "--vg", VG,
            "--mount-root", MOUNT_ROOT, "--quiesce", "none", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def entries(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_hooks_run_around_the_snapshots_and_a_failing_before_hook_fails_only_its_guest(guest_vg, tmp_path):
    hook, log = tmp_path / "hook.py", tmp_path / "hooks.log"
    write_hook(hook, log)
    config = tmp_path / "domu-snapshot.conf"
    config.write_text(f"[domu-snapshot]\nbefore_snapshot_hook = {hook} before {{guest}} {{lvs}}\n"
                      f"after_snapshot_hook = {hook} after {{guest}} {{lvs}}\n"
                      f"[guest domu-gpt]\nbefore_snapshot_hook = {hook} refuse {{guest}}\n")
    try:
        proc = cli(config, "mount", "domu-modern", "domu-gpt")
        assert proc.returncode == 1, proc.stdout + proc.stderr  # one guest failed
        text = proc.stdout + proc.stderr
        assert "domu-gpt: before-snapshot hook failed" in text and "exit" in text
        assert os.path.ismount(os.path.join(MOUNT_ROOT, VG, "domu-modern"))
        assert not os.path.exists(f"/dev/{VG}/domu-gpt-dsnap")
        by_guest = {}
        for argv, snapshots in entries(log):
            own = [s for s in snapshots if s == argv[1] + "-dsnap"]  # the other guest may be mounted already
            by_guest.setdefault(argv[1], []).append([argv[0], argv[2:], own])
        assert by_guest == {
            "domu-modern": [["before", [f"{VG}/domu-modern"], []],
                            ["after", [f"{VG}/domu-modern"], ["domu-modern-dsnap"]]],
            # the after-hook runs once the before-hook was started, even when it failed
            "domu-gpt": [["refuse", [], []], ["after", [f"{VG}/domu-gpt"], []]],
        }
    finally:
        down = cli(config, "unmount", "--all")
    assert down.returncode == 0, down.stdout + down.stderr
    assert guest_vg.leftovers() == []
    assert not os.path.exists(os.path.join(MOUNT_ROOT, VG, "domu-modern"))
