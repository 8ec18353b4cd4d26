# gdb_memleak: `make demo` sets everything up and runs the main job; `make test` runs the suite.
SHELL := /bin/bash
ROOT  := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV  := $(ROOT)/.venv
PY    := $(VENV)/bin/python
BUILD := $(ROOT)/build
STAMP := $(VENV)/.installed
APT_PACKAGES := gdb g++ g++-12-multilib gcc-12-multilib valgrind python3-venv python3-pip make python3-numpy python3-pyelftools python3-capstone python3-tabulate libc6-dbg:amd64 \
                cppcheck doxygen 7zip pbzip2 memcached gdbserver \
                python3-jinja2 python3-plotly chromium \
                g++-arm-linux-gnueabihf g++-aarch64-linux-gnu qemu-user gdb-multiarch
# best effort: the i386 oracle tests skip without it
APT_OPTIONAL := libc6-dbg:i386

.PHONY: install system-deps demo test bench clean

install: $(STAMP)

# g++-12-multilib/gcc-12-multilib, not g++-multilib: Debian 12's gcc-multilib (only the
# /usr/include/asm symlink -m32 needs) conflicts with the cross compilers; tests/conftest.py supplies
# that symlink through CPATH. The cross compilers, qemu-user and gdb-multiarch make the ARM and
# AArch64 cores of tests/test_crossarch.py.
# libc6-dbg (+ :i386) is the glibc-bookkeeping oracle of the tests; cppcheck, doxygen, 7zip, pbzip2
# and memcached are the real-program corpus (tests/realprogs; policy-rc.d keeps memcached's
# daemon from starting).
# gdb embeds its own Python (/usr/bin/python3 on Debian 12): the venv is made from *that* interpreter
# so numpy/capstone import inside gdb; gdbinit.example puts the venv's site-packages on sys.path.
$(STAMP): setup.cfg
	@$(MAKE) --no-print-directory system-deps
	@gdbpy=$$(gdb -nx -batch -ex 'python import sys; print("%s/bin/python%d.%d" % ((sys.base_prefix,) + tuple(sys.version_info[:2])))' 2>/dev/null | tail -n 1); \
	  test -x "$$gdbpy" || { echo "cannot find gdb's Python interpreter (got '$$gdbpy')" >&2; exit 1; }; \
	  echo "gdb's Python: $$gdbpy"; \
	  if [ ! -x $(PY) ] || [ "$$($(PY) -c 'import sys; print(sys.base_prefix)')" != "$$($$gdbpy -c 'import sys; print(sys.base_prefix)')" ]; then \
	    rm -rf $(VENV) && $$gdbpy -m venv $(VENV); fi
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	gdb -nx -batch -ex 'source $(ROOT)/gdbinit.example' -ex 'python import numpy, elftools, capstone, tabulate, jinja2, plotly' -ex 'help memleak' >/dev/null
	@touch $(STAMP)

system-deps:
	@missing=""; \
	  for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; \
	    if [ "$$(id -u)" != 0 ]; then echo "need root for apt-get install$$missing" >&2; exit 1; fi; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    nopolicy=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; nopolicy=1; }; \
	    apt-get update -qq || echo "apt-get update failed in part: installing from the lists there are" >&2; \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; rc=$$?; \
	    [ -z "$$nopolicy" ] || rm -f /usr/sbin/policy-rc.d; [ $$rc = 0 ] || exit $$rc; \
	  fi; \
	  for p in $(APT_OPTIONAL); do dpkg -s $$p >/dev/null 2>&1 && continue; \
	    [ "$$(id -u)" = 0 ] || continue; \
	    dpkg --print-foreign-architectures | grep -qx i386 || { dpkg --add-architecture i386 && apt-get update -qq; }; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$p >/dev/null \
	      || echo "could not install $$p: its tests will skip" >&2; \
	  done

demo: install
	@$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) scripts/bench_census.py

clean:
	rm -rf $(BUILD) .pytest_cache
