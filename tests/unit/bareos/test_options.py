"""Plugin options and the Bareos example configurations in etc/bareos (used as they are)."""

import re

import pytest

from tests import fd_harness
from tests.fd_harness import bareosfd

from domu_snapshot.bareos import options as plugin  # noqa: E402  (after the stand-in)
from domu_snapshot.config import load_config  # noqa: E402
from domu_snapshot.errors import DomuError  # noqa: E402


def test_options_mirror_the_cli(monkeypatch, tmp_path):
    options = plugin.parse_options(
        "prefix=web-:vg=vg0,vg1:include=web-*,db-?:exclude=*-tmp:snapshot_size=20%ORIGIN:"
        "chunk_size=64k:partition=2:mount_root=/srv/m:config=/etc/x.conf:prepare=all:"
        "quiesce=none:libvirt_uri=qemu\\:///system:guest_filesystems=all:")
    assert options["libvirt_uri"] == "qemu:///system"
    assert options["prepare"] == "all" and options["config"] == "/etc/x.conf"
    overrides = plugin.config_overrides(options)
    assert overrides == {"prefix": "web-", "vg": "vg0,vg1", "include": "web-*,db-?",
                         "exclude": "*-tmp", "snapshot_size": "20%ORIGIN", "chunk_size": "64k",
                         "partition": "2", "mount_root": "/srv/m", "quiesce": "none",
                         "libvirt_uri": "qemu:///system", "guest_filesystems": "all"}
    # the core accepts them as its overrides
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "none.conf"))
    cfg = load_config(None, overrides=overrides)
    assert cfg.vgs == ["vg0", "vg1"] and cfg.include == ["web-*", "db-?"]
    assert (cfg.mount_root, cfg.partition, cfg.quiesce) == ("/srv/m", "2", "none")
    assert cfg.guest_filesystems == "all"


def test_options_tolerate_c_side_keys_and_empty_text():
    assert plugin.parse_options("") == {}
    assert plugin.parse_options("module_path=/x:module_name=y:prefix=a:") == {"prefix": "a"}


@pytest.mark.parametrize("text, message", [
    ("prefx=a:", "unknown plugin option 'prefx'"),
    ("default_file=/x:", "unknown plugin option 'default_file'"),
    ("prepare=some:", "prepare must be"),
    ("prefix:", "has no value"),
])
def test_bad_options_are_refused(text, message):
    with pytest.raises(DomuError, match=re.escape(message)):
        plugin.parse_options(text)


def test_bad_option_fails_the_job_before_touching_anything(monkeypatch, tmp_path):
    calls = fd_harness.install_dir_runner(monkeypatch, [fd_harness.FakeGuest("g", [tmp_path])])
    fd = fd_harness.FileDaemon(fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), prepare="sometimes"))
    result = fd.backup()
    assert result.status == "f"
    assert any("prepare must be" in text for text in result.job.fatal)
    assert calls == []


def test_fileset_example_feeds_the_plugin(monkeypatch, tmp_path):
    definition = fd_harness.parse_fileset_plugin(
        (fd_harness.ETC_BAREOS / "domu-snapshot-plugin.conf").read_text())
    assert definition.startswith("python3:module_path=/usr/lib/bareos/plugins:"
                                 "module_name=bareos-fd-domu-snapshot:")
    _path, name, options = fd_harness.split_definition(definition)
    assert name == fd_harness.PLUGIN_MODULE
    assert (fd_harness.PLUGIN_DIR / f"{name}.py").is_file()
    assert plugin.parse_options(options)["mount_root"] == "/var/lib/domu-snapshot/mnt"
    # the same string, with only module_path pointing at this tree, drives a whole job
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "none.conf"))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "f").write_text("x")
    fd_harness.install_dir_runner(monkeypatch, [fd_harness.FakeGuest("g", [tmp_path / "g"])])
    result = fd_harness.FileDaemon(
        fd_harness.example_plugin_definition(module_path=str(fd_harness.PLUGIN_DIR))).backup()
    assert result.status == "T", result.job.messages
    assert [r.fname for r in result.records] == [f"{tmp_path}/g/f", f"{tmp_path}/g"]


def test_plugin_copes_with_module_keys_in_its_options(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "none.conf"))
    (tmp_path / "g").mkdir()
    fd_harness.install_dir_runner(monkeypatch, [fd_harness.FakeGuest("g", [tmp_path / "g"])])
    fd = fd_harness.FileDaemon(
        fd_harness.example_plugin_definition(module_path=str(fd_harness.PLUGIN_DIR)),
        keep_module_options=True)
    assert fd.options.startswith("module_path=")
    assert fd.backup().status == "T"


