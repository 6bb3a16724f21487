# SPDX-License-Identifier: LGPL-2.1-or-later
# Installing mdevd:
#
#     make install                          # PREFIX=/usr/local
#     make install DESTDIR=/tmp/pkg PREFIX=/usr   # a distribution package's tree
#
# The Python package and its launchers follow PREFIX (launchers run $(PYTHON), which must
# have mdevd's dependencies: see README.md, "Installing"). Files that other programs look for
# in fixed places (systemd, dbus-daemon, polkitd, bash-completion) go there whatever PREFIX
# is; each directory can be overridden. The default configuration never replaces an existing
# /etc/mdevd/mdevd.toml.
#
# For distribution packages, the two halves are separate targets: `install-python` (the
# package, its launchers, the libexec mdevctl link) and `install-data` (everything else). A
# package that installs the Python part from the wheel (pybuild, %pyproject_install: they
# write the dist-info metadata and console scripts) runs only `make install-data`; see
# debian/rules. COMPILE=0 skips byte-compiling, for packages whose tools compile at install
# time (dh_python3, %py_byte_compile); the default compiles, because the installed unit's
# ProtectSystem=strict would keep the daemon from ever caching its bytecode.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
# Holds `mdevctl`, a link to mdevd-mdevctl: put this directory first in libvirtd's PATH (and
# nobody else's) to have libvirt use mdevd without replacing the real mdevctl package.
LIBEXECDIR ?= $(PREFIX)/libexec
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
SYSCONFDIR ?= /etc
PYTHON ?= /usr/bin/python3

pkgconfig = $(or $(shell pkg-config --variable=$(2) $(1) 2>/dev/null),$(3))
UNITDIR ?= $(call pkgconfig,systemd,systemdsystemunitdir,/usr/lib/systemd/system)
DBUS_POLICYDIR ?= /usr/share/dbus-1/system.d
DBUS_SERVICEDIR ?= $(call pkgconfig,dbus-1,system_bus_services_dir,/usr/share/dbus-1/system-services)
POLKIT_ACTIONDIR ?= /usr/share/polkit-1/actions
BASH_COMPLETIONDIR ?= $(call pkgconfig,bash-completion,completionsdir,/usr/share/bash-completion/completions)
# Where the package goes: the interpreter's own directory under PREFIX if it has one
# (/usr/lib/python3/dist-packages on Debian), else PREFIX/lib/pythonX.Y/site-packages.
PYTHONDIR ?= $(shell $(PYTHON) tools/python-dir.py $(PREFIX))

PACKAGE_FILES = $(shell find mdevd -name '*.py' -not -path 'mdevd/sim/*') mdevd/py.typed
MAN_PAGES = docs/man/mdevd.8 docs/man/mdevdctl.1 docs/man/mdevd.toml.5

COMPILE ?= 1
INSTALL ?= install
D = $(DESTDIR)

.PHONY: all install install-python install-data uninstall check

all:
	@echo "Nothing to build: 'make install' (DESTDIR=, PREFIX=; see the Makefile's header)."

install: install-python install-data

