#!/bin/sh
# Install the Debian packages imapmux needs to build, test and run its demo,
# when any is missing. Idempotent; needs root only when something is missing.
#
# Cyrus IMAP (a second real backend for the tests; deploy/lab.py Cyrus):
# cyrus-common (master, libraries, the cyrus user) and sasl2-bin (saslpasswd2)
# are installed as packages. The package with the imapd binary, cyrus-imapd,
# Conflicts with dovecot-imapd (both provide imap-server), so it is never
# installed: its .deb is fetched with `apt-get download` (same version as
# cyrus-common) and only its two daemons, usr/lib/cyrus/bin/imapd and idled,
# are unpacked into $CYRUS_DIR.
set -eu
# libclang-rt-14-dev: libFuzzer and the sanitizer runtimes for `make fuzz`
# (clang only recommends it, and recommends are not installed here).
# clang-format-14: `make lint` is pinned to this version (formatting differs
# between versions).
# lua-socket: deploy/dovecot/imapmux-push.lua talks to Redis with it (built
# for Lua 5.4, Dovecot's; dovecot-core ships the Lua plugins themselves).
PKGS="gcc clang make pkg-config libssl-dev libev-dev libcmocka-dev libhiredis-dev
libcrypt-dev dovecot-imapd redis-server python3 python3-pytest curl openssl valgrind
cyrus-common sasl2-bin libclang-rt-14-dev clang-format-14 lua-socket"
# gdb: bench/park.py reads imapmux's struct sizes and glibc's heap figures with it.
PKGS="$PKGS gdb"
# zlib1g-dev: COMPRESS=DEFLATE (RFC 4978) toward clients is zlib's raw deflate
# (proxy/conn.c), linked with -lz.
PKGS="$PKGS zlib1g-dev"
# groff: the man pages are checked for warnings (test_imapmuxctl.py).
PKGS="$PKGS groff"
# fail2ban: deploy/fail2ban/filter.d/imapmux.conf is checked with fail2ban-regex
# against real log lines (test_logs.py); policy-rc.d below keeps its server off.
PKGS="$PKGS fail2ban"
# redis-sentinel, haproxy: the fleet tests (test_sentinel.py, test_fleet.py) run
# real Sentinels and a real HAProxy with deploy/haproxy.cfg; policy-rc.d below
# keeps their system services off.
PKGS="$PKGS redis-sentinel haproxy"
# make deb (debian/, debhelper) and its test (test_deb.py), which installs the
# package: its Depends (ssl-cert for the snakeoil certificate, systemd for
# systemd-sysusers) and what the test runs (setpriv is in util-linux).
PKGS="$PKGS debhelper dpkg-dev fakeroot ssl-cert systemd"
# chromium: the status page (GET /) is rendered in headless Chromium and
# screenshotted (test_status_page.py); python3-pil reads the screenshot back.
PKGS="$PKGS chromium python3-pil"
# python3-pytest-xdist: `make integration JOBS=2` (CI's SANITIZE=1 pass runs
# its test files two at a time).
PKGS="$PKGS python3-pytest-xdist"
# isync (mbsync), fetchmail, offlineimap3, neomutt: the real-client matrix
# (test_clients.py, README "Client compatibility"); curl and Python's imaplib
# come with the packages above, script(1) with bsdutils (essential).
PKGS="$PKGS isync fetchmail offlineimap3 neomutt"
# nginx, libnginx-mod-mail: bench/versus.py's peer, nginx's IMAP proxy (Debian
# 12's nginx-light has no mail module; nginx + libnginx-mod-mail is the set
# that provides it). The benchmark runs its own nginx (-p, -c, daemon off,
# loopback ports); the system one is kept off below (its default site would
# listen on port 80).
PKGS="$PKGS nginx libnginx-mod-mail"
CYRUS_DIR=/usr/local/lib/imapmux-cyrus

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

# The unpacked imapd and idled are there and match the installed cyrus-common.
cyrus_imapd_ok() {
	v=$(dpkg-query -W -f='${Version}' cyrus-common 2>/dev/null) || return 1
	[ -x "$CYRUS_DIR/imapd" ] && [ -x "$CYRUS_DIR/idled" ] &&
		[ "$(cat "$CYRUS_DIR/VERSION" 2>/dev/null)" = "$v" ]
}

