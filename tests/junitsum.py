"""Print one line per suite from pytest's junit XML files, then the total.

    python -m tests.junitsum host=.vmrun/host.xml vm=.vmrun/<run>/junit.xml

Exit status 1 if a file is missing (the suite did not run), a suite ran no test, or any test
failed, errored or was skipped; a suite that did not run or ran nothing counts as 1 failed.
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(path: Path) -> dict[str, float]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    c = dict(tests=0, failures=0, errors=0, skipped=0, time=0.0)
    for s in suites:
        for k in c:
            c[k] += float(s.get(k, 0))
    return c


def main(argv: list[str]) -> int:
    ok = True
    total = dict(passed=0, failed=0, skipped=0)
    for arg in argv:
        name, _, path = arg.partition("=")
        path = Path(path)
        if not path.is_file():
            print(f"{name}: no results ({path} missing): the suite did not run, counted as 1 failed")
            total["failed"] += 1
            ok = False
            continue
        c = counts(path)
        failed = int(c["failures"] + c["errors"])
        skipped = int(c["skipped"])
        passed = int(c["tests"]) - failed - skipped
        total["passed"] += passed
        total["failed"] += failed
        total["skipped"] += skipped
        print(f"{name}: {passed} passed, {failed} failed, {skipped} skipped in {c['time']:.0f}s")
        if c["tests"] == 0:
            print(f"{name}: ran no test, counted as 1 failed")
            total["failed"] += 1
        if failed or skipped or c["tests"] == 0:
            ok = False
    skipped = f", {total['skipped']} skipped" if total["skipped"] else ""
    print(f"total: {total['passed']} passed, {total['failed']} failed{skipped}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
