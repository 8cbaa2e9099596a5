#!/usr/bin/env bash
# End-to-end Kafka ingest benchmark against the tansu broker, all in one run on one machine:
#   1. a bare rdkafka consumer (benches/kafka_drain.rs) drains the topic: the baseline;
#   2. `patron replay --from-kafka --until-end` rebuilds a store from the same topic;
#   3. `patron serve` joins a consumer group and catches up to lag 0 (polled on /v1/status).
# Prints records/s for each and the ratios to the baseline (target >= 0.8); replay's and serve's
# own summaries give the checkpoint p99.
#
#   EVENTS_CUSTOMERS=145000 benches/kafka_ingest.sh     # about 2M events
#
# Builds what it needs (release, workspace-wide; SKIP_BUILD=1 uses what is built; PATRON_BIN and
# DRAIN_BIN name other executables). Needs `tansu` (see .ci/run), curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --benches >&2
DRAIN=${DRAIN_BIN:-$(bench_exe kafka_drain patron-stream)}
CUSTOMERS=${EVENTS_CUSTOMERS:-145000}
PORT=${PORT:-19092}
WORK=${WORK:-/tmp/patron-kafka-bench}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PATRON_BIN:-$TARGET/release/patron}
TANSU=${TANSU_BIN:-tansu}
BROKER="127.0.0.1:$PORT"
TOPIC=bench-events
DLQ=bench-dead-letters
rm -rf "$WORK" && mkdir -p "$WORK"

"$TANSU" broker --storage-engine memory://tansu/ --listener-url "tcp://$BROKER" \
    --advertised-listener-url "tcp://$BROKER" > "$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $TANSU_PID 2>/dev/null || true; [ -n "${SERVE_PID:-}" ] && kill $SERVE_PID 2>/dev/null || true' EXIT
trap 'exit 143' INT TERM
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
"$TANSU" topic create "$TOPIC" --partitions 4 --broker "tcp://$BROKER" > /dev/null
"$TANSU" topic create "$DLQ" --partitions 1 --broker "tcp://$BROKER" > /dev/null

START=$(date -u -d '-731 days' +%Y-%m-%d)
echo "producing $CUSTOMERS customers' events to $TOPIC" >&2
"$BIN" generate --customers "$CUSTOMERS" --days 730 --start "$START" --seed 1 \
    --kafka "$BROKER" --topic "$TOPIC" 2> "$WORK/generate.log"
cat "$WORK/generate.log" >&2

"$DRAIN" "$BROKER" "$TOPIC" | tee "$WORK/drain.out"
RECORDS=$(awk '/^drained/ {print $2}' "$WORK/drain.out")
BARE_SECS=$(awk '/^drained/ {print $7}' "$WORK/drain.out")
[ -n "$RECORDS" ] || { echo "the drain printed no \`drained\` line" >&2; exit 1; }

cat > "$WORK/patron.toml" <<TOML
[store]
path = "$WORK/serve.redb"
[source]
kind = "kafka"
brokers = "$BROKER"
topic = "$TOPIC"
group_id = "bench-serve"
dlq_topic = "$DLQ"
[api]
listen = "127.0.0.1:0"
TOML

/usr/bin/time -f '%e %M' -o "$WORK/replay.time" "$BIN" replay --config "$WORK/patron.toml" \
    --from-kafka --brokers "$BROKER" --topic "$TOPIC" --until-end --store "$WORK/replay.redb" \
    > "$WORK/replay.out"
cat "$WORK/replay.out"
read -r REPLAY_SECS REPLAY_RSS_KB < "$WORK/replay.time"

STARTED=$(date +%s.%N)
"$BIN" serve --config "$WORK/patron.toml" --insecure-no-auth > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVE_PID=$!
URL=""
for _ in $(seq 200); do
    URL=$(awk '/^HTTP: / {print $2}' "$WORK/serve.out")
    [ -n "$URL" ] && break
    sleep 0.05
done
[ -n "$URL" ] || { echo "serve printed no HTTP address" >&2; cat "$WORK/serve.err" >&2; exit 1; }
DEADLINE=$(( $(date +%s) + ${SERVE_TIMEOUT:-900} ))
while :; do
    [ "$(date +%s)" -lt "$DEADLINE" ] || { echo "serve did not reach lag 0 in time" >&2; exit 1; }
    COMMITTED=$(curl -s "$URL/v1/status" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(p["committed_offset"] for p in d["partitions"]))' 2>/dev/null || echo 0)
    [ "$COMMITTED" -ge "$RECORDS" ] && break
    sleep 0.1
done
SERVE_SECS=$(python3 -c "import time; print(time.time() - $STARTED)")
CHECKPOINTS=$(curl -s "$URL/metrics" | awk '/^patron_checkpoint_duration_seconds_count/ {print "serve checkpoints (metrics):", $2}')
kill -TERM $SERVE_PID; wait $SERVE_PID || true
SERVE_PID=""
cat "$WORK/serve.err" | tail -2

python3 - "$RECORDS" "$BARE_SECS" "$REPLAY_SECS" "$SERVE_SECS" <<'PY'
import sys
n, bare, replay, serve = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"records              {n}")
print(f"bare rdkafka drain   {bare:8.2f} s  {n/bare:10.0f} rec/s")
print(f"replay --from-kafka  {replay:8.2f} s  {n/replay:10.0f} rec/s  ratio {bare/replay:.2f}")
print(f"serve to lag 0       {serve:8.2f} s  {n/serve:10.0f} rec/s  ratio {bare/serve:.2f}")
PY
echo "$CHECKPOINTS"
