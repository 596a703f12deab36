# domu-snapshot: set-up and test entry points. Run as root on Debian 12.
#   make test      everything CI runs: deps, host suite, vm suite (one VM boot)
#   make demo      the demo in a throwaway VM
#   make demo-proxmox  the same on a Proxmox-VE-shaped host (LVM-thin, qemu-ga, QMP)
#   make deb       the Debian package, in dist/ (apt install ./dist/domu-snapshot_*.deb)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := test

VENV := .venv
PY := $(VENV)/bin/python
# Debian packages: storage tools and the VM test bed (kernel, qemu, busybox for virtme's
# initramfs), pyparted/libvirt as a real hypervisor host has them (bareos-fd embeds the
# distribution's Python), the hostile-input suite's filesystems, Bacula for the engine suite,
# setfacl/getfacl (acl) for the plugin's ACL tests, man-db for the man pages' check, and what the
# real Bareos of the bareos suite (../shared/bareos/bareos-25.1.0-debian12-amd64.tar.xz,
# tests/bareos_bed.py) needs at run time: its libraries and PostgreSQL for its catalog (Bareos 25
# has no SQLite catalog).
# Installed without recommends (which would pull in a GUI for qemu and a mail daemon for Bacula),
# so what lvm2 recommends and we need is listed: thin_check for thin pools.
APT_PACKAGES := lvm2 thin-provisioning-tools qemu-guest-agent parted fdisk e2fsprogs dosfstools xfsprogs btrfs-progs \
	cryptsetup-bin udev kmod util-linux \
	qemu-system-x86 linux-image-amd64 busybox-static \
	python3-venv python3-dev python3-setuptools python3-wheel python3-parted python3-libvirt \
	libparted-dev pkg-config acl man-db \
	bacula-director bacula-director-sqlite3 bacula-sd bacula-fd bacula-console \
	postgresql postgresql-client libpq5 libjansson4 liblzo2-2 libfmt9 libxxhash0 libpython3.11 \
	libssl3 libreadline8 libacl1 zlib1g libcap2
# Packaged daemons that must not keep running on the host (the tests start private instances).
BACULA_SERVICES := bacula-director bacula-sd bacula-fd postgresql
# `make deb`: debhelper, pybuild with its pyproject plugin (setuptools and wheel are above).
# lintian and man-db (man --warnings) check the result.
DEB_BUILD_PACKAGES := dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all \
	python3-setuptools python3-wheel fakeroot lintian man-db
PIP_PACKAGES := virtme-ng==1.42

# Per-run directory for the VM's results; one value per make invocation.
RUN_ID := $(shell date +%Y%m%d-%H%M%S)-$(shell echo $$PPID)
VM_RUN_DIR ?= .vmrun/test-$(RUN_ID)
VMBED_ARGS ?=
HOST_JUNIT := .vmrun/host-$(RUN_ID).xml

.PHONY: deps apt-deps deb-deps venv test test-host test-vm demo demo-proxmox bench deb

deps: apt-deps venv

# Installs only what dpkg says is missing; `apt-get update` only when something is.
# Packaged daemons must not start on the host: a temporary policy-rc.d forbids it where the
# machine has none, and the Bacula daemons and PostgreSQL are stopped if something started them anyway.
# deb-deps: the same for what `make deb` needs.
apt-deps: DEPS_PACKAGES = $(APT_PACKAGES)
deb-deps: DEPS_PACKAGES = $(DEB_BUILD_PACKAGES)
apt-deps deb-deps:
	@missing=""; \
	for p in $(DEPS_PACKAGES); do \
	  dpkg-query -W -f='$${db:Status-Status}\n' "$$p" 2>/dev/null | grep -qx installed || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing:$$missing"; \
	  [ "$$(id -u)" = 0 ] || { echo "deps: must run as root to install packages" >&2; exit 1; }; \
	  tmp_policy=""; \
	  if [ ! -e /usr/sbin/policy-rc.d ]; then \
	    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1; \
	  fi; \
	  rc=0; mkdir -p .vmrun; \
	  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $$missing; \
	  } > .vmrun/apt-install.log 2>&1 || rc=$$?; \
	  [ -z "$$tmp_policy" ] || rm -f /usr/sbin/policy-rc.d; \
	  if [ $$rc != 0 ]; then tail -40 .vmrun/apt-install.log >&2; echo "deps: apt-get failed ($$rc)" >&2; exit $$rc; fi; \
	  rm -f .vmrun/apt-install.log; \
	  for s in $(BACULA_SERVICES); do \
	    [ -x /etc/init.d/$$s ] && /etc/init.d/$$s status >/dev/null 2>&1 && /etc/init.d/$$s stop >/dev/null 2>&1 || true; \
	  done; \
	fi

# The venv sees Debian's python3-parted and python3-libvirt (--system-site-packages).
venv: $(VENV)/.deps-ok
$(VENV)/.deps-ok: pyproject.toml setup.py Makefile | apt-deps
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@mkdir -p .vmrun; $(PY) -m pip install -q --disable-pip-version-check -e '.[test]' $(PIP_PACKAGES) \
	  > .vmrun/pip-install.log 2>&1 || { cat .vmrun/pip-install.log >&2; echo "deps: pip install failed" >&2; exit 1; }
	@touch $@

