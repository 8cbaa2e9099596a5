#!/usr/bin/env bash
# End-to-end Kafka ingest benchmark against the tansu broker, all in one run on one machine:
#   1. a bare rdkafka consumer (benches/kafka_drain.rs) drains the topic: the baseline;
#   2. `patron replay --from-kafka --until-end` rebuilds a store from the same topic;
#   3. `patron serve` joins a consumer group and catches up to lag 0 (polled on /v1/status),
#      timed from its process start and from the group's assignment;
#   4. a second `serve` with an empty store takes the partitions over: with the changelog on it
#      restores them from `<topic>-changelog`, with CHANGELOG=false it reads the topic again.
# Prints records/s for each and the ratios to the baseline (target >= 0.8); replay's and serve's
# own summaries give the checkpoint p99.
#
#   EVENTS_CUSTOMERS=145000 benches/kafka_ingest.sh     # about 2M events
#   CHANGELOG=false benches/kafka_ingest.sh             # serve without the changelog topic
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
# The interpreter itself, not a version manager's shim: see serve_to_lag_0.
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
DLQ=bench-dead-letters
rm -rf "$WORK" && mkdir -p "$WORK"

# A broker from the run before may still hold the port for a moment: wait for it to go.
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || break; sleep 0.1; done
"$TANSU" broker --storage-engine memory://tansu/ --listener-url "tcp://$BROKER" \
    --advertised-listener-url "tcp://$BROKER" > "$WORK/tansu.log" 2>&1 &
TANSU_PID=$!
trap 'kill $TANSU_PID 2>/dev/null || true; [ -n "${SERVE_PID:-}" ] && kill $SERVE_PID 2>/dev/null || true' EXIT
trap 'exit 143' INT TERM
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
# A broker that has just started sometimes resets the first connection: try a few times.
create_topic() {
    for attempt in 1 2 3 4 5; do
        kill -0 $TANSU_PID 2>/dev/null || { echo "tansu exited:" >&2; tail -5 "$WORK/tansu.log" >&2; return 1; }
        "$TANSU" topic create "$1" --partitions "$2" --broker "tcp://$BROKER" > /dev/null && return 0
        echo "topic create $1 failed (attempt $attempt); retrying" >&2
        sleep 1
    done
    return 1
}
create_topic "$TOPIC" 4
create_topic "$DLQ" 1

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
changelog = ${CHANGELOG:-true}
[api]
listen = "127.0.0.1:0"
TOML

/usr/bin/time -f '%e %M' -o "$WORK/replay.time" "$BIN" replay --config "$WORK/patron.toml" \
    --from-kafka --brokers "$BROKER" --topic "$TOPIC" --until-end --store "$WORK/replay.redb" \
    > "$WORK/replay.out"
cat "$WORK/replay.out"
read -r REPLAY_SECS REPLAY_RSS_KB < "$WORK/replay.time"

# Starts serve with config $1, waits until it has committed every produced record (and every
# identity record it routed through the topic); prints the seconds that took from the process
# start and from the group's assignment (the bare drain is timed from its assign, so that is the
# like-for-like figure), and leaves the status at lag 0 in $WORK/status.json. One Python process polls
# /v1/status for the whole wait: a curl and an interpreter per poll (through pyenv's shell shims
# where those are installed) took a fifth of the two cores from the serve being measured.
serve_to_lag_0() {
    local started url
    started=$(date +%s.%N)
    "$BIN" serve --config "$1" --insecure-no-auth > "$WORK/serve.out" 2> "$WORK/serve.err" &
    SERVE_PID=$!
    url=""
    for _ in $(seq 200); do
        url=$(awk '/^HTTP: / {print $2}' "$WORK/serve.out")
        [ -n "$url" ] && break
        sleep 0.05
    done
    [ -n "$url" ] || { echo "serve printed no HTTP address" >&2; cat "$WORK/serve.err" >&2; exit 1; }
    "$PYTHON" - "$url/v1/status" "$RECORDS" "${SERVE_TIMEOUT:-900}" "$started" "$WORK/status.json" <<'PY' || exit 1
import json, sys, time, urllib.request
url, records, timeout, started, keep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
deadline = time.monotonic() + timeout
assigned = None
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status = json.load(response)
        # Identity records routed through the log (always on in `serve` with more than one
        # partition) are appended to the same partitions: lag 0 is every original record
        # and every routed record acknowledged, read back and committed.
        if assigned is None and status["partitions"]:
            assigned = time.time()
        routing = status.get("identity_routing", {})
        committed = sum(p["committed_offset"] for p in status["partitions"])
        if routing.get("pending", 0) == 0 and committed >= records + routing.get("sent", 0):
            done = time.time()
            print(f"{done - started:.3f} {done - (assigned or started):.3f}")
            with open(keep, "w") as out:
                json.dump(status, out)
            sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.05)
sys.exit("serve did not reach lag 0 in time")
PY
    curl -s "$url/metrics" | awk '/^patron_checkpoint_duration_seconds_count/ {print "serve checkpoints (metrics):", $2}' > "$WORK/checkpoints.txt"
    kill -TERM $SERVE_PID; wait $SERVE_PID || true
    SERVE_PID=""
    tail -2 "$WORK/serve.err" >&2
}

# (An assignment, so that a failed wait stops the script here.)
SERVE_TIMES=$(serve_to_lag_0 "$WORK/patron.toml")
read -r SERVE_SECS SERVE_ASSIGNED_SECS <<< "$SERVE_TIMES"
CHECKPOINTS=$(cat "$WORK/checkpoints.txt")
python3 -c 'import json,sys; c=json.load(open(sys.argv[1])).get("changelog",{}); print("changelog records sent:", c.get("records_sent"))' "$WORK/status.json"

# The takeover: an empty store in the same group.
sed "s|$WORK/serve.redb|$WORK/takeover.redb|" "$WORK/patron.toml" > "$WORK/takeover.toml"
TAKEOVER_TIMES=$(serve_to_lag_0 "$WORK/takeover.toml")
read -r TAKEOVER_SECS _ <<< "$TAKEOVER_TIMES"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d.get("changelog",{}); print("takeover: restored partitions", c.get("restored_partitions"), "profiles", c.get("restored_profiles"), "events applied", d.get("applied"))' "$WORK/status.json"

python3 - "$RECORDS" "$BARE_SECS" "$REPLAY_SECS" "$SERVE_SECS" "$TAKEOVER_SECS" "$SERVE_ASSIGNED_SECS" <<'PY'
import sys
n, bare, replay, serve, takeover, assigned = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
print(f"records              {n}")
print(f"bare rdkafka drain   {bare:8.2f} s  {n/bare:10.0f} rec/s")
print(f"replay --from-kafka  {replay:8.2f} s  {n/replay:10.0f} rec/s  ratio {bare/replay:.2f}")
print(f"serve to lag 0       {serve:8.2f} s  {n/serve:10.0f} rec/s  ratio {bare/serve:.2f}  (from the process start)")
print(f"serve, assigned to 0 {assigned:8.2f} s  {n/assigned:10.0f} rec/s  ratio {bare/assigned:.2f}  (from the group's assignment)")
print(f"takeover to lag 0    {takeover:8.2f} s  (an empty store; {takeover/serve:.2f} x the first serve)")
PY
echo "$CHECKPOINTS"
