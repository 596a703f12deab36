"""Fixtures of the vm suite (runs as root inside the VM test bed; see tests/vmbed.py).

- `guest_vg` (session): the standard guest set of issue 2 in VG `domutest`, built once per VM
  run, shared by every suite: leave its origins as you found them. `guests` maps LV name ->
  GuestDisk. Session teardown destroys the VG and fails if a test left anything on it.
- `make_guest` (function): `make_guest("msdos-ext4-1m", name=None, **kw)` adds a throwaway guest
  to `domutest` (for tests that write to origins or break disks); removed after the test.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests import guestdisks

VG = "domutest"
PREFIX = "domu-"
_timings: dict[str, float] = {}


@pytest.fixture(scope="session")
def guest_vg():
    t0 = time.monotonic()
    gvg = guestdisks.build_standard(VG, prefix=PREFIX)
    _timings["standard set build"] = time.monotonic() - t0
    _timings.update({f"  {lv}": s for lv, s in gvg.timings.items()})
    yield gvg
    t0 = time.monotonic()
    left = gvg.destroy()
    _timings["standard set teardown"] = time.monotonic() - t0
    assert not left, f"tests left these on VG {VG}: {left}"


@pytest.fixture(scope="session")
def guests(guest_vg) -> dict[str, guestdisks.GuestDisk]:
    return guest_vg.guests


@pytest.fixture
def make_guest(guest_vg):
    made: list[str] = []

    def make(layout: str, name: str | None = None, **kw) -> guestdisks.GuestDisk:
        name = name or f"{PREFIX}tmp{len(made)}-{os.getpid() % 1000}"
        g = guest_vg.add_guest(name, layout, **kw)
        made.append(name)
        return g

    yield make
    for name in made:
        guest_vg.remove_guest(name)


def pytest_terminal_summary(terminalreporter):
    if _timings:
        terminalreporter.section("guest fixtures")
        for what, seconds in _timings.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f}s")
        run_dir = os.environ.get("DOMU_VM_RUN_DIR")
        if run_dir:
            Path(run_dir, "fixture-timings.json").write_text(json.dumps(_timings, indent=1))