# pytest exit 5 (nothing collected) is a failure: a suite that ran nothing did not pass.
test-host: deps
	@mkdir -p .vmrun; rc=0; \
	$(PY) -m pytest -m "not vm" -p no:cacheprovider --junitxml=$(HOST_JUNIT) tests || rc=$$?; \
	if [ $$rc = 5 ]; then echo "test-host: no tests collected" >&2; fi; \
	exit $$rc

# The vm suite installs the package that `make deb` built (tests/vm/test_deb_package.py).
test-vm: deps deb
	@$(PY) -m tests.vmbed --run-dir $(VM_RUN_DIR) $(VMBED_ARGS)

test: deps
	@rc=0; \
	$(MAKE) --no-print-directory test-host RUN_ID=$(RUN_ID) || rc=1; \
	$(MAKE) --no-print-directory test-vm RUN_ID=$(RUN_ID) VM_RUN_DIR=$(VM_RUN_DIR) || rc=1; \
	echo; echo "==== summary ===="; \
	$(PY) -m tests.junitsum host=$(HOST_JUNIT) vm=$(VM_RUN_DIR)/junit.xml || rc=1; \
	exit $$rc

demo: deps
	@$(PY) -m tests.vmbed $(VMBED_ARGS) -- $(abspath $(PY)) -m tests.demo

demo-proxmox: deps
	@$(PY) -m tests.vmbed $(VMBED_ARGS) -- $(abspath $(PY)) -m tests.demo_proxmox

# The Debian package (debian/), built offline from a copy of the working tree's files (tracked
# and not ignored) in .vmrun/deb-build/ (dpkg-buildpackage writes next to the source tree), checked
# with lintian (no errors), and copied to dist/. Rebuilt when any of those files is newer.
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_FILE := dist/domu-snapshot_$(DEB_VERSION)_all.deb
DEB_BUILD_DIR := .vmrun/deb-build
# Debian's python3 and tools only: no venv, pyenv or /usr/local in front of them.
DEB_ENV := env -u PYTHONPATH -u VIRTUAL_ENV -u PYTHONHOME PATH=/usr/sbin:/usr/bin:/sbin:/bin
DEB_SOURCES := $(wildcard $(shell git ls-files -co --exclude-standard 2>/dev/null))
deb: $(DEB_FILE)
$(DEB_FILE): $(DEB_SOURCES) | deb-deps
	@rm -rf $(DEB_BUILD_DIR); src=$(DEB_BUILD_DIR)/domu-snapshot-$(DEB_VERSION); mkdir -p $$src dist; \
	git ls-files -z -co --exclude-standard | \
	  tar --null --no-recursion --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C $$src; \
	echo "deb: dpkg-buildpackage -b -us -uc in $$src (log: $(DEB_BUILD_DIR)/build.log)"; \
	( cd $$src && $(DEB_ENV) dpkg-buildpackage -b -us -uc ) > $(DEB_BUILD_DIR)/build.log 2>&1 || \
	  { tail -40 $(DEB_BUILD_DIR)/build.log >&2; echo "deb: dpkg-buildpackage failed" >&2; exit 1; }; \
	echo "deb: lintian"; \
	$(DEB_ENV) lintian --fail-on error --info $(DEB_BUILD_DIR)/domu-snapshot_$(DEB_VERSION)_*.changes || \
	  { echo "deb: lintian reports errors" >&2; exit 1; }; \
	rm -f dist/domu-snapshot_*.deb; cp $(DEB_BUILD_DIR)/domu-snapshot_$(DEB_VERSION)_all.deb $@; \
	echo "deb: $@ (install: apt install ./$@)"

# Boots the VM itself, then writes bench/results/latest.json and bench/RESULTS.md.
BENCH_ARGS ?=
bench: deps
	@$(PY) -m bench $(BENCH_ARGS)

# Bareos plugin mode: the plugin file and the core next to it (module_path is first on
# sys.path of the python3 that bareos-fd embeds); pyparted comes from Debian's python3-parted.
BAREOS_PLUGIN_DIR ?= /usr/lib/bareos/plugins
.PHONY: install-plugin
# For pip installs only: the Debian package installs the plugin file itself, using its one core.
install-plugin:
	install -d -m 0755 $(DESTDIR)$(BAREOS_PLUGIN_DIR)/domu_snapshot/bareos
	install -m 0644 bareos_plugin/bareos-fd-domu-snapshot.py $(DESTDIR)$(BAREOS_PLUGIN_DIR)/
	install -m 0644 domu_snapshot/*.py $(DESTDIR)$(BAREOS_PLUGIN_DIR)/domu_snapshot/
	install -m 0644 domu_snapshot/bareos/*.py $(DESTDIR)$(BAREOS_PLUGIN_DIR)/domu_snapshot/bareos/
	@echo "next: Client settings from etc/bareos/bareos-fd-client.conf, restart bareos-fd, FileSet and Job from etc/bareos/domu-snapshot-plugin.conf"
