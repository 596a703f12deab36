"""A Xen host run with xl, on real LVM (issue 16): the two LVs of one xl domain are one guest,
snapshotted while the domain is paused (`xl pause` before the first snapshot, `xl unpause`
after the last), its configuration is saved next to its mount, and nothing is left afterwards;
then the same in plugin mode.

Xen cannot run in this test bed: `xl` is the stand-in of tests/xl_standin.py (its output follows
Xen's source, see there); LVM, the snapshots, loop devices, e2fsck and the mounts are real."""

import json
import os
import subprocess
import sys

import pytest

from tests import xl_standin

pytestmark = pytest.mark.vm

VG = "domutest"
MOUNT_ROOT = "/tmp/domu-xl-mnt"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cli(config, *args):
    argv = [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--config", str(config), "--vg", VG,
            "--mount-root", MOUNT_ROOT, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=900)


def test_an_xl_domain_with_two_disks_is_paused_for_its_snapshots_and_saved_with_its_config(
        guest_vg, make_guest, tmp_path):
    make_guest("msdos-ext4-1m", name="domu-mail-root")
    make_guest("whole-ext4", name="domu-mail-data", size_mib=16)
    domains = [{"name": "mail", "domid": 7, "uuid": "9d3a7c10-0000-4000-8000-000000000007", "paused": False,
                "disks": [f"/dev/{VG}/domu-mail-root", f"/dev/mapper/{VG}-domu--mail--data"]}]
    xl, state_path = xl_standin.install(str(tmp_path), {"domains": domains, "vg": VG}, REPO)
    config = tmp_path / "domu-snapshot.conf"
    # a window long enough for two snapshots in the emulated VM (a shorter one unpauses early, by design)
    config.write_text(f"[domu-snapshot]\nhost = xl\nxl_command = {xl}\ninclude = domu-mail-*\nquiesce_timeout = 600\n"
                      "[guest mail]\nquiesce = suspend\n")
    try:
        check = cli(config, "check")
        assert "ok      host kind xl (host = xl)" in check.stdout, check.stdout + check.stderr
        assert f"guest mail ({VG}/domu-mail-root, {VG}/domu-mail-data): quiesce suspend through xl domain mail" \
            in check.stdout
        listed = cli(config, "list").stdout.splitlines()
        assert listed[0].split()[:3] == ["GUEST", "DISK", "VG"], listed
        assert sorted(line.split()[:3] for line in listed[1:]) == [
            ["mail", "domu-mail-data", VG], ["mail", "domu-mail-root", VG]]
        proc = cli(config, "mount", "mail")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "longer than" not in proc.stdout + proc.stderr
        calls = xl_standin.state_of(state_path)["calls"]
        pause = next(snaps for argv, snaps in calls if argv == ["pause", "mail"])
        unpause = next(snaps for argv, snaps in calls if argv == ["unpause", "mail"])
        assert pause == []  # paused before the first snapshot
        assert unpause == ["domu-mail-data-dsnap", "domu-mail-root-dsnap"], proc.stderr  # unpaused after the last
        assert [argv[0] for argv, _ in calls].count("pause") == 1
        assert xl_standin.state_of(state_path)["domains"][0]["paused"] is False
        for lv in ("domu-mail-root", "domu-mail-data"):
            assert os.path.ismount(os.path.join(MOUNT_ROOT, VG, lv))
        saved = os.path.join(MOUNT_ROOT, VG, "domu-mail-root.xl.json")
        entry = json.loads(open(saved, encoding="utf-8").read())
        assert entry["config"]["c_info"]["name"] == "mail"
        assert [d.get("pdev_path") for d in entry["config"]["disks"] if not d["is_cdrom"]] == domains[0]["disks"]
        assert oct(os.stat(saved).st_mode & 0o777) == "0o600"
    finally:
        down = cli(config, "unmount", "--all")
    assert down.returncode == 0, down.stdout + down.stderr
    assert guest_vg.leftovers() == []
    assert not os.path.exists(os.path.join(MOUNT_ROOT, VG, "domu-mail-root.xl.json"))

    # Plugin mode does the same (the stand-in file daemon, the shipped Plugin string): one pause
    # around both snapshots, both disks and the domain's configuration in the job, nothing left.
    from tests import fd_harness
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), config=str(config), vg=VG, mount_root=MOUNT_ROOT)
    result = fd_harness.FileDaemon(definition, **fd_harness.example_fileset_options()).backup()
    assert result.status == "T", result.job.messages
    calls = xl_standin.state_of(state_path)["calls"]
    assert [argv[0] for argv, _ in calls].count("pause") == 2
    assert [snaps for argv, snaps in calls if argv == ["unpause", "mail"]][-1] == \
        ["domu-mail-data-dsnap", "domu-mail-root-dsnap"]
    assert xl_standin.state_of(state_path)["domains"][0]["paused"] is False
    names = {r.fname for r in result.records}
    root = os.path.join(MOUNT_ROOT, VG)
    assert f"{root}/domu-mail-root.xl.json" in names
    for lv in ("domu-mail-root", "domu-mail-data"):
        assert any(n.startswith(f"{root}/{lv}/") for n in names), lv
    assert guest_vg.leftovers() == []