install-python:
	@test -n "$(PYTHONDIR)" || { echo "make: cannot run $(PYTHON)" >&2; exit 1; }
	@for f in $(PACKAGE_FILES); do \
		$(INSTALL) -D -m 0644 "$$f" "$(D)$(PYTHONDIR)/$$f" || exit 1; \
	done
	@if [ "$(COMPILE)" != 0 ]; then \
		echo "$(PYTHON) -m compileall -q -d $(PYTHONDIR)/mdevd $(D)$(PYTHONDIR)/mdevd"; \
		$(PYTHON) -m compileall -q -d "$(PYTHONDIR)/mdevd" "$(D)$(PYTHONDIR)/mdevd"; \
	fi
	$(INSTALL) -d -m 0755 "$(D)$(BINDIR)"
	@for tool in mdevd:mdevd.main mdevdctl:mdevd.cli.mdevdctl mdevd-mdevctl:mdevd.cli.mdevctl; do \
		name=$${tool%%:*}; module=$${tool#*:}; \
		sed -e 's|@PYTHON@|$(PYTHON)|' -e 's|@PYTHONDIR@|$(PYTHONDIR)|' -e "s|@MODULE@|$$module|" \
			tools/launcher.in > "$(D)$(BINDIR)/$$name.tmp" && \
		chmod 0755 "$(D)$(BINDIR)/$$name.tmp" && mv "$(D)$(BINDIR)/$$name.tmp" "$(D)$(BINDIR)/$$name" || exit 1; \
	done
	$(INSTALL) -d -m 0755 "$(D)$(LIBEXECDIR)/mdevd"
	ln -sf "$(BINDIR)/mdevd-mdevctl" "$(D)$(LIBEXECDIR)/mdevd/mdevctl"

install-data:
	$(INSTALL) -d -m 0755 "$(D)$(UNITDIR)"
	sed -e 's|^ExecStart=/usr/bin/mdevd|ExecStart=$(BINDIR)/mdevd|' systemd/mdevd.service \
		> "$(D)$(UNITDIR)/mdevd.service.tmp"
	chmod 0644 "$(D)$(UNITDIR)/mdevd.service.tmp"
	mv "$(D)$(UNITDIR)/mdevd.service.tmp" "$(D)$(UNITDIR)/mdevd.service"
	$(INSTALL) -D -m 0644 dbus/org.mdevd.Mdevd1.conf "$(D)$(DBUS_POLICYDIR)/org.mdevd.Mdevd1.conf"
	$(INSTALL) -D -m 0644 dbus/org.mdevd.Mdevd1.service \
		"$(D)$(DBUS_SERVICEDIR)/org.mdevd.Mdevd1.service"
	$(INSTALL) -D -m 0644 dbus/org.mdevd.Mdevd1.policy \
		"$(D)$(POLKIT_ACTIONDIR)/org.mdevd.Mdevd1.policy"
	$(INSTALL) -D -m 0644 docs/man/mdevd.8 "$(D)$(MANDIR)/man8/mdevd.8"
	$(INSTALL) -D -m 0644 docs/man/mdevdctl.1 "$(D)$(MANDIR)/man1/mdevdctl.1"
	$(INSTALL) -D -m 0644 docs/man/mdevd.toml.5 "$(D)$(MANDIR)/man5/mdevd.toml.5"
	$(INSTALL) -D -m 0644 completions/mdevd "$(D)$(BASH_COMPLETIONDIR)/mdevd"
	$(INSTALL) -D -m 0644 completions/mdevdctl "$(D)$(BASH_COMPLETIONDIR)/mdevdctl"
	$(INSTALL) -d -m 0755 "$(D)$(SYSCONFDIR)/mdevd/devices.d"
	@if [ -e "$(D)$(SYSCONFDIR)/mdevd/mdevd.toml" ]; then \
		echo "keeping $(D)$(SYSCONFDIR)/mdevd/mdevd.toml; the shipped defaults are in config/mdevd.toml"; \
	else \
		echo "$(INSTALL) -m 0644 config/mdevd.toml $(D)$(SYSCONFDIR)/mdevd/mdevd.toml"; \
		$(INSTALL) -m 0644 config/mdevd.toml "$(D)$(SYSCONFDIR)/mdevd/mdevd.toml"; \
	fi

uninstall:
	rm -rf "$(D)$(PYTHONDIR)/mdevd"
	rm -f "$(D)$(BINDIR)/mdevd" "$(D)$(BINDIR)/mdevdctl" "$(D)$(BINDIR)/mdevd-mdevctl" \
		"$(D)$(LIBEXECDIR)/mdevd/mdevctl" "$(D)$(UNITDIR)/mdevd.service" \
		"$(D)$(DBUS_POLICYDIR)/org.mdevd.Mdevd1.conf" \
		"$(D)$(DBUS_SERVICEDIR)/org.mdevd.Mdevd1.service" \
		"$(D)$(POLKIT_ACTIONDIR)/org.mdevd.Mdevd1.policy" \
		"$(D)$(MANDIR)/man8/mdevd.8" "$(D)$(MANDIR)/man1/mdevdctl.1" \
		"$(D)$(MANDIR)/man5/mdevd.toml.5" \
		"$(D)$(BASH_COMPLETIONDIR)/mdevd" "$(D)$(BASH_COMPLETIONDIR)/mdevdctl"
	@echo "left $(D)$(SYSCONFDIR)/mdevd (configuration and definitions) in place"

check:
	scripts/test
