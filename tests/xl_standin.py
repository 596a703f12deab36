"""A stand-in for Xen's `xl` (Xen cannot run in this test bed), for tests only.

What it prints follows Xen's own source, not our reading of our code:
- `xl list -l [NAME]`: tools/xl/xl_info.c list_domains_details() prints a JSON array with one
  object per domain, {"domid": N, "config": <libxl_domain_config as JSON>} (printf_info_one_json;
  domid null for a domain that is not running); the config's field names are libxl's IDL
  (tools/libs/light/libxl_types.idl): "c_info" {"type", "name", "uuid"}, "b_info", "disks"
  [{"backend_domid", "pdev_path", "vdev", "backend", "format", "readwrite", "is_cdrom"}], "nics";
  enumerations as their lower-case names ("phy", "raw", "pv").
- `xl list NAME`: the header "Name ID Mem VCPUs State Time(s)" and one row; State is the six
  letters r b p s c d, "-" where a flag is off (xl_info.c list_domains()). A domain that does not
  run: "xl: error: ..."-style failure (exit 1), as libxl_domain_info fails for it.
- `xl pause NAME`, `xl unpause NAME`, `xl sysrq NAME s`: silent, exit 0.

The domains live in a JSON state file (the argument the wrapper script passes): {"domains":
[{"name", "domid", "uuid", "disks": [path, ...], "paused": bool}], "calls": [[argv, snapshot
names active in /sys/block]], "fail": {"pause": "message"}, "hang": ["pause"], "vg": "..."}. Every call
is recorded with the snapshots (LVs ending in -dsnap) that exist at that moment, so a test can
check what happened in which order.
"""

import json
import os
import sys
import time


def _load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _save(path, state):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    os.replace(tmp, path)


def _config(domain):
    return {
        "c_info": {"type": "pv", "name": domain["name"], "uuid": domain["uuid"], "run_hotplug_scripts": "True"},
        "b_info": {"max_vcpus": 1, "max_memkb": 524288, "target_memkb": 524288, "type.pv": {"bootloader": "pygrub"}},
        "disks": [{"backend_domid": 0, "pdev_path": path, "vdev": f"xvd{chr(ord('a') + i)}", "backend": "phy",
                   "format": "raw", "readwrite": 1, "is_cdrom": 0} for i, path in enumerate(domain["disks"])]
                 + [{"backend_domid": 0, "vdev": "xvdz", "backend": "phy", "format": "empty", "is_cdrom": 1}],
        "nics": [{"backend_domid": 0, "devid": 0, "mac": "00:16:3e:00:00:01", "bridge": "xenbr0"}],
        "on_reboot": "restart",
    }


def _snapshots(state):
    """Our snapshot LVs of the state's VG active in the kernel now (from /sys: /dev/<vg> links
    come from udev, later)."""
    vg = state.get("vg")
    if not vg:
        return []
    names = []
    for block in os.listdir("/sys/block"):
        try:
            with open(f"/sys/block/{block}/dm/name", encoding="utf-8") as handle:
                names.append(handle.read().strip())
        except OSError:
            continue
    prefix = vg.replace("-", "--") + "-"
    lvs = [n[len(prefix):].replace("--", "-") for n in names if n.startswith(prefix)]
    return sorted(lv for lv in lvs if lv.endswith("-dsnap"))


def main(state_path, argv):
    state = _load(state_path)
    state.setdefault("calls", []).append([argv, _snapshots(state)])
    _save(state_path, state)
    command = argv[0] if argv else ""
    if command in state.get("hang", []):
        time.sleep(3600)
    if command in state.get("fail", {}):
        print(f"libxl: error: {state['fail'][command]}", file=sys.stderr)
        return 1
    domains = {d["name"]: d for d in state["domains"]}
    if command == "list" and argv[1:2] == ["-l"]:
        chosen = [domains[argv[2]]] if len(argv) > 2 and argv[2] in domains else list(domains.values())
        if len(argv) > 2 and argv[2] not in domains:
            print(f"{argv[2]} is an invalid domain identifier (rc=-6)", file=sys.stderr)
            return 1
        print(json.dumps([{"domid": d["domid"], "config": _config(d)} for d in chosen], indent=4))
        return 0
    if command == "list":
        domain = domains.get(argv[1]) if len(argv) > 1 else None
        if domain is None or domain["domid"] is None:
            print(f"libxl: error: libxl_domain.c: domain {argv[1:]} is not running", file=sys.stderr)
            return 1
        flags = ("r" if not domain["paused"] else "-") + "-" + ("p" if domain["paused"] else "-") + "---"
        print("Name                                        ID   Mem VCPUs\tState\tTime(s)")
        print(f"{domain['name']:<40}{domain['domid']:>6}   512     1     {flags}       4.2")
        return 0
    if command in ("pause", "unpause", "sysrq"):
        domain = domains.get(argv[1]) if len(argv) > 1 else None
        if domain is None or domain["domid"] is None:
            print(f"{argv[1:2]} is an invalid domain identifier (rc=-6)", file=sys.stderr)
            return 1
        if command != "sysrq":
            domain["paused"] = command == "pause"
            state = _load(state_path)
            for d in state["domains"]:
                if d["name"] == domain["name"]:
                    d["paused"] = domain["paused"]
            _save(state_path, state)
        return 0
    print(f"xl stand-in: {argv} is not implemented", file=sys.stderr)
    return 2


def install(directory, state, repo):
    """Write the state file and an `xl` script running this stand-in; returns (xl path, state path)."""
    state_path = os.path.join(directory, "xl-state.json")
    _save(state_path, state)
    xl = os.path.join(directory, "xl")
    with open(xl, "w", encoding="utf-8") as handle:
        handle.write(f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {repo!r})\n"
                     f"from tests.xl_standin import main\nsys.exit(main({state_path!r}, sys.argv[1:]))\n")
    os.chmod(xl, 0o755)
    return xl, state_path


def state_of(state_path):
    return _load(state_path)
