#!/bin/sh
# run.sh SECONDS BINARY... — run each libFuzzer target for SECONDS, FUZZ_JOBS
# of them at a time (default 2: one a core here; each target still gets its
# full SECONDS), and fail if any of them finds anything.
#
# Each target works on a scratch copy of tests/fuzz/corpus/<name>/ (name =
# the binary's name less "fuzz_"), so the committed seeds never grow; it
# gets tests/fuzz/fuzz_<name>.dict when present and the libFuzzer flags
# listed in tests/fuzz/fuzz_<name>.options. Crash inputs go to
# build/fuzz/artifacts/, full logs to build/fuzz/logs/.
set -eu

secs=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
out=$top/build/fuzz
mkdir -p "$out/artifacts" "$out/logs"
work=$(mktemp -d "${TMPDIR:-/tmp}/imapmux-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

jobs=${FUZZ_JOBS:-2}

# run_one BINARY: one target; its verdict line goes to $work/<target>.out,
# and $work/<target>.failed exists if it found anything.
run_one() {
	bin=$1
	target=$(basename "$bin")
	name=${target#fuzz_}
	seeds=$here/corpus/$name
	corpus=$work/$name
	log=$out/logs/$target.log
	mkdir -p "$corpus"
	if [ -d "$seeds" ]; then
		cp "$seeds"/* "$corpus"/ 2>/dev/null || true
	fi
	nseeds=$(find "$corpus" -type f | wc -l)
	set -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$out/artifacts/$target-"
	[ -f "$here/$target.dict" ] && set -- "$@" -dict="$here/$target.dict"
	if [ -f "$here/$target.options" ]; then
		# shellcheck disable=SC2046
		set -- "$@" $(grep -v '^#' "$here/$target.options")
	fi
	rc=0
	"$bin" "$@" "$corpus" >"$log" 2>&1 || rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
	ncorpus=$(find "$corpus" -type f | wc -l)
	# UBSan and ASan reports abort (-fno-sanitize-recover), but look anyway.
	if [ "$rc" -ne 0 ] || grep -Eq 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ_CHECK failed' "$log"; then
		{
			printf '%-22s FAILED (exit %s) after %s execs; log: %s\n' "$target" "$rc" "${execs:-?}" "$log"
			grep -E -A 30 'ERROR:|runtime error:|FUZZ_CHECK failed' "$log" | head -n 40 || true
		} >"$work/$target.out"
		: >"$work/$target.failed"
	else
		printf '%-22s ok: %s execs in %ss, corpus %s -> %s inputs\n' "$target" "${execs:-?}" "$secs" "$nseeds" "$ncorpus" >"$work/$target.out"
	fi
}

# Batches of $jobs (the targets all run the same SECONDS, so a batch ends
# together); verdicts are printed in the order of the arguments.
batch=0
for bin in "$@"; do
	run_one "$bin" &
	batch=$((batch + 1))
	if [ "$batch" -ge "$jobs" ]; then
		wait
		batch=0
	fi
done
wait
failed=""
for bin in "$@"; do
	target=$(basename "$bin")
	cat "$work/$target.out"
	[ -e "$work/$target.failed" ] && failed="$failed $target"
done
if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed" >&2
	exit 1
fi
