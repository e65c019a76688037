#!/bin/sh
# deploy/demo.sh start|stop|status -- imapmux in front of two Dovecots and a
# Redis, all on loopback, state and logs in demo-run/ (`make demo`,
# `make demo-stop`). The servers are started by deploy/lab.py; imapmux runs
# with the repository's proxy.conf.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
RUN=demo-run
CA="$RUN/cert.pem"

usage() {
	echo "usage: sh deploy/demo.sh start|stop|status" >&2
	exit 2
}

howto() {
	cat <<EOF

imapmux demo is running (state and logs in $RUN/, imapmux log: $RUN/imapmux.log)
  users      alice, carol on backend a (127.0.0.1:11143); bob on backend b (127.0.0.1:11144)
             password demo-pass for all; master user proxymaster / demo-master-secret
  imaps      curl --cacert $CA imaps://127.0.0.1:9993/ -u alice:demo-pass
             curl --cacert $CA 'imaps://127.0.0.1:9993/INBOX;UID=1' -u alice:demo-pass
  starttls   curl --ssl-reqd --cacert $CA imap://127.0.0.1:9143/ -u carol:demo-pass
  by hand    openssl s_client -quiet -CAfile $CA -connect 127.0.0.1:9993
             openssl s_client -quiet -CAfile $CA -starttls imap -connect 127.0.0.1:9143
             then type: a LOGIN alice demo-pass / b SELECT INBOX / c IDLE ... DONE / d LOGOUT
  redis      redis-cli -p 16379 keys 'imapmux:*'
  stop       make demo-stop
EOF
}

# curl through imapmux as USER: prints the mailbox list, fails loudly.
check_login() {
	curl -sS --max-time 10 --cacert "$CA" "imaps://127.0.0.1:9993/" -u "$1:demo-pass"
}

start() {
	if [ ! -x proxy/imapmux ]; then
		echo "demo: proxy/imapmux is not built (run make)" >&2
		exit 1
	fi
	rc=0
	"$PY" deploy/lab.py demo-start --dir "$RUN" --conf proxy.conf || rc=$?
	if [ "$rc" = 2 ]; then
		# already running: say so, and how to use it
		howto
		exit 0
	fi
	[ "$rc" = 0 ] || exit "$rc"

	echo "demo: checking a login through imapmux (curl, implicit TLS, alice)"
	if ! out=$(check_login alice 2>&1) || ! printf '%s' "$out" | grep -q INBOX; then
		echo "demo: FAILED: curl login as alice through 127.0.0.1:9993:" >&2
		printf '%s\n' "$out" >&2
		echo "--- last lines of $RUN/imapmux.log:" >&2
		tail -n 20 "$RUN/imapmux.log" >&2 || true
		echo "demo: everything is left running for a look; make demo-stop stops it" >&2
		exit 1
	fi
	printf '%s\n' "$out" | sed 's/^/  /'
	# bob lives on backend b: only his route in Redis (imapmux:route:bob) gets him there.
	if ! check_login bob >/dev/null 2>&1; then
		echo "demo: FAILED: bob (routed to backend b by Redis) cannot log in" >&2
		tail -n 20 "$RUN/imapmux.log" >&2 || true
		exit 1
	fi
	echo "demo: bob logged in through imapmux on backend b (route from Redis)"
	howto
}

case "${1:-}" in
start) start ;;
stop) "$PY" deploy/lab.py demo-stop --dir "$RUN" ;;
status) "$PY" deploy/lab.py demo-status --dir "$RUN" ;;
*) usage ;;
esac
