"""`make demo-proxmox`: the main job on a Proxmox-VE-shaped host, inside the throwaway VM.

Builds what a Proxmox VE host with the default `local-lvm` storage has (tests/pvehost.py): VG
`pve` with thin pool `data`, VM 100 with two disks and a running QEMU guest agent (the real
qemu-ga), VM 101 with one disk and no agent (a real QEMU process answering on its QMP socket),
and the volumes that hold no guest filesystem (saved RAM, cloud-init). Then runs what a backup
job runs: `check`, `list`, `mount --all` (VM 100 frozen through its agent, VM 101 paused through
QMP, for the moment of their snapshots), shows a few files, `unmount --all`, and shows that
nothing is left.
"""

import os
import subprocess
import sys

from tests import pvehost

VG = "pve"


def show(title, argv):
    print(f"\n$ {' '.join(argv)}    # {title}", flush=True)
    return subprocess.run(argv, stdout=sys.stdout, stderr=sys.stdout).returncode


def main():
    print(f"Building a Proxmox-VE-shaped host: VG '{VG}', thin pool data, VMs 100 (two disks, guest agent) "
          f"and 101 (one disk, QMP only)...", flush=True)
    failures = 0
    with pvehost.proxmox_host(VG) as host:
        def domu_snapshot(*args):
            return [sys.executable, "-m", "domu_snapshot.cli", "--config", host["config"], *args]
        show("the host's LVs (as `lvs` shows them on Proxmox VE)", ["lvs", VG])
        show("the configuration (Proxmox VE detected by its VM config directory)", ["cat", host["config"]])
        show("what the tool detects", domu_snapshot("check"))
        show("what would be backed up: each VM's disks under its VMID", domu_snapshot("list"))
        failures += show("Client Run Before Job: freeze/pause each VM for its snapshots, replay journals, "
                         "mount read-only", domu_snapshot("mount", "--all")) != 0
        show("our snapshots: dsnap-<lv>, which Proxmox does not take for a VM's disk",
             ["lvs", "-o", "lv_name,origin,pool_lv,lv_tags", VG])
        for lv in ("vm-100-disk-0", "vm-100-disk-1", "vm-101-disk-0"):
            show(f"a few of {lv}'s files", ["ls", "-la", os.path.join(host["mount_root"], VG, lv, "etc")])
        show("qemu-ga's fsfreeze hook: no snapshot at the freeze, both at the thaw", ["cat", host["hooklog"]])
        failures += show("Client Run After Job: unmount, detach, remove snapshots",
                         domu_snapshot("unmount", "--all")) != 0
        show("nothing left: no snapshot LV", ["lvs", VG])
        failures += show("and the tool agrees", domu_snapshot("status")) != 0
        # the host's own volumes (state, cloud-init, qemu-ga's test filesystem) stay; none of ours may
        ours = [lv["lv_name"] for lv in host["gvg"].lvs() if "domu_snapshot" in lv["lv_tags"]]
        if ours:
            print(f"LEFT BEHIND: {ours}")
            failures += 1
    print("\ndemo " + ("FAILED" if failures else "finished: every VM quiesced, mounted, read and torn down"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
