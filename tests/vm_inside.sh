#!/bin/bash
# Runs inside the throwaway VM (started by tests/vmbed.py) as root, on the host's root filesystem
# shared read-only. Brings the kernel and udev to what a hypervisor host has, runs the command
# stored in the run directory and writes its exit code there: the host trusts only that file.
#   usage: vm_inside.sh RUN_DIR REPO
set -u
run_dir=$1
repo=$2
exit_file=$run_dir/exit-code

fail_setup() {
    echo "vm: set-up failed: $*" >&2
    echo 125 > "$exit_file"
    exit 125
}

: > "$run_dir/started"   # the VM booted: the host retries a boot only when this is missing
cd "$repo" || fail_setup "cannot cd to $repo"

export LVM_SUPPRESS_FD_WARNINGS=1     # lvm warns about fds inherited from virtme's init
export DOMU_SNAPSHOT_IN_VM=1          # vm-marked tests refuse to run without it
export DOMU_VM_RUN_DIR=$run_dir       # the only writable place that the host sees afterwards
export PYTHONDONTWRITEBYTECODE=1      # the repository is read-only in here
export PYTHONUNBUFFERED=1             # live output on the host (stdout is no tty here)
export PATH=$repo/.venv/bin:/usr/sbin:/sbin:$PATH
export HOME=/root TMPDIR=/tmp
if [ -s "$run_dir/env" ]; then
    mapfile -d '' -t extra_env < "$run_dir/env"
    export "${extra_env[@]}"
fi
export PYTEST_ADDOPTS="-p no:cacheprovider ${PYTEST_ADDOPTS:-}"    # no .pytest_cache in the repo

# A first modprobe on a fresh machine has segfaulted once (the next run passed): retry once, and
# show the kernel's last words when it fails again.
load_module() {
    local mod=$1 err
    # loop may be built in; only a module that is neither loaded nor built in is an error
    modprobe "$mod" 2>/dev/null || [ -e "/sys/module/${mod//-/_}" ] && return 0
    sleep 1
    err=$(modprobe "$mod" 2>&1) || [ -e "/sys/module/${mod//-/_}" ] && return 0
    echo "vm: modprobe $mod failed twice: $err; the kernel's last lines:" >&2
    dmesg 2>&1 | tail -n 20 >&2
    fail_setup "modprobe $mod"
}
for mod in loop dm-mod dm-snapshot dm-thin-pool dm-flakey; do
    load_module "$mod"
done
[ -e /dev/mapper/control ] || fail_setup "no /dev/mapper/control after modprobe dm-mod"

# Python's trees from the images tests/vmbed.py built, mounted over the same paths: imports then
# hit the VM's page cache instead of a 9p round trip per stat and open. An image that does not
# mount leaves its tree read over 9p as before (one line says so); it never fails the run.
if [ -s "$run_dir/pyimages" ]; then
    mapfile -d '' -t pyimages < "$run_dir/pyimages"
    for ((i = 0; i + 1 < ${#pyimages[@]}; i += 2)); do
        if ! err=$(mount -t ext4 -o ro,loop "${pyimages[i]}" "${pyimages[i+1]}" 2>&1); then
            echo "vm: python image not used, ${pyimages[i+1]} read over 9p: ${err//$'\n'/ }" >&2
        fi
    done
fi

# udevd creates /dev/<vg>/<lv> links and answers LVM's udev cookies (dm-notify rules). virtme's
# init normally starts it; a second udevd would complete each cookie twice ("semop failed for
# cookie ... incorrect semaphore state"), so start one only if none answers.
if ! udevadm control --ping --timeout=5 >/dev/null 2>&1; then
    /lib/systemd/systemd-udevd --daemon >/dev/null 2>&1 || fail_setup "systemd-udevd --daemon"
fi
udevadm trigger --action=add --subsystem-match=block >/dev/null 2>&1
udevadm settle --timeout=60 || echo "vm: udevadm settle timed out" >&2

read -r uptime _ < /proc/uptime
echo "vm: ready after ${uptime}s: $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"

mapfile -d '' -t cmd < "$run_dir/command"
[ "${#cmd[@]}" -gt 0 ] || fail_setup "empty command in $run_dir/command"
"${cmd[@]}"
rc=$?
echo "$rc" > "$exit_file"
sync
exit "$rc"