def test_client_example_loads_python3():
    text = (fd_harness.ETC_BAREOS / "bareos-fd-client.conf").read_text()
    assert fd_harness.config_values(text, "Plugin Names") == ["python3"]
    assert fd_harness.config_values(text, "Plugin Directory") == ["/usr/lib/bareos/plugins"]


def _blocks(text, name):
    """Bodies of `name { ... }` blocks (no nesting inside them), comments removed."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return re.findall(r"\b" + name + r"\s*\{([^{}]*)\}", code, flags=re.I)


def test_helpers_example_tears_down_after_failures_too():
    text = (fd_harness.ETC_BAREOS / "domu-snapshot-helpers.conf").read_text()
    scripts = _blocks(text, "RunScript")
    assert len(scripts) == 2
    found = {}
    for body in scripts:
        values = {key.replace(" ", "").lower(): fd_harness.config_values(body, key)[0]
                  for key in ("RunsWhen", "RunsOnSuccess", "RunsOnFailure", "RunsOnClient",
                              "Command", "Fail Job On Error")}
        assert values["runsonsuccess"] == "yes"
        assert values["runsonfailure"] == "yes"
        assert values["runsonclient"] == "yes"
        found[values["runswhen"]] = (values["command"], values["failjobonerror"])
    # Before must not fail the job (the other guests would lose their backup); After fails it
    # when `mount` lost a guest, so that Accurate keeps that guest's files
    assert found == {"Before": ("foreach-domu mount", "no"), "After": ("foreach-domu unmount", "yes")}
    fileset = fd_harness.config_values(text, "File")
    assert fileset == ["/var/lib/domu-snapshot/mnt"]
    assert [v.lower() for v in fd_harness.config_values(text, "One FS")] == ["no"]


def test_plugin_example_job_uses_its_fileset():
    text = (fd_harness.ETC_BAREOS / "domu-snapshot-plugin.conf").read_text()
    names = fd_harness.config_values(text, "Name")
    assert "domu-snapshot-plugin" in names
    assert fd_harness.config_values(text, "FileSet") == ["domu-snapshot-plugin"]
    assert fd_harness.config_values(text, "Accurate") == ["yes"]


def test_register_events(monkeypatch):
    fd = fd_harness.FileDaemon("python3:module_path=%s:module_name=%s:prefix=x"
                               % (fd_harness.PLUGIN_DIR, fd_harness.PLUGIN_MODULE))
    fd._start_job("F", "B")
    try:
        assert fd._load(fd.options) == bareosfd.bRC_OK
        assert {bareosfd.bEventStartBackupJob, bareosfd.bEventEndBackupJob,
                bareosfd.bEventCancelCommand, bareosfd.bEventJobEnd} <= fd.job.registered_events
    finally:
        fd._end_job()


def test_job_plugin_options_override_the_fileset_key_by_key(monkeypatch, tmp_path):
    """bareos-fd 25: the FileSet's string, then the Job's "FD Plugin Options" alone
    (bEventNewPluginOptions), then the FileSet's string again at the backup command."""
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "none.conf"))
    root = tmp_path / "mnt"
    for name in ("domu-a", "domu-b"):
        (root / "vg0" / name).mkdir(parents=True)
        (root / "vg0" / name / "f").write_text(name)
    guests = [fd_harness.FakeGuest(n, [root / "vg0" / n]) for n in ("domu-a", "domu-b")]
    fd_harness.install_dir_runner(monkeypatch, guests)
    seen = []
    real_discover = fd_harness.DirRunner.discover

    def discover(self, names=None):
        seen.append((self.cfg.mount_root, self.cfg.prefix, list(self.cfg.include)))
        return [g for g in real_discover(self, names)
                if not self.cfg.include or g.name in self.cfg.include]

    monkeypatch.setattr(fd_harness.DirRunner, "discover", discover)
    definition = fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), mount_root=str(root), vg="vg0")
    result = fd_harness.FileDaemon(definition, plugin_options="python3:include=domu-b").backup()
    assert result.status == "T", result.job.messages
    assert bareosfd.bEventNewPluginOptions in result.events
    # the FileSet's mount_root and prefix stay, include comes from the Job
    assert seen == [(str(root), "domu-", ["domu-b"])]
    assert [r.fname for r in result.records] == [f"{root}/vg0/domu-b/f", f"{root}/vg0/domu-b"]


def test_a_bad_job_override_fails_the_job(monkeypatch, tmp_path):
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "none.conf"))
    calls = fd_harness.install_dir_runner(monkeypatch, [fd_harness.FakeGuest("g", [tmp_path])])
    result = fd_harness.FileDaemon(
        fd_harness.example_plugin_definition(module_path=str(fd_harness.PLUGIN_DIR)),
        plugin_options="python3:colour=blue").backup()
    assert result.status == "f"
    assert any("unknown plugin option 'colour'" in t for t in result.job.fatal)
    assert calls == []


