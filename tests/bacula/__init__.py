"""Bacula test harness (private director, storage and file daemons on loopback) and the tools to
run the shipped etc/bacula example with it. Host tests: tests/bacula/test_bacula_host.py; the end
to end suite with real guests: tests/vm/test_bacula.py."""
