"""The bench's own arithmetic, table and log parsing (bench/report.py, bench/wrappers.py, the pure
parts of the measures). No timing is asserted anywhere: these check the code that turns
measurements into the table."""

import json
import os
import re
import subprocess

import pytest

from bench import report, wrappers
from bench.m2_scaling import guest_names, schedule
from bench.m3_walk import bare_walk, build_tree, cat_repeat, names_walk, plan_tree


def test_median_and_ratio():
    assert report.median([3, 1, 2]) == 2
    assert report.median([4, 1, None, 2, 3]) == 2.5
    assert report.median([]) is None
    assert report.ratio(3, 2) == 1.5
    assert report.ratio(None, 2) is None and report.ratio(1, 0) is None


@pytest.mark.parametrize("value, target, expected", [
    (1.15, "<= 1.15", True), (1.16, "<= 1.15", False), (0.9, ">= 0.9", True), (0.89, ">= 0.9", False),
    (1.0, "== 1", True), (None, "<= 1", None), (2.0, "", None),
])
def test_targets(value, target, expected):
    assert report.meets(value, target) is expected


def test_unknown_target_is_an_error():
    with pytest.raises(ValueError):
        report.meets(1.0, "about 1")


def test_interleaving_alternates_the_order():
    assert report.interleaved(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]
    order = report.interleaved(["tool", "bare"], 4)
    assert order.count("tool") == order.count("bare") == 4


def test_row_ratio_and_verdict():
    row = report.Row("1", "x", "s", ours=2.3, base=2.0, target="<= 1.15").finish()
    assert row.ratio == pytest.approx(1.15) and row.ok is True and row.verdict() == "ok"
    row = report.Row("3", "y", "entries/s", ours=80, base=100, target=">= 0.9").finish()
    assert row.ratio == pytest.approx(0.8) and row.verdict() == "MISSED"
    assert report.Row("4", "z", "s", ours=1, base=2).finish().verdict() == "-"
    assert report.Row("5", "w", "ms", target="<= 2").finish().verdict() == "n/a"
    explicit = report.Row("2", "q", "calls", ours=6, base=6, target="== 1", ok=False).finish()
    assert explicit.ok is False     # an explicit verdict is kept


def test_tables_and_json_round_trip():
    rows = [report.Row("1", "prepare | teardown", "s", 2.5, 2.0, target="<= 1.15", note="3 runs").finish(),
            report.Row("5", "freeze window", "ms", note="hook: not found").finish()]
    text = report.text_table(rows)
    assert "1.25x" in text and "MISSED" in text and "hook: not found" in text
    md = report.markdown_table(rows)
    assert md.count("\n") == 3 and "prepare \\| teardown" in md
    doc = json.loads(report.dumps(report.document(rows, {"notes": ["n1"]}, {"date": "today"})))
    again = report.rows_from_json(doc["rows"])
    assert again == rows
    page = report.results_markdown(doc)
    assert "Missed targets: 1 prepare | teardown (1.25x, target <= 1.15)" in page and "- n1" in page


def test_number_format():
    assert [report.fmt(v) for v in (None, 0, 0.01234, 1.234, 12.34, 123.4, 12345)] == \
        ["-", "0", "0.012", "1.23", "12.3", "123", "12,345"]


LOG = "\n".join([
    "100.0\t101.5\t0\tlvcreate\t--snapshot --name domu-a-dsnap --addtag domu_snapshot --extents 2 vg/domu-a",
    "101.6\t101.7\t0\tlosetup\t--find --show --offset 1048576 --sizelimit 5 /dev/vg/domu-a-dsnap",
    "102.0\t102.1\t0\tlosetup\t--list --json --output NAME,BACK-FILE,OFFSET,SIZELIMIT",
    "102.1\t102.2\t0\tlosetup\t--detach /dev/loop3",
    "102.2\t102.4\t0\tlvs\t--reportformat json vg",
    "102.4\t102.5\t0\tudevadm\tsettle --timeout=10",
    "garbage line",
    "103.0\t104.0\t0\tlvremove\t--yes vg/domu-a-dsnap",
    "104.0\t105.0\t0\tlvcreate\t--snapshot --name domu-a-dsnap --addtag domu_snapshot --extents 2 vg/domu-a",
    "105.0\t105.5\t5\tlvremove\t--yes vg/domu-a-dsnap",
    "106.0\t107.0\t0\tlvremove\t--yes vg/domu-a-dsnap",
])


