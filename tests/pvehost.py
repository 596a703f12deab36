"""A Proxmox-VE-shaped host in the VM test bed (issue 16), shared by tests/vm/test_proxmox.py and
`make demo-proxmox` (tests/demo_proxmox.py). Runs as root inside the VM only.

`proxmox_host(vg)` builds, on real LVM-thin: VG `vg` with thin pool `data`, VM 100 with two
disks and VM 101 with one, plus VM 100's saved-RAM and cloud-init volumes (which the tool must
leave out); a VM config directory (100.conf `agent: 1`, 101.conf without an agent); the real
qemu-ga on <run dir>/100.qga, in a mount namespace of its own whose only block-device filesystem
is one small test ext4 (qemu-ga freezes every such filesystem it sees: never the test bed's own),
with an fsfreeze hook that logs which of our snapshots exist at the freeze and at the thaw; and
a real `qemu-system-x86_64 -machine none` (no disk) whose QMP socket is <run dir>/101.qmp. The
configuration file it writes sets `[guest vm-101] quiesce = suspend` (no agent: pause it).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from tests import guestdisks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOOK = """#!/bin/sh
# qemu-ga's fsfreeze hook: which of our snapshots exist at the freeze and at the thaw
PATH=/usr/sbin:/usr/bin:/sbin:/bin
{ echo "$1"; lvs --noheadings -o lv_name %s | tr -d ' ' | grep '^dsnap-' ; } >> %s 2>/dev/null
exit 0
"""


def block_mounts(mountinfo):
    """Mount points whose device is a block device (major != 0: what qemu-ga freezes)."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        major = int(fields[2].split(":")[0])
        if major != 0:
            found.append(fields[4].replace("\\040", " "))
    return found


def wait_for(predicate, what, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _start_agent(work, rundir, fsdir, hook):
    """qemu-ga in a private mount namespace where every block-device mount but `fsdir` is gone."""
    with open("/proc/self/mountinfo") as f:
        hide = [m for m in block_mounts(f.read()) if m != fsdir]
    hide.sort(key=len, reverse=True)
    qga_sock = os.path.join(rundir, "100.qga")
    agent = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
         'for m in "$@"; do case "$m" in --) break;; esac; umount -l "$m" 2>/dev/null; shift; done; shift; '
         'exec "$@"', "sh", *hide, "--",
         "qemu-ga", "--method=unix-listen", f"--path={qga_sock}", f"--pidfile={rundir}/qga.pid",
         f"--statedir={rundir}", f"--fsfreeze-hook={hook}", f"--logfile={work}/qga.log"],
        stdin=subprocess.DEVNULL)
    return agent, qga_sock


@contextlib.contextmanager
def proxmox_host(vg):
    """The host described above; yields dict(work, config, rundir, fsdir, gvg, hooklog, qga, qmp,
    mount_root). Everything is removed again afterwards (after a `domu-snapshot cleanup`)."""
    work = tempfile.mkdtemp(prefix="pve", dir="/tmp")   # short: unix socket paths
    confdir, rundir, fsdir = (os.path.join(work, d) for d in ("qemu-server", "run", "fs"))
    for d in (confdir, rundir, fsdir):
        os.mkdir(d)
    gvg = guestdisks.GuestVG(vg, size_mib=384).create()
    procs = []
    try:
        gvg.add_thin_pool("data", 192)
        gvg.add_guests([dict(lv="vm-100-disk-0", layout="msdos-ext4-1m", pool="data", seed="pve"),
                        dict(lv="vm-100-disk-1", layout="msdos-ext4-1m", pool="data", seed="pve"),
                        dict(lv="vm-101-disk-0", layout="msdos-ext4-1m", pool="data", seed="pve")])
        guestdisks.run(["lvcreate", "-q", "-y", "-n", "vm-100-state-suspend-2026-12-03", "-V", "8M",
                        "--thinpool", "data", vg])
        guestdisks.run(["lvcreate", "-q", "-y", "-n", "vm-100-cloudinit", "-L", "4M", vg])
        # the filesystem qemu-ga may freeze: the only block-device mount in its namespace
        guestdisks.run(["lvcreate", "-q", "-y", "-n", "qgafs", "-L", "8M", vg])
        guestdisks.run(["mkfs.ext4", "-q", f"/dev/{vg}/qgafs"])
        guestdisks.run(["mount", f"/dev/{vg}/qgafs", fsdir])
        with open(os.path.join(confdir, "100.conf"), "w") as f:
            f.write("agent: 1\nscsi0: local-lvm:vm-100-disk-0,size=48M\nscsi1: local-lvm:vm-100-disk-1\n"
                    "vmstate: local-lvm:vm-100-state-suspend-2026-12-03\nide2: local-lvm:vm-100-cloudinit\n")
        with open(os.path.join(confdir, "101.conf"), "w") as f:
            f.write("memory: 64\nscsi0: local-lvm:vm-101-disk-0\n")
        config = os.path.join(work, "domu-snapshot.conf")
        with open(config, "w") as f:
            f.write(f"[domu-snapshot]\nvg = {vg}\nmount_root = {work}/mnt\npve_config_dir = {confdir}\n"
                    f"pve_run_dir = {rundir}\nquiesce_timeout = 60\nsyslog = no\n"
                    f"[guest vm-101]\nquiesce = suspend\n")
        hooklog = os.path.join(work, "hook.log")
        hook = os.path.join(work, "hook.sh")
        with open(hook, "w") as f:
            f.write(HOOK % (vg, hooklog))
        os.chmod(hook, 0o755)
        agent, qga_sock = _start_agent(work, rundir, fsdir, hook)
        procs.append(agent)
        wait_for(lambda: os.path.exists(qga_sock), "qemu-ga's socket")
        # qemu-ga exec'd in the namespace: the only block-device filesystem it sees is ours
        with open(f"/proc/{agent.pid}/mountinfo") as f:
            seen = block_mounts(f.read())
        assert seen == [fsdir], f"qemu-ga would freeze {seen}: refusing"
        qemu = subprocess.Popen(["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none",
                                 "-qmp", f"unix:{rundir}/101.qmp,server=on,wait=off"], stdin=subprocess.DEVNULL)
        procs.append(qemu)
        wait_for(lambda: os.path.exists(f"{rundir}/101.qmp"), "QEMU's QMP socket")
        yield dict(work=work, config=config, rundir=rundir, fsdir=fsdir, gvg=gvg, hooklog=hooklog,
                   qga=qga_sock, qmp=f"{rundir}/101.qmp", mount_root=f"{work}/mnt")
    finally:
        subprocess.run([sys.executable, "-m", "domu_snapshot.cli", "--config", os.path.join(work, "domu-snapshot.conf"),
                        "cleanup"], capture_output=True, timeout=600, cwd=REPO)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        subprocess.run(["umount", fsdir], capture_output=True)
        gvg.destroy()
        shutil.rmtree(work, ignore_errors=True)   # /tmp: our own files only (nothing mounted there now)