@pytest.mark.parametrize("extra, message", [
    ({"config": "/nonexistent/domu.conf"}, "does not exist"),
    ({"mount_root": "relative/mnt"}, "mount_root must be an absolute path"),
])
def test_bad_configuration_fails_the_job_at_its_start(monkeypatch, tmp_path, extra, message):
    calls = fd_harness.install_dir_runner(monkeypatch, [fd_harness.FakeGuest("g", [tmp_path])])
    result = fd_harness.FileDaemon(fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), **extra)).backup()
    assert result.status == "f"
    assert len(result.job.fatal) == 1 and message in result.job.fatal[0]
    assert calls == []


def test_defaults_and_overrides_files_layer_as_in_bareos_python_plugins(tmp_path):
    """defaults_file < FileSet string < Job "FD Plugin Options" < overrides_file (Bareos's
    PythonFdPlugin documentation: an overrides_file holds values that always take precedence)."""
    (tmp_path / "defaults.ini").write_text(
        "# site defaults\n\n[ignored section header]\n; a comment\n"
        "prefix = site-\nmount_root=/srv/\\\n    backup-mnt\nsnapshot_size = 5%ORIGIN\n")
    (tmp_path / "overrides.ini").write_text("quiesce=none\n")
    layers = plugin.Options(lambda: str(tmp_path))
    fileset = "prefix=domu-:defaults_file=defaults.ini:overrides_file=overrides.ini:quiesce=agent:"
    assert layers.parse(fileset) == {"prefix": "domu-", "mount_root": "/srv/backup-mnt",
                                     "snapshot_size": "5%ORIGIN", "quiesce": "none"}
    job = layers.parse("snapshot_size=20%ORIGIN:quiesce=suspend:")   # bEventNewPluginOptions
    assert job == {"prefix": "domu-", "mount_root": "/srv/backup-mnt", "snapshot_size": "20%ORIGIN",
                   "quiesce": "none"}
    assert layers.parse(fileset) == job                              # the FileSet string again


@pytest.mark.parametrize("text, message", [
    ("prefix=a\nbogus=1\n", "unknown plugin option 'bogus'"),
    ("prefix\n", "is not key=value"),
])
def test_a_bad_options_file_is_refused_naming_it(tmp_path, text, message):
    (tmp_path / "o.ini").write_text(text)
    with pytest.raises(DomuError, match=re.escape(message)) as refused:
        plugin.Options(lambda: str(tmp_path)).parse("overrides_file=o.ini:")
    assert str(tmp_path / "o.ini") in str(refused.value)
    with pytest.raises(DomuError, match="cannot read options file .*missing.ini"):
        plugin.Options(lambda: str(tmp_path)).parse("defaults_file=missing.ini:")


def test_options_files_are_relative_to_the_file_daemons_configuration(tmp_path):
    (tmp_path / "bareos-fd.d" / "client").mkdir(parents=True)
    single = tmp_path / "bareos-fd.conf"
    single.write_text("")
    assert plugin.config_directory(f"{tmp_path}/bareos-fd.d/*/*.conf") == f"{tmp_path}/bareos-fd.d"
    assert plugin.config_directory(str(single)) == str(tmp_path)
    assert plugin.config_directory(None) == "/" and plugin.config_directory("/no/such/*/*.conf") == "/"


def test_a_relative_options_file_is_read_from_the_file_daemons_configuration(monkeypatch, tmp_path):
    (tmp_path / "bareos-fd.d" / "client").mkdir(parents=True)
    (tmp_path / "bareos-fd.d" / "domu.ini").write_text("allow_empty = yes\n")
    fd_harness.install_dir_runner(monkeypatch, [])
    monkeypatch.setenv("DOMU_SNAPSHOT_CONFIG", str(tmp_path / "none.conf"))
    fd = fd_harness.FileDaemon(fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), defaults_file="domu.ini"),
        used_config=f"{tmp_path}/bareos-fd.d/*/*.conf")
    result = fd.backup()
    # no guest at all, allowed by the defaults file: not the fatal "no guest selected"
    assert result.job.fatal == [], result.job.messages


def test_a_missing_options_file_fails_the_job_before_touching_anything(monkeypatch, tmp_path):
    calls = fd_harness.install_dir_runner(monkeypatch, [fd_harness.FakeGuest("g", [tmp_path])])
    fd = fd_harness.FileDaemon(fd_harness.example_plugin_definition(
        module_path=str(fd_harness.PLUGIN_DIR), defaults_file=str(tmp_path / "nope.ini")))
    result = fd.backup()
    assert result.status == "f"
    assert any("cannot read options file" in text and "nope.ini" in text for text in result.job.fatal)
    assert calls == []
