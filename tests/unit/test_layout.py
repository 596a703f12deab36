"""The host tests mirror the package: each module of domu_snapshot with logic of its own has
tests/unit/[bareos/]test_<module>.py (and may have more, test_<module>_<topic>.py). A module
without one is listed here with the reason, so that a new module cannot go untested unnoticed."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]

ELSEWHERE = {
    "__init__.py": "no code",
    "status.py": "an enum; its values are asserted wherever a result is (test_lifecycle, test_report)",
    "system.py": "forwards each call to its module; the VM suite runs it, hostmodel.py stands in for it",
    "filesystems.py": "a table of the ext and XFS kinds; test_xfs.py and test_fsck.py test what it holds",
    "qga.py": "the guest agent's protocol: tested against the real qemu-ga in tests/vm/test_proxmox.py",
    "qmp.py": "QEMU's monitor protocol: tested against a real QEMU in tests/vm/test_proxmox.py",
    "bareos/__init__.py": "no code",
}


def modules():
    package = ROOT / "domu_snapshot"
    return sorted(str(p.relative_to(package)) for p in package.rglob("*.py"))


def test_every_module_has_its_test_module_or_a_reason():
    missing = []
    for module in modules():
        if module in ELSEWHERE:
            continue
        folder, _, name = module.rpartition("/")
        tests = ROOT / "tests" / "unit" / folder
        stem = name[:-3]
        if not (tests / f"test_{stem}.py").exists() and not list(tests.glob(f"test_{stem}_*.py")):
            missing.append(module)
    assert missing == [], f"no tests/unit/[...]test_<module>.py for: {', '.join(missing)}"


def test_the_reasons_name_modules_that_exist():
    assert set(ELSEWHERE) <= set(modules())