def test_wrapper_log_parsing():
    calls = wrappers.parse(LOG)
    assert len(calls) == 10
    counts = wrappers.counts(calls)
    assert counts["losetup --list"] == 1 and counts["losetup --find"] == 1 and counts["losetup --detach"] == 1
    assert counts["udevadm settle"] == 1
    assert wrappers.query_counts(calls) == {"lvs": 1, "losetup --list": 1, "findmnt": 0}
    assert wrappers.seconds_by_kind(calls)["lvcreate"] == pytest.approx(2.5)


def test_snapshot_lifetimes_count_each_life_and_skip_failures():
    lives = wrappers.snapshot_lifetimes(wrappers.parse(LOG))
    assert lives == {"vg/domu-a-dsnap": pytest.approx(2.5), "vg/domu-a-dsnap#2": pytest.approx(2.0)}


def test_wrapper_scripts_log_and_pass_the_exit_code(tmp_path):
    found = wrappers.install(str(tmp_path / "wrap"), tools=("true", "false"))
    assert set(found) == {"true", "false"}
    log = tmp_path / "calls.log"
    env = dict(os.environ, PATH=f"{tmp_path / 'wrap'}:{os.environ['PATH']}", **{wrappers.LOG_ENV: str(log)})
    assert subprocess.run(["true", "a b", "c"], env=env).returncode == 0
    assert subprocess.run(["false"], env=env).returncode == 1
    quiet = dict(env)
    del quiet[wrappers.LOG_ENV]
    assert subprocess.run(["true"], env=quiet).returncode == 0     # no log variable: no line
    calls = wrappers.read(log)
    assert [(c.tool, c.rc, c.args) for c in calls] == [("true", 0, "a b c"), ("false", 1, "")]
    assert all(c.end >= c.start for c in calls)


def test_scaling_schedule_puts_the_reference_between_the_others():
    assert schedule([30, 1, 10], 1, 3) == [1, 10, 1, 30, 1]
    runs = schedule([1, 10, 30], 2, 3)
    assert runs.count(10) == runs.count(30) == 2 and runs.count(1) == 3
    assert guest_names(3) == ["domu-g000", "domu-g001", "domu-g002"]


def test_tree_plan_has_the_asked_number_of_entries(tmp_path):
    plan = plan_tree(1000)
    summary = build_tree(tmp_path / "t", plan)
    assert summary["entries"] == 1000
    walked = bare_walk(str(tmp_path / "t"))
    assert walked == names_walk(str(tmp_path / "t")) == 1000
    assert plan_tree(1000) == plan      # deterministic


def test_tree_plan_keeps_the_count_with_big_files():
    plan = plan_tree(100_000)
    entries = len(plan["dirs"]) + len(plan["files"]) + len(plan["symlinks"]) + len(plan["hardlinks"])
    assert entries == 100_000
    assert sum(1 for name, size in plan["files"] if name.startswith("bigfiles/")) == 48


def test_timeline_splits_the_cli_time_between_commands():
    from bench.m1_prepare import timeline
    calls = wrappers.parse("\n".join([
        "10.0\t12.0\t0\tlvs\tx", "13.0\t20.0\t0\tlvcreate\t--snapshot x",   # mount: 100..?
        "31.0\t32.0\t0\tfindmnt\tx",
    ]))
    parts = dict(timeline([(8.0, 25.0), (30.0, 33.0)], calls))
    assert parts == {"mount: start -> lvs": 2.0, "mount: lvs -> lvcreate": 1.0, "mount: lvcreate -> exit": 5.0,
                     "unmount: start -> findmnt": 1.0, "unmount: findmnt -> exit": 1.0}


