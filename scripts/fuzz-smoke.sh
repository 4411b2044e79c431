#!/usr/bin/env bash
# A short, bounded coverage-guided fuzz run of every decoder and the query parser
# (cargo-fuzz, libFuzzer, on the stable toolchain without a sanitizer). Run by test.sh.
# A failing input is left in target/fuzz-artifacts/<target>/: copy it into
# schemas/fuzz/regressions/<target>/ once fixed, and the tests replay it for good.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${GOSSAMER_FUZZ_SECONDS:-15}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz@0.13.2
fi
for target in payload shard_command event_frames query; do
  corpus="target/fuzz-corpus/$target"
  artifacts="target/fuzz-artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  echo "fuzzing $target for ${SECONDS_PER_TARGET}s" >&2
  cargo fuzz run --sanitizer none --fuzz-dir schemas/fuzz "$target" "$corpus" "schemas/fuzz/seeds/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -max_len=8192 -rss_limit_mb=1024 -artifact_prefix="$artifacts" -print_final_stats=1 2>&1 \
    | grep -E "^(Done|stat::number_of_executed_units|==|SUMMARY)|panicked|artifact" || true
  if compgen -G "${artifacts}*" >/dev/null; then
    echo "fuzzing $target found a failing input: ${artifacts}" >&2
    exit 1
  fi
done