missing=""
for p in $PKGS; do
	installed "$p" || missing="$missing $p"
done
[ -z "$missing" ] && cyrus_imapd_ok && exit 0
if [ "$(id -u)" != 0 ]; then
	[ -n "$missing" ] && echo "deps.sh: missing packages and not root; install them:$missing" >&2
	cyrus_imapd_ok || echo "deps.sh: $CYRUS_DIR/imapd is missing; run deploy/deps.sh as root" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
APT="apt-get -o DPkg::Lock::Timeout=300"
# Never let package scripts start system daemons (dovecot, redis, cyrus) on
# their default ports: the tests and the demo start their own on loopback.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	trap 'rm -f "$policy"' EXIT
fi

if [ -n "$missing" ]; then
	echo "deps.sh: installing:$missing"
	# cyrus-common needs a mail-transport-agent; unless one is installed,
	# take dma, which has no daemon (apt's default, exim4, would listen on
	# port 25).
	case " $missing " in
	*" cyrus-common "*)
		dpkg-query -W -f='${db:Status-Abbrev} ${Provides}\n' 2>/dev/null |
			grep -q '^ii .*mail-transport-agent' || missing="$missing dma"
		;;
	esac
	$APT update -qq
	# shellcheck disable=SC2086
	$APT install -y -qq --no-install-recommends $missing
	case " $missing " in
	*" cyrus-common "*)
		# The system-wide Cyrus is not wanted: not at boot, not now.
		if [ -e /etc/init.d/cyrus-imapd ]; then
			update-rc.d cyrus-imapd disable >/dev/null 2>&1 || true
		fi
		deb-systemd-helper disable cyrus-imapd.service >/dev/null 2>&1 || true
		if [ -d /run/systemd/system ]; then
			systemctl stop cyrus-imapd.service >/dev/null 2>&1 || true
		elif [ -x /etc/init.d/cyrus-imapd ]; then
			/etc/init.d/cyrus-imapd stop >/dev/null 2>&1 || true
		fi
		;;
	esac
	case " $missing " in
	*" nginx "*)
		# The system-wide nginx is not wanted either.
		if [ -e /etc/init.d/nginx ]; then
			update-rc.d nginx disable >/dev/null 2>&1 || true
		fi
		deb-systemd-helper disable nginx.service >/dev/null 2>&1 || true
		if [ -d /run/systemd/system ]; then
			systemctl stop nginx.service >/dev/null 2>&1 || true
		elif [ -x /etc/init.d/nginx ]; then
			/etc/init.d/nginx stop >/dev/null 2>&1 || true
		fi
		;;
	esac
fi

if ! cyrus_imapd_ok; then
	v=$(dpkg-query -W -f='${Version}' cyrus-common)
	echo "deps.sh: unpacking imapd and idled of cyrus-imapd $v into $CYRUS_DIR"
	tmp=$(mktemp -d)
	chmod 755 "$tmp"
	id _apt >/dev/null 2>&1 && chown _apt "$tmp"
	if ! (cd "$tmp" && $APT download -qq "cyrus-imapd=$v"); then
		$APT update -qq
		(cd "$tmp" && $APT download -qq "cyrus-imapd=$v") || {
			echo "deps.sh: cannot download cyrus-imapd $v (upgrade cyrus-common?)" >&2
			rm -rf "$tmp"
			exit 1
		}
	fi
	dpkg-deb -x "$tmp"/cyrus-imapd_*.deb "$tmp/x"
	mkdir -p "$CYRUS_DIR"
	rm -f "$CYRUS_DIR/VERSION"
	for b in imapd idled; do
		install -m 755 "$tmp/x/usr/lib/cyrus/bin/$b" "$CYRUS_DIR/$b.new"
		mv -f "$CYRUS_DIR/$b.new" "$CYRUS_DIR/$b"
	done
	echo "$v" >"$CYRUS_DIR/VERSION"
	rm -rf "$tmp"
fi