def test_merge_keeps_the_other_measures_of_the_last_run():
    old_rows = [report.Row("1", "a", "s", 2, 1).finish(), report.Row("3", "walk", "e/s", 1, 2).finish()]
    previous = report.document(old_rows, {"m1": {"x": 1}, "m3": {"y": 2}, "notes": []}, {"date": "monday"})
    new = report.document([report.Row("3", "walk", "e/s", 3, 4).finish()], {"m3": {"y": 3}, "notes": ["n"]},
                          {"date": "tuesday", "measures_run": ["3"]})
    merged = report.merge(new, previous)
    assert [(r["measure"], r["ours"]) for r in merged["rows"]] == [("1", 2), ("3", 3)]
    assert merged["details"]["m1"] == {"x": 1} and merged["details"]["m3"] == {"y": 3}
    assert merged["meta"]["measure_dates"] == {"1": "monday", "3": "tuesday"}
    assert "Rows of measure 1 are from the run of monday; the others from this run." in merged["details"]["notes"]
    assert report.merge(new, None) is new


def test_cat_reads_enough_to_hide_its_start_but_keeps_the_argument_list_bounded():
    mib = 2 ** 20
    assert cat_repeat(36 * mib, 4889) == 4          # 128 MiB at least, 20,000 paths at most
    assert cat_repeat(26 * mib, 54) == 5
    assert cat_repeat(1 * mib, 15000) == 1          # the path limit wins
    assert cat_repeat(0, 0) == 1


def test_measure_3_arms_run_end_to_end_on_a_small_host_tree(tmp_path, capsys):
    """The walk and read arms of measure 3 against the real plugin and harness (as `make bench`
    runs them in the VM), on a tree small enough for the host suite: they must agree on what they
    saw and finish, so that a change of the plugin's interfaces breaks this, not the bench run."""
    from bench import m3_host
    assert m3_host.main(["--dir", str(tmp_path / "tree"), "--files", "400", "--reps", "1",
                         "--read-entries", "200"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"walk of [\d,]+ entries .* plugin generator [\d.]+ us/entry", out), out
    assert re.search(r"in-core reads of [\d,]+ files", out), out


def test_measure_6_rates_come_from_each_arms_own_jobs():
    """Files/s and MiB/s of a Full, entries checked/s of an Incremental, per mode, from the
    medians of that mode's jobs (a helpers job's extra directory entries count for helpers only)."""
    from bench import m6_bareos
    mib = 2 ** 20
    runs = [dict(arm="plugin", level="Full", seconds=s, files=1000, bytes=40 * mib, steps={"guest_s": s - 1})
            for s in (10, 30, 20)]
    runs += [dict(arm="helpers", level="Full", seconds=s, files=1003, bytes=50 * mib,
                  steps={"mount_s": 2.0, "unmount_s": 1.0}) for s in (25, 25)]
    runs += [dict(arm="plugin", level="Incremental", seconds=5, files=0, bytes=0),
             dict(arm="helpers", level="Incremental", seconds=4, files=2, bytes=0)]
    details = {"tree": {"entries": 1000}, "runs": runs}
    full, full_mib, incr = m6_bareos.rows(None, details)
    assert (full.ours, full.base) == (1000 / 20, 1003 / 25)
    assert (full_mib.ours, full_mib.base) == (2.0, 2.0) and full_mib.verdict() == "ok"
    assert (incr.ours, incr.base) == (1000 / 5, 1003 / 4) and incr.verdict() == "MISSED"
    assert "median of 3 jobs each" in full.note and full.target == ">= 0.95"
    assert "guest took 19.0 s" in full.note and "mount 2.0 s + unmount 1.0 s around a native walk of about 22 s" \
        in full.note, full.note
    assert "guest took" not in incr.note     # those jobs logged no steps
    # without Incrementals (a run cut short) the Full rows stand alone
    assert len(m6_bareos.rows(None, {"tree": {"entries": 1000}, "runs": runs[:5]})) == 2
