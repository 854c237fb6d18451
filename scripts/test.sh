#!/usr/bin/env bash
# Runs joulebridge's tests. Two tiers:
#
#   scripts/test.sh --fast   day-to-day: unit and in-process tests (`cargo test --workspace`);
#                            installs nothing; the environment-bound tests show as "ignored"
#                            with the reason (`#[ignore = "needs …"]`). About 20 s warm.
#   scripts/test.sh          the full tier, what CI runs (as root): first
#                            scripts/setup-test-env.sh installs and builds everything the tests
#                            need, then every test runs, ignored ones included, in debug and in
#                            release (overflow checks differ). A missing piece fails its test
#                            with "missing: …"; nothing is skipped, and this script fails if
#                            any test was ignored or filtered out.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --fast ]]; then
    exec cargo test --workspace --locked
fi
[[ $# -eq 0 ]] || { echo "usage: scripts/test.sh [--fast]" >&2; exit 2; }

scripts/setup-test-env.sh

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT

# One profile: every test binary, ignored tests included; then the totals of cargo's
# "test result:" lines, as one closing line.
run_tier() {
    local name=$1; shift
    local log=$log_dir/$name.log
    cargo test --workspace --locked "$@" -- --include-ignored 2>&1 | tee "$log"
    awk -v name="$name" '
        /^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i + 1) ~ /^passed;?$/) passed += $i
                if ($(i + 1) ~ /^failed;?$/) failed += $i
                if ($(i + 1) ~ /^ignored;?$/) ignored += $i
                if ($(i + 1) == "filtered") filtered += $i
            }
        }
        END {
            printf "%s: %d passed, %d failed, %d skipped\n", name, passed, failed, ignored + filtered
            exit (failed + ignored + filtered > 0 || passed == 0)
        }' "$log"
}

run_tier debug
run_tier release --release
