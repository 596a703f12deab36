"""pytest set-up shared by the host suite (`-m "not vm"`) and the vm suite (`-m vm`, in the VM).

- Every test under tests/vm/ carries the `vm` marker; elsewhere mark VM tests with `@pytest.mark.vm`.
- A vm test outside the VM fails loudly (it would otherwise touch the host or skip).
- A skip (or xfail) is a failure: a test that did not run must never look like a pass.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_VM = os.environ.get("DOMU_SNAPSHOT_IN_VM") == "1"
VM_DIR = Path(__file__).parent / "vm"

try:
    from hypothesis import settings
    from hypothesis.database import DirectoryBasedExampleDatabase
except ImportError:         # only the property-based tests need it; they import it themselves
    settings = None
if settings is not None:
    # The repository is read-only in the VM; on the host keep the database out of the work tree.
    if IN_VM:
        settings.register_profile("domu", database=None)
    else:
        settings.register_profile("domu", database=DirectoryBasedExampleDatabase(
            str(Path(__file__).parent.parent / ".vmrun" / "hypothesis")))
    settings.load_profile("domu")


@pytest.hookimpl(tryfirst=True)     # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if VM_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vm)


def pytest_runtest_setup(item):
    if item.get_closest_marker("vm") and not IN_VM:
        pytest.fail("vm test outside the VM test bed (DOMU_SNAPSHOT_IN_VM unset): run it with "
                    "`make test-vm` or `python -m tests.vmbed`; on the host use -m 'not vm'", pytrace=False)


def _skip_reason(longrepr) -> str:
    return longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped:     # xfail too: a test known to fail is not a pass either
        what = f"xfail ({rep.wasxfail})" if hasattr(rep, "wasxfail") else _skip_reason(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skipped, and a skip counts as a failure in this project: {what}"


_skipped_modules: list[str] = []


def pytest_collectreport(report):
    # A module-level skip (importorskip) stays a skip in the report - turning it into a
    # collection error would abort the whole session - but it fails the run below.
    if report.skipped:
        _skipped_modules.append(f"{report.nodeid}: {_skip_reason(report.longrepr)}")


def pytest_terminal_summary(terminalreporter):
    if _skipped_modules:
        terminalreporter.section("skipped modules (a skip counts as a failure)", red=True)
        for line in _skipped_modules:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_modules and exitstatus == 0:
        session.exitstatus = 1
