"""The bench's arithmetic and its table: medians, ratios, targets, text and Markdown output.

Pure functions (no root, no VM): the host suite tests them (tests/unit/test_bench_report.py).
Every headline figure is a ratio of two arms measured side by side in the same VM run; the
absolute values are printed beside it for orientation only.
"""

import dataclasses
import json
import math
import re
import statistics

FORMAT_VERSION = 1


def median(values):
    """Median of the numbers in `values` (None entries ignored); None when there are none."""
    numbers = [float(v) for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def ratio(ours, base):
    """ours / base, or None when either is missing or base is zero."""
    if ours is None or base is None or base == 0:
        return None
    return float(ours) / float(base)


_TARGET = re.compile(r"^\s*(<=|>=|<|>|==)\s*([0-9.]+)\s*$")


def meets(value, target):
    """Whether `value` meets `target` ("<= 1.15", ">= 0.9", "== 1"); None when there is no
    target or no value."""
    if not target or value is None:
        return None
    match = _TARGET.match(target)
    if not match:
        raise ValueError(f"unknown target {target!r} (use '<= 1.15', '>= 0.9', ...)")
    op, limit = match.group(1), float(match.group(2))
    value = float(value)
    return {"<=": value <= limit, ">=": value >= limit, "<": value < limit, ">": value > limit,
            "==": math.isclose(value, limit)}[op]


def interleaved(arms, reps):
    """The order to run `arms` in, `reps` times each, alternating the order every round (ABBA...),
    so that a drift in the machine's speed hits every arm alike."""
    order = []
    for rep in range(reps):
        order.extend(arms if rep % 2 == 0 else list(reversed(arms)))
    return order


def spread(values):
    """(min, max) of the numbers, or (None, None)."""
    numbers = [float(v) for v in values if v is not None]
    return (min(numbers), max(numbers)) if numbers else (None, None)


@dataclasses.dataclass
class Row:
    """One line of the table: our arm against its baseline."""

    measure: str                    # "1", "2", ...: the numbering
    name: str                       # what is compared
    unit: str                       # unit of `ours` and `base`
    ours: float = None
    base: float = None
    ratio: float = None             # ours / base unless given
    target: str = ""                # "<= 1.15", ">= 0.9", or "" (reported, no target)
    ok: bool = None                 # target met; None without target or value
    note: str = ""                  # how many runs, what the baseline is, why missing, ...

    def finish(self):
        if self.ratio is None:
            self.ratio = ratio(self.ours, self.base)
        if self.ok is None:
            self.ok = meets(self.ratio, self.target)
        return self

    def verdict(self):
        if self.ok is None:
            return "-" if not self.target else "n/a"
        return "ok" if self.ok else "MISSED"


def fmt(value, digits=None):
    """A number for the table: 3 significant figures, large numbers without decimals."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    value = float(value)
    if digits is not None:
        return f"{value:.{digits}f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.3f}"


HEADER = ("#", "measure", "ours", "baseline", "unit", "ratio", "target", "result", "note")


def _cells(row):
    return (row.measure, row.name, fmt(row.ours), fmt(row.base), row.unit,
            "-" if row.ratio is None else f"{row.ratio:.2f}x", row.target or "-", row.verdict(), row.note)


def text_table(rows):
    """A fixed-width table for the terminal."""
    lines = [HEADER] + [_cells(r) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(HEADER) - 1)]
    out = []
    for n, line in enumerate(lines):
        cells = [str(c).ljust(w) if i in (1, 4) else str(c).rjust(w) if i else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells + [str(line[-1])]).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
    return "\n".join(out)


def markdown_table(rows):
    """The same table in Markdown (README, bench/RESULTS.md)."""
    def esc(text):
        return str(text).replace("|", "\\|")
    out = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    for row in rows:
        out.append("| " + " | ".join(esc(c) for c in _cells(row)) + " |")
    return "\n".join(out)


def rows_to_json(rows):
    return [dataclasses.asdict(r) for r in rows]


def rows_from_json(items):
    fields = {f.name for f in dataclasses.fields(Row)}
    return [Row(**{k: v for k, v in item.items() if k in fields}) for item in items]


def document(rows, details, meta):
    """The JSON written to bench/results/latest.json."""
    return {"format": FORMAT_VERSION, "meta": meta, "rows": rows_to_json(rows), "details": details}


def results_markdown(doc):
    """bench/RESULTS.md: the latest table with where and how it was measured."""
    meta = doc.get("meta", {})
    rows = rows_from_json(doc.get("rows", []))
    lines = ["# Benchmark results (latest run)", "",
             "Written by `make bench` (`python -m bench`); the full numbers are in "
             "`bench/results/latest.json` (not committed). Every ratio compares two arms measured "
             "side by side, interleaved, in the same VM run; absolute times depend on the "
             "machine's load and are for orientation only.", ""]
    where = ", ".join(f"{k}: {v}" for k, v in meta.items() if k in (
        "date", "kernel", "cpus", "memory_mib", "emulation", "load_before", "seconds", "args"))
    if where:
        lines += [f"Run: {where}", ""]
    lines += [markdown_table(rows), ""]
    missed = [r for r in rows if r.ok is False]
    if missed:
        lines += ["Missed targets: " + "; ".join(f"{r.measure} {r.name} ({r.ratio:.2f}x, target "
                                                  f"{r.target})" for r in missed), ""]
    for note in doc.get("details", {}).get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def merge(doc, previous):
    """`doc` of a run of some measures, completed with the rows (and details) of the other measures
    from `previous` (the last results). Each measure's run date is kept in meta["measure_dates"]."""
    ran = set(doc.get("meta", {}).get("measures_run") or [])
    if not previous or not ran:
        return doc
    old_dates = previous.get("meta", {}).get("measure_dates") or {}
    old_date = previous.get("meta", {}).get("date", "?")
    kept = [r for r in previous.get("rows", []) if str(r.get("measure")) not in ran]
    if not kept:
        return doc
    merged = dict(doc)
    merged["rows"] = sorted(kept + list(doc.get("rows", [])), key=lambda r: str(r.get("measure")))
    details = dict(doc.get("details", {}))
    dates = {n: doc["meta"].get("date", "?") for n in ran}
    for row in kept:
        n = str(row["measure"])
        dates[n] = old_dates.get(n, old_date)
        key = f"m{n}"
        if key in previous.get("details", {}) and key not in details:
            details[key] = previous["details"][key]
    by_date = {}
    for n, date in sorted(dates.items()):
        if n not in ran:
            by_date.setdefault(date, []).append(n)
    details["notes"] = list(details.get("notes", [])) + [
        f"Rows of measure{'s' if len(ns) > 1 else ''} {', '.join(ns)} are from the run of {date}; "
        f"the others from this run." for date, ns in by_date.items()]
    merged["details"] = details
    merged["meta"] = dict(doc["meta"], measure_dates=dict(sorted(dates.items())))
    return merged


def dumps(doc):
    return json.dumps(doc, indent=1, sort_keys=False, default=str)
