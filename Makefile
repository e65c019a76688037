# imapmux — build, test, demo. See README.md.
CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wmissing-prototypes -Wstrict-prototypes
CPPFLAGS += -D_GNU_SOURCE -Icommon
ALL_CFLAGS = -std=c11 $(WARN) $(CFLAGS) $(SAN_FLAGS) -pthread
LDLIBS_PROXY = -lssl -lcrypto -lev -lhiredis -lcrypt -lpthread -lm -lz
PYTHON  ?= /usr/bin/python3

ifeq ($(SANITIZE),1)
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
endif

# Objects remember how they were built: another compiler or other flags
# (SANITIZE=1, OPT=...) rebuild everything, so a sanitizer object never ends
# up in a normal build or the other way round.
BUILD_STAMP := .build-flags
BUILD_FLAGS := $(strip $(CC) $(CPPFLAGS) $(ALL_CFLAGS))
# `make deb` alone builds in a copy with a stamp of its own: this tree's
# stamp stays as its objects were built (a SANITIZE=1 tree stays one).
ifneq ($(if $(MAKECMDGOALS),$(filter-out deb,$(MAKECMDGOALS)),all),)
ifneq ($(BUILD_FLAGS),$(strip $(shell cat $(BUILD_STAMP) 2>/dev/null)))
$(shell printf '%s\n' '$(BUILD_FLAGS)' > $(BUILD_STAMP))
endif
endif

# The stamp is written by $(shell) above, after make has read the directory:
# this rule lets make take it as made, so that the %.o rule below (and not
# make's built-in one, without our flags) builds the first objects of a
# fresh tree.
$(BUILD_STAMP): ;

