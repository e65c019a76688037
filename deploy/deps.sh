#!/bin/sh
# Install the Debian packages imapmux needs to build, test and run its demo,
# when any is missing. Idempotent; needs root only when something is missing.
set -eu
# libclang-rt-14-dev: libFuzzer and the sanitizer runtimes for `make fuzz`
# (clang only recommends it, and recommends are not installed here).
PKGS="gcc clang make pkg-config libssl-dev libev-dev libcmocka-dev libhiredis-dev
libcrypt-dev dovecot-imapd redis-server python3 python3-pytest curl openssl
libclang-rt-14-dev"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps.sh: installing:$missing"
if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages and not root; install them:$missing" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Never let package scripts start system daemons (dovecot, redis) on their
# default ports: the tests and the demo start their own on loopback.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
