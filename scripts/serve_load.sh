#!/usr/bin/env bash
# Load test of `og-llava serve` on a nano-world model: 32 clients × 4 requests against a
# server batching up to 32 sequences (answers compared with the same requests one by one),
# then against one serving a sequence at a time.
#
#   scripts/serve_load.sh WORLD_DIR MODEL_DIR [serve_load flags: --max-tokens N --ignore-eos ...]
#
# SERVE_FLAGS adds flags to both servers (e.g. SERVE_FLAGS="--device ndarray").
# WORLD_DIR is what `og-llava world` (or `cargo xtask train`) wrote: eval/tasks.jsonl,
# images/, masks/. Builds the release binary and the load example first.
set -euo pipefail
world=$1
model=$2
shift 2
cargo build --release -q -p og-llava-cli --bin og-llava --example serve_load
target=${CARGO_TARGET_DIR:-target}/release
log=$(mktemp)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -f "$log"' EXIT

start() {
  # shellcheck disable=SC2086
  "$target/og-llava" serve --model "$model" --port 0 --max-queue 256 ${SERVE_FLAGS:-} "$@" >"$log" 2>&1 &
  server=$!
  for _ in $(seq 600); do
    url=$(grep -o 'http://[0-9.:]*' "$log" | head -1 || true)
    [ -n "$url" ] && return
    kill -0 "$server" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.1
  done
  echo "the server did not start"; cat "$log"; exit 1
}

load() {
  "$target/examples/serve_load" --url "$url" --tasks "$world/eval/tasks.jsonl" \
    --images "$world/images" --masks "$world/masks" --clients 32 --requests 4 "${load_flags[@]}" "$@"
}
load_flags=("$@")

echo "== --max-batch 32"
start --max-batch 32
load
kill "$server"; wait "$server" 2>/dev/null || true

echo "== --max-batch 1 (one sequence at a time)"
start --max-batch 1
load --skip-sequential
