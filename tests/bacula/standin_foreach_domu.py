#!/usr/bin/env python3
"""Stand-in for `foreach-domu` in host tests of the Bacula harness (no LVM on the host).

Same command line as the real helper (``[--config FILE] mount|unmount``) and the same exit status
contract (0 all guests fine, 1 some guest failed while the others stay mounted). Instead of
snapshots it works on guest directories that already exist below ``mount_root`` (``<vg>/<lv>``):

- ``mount``: for each guest listed in ``[standin] broken`` prints an error naming it on stderr and
  moves its directory out of the mount root (a guest that could not be mounted is not there), then
  exits 1; prints "mounted <vg>/<lv>" for the others. Optional ``[standin] sleep`` seconds.
- ``unmount``: moves broken guests back; exits 1 if ``[standin] fail_unmount = yes``.

Every call is appended to the log, so tests can see which scripts Bacula ran, and when.
"""

import argparse
import configparser
import os
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(prog="foreach-domu (stand-in)")
    ap.add_argument("--config", default="/etc/domu-snapshot.conf")
    ap.add_argument("action", choices=("mount", "unmount"))
    args = ap.parse_args(argv)
    cp = configparser.ConfigParser(interpolation=None)
    cp.read(args.config)
    root = cp.get("domu-snapshot", "mount_root")
    log = cp.get("standin", "log")
    broken = cp.get("standin", "broken", fallback="").split()
    parking = cp.get("standin", "parking")
    sleep = cp.getfloat("standin", "sleep", fallback=0.0)
    with open(log, "a") as f:
        f.write("%s %.3f\n" % (args.action, time.time()))
    status = 0
    if args.action == "mount":
        for vg in sorted(os.listdir(root)):
            for lv in sorted(os.listdir(os.path.join(root, vg))):
                name = "%s/%s" % (vg, lv)
                if lv in broken:
                    os.makedirs(os.path.join(parking, vg), exist_ok=True)
                    os.rename(os.path.join(root, vg, lv), os.path.join(parking, vg, lv))
                    print("foreach-domu: guest %s: mount failed: no ext2/3/4 filesystem found "
                          "(stand-in)" % name, file=sys.stderr)
                    status = 1
                else:
                    print("mounted %s" % name)
        if sleep:
            time.sleep(sleep)
    else:
        if os.path.isdir(parking):
            for vg in os.listdir(parking):
                for lv in os.listdir(os.path.join(parking, vg)):
                    os.rename(os.path.join(parking, vg, lv), os.path.join(root, vg, lv))
        print("unmounted all")
        if cp.getboolean("standin", "fail_unmount", fallback=False):
            print("foreach-domu: guest vg0/domu-a: teardown failed (stand-in)", file=sys.stderr)
            status = 1
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
