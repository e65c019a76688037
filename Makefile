# imapmux — build, test, demo. See README.md.
CC      ?= cc
OPT     ?= -O2
CFLAGS  ?= $(OPT) -g
WARN    := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wmissing-prototypes -Wstrict-prototypes
CPPFLAGS += -D_GNU_SOURCE -Icommon
ALL_CFLAGS = -std=c11 $(WARN) $(CFLAGS) $(SAN_FLAGS) -pthread
LDLIBS_PROXY = -lssl -lcrypto -lev -lhiredis -lcrypt -lpthread -lm
PYTHON  ?= /usr/bin/python3

ifeq ($(SANITIZE),1)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
endif

COMMON_SRC := $(sort $(wildcard common/*.c))
COMMON_OBJ := $(COMMON_SRC:.c=.o)
PROXY_SRC  := $(sort $(wildcard proxy/*.c))
PROXY_OBJ  := $(PROXY_SRC:.c=.o)
UNIT_SRC   := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BIN   := $(UNIT_SRC:.c=)

.PHONY: all deps test unit integration demo demo-stop bench clean lint format

all: proxy/imapmux

%.o: %.c $(wildcard common/*.h proxy/*.h)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

common/libcommon.a: $(COMMON_OBJ)
	rm -f $@ && ar rcs $@ $^

proxy/imapmux: $(PROXY_OBJ) common/libcommon.a
	$(CC) $(ALL_CFLAGS) -o $@ $(PROXY_OBJ) common/libcommon.a $(LDLIBS_PROXY)

tests/unit/test_%: tests/unit/test_%.c common/libcommon.a
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -Wno-missing-prototypes -o $@ $< common/libcommon.a -lcmocka -lcrypt -lm -lev -lpthread

deps:
	@sh deploy/deps.sh

test: deps
	$(MAKE) all $(UNIT_BIN)
	$(MAKE) unit
	$(MAKE) integration

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; ./$$t; done

integration: proxy/imapmux
	$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration $(PYTEST_ARGS)

demo: deps all
	@sh deploy/demo.sh start

demo-stop:
	@sh deploy/demo.sh stop

bench: deps all
	$(PYTHON) bench/webmail.py

lint:
	clang-format --dry-run --Werror common/*.[ch] proxy/*.[ch] tests/unit/*.c

format:
	clang-format -i common/*.[ch] proxy/*.[ch] tests/unit/*.c

clean:
	rm -f common/*.o common/libcommon.a proxy/*.o proxy/imapmux $(UNIT_BIN)
	rm -rf tests/integration/__pycache__
