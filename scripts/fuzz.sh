#!/usr/bin/env bash
# Fuzz shardcast's parsers (the fuzz/ crate; targets and properties in fuzz/src/*.rs).
#
#   bash scripts/fuzz.sh --quick            every target ~20 s (what scripts/test.sh runs)
#   bash scripts/fuzz.sh --long SECONDS     every target SECONDS, one after the other, with a table
#   bash scripts/fuzz.sh --replay           the stable replay only
#   bash scripts/fuzz.sh ... TARGET...      only these targets
#
# Two modes, and the script says which one ran:
# - libFuzzer (coverage-guided): `cargo +nightly fuzz run`, with AddressSanitizer and debug
#   assertions, when a nightly toolchain is installed (cargo-fuzz is installed with
#   `cargo install cargo-fuzz --locked` if missing, unless FUZZ_NO_INSTALL=1).
# - stable replay (no nightly): `fuzz/src/bin/replay.rs` runs every target over its committed
#   corpus plus FUZZ_MUTATIONS (default 5000) deterministic mutations of it. Not coverage-guided.
#   --long needs libFuzzer.
#
# The committed corpus (fuzz/corpus/TARGET) is read, never written: inputs libFuzzer finds go to
# $FUZZ_WORK/corpus/TARGET (default target/fuzz-work; a temporary directory for --quick), crashes
# to fuzz/artifacts/TARGET/. Exit status 1 if any target found a crash, timeout or leak.
# Environment: FUZZ_QUICK_SECONDS (20), FUZZ_MUTATIONS (5000), FUZZ_WORK, FUZZ_RSS_MB (2048),
# FUZZ_MODE=replay|libfuzzer (force a mode).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD

mode=quick
seconds=${FUZZ_QUICK_SECONDS:-20}
targets=()
while (($#)); do
  case "$1" in
    --quick) mode=quick ;;
    --long)
      mode=long
      seconds=${2:?--long needs SECONDS}
      shift
      ;;
    --replay) FUZZ_MODE=replay ;;
    -h | --help)
      sed -n '2,21p' "$0"
      exit 0
      ;;
    *) targets+=("$1") ;;
  esac
  shift
done

# Target names and -max_len, read from fuzz/src/lib.rs (TARGETS) so there is one list.
declare -A max_len
all=()
while read -r name len; do
  all+=("$name")
  max_len[$name]=$len
done < <(awk '/^ +name: "/ { gsub(/[",]/, "", $2); n = $2 } /^ +max_len: [0-9]/ { gsub(/[_,]/, "", $2); print n, $2 }' fuzz/src/lib.rs)
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ -n ${max_len[$t]:-} ]] || { echo "unknown target $t (targets: ${all[*]})" >&2; exit 2; }
done

wait_for_bench() {
  while [[ -e /tmp/shardcast-bench-running ]]; do sleep 20; done
}

have_libfuzzer() {
  [[ ${FUZZ_MODE:-} == replay ]] && return 1
  cargo +nightly --version >/dev/null 2>&1 || return 1
  if ! cargo fuzz --version >/dev/null 2>&1; then
    [[ ${FUZZ_NO_INSTALL:-} == 1 ]] && return 1
    echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked >/dev/null 2>&1 || return 1
  fi
  return 0
}

run_replay() {
  echo "fuzz mode: STABLE REPLAY (no nightly toolchain or cargo-fuzz: corpus + ${FUZZ_MUTATIONS:-5000} deterministic mutations per target, not coverage-guided)"
  (cd fuzz && cargo build --locked --release --no-default-features --bin replay)
  fuzz/target/release/replay --mutations "${FUZZ_MUTATIONS:-5000}" "${targets[@]}"
}

if [[ ${FUZZ_MODE:-} != libfuzzer ]] && ! have_libfuzzer; then
  if [[ $mode == long ]]; then
    echo "--long needs libFuzzer: a nightly toolchain and cargo-fuzz" >&2
    exit 1
  fi
  run_replay
  exit
fi

echo "fuzz mode: LIBFUZZER (cargo +nightly fuzz run, AddressSanitizer, debug assertions), ${seconds}s per target: ${targets[*]}"
if [[ $mode == quick ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
else
  work=${FUZZ_WORK:-$REPO/target/fuzz-work}
fi
logs=$work/logs
mkdir -p "$logs"
cargo +nightly fuzz build >"$logs/build.log" 2>&1 || { cat "$logs/build.log"; exit 1; }

# One summary line per target, from libFuzzer's INITED / DONE lines and final stats.
stat() { sed -n "s/^stat::$2: *//p" "$1" | tail -1; }
summary=()
failed=0
for t in "${targets[@]}"; do
  wait_for_bench
  mkdir -p "$work/corpus/$t" "fuzz/artifacts/$t"
  before=$(find "$work/corpus/$t" -type f | wc -l)
  log=$logs/$t.log
  start=$(date +%s)
  set +e
  cargo +nightly fuzz run "$t" "$work/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len="${max_len[$t]}" -dict="fuzz/dict/$t.dict" \
    -timeout=10 -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(($(date +%s) - start))
  inited=$(grep -m1 -E '^#[0-9]+[[:space:]]+INITED' "$log" || true)
  last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse)' "$log" | tail -1 || true)
  cov0=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$inited")
  cov1=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft1=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp0=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$inited")
  corp1=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  execs=$(stat "$log" number_of_executed_units)
  rate=$(stat "$log" average_exec_per_sec)
  rss=$(stat "$log" peak_rss_mb)
  found=$(find "$work/corpus/$t" -type f | wc -l)
  verdict=ok
  if ((rc != 0)) || grep -qE '^(==[0-9]+==ERROR|SUMMARY: libFuzzer|.*panicked at)' "$log"; then
    verdict="FAILED (exit $rc): $(grep -m1 -E 'panicked at|ERROR: |SUMMARY' "$log" || true)"
    failed=1
    tail -40 "$log"
    ls -1 "fuzz/artifacts/$t/" | sed 's/^/  artifact: /'
  fi
  line=$(printf '%-14s %5ss %12s execs %7s/s  cov %s->%s ft %s  corpus %s->%s (+%s new files)  rss %sMB  %s' \
    "$t" "$elapsed" "${execs:-?}" "${rate:-?}" "${cov0:-?}" "${cov1:-?}" "${ft1:-?}" \
    "${corp0:-?}" "${corp1:-?}" "$((found - before))" "${rss:-?}" "$verdict")
  echo "$line"
  summary+=("$line")
done

echo
echo "fuzz summary (libFuzzer, ${seconds}s per target; logs in $logs):"
printf '  %s\n' "${summary[@]}"
exit $failed
