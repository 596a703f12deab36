"""`make demo`: the main job on three sample guests, inside the throwaway VM.

Builds a VG with three guest disks as real hosts have them (an old Xen
domU with ext3 at sector 63, a modern msdos disk, a GPT disk), each
captured with a journal that needs replay, then runs what a backup job
runs: `domu-snapshot mount --all`, shows a few files of each guest,
`domu-snapshot unmount --all`, and shows that nothing is left.
"""

import os
import subprocess
import sys

from tests import guestdisks

VG = "demovg"
MOUNT_ROOT = "/var/lib/domu-snapshot/mnt"
SAMPLES = [("domu-oldxen", "msdos-ext3-63"), ("domu-web01", "msdos-ext4-1m"), ("domu-db01", "gpt-ext4")]


def show(title, argv):
    print(f"\n$ {' '.join(argv)}    # {title}", flush=True)
    proc = subprocess.run(argv, stdout=sys.stdout, stderr=sys.stdout)
    return proc.returncode


def domu_snapshot(*args):
    return [sys.executable, "-m", "domu_snapshot.cli", "--no-syslog", "--vg", VG, "--mount-root", MOUNT_ROOT,
            "--quiesce", "none", *args]


def main():
    print(f"Building a VG '{VG}' with three guest LVs (journals left dirty, as on a running host)...", flush=True)
    vg = guestdisks.GuestVG(VG, size_mib=512).create()
    failures = 0
    try:
        for name, layout in SAMPLES:
            vg.add_guest(name, layout)
        show("the host's LVs", ["lvs", VG])
        show("what would be backed up", domu_snapshot("list"))
        failures += show("Client Run Before Job: snapshot, replay journals, mount read-only",
                         domu_snapshot("mount", "--all")) != 0
        for name, _layout in SAMPLES:
            root = os.path.join(MOUNT_ROOT, VG, name)
            show(f"a few of {name}'s files", ["ls", "-la", os.path.join(root, "etc")])
        show("what a file daemon sees", domu_snapshot("status"))
        failures += show("Client Run After Job: unmount, detach, check overflow, remove snapshots",
                         domu_snapshot("unmount", "--all")) != 0
        show("nothing left: no snapshot LV", ["lvs", VG])
        show("nothing left: no loop device over a snapshot", ["losetup", "--list"])
        show("nothing left: no mount", ["findmnt", "-R", MOUNT_ROOT])
        failures += show("and the tool agrees", domu_snapshot("status")) != 0
        left = vg.leftovers()
        if left:
            print(f"LEFT BEHIND: {left}")
            failures += 1
    finally:
        vg.destroy()
    print("\ndemo " + ("FAILED" if failures else "finished: every guest mounted, read and torn down"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
