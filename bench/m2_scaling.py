"""Measure 2: `mount --all` + `unmount --all` for 1, 10 and 30 guests.

Time per guest must stay flat (30 guests <= 1.2x the per-guest time of 1), and the queries a run
makes (`lvs`, `losetup --list`, `findmnt`) must not grow with the number of guests. The runs go
through the PATH wrappers (bench/wrappers.py), which count every command; the wrappers cost one
bash start per command in every run alike, so the per-guest times stay comparable.

All guests live in one VG (plus the other measures' LVs); a run selects the first N with
`--include` (exact names) and is still `mount --all`. Runs are interleaved: 1, 10, 1, 30, 1, ...
"""

from bench import wrappers
from bench.common import PREFIX, BenchError, refresh_dirty, run
from bench.report import Row, median

LAYOUT = "msdos-ext4-1m"


def guest_names(count):
    return [f"{PREFIX}g{i:03d}" for i in range(count)]


def schedule(sizes, reps, single_reps):
    """Run order: every size `reps` times, the smallest `single_reps` times, the smallest between
    the others (its per-guest time is the reference)."""
    sizes = sorted(set(sizes))
    smallest, others = sizes[0], sizes[1:]
    runs = []
    queue = [s for _ in range(reps) for s in others]
    singles = max(single_reps, reps)
    slots = len(queue) + 1
    for i in range(slots):
        if i < singles:
            runs.append(smallest)
        if i < len(queue):
            runs.append(queue[i])
    runs.extend([smallest] * max(0, singles - slots))
    return runs


def build_guests(gvg, count):
    specs = [dict(lv=name, layout=LAYOUT, seed="dsbench") for name in guest_names(count)
             if name not in gvg.guests]
    if specs:
        gvg.add_guests(specs)
    return [gvg.guests[name] for name in guest_names(count)]


def one_run(ctx, vg, guests):
    """mount --all + unmount --all of `guests`; returns a dict of times and counts."""
    for g in guests:
        refresh_dirty(g, rewrite=False)   # only if something cleared the flag (never expected)
    # the CLI's --include takes one glob per flag (the config file and the plugin split on commas)
    include = [arg for g in guests for arg in ("--include", g.lv)]
    mount_log, unmount_log = ctx.new_log(f"m2-{len(guests)}-mount"), ctx.new_log(f"m2-{len(guests)}-unmount")
    t_mount, proc = run(ctx.cli(vg, *include, "mount", "--all"), env=ctx.env(mount_log))
    mounted = [line for line in proc.stdout.splitlines() if line.startswith("OK")]
    t_unmount, proc2 = run(ctx.cli(vg, "unmount", "--all"), env=ctx.env(unmount_log))
    if len(mounted) != len(guests):
        raise BenchError(f"mount --all of {len(guests)} guests mounted {len(mounted)}: "
                         f"{(proc.stdout + proc.stderr)[-1500:]}")
    calls_m, calls_u = wrappers.read(mount_log), wrappers.read(unmount_log)
    return {
        "guests": len(guests), "mount_s": t_mount, "unmount_s": t_unmount,
        "per_guest_s": (t_mount + t_unmount) / len(guests),
        "queries_mount": wrappers.query_counts(calls_m), "queries_unmount": wrappers.query_counts(calls_u),
        "commands_mount": wrappers.counts(calls_m), "commands_unmount": wrappers.counts(calls_u),
        "seconds_by_command": wrappers.seconds_by_kind(calls_m + calls_u),
    }


def run_measure(ctx, opts, gvg):
    sizes = sorted(set(opts.scale))
    build_guests(gvg, max(sizes))
    order = schedule(sizes, opts.scale_reps, opts.single_reps)
    ctx.log(f"m2: {max(sizes)} guests in {gvg.vg}; runs of {order}")
    results = []
    for n in order:
        res = one_run(ctx, gvg.vg, [gvg.guests[name] for name in guest_names(n)])
        results.append(res)
        q = res["queries_mount"], res["queries_unmount"]
        ctx.log(f"m2: {n:2d} guests: mount {res['mount_s']:.1f} s, unmount {res['unmount_s']:.1f} s, "
                f"{res['per_guest_s']:.2f} s/guest; queries mount {q[0]}, unmount {q[1]}")
    left = [x for x in gvg.leftovers() if "dsnap" in x or "loop" in x or "mount" in x]
    if left:
        raise BenchError(f"m2 left behind: {left}")
    per = {n: median(r["per_guest_s"] for r in results if r["guests"] == n) for n in sizes}
    runs = {n: sum(1 for r in results if r["guests"] == n) for n in sizes}
    small, big = sizes[0], sizes[-1]
    rows = []
    for n in sizes[1:]:
        rows.append(Row("2", f"mount --all + unmount --all, time per guest: {n} guests vs {small}", "s/guest",
                        per[n], per[small], target="<= 1.2" if n == big else "",
                        note=f"medians of {runs[n]} and {runs[small]} runs (PATH wrappers on)").finish())

    def queries(n):
        first = next(r for r in results if r["guests"] == n)
        return {kind: first["queries_mount"][kind] + first["queries_unmount"][kind] for kind in wrappers.QUERY_KINDS}

    q_small, q_big = queries(small), queries(big)
    flat = all(q_big[k] == q_small[k] for k in wrappers.QUERY_KINDS)
    listing = ", ".join(f"{k} {q_small[k]}->{q_big[k]}" for k in wrappers.QUERY_KINDS)
    rows.append(Row("2", f"queries per mount+unmount run, {small} -> {big} guests", "calls",
                    sum(q_big.values()), sum(q_small.values()), target="== 1", ok=flat,
                    note=listing).finish())
    return rows, {"order": order, "runs": results, "per_guest_median": per}