COMMON_SRC := $(sort $(wildcard common/*.c))
COMMON_OBJ := $(COMMON_SRC:.c=.o)
PROXY_SRC  := $(sort $(wildcard proxy/*.c))
PROXY_OBJ  := $(PROXY_SRC:.c=.o)
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN   := $(UNIT_SRC:.c=)

.PHONY: all deps test unit valgrind integration demo demo-stop bench clean lint format layering install \
        fuzz fuzz-build deb

CTL_BIN := tools/imapmuxctl

all: proxy/imapmux $(CTL_BIN) bench/imapbench bench/tlsfloor

%.o: %.c $(wildcard common/*.h proxy/*.h) $(BUILD_STAMP)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

common/libcommon.a: $(COMMON_OBJ)
	rm -f $@ && ar rcs $@ $^

proxy/imapmux: $(PROXY_OBJ) common/libcommon.a
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(PROXY_OBJ) common/libcommon.a $(LDLIBS_PROXY)

# The control tool (tools/imapmuxctl.c): the config parser, hiredis.
$(CTL_BIN): tools/imapmuxctl.c common/libcommon.a $(wildcard common/*.h) $(BUILD_STAMP)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< common/libcommon.a -lhiredis -lcrypt -lm

# The load generator (BENCHMARKS.md "imapbench"): libev and OpenSSL only.
BENCH_SRC := $(filter-out bench/tlsfloor.c,$(sort $(wildcard bench/*.c)))
BENCH_OBJ := $(BENCH_SRC:.c=.o)
$(BENCH_OBJ): $(wildcard bench/*.h)
bench/imapbench: $(BENCH_OBJ)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $(BENCH_OBJ) -lssl -lcrypto -lev -lm
# OpenSSL's own cost with no proxy around it (BENCHMARKS.md "Where the time goes").
bench/tlsfloor: bench/tlsfloor.c
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< -lssl -lcrypto -lpthread

# A unit test needing more than common/ names the objects it links and the
# libraries those need, for tests/unit/test_<name>.c:
#   UNIT_OBJS_<name> = proxy/x.o ...   (built by the %.o rule above; the
#                                       test then sees proxy/'s headers)
#   UNIT_LIBS_<name> = -lssl ...
# Only what it names: a test that links too little fails to link.
.SECONDEXPANSION:
tests/unit/test_%: tests/unit/test_%.c $(wildcard tests/unit/*.h) $$(UNIT_OBJS_$$*) common/libcommon.a $(BUILD_STAMP)
	$(CC) $(CPPFLAGS) $(if $(UNIT_OBJS_$*),-Iproxy) $(ALL_CFLAGS) -Wno-missing-prototypes \
	    -o $@ $< $(UNIT_OBJS_$*) common/libcommon.a $(UNIT_LIBS_$*) \
	    -lcmocka -lcrypt -lm -lev -lpthread

# The session's state tables (pure).
UNIT_OBJS_sess_state := proxy/sess_state.o
# Deferred frees (pure).
UNIT_OBJS_reaper := proxy/reaper.o
# The backend command channel, over a real socket and loop (no pool, no worker).
UNIT_OBJS_backend_cmd := proxy/backend.o proxy/backend_login.o proxy/cmdq.o proxy/conn.o proxy/reaper.o
UNIT_LIBS_backend_cmd := -lssl -lcrypto -lz
# A worker's pool, counted, against a fake backend (no session, no worker thread).
UNIT_OBJS_pool_acct := proxy/pool.o proxy/backend.o proxy/backend_login.o proxy/cmdq.o proxy/conn.o proxy/reaper.o \
                       proxy/runtime.o
UNIT_LIBS_pool_acct := -lssl -lcrypto -lz
# COMPRESS=DEFLATE in the conn layer, over a socketpair, zlib as the peer.
UNIT_OBJS_compress := proxy/conn.o
UNIT_LIBS_compress := -lssl -lcrypto -lz
# Bulk bytes written straight from the caller's buffer (conn_write_direct), TLS and plain.
UNIT_OBJS_conn_direct := proxy/conn.o
UNIT_LIBS_conn_direct := -lssl -lcrypto -lz
# TLS 1.3 records sealed and opened here against OpenSSL's own client.
UNIT_LIBS_tls13 := -lssl -lcrypto
# Ticket keys by epoch, and a TLS 1.3 resumption through their callback.
UNIT_LIBS_tktkeys := -lssl -lcrypto
# Watchers shared by two hand-built workers through their mailboxes, against a fake backend.
UNIT_OBJS_watch_box := proxy/watch.o proxy/pool.o proxy/backend.o proxy/backend_login.o proxy/cmdq.o \
                       proxy/conn.o proxy/reaper.o proxy/runtime.o
UNIT_LIBS_watch_box := -lssl -lcrypto -lz
# GET /sessions' requests and JSON, the workers played by the test (no thread, no loop).
UNIT_OBJS_sessions_api := proxy/sessions_api.o proxy/metrics.o proxy/runtime.o
UNIT_LIBS_sessions_api := -lssl -lcrypto
# test_cryptpool includes proxy/cryptpool.c itself (it reaches the statics).
tests/unit/test_cryptpool: proxy/cryptpool.c proxy/cryptpool.h

# ---- fuzzing: libFuzzer targets tests/fuzz/fuzz_<name>.c (README "Fuzzing") ----
# Everything is built with clang, ASan, UBSan (any report aborts) and the
# fuzzing-build macro into build/fuzz/, never mixed with the objects above.
# A target needing more than common/ names its objects (built from proxy/
# with the fuzz flags) and libraries, e.g. for fuzz_preauth.c:
#   FUZZ_OBJS_preauth = $(FUZZ_DIR)/proxy/session.o ...
#   FUZZ_LIBS_preauth = -lev -lssl -lcrypto
#   $(FUZZ_DIR)/fuzz_preauth: $(FUZZ_OBJS_preauth)
FUZZ_CC    ?= clang
FUZZ_TIME  ?= 60
FUZZ_DIR   := build/fuzz
FUZZ_FLAGS := -std=c11 $(WARN) -O1 -g -fno-omit-frame-pointer -pthread \
              -fsanitize=address,undefined -fno-sanitize-recover=all \
              -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN   := $(patsubst tests/fuzz/%.c,$(FUZZ_DIR)/%,$(FUZZ_SRC))
FUZZ_HDR   := $(wildcard common/*.h proxy/*.h tests/fuzz/*.h)
FUZZ_OBJ   := $(patsubst %.c,$(FUZZ_DIR)/%.o,$(COMMON_SRC) \
                $(filter-out $(FUZZ_SRC),$(sort $(wildcard tests/fuzz/*.c))))

$(FUZZ_DIR)/%.o: %.c $(FUZZ_HDR)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/libfuzz.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_DIR)/libfuzz.a $(FUZZ_HDR)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJS_$*) \
	    $(FUZZ_DIR)/libfuzz.a $(FUZZ_LIBS_$*) -lcrypt -lm

# The pre-login command handler runs through the real session code: every
# proxy/ object but main.o, built with the fuzz flags.
FUZZ_OBJS_preauth := $(patsubst %.c,$(FUZZ_DIR)/%.o,$(filter-out proxy/main.c,$(PROXY_SRC)))
FUZZ_LIBS_preauth := -lssl -lcrypto -lev -lhiredis -lpthread -lz
$(FUZZ_DIR)/fuzz_preauth: CPPFLAGS += -Iproxy
$(FUZZ_DIR)/fuzz_preauth: $(FUZZ_OBJS_preauth)

# A compressed conn (COMPRESS=DEFLATE) reading hostile client bytes, over a socketpair.
FUZZ_OBJS_compress := $(FUZZ_DIR)/proxy/conn.o
FUZZ_LIBS_compress := -lssl -lcrypto -lev -lz
$(FUZZ_DIR)/fuzz_compress: CPPFLAGS += -Iproxy
$(FUZZ_DIR)/fuzz_compress: $(FUZZ_OBJS_compress)

# The TLS 1.3 record layer of a conn after conn_shed_tls, over a socketpair.
FUZZ_OBJS_tls13 := $(FUZZ_DIR)/proxy/conn.o
FUZZ_LIBS_tls13 := -lssl -lcrypto -lev -lz
$(FUZZ_DIR)/fuzz_tls13: CPPFLAGS += -Iproxy
$(FUZZ_DIR)/fuzz_tls13: $(FUZZ_OBJS_tls13)

fuzz-build: deps
	$(MAKE) $(FUZZ_BIN)

# Each target for FUZZ_TIME seconds, FUZZ_JOBS (2) at a time, on a scratch copy of its
# seed corpus; fails on any crash, leak, timeout or sanitizer report.
fuzz: fuzz-build
	@sh tests/fuzz/run.sh $(FUZZ_TIME) $(FUZZ_BIN)

deps:
	@sh deploy/deps.sh

test: deps
	$(MAKE) all $(UNIT_BIN)
	$(MAKE) unit
	$(MAKE) integration

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; ./$$t; done

# Every unit test under memcheck: any invalid access, use of uninitialised
# memory or definitely/indirectly lost block fails the target, as does a
# failing test's own non-zero status. "Still reachable" and "possibly lost"
# blocks do not count: the tests free everything today (0 bytes in use at
# exit), but a library's lazily made tables must not fail the target.
# cmocka runs every test in the one process (no fork), so valgrind sees all
# of them; a failing cmocka assert longjmps out of its test and may leave
# that test's memory behind, but then the test's status fails the target
# anyway. Not for SANITIZE=1 binaries (ASan and valgrind cannot share a
# process; make does not rebuild on changed flags, hence the ldd check).
VALGRIND ?= valgrind
VALGRIND_FLAGS ?= -q --error-exitcode=1 --leak-check=full \
	--errors-for-leak-kinds=definite,indirect --track-origins=yes
valgrind: $(UNIT_BIN)
	@if [ "$(SANITIZE)" = 1 ]; then echo "make valgrind: not with SANITIZE=1" >&2; exit 2; fi
	@command -v $(VALGRIND) >/dev/null || { echo "make valgrind: valgrind is missing (make deps)" >&2; exit 2; }
	@set -e; for t in $(UNIT_BIN); do \
		if ldd ./$$t | grep -q libasan; then echo "make valgrind: $$t is a SANITIZE=1 build; make clean first" >&2; exit 2; fi; \
		echo "== valgrind $$t"; UNIT_UNDER_VALGRIND=1 $(VALGRIND) $(VALGRIND_FLAGS) ./$$t; done

# JOBS=N: N pytest-xdist workers, a test file each at a time (module
# fixtures stay whole; lab.free_port gives each worker its own port range).
JOBS ?= 1
XDIST = $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadfile)
integration: proxy/imapmux
	$(PYTHON) -m pytest -q -p no:cacheprovider $(XDIST) tests/integration $(PYTEST_ARGS)

demo: deps all
	@sh deploy/demo.sh start

demo-stop:
	@sh deploy/demo.sh stop

# Every benchmark, one after the other; BENCH=versus (or webmail, park) runs one.
# PARK_MODES=capacity (or events,idle,...) runs only those of park.py's modes;
# VERSUS_MODES=logins,bulk_fetch (...) only those of versus.py's.
BENCH ?= versus webmail park
PARK_MODES ?=
VERSUS_MODES ?=
bench: deps all
	@set -e; for b in $(BENCH); do echo "== bench/$$b.py"; \
	  PARK_MODES="$(PARK_MODES)" VERSUS_MODES="$(VERSUS_MODES)" $(PYTHON) bench/$$b.py; done

# Pinned: another clang-format version formats some constructs differently.
CLANG_FORMAT ?= clang-format-14
lint: deps
	$(CLANG_FORMAT) --dry-run --Werror common/*.[ch] proxy/*.[ch] tests/unit/*.[ch] tests/fuzz/*.[ch] tools/*.c \
	    bench/*.[ch]

format: deps
	$(CLANG_FORMAT) -i common/*.[ch] proxy/*.[ch] tests/unit/*.[ch] tests/fuzz/*.[ch] tools/*.c \
	    bench/*.[ch]

# common/ includes nothing from proxy/, and proxy/ modules (x.c + x.h)
# include each other without a cycle; tools/layering.py prints what breaks it.
layering:
	$(PYTHON) tools/layering.py .

# make install [PREFIX=/usr/local] [DESTDIR=] [SYSTEMD_UNIT_DIR=/lib/systemd/system]:
# the two programs, the manual pages, the example configuration and the
# deploy/ files an operator copies (unit, fail2ban, the Dovecot push script)
# as documentation; the unit itself only where SYSTEMD_UNIT_DIR says.
PREFIX  ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR  ?= $(PREFIX)/share/man
DOCDIR  ?= $(PREFIX)/share/doc/imapmux
SYSTEMD_UNIT_DIR ?=
INSTALL ?= install
install: all
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
	  $(DESTDIR)$(DOCDIR)/fail2ban/filter.d \
	  $(DESTDIR)$(DOCDIR)/fail2ban/jail.d $(DESTDIR)$(DOCDIR)/dovecot
	$(INSTALL) -m 0755 proxy/imapmux $(DESTDIR)$(SBINDIR)/imapmux
	$(INSTALL) -m 0755 $(CTL_BIN) $(DESTDIR)$(SBINDIR)/imapmuxctl
	$(INSTALL) -m 0644 $(wildcard doc/*.5) $(DESTDIR)$(MANDIR)/man5/
	$(INSTALL) -m 0644 $(wildcard doc/*.8) $(DESTDIR)$(MANDIR)/man8/
	$(INSTALL) -m 0644 README.md doc/SPEC.md proxy.conf deploy/imapmux.service $(DESTDIR)$(DOCDIR)/
	$(INSTALL) -m 0644 deploy/fail2ban/filter.d/imapmux.conf $(DESTDIR)$(DOCDIR)/fail2ban/filter.d/
	$(INSTALL) -m 0644 deploy/fail2ban/jail.d/imapmux.conf $(DESTDIR)$(DOCDIR)/fail2ban/jail.d/
	$(INSTALL) -m 0644 deploy/dovecot/imapmux-push.lua $(DESTDIR)$(DOCDIR)/dovecot/
	@if [ -n "$(SYSTEMD_UNIT_DIR)" ]; then \
	  echo "$(INSTALL) -D -m 0644 deploy/imapmux.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/imapmux.service"; \
	  $(INSTALL) -D -m 0644 deploy/imapmux.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/imapmux.service; fi

# make deb: a Debian binary package (debian/, debhelper) of the tree as it
# is, uncommitted edits and new files included, built in a copy under
# $(DEB_DIR)/src so that the tree's own objects stay as they are and nothing
# lands outside build/: $(DEB_DIR)/imapmux_VERSION_ARCH.deb (beside it the
# -dbgsym package, .buildinfo and .changes). Root is not needed
# (Rules-Requires-Root: no); the build dependencies are (make deps).
DEB_DIR  := build/deb
DEB_JOBS ?= 2
deb:
	@command -v dpkg-buildpackage >/dev/null || \
	  { echo "make deb: dpkg-buildpackage is missing (make deps)" >&2; exit 2; }
	rm -rf $(DEB_DIR)
	mkdir -p $(DEB_DIR)/src/imapmux
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git ls-files -z --cached --others --exclude-standard | \
	    tar --null --ignore-failed-read -T - -cf - 2>/dev/null; \
	else tar --exclude=./build --exclude=./.git -cf - .; fi | tar -xf - -C $(DEB_DIR)/src/imapmux
	@# The package is built with Debian's compiler and flags only: no SANITIZE=1,
	@# CC= or OPT= of this make's command line or environment reaches the copy.
	cd $(DEB_DIR)/src/imapmux && unset MAKEFLAGS MFLAGS MAKELEVEL SANITIZE CC OPT && \
	  dpkg-buildpackage -b -us -uc -J$(DEB_JOBS)
	mv $(DEB_DIR)/src/*.deb $(DEB_DIR)/src/*.buildinfo $(DEB_DIR)/src/*.changes $(DEB_DIR)/
	rm -rf $(DEB_DIR)/src
	@ls $(DEB_DIR)/imapmux_*.deb

clean:
	rm -f common/*.o common/libcommon.a proxy/*.o proxy/imapmux $(CTL_BIN) $(UNIT_BIN) $(BUILD_STAMP) \
	    bench/*.o bench/imapbench bench/tlsfloor
	rm -rf tests/integration/__pycache__ build/fuzz $(DEB_DIR)
