#!/usr/bin/env bash
# Resident memory of `patron serve` over a large store (DESIGN.md, Targets: server RSS <= 1 GiB
# at 10M customers), stage by stage, from /proc/<pid>/status (VmRSS now, VmHWM the peak).
#   1. builds a store of CUSTOMERS generated customers once, cached under out/bench/ (DAYS of
#      history: fewer days, fewer events per customer, the same number of profiles);
#   2. starts `patron serve` on it (embedded broker, an admin key) and records RSS:
#      - ready: /readyz answers;
#      - view: after the first SQL query, which builds the scoring view (every customer scored);
#      - kpis: after GET /v1/kpis;
#      - profiles: after PROFILE_READS random GET /v1/customers/{id} (fills the profile cache);
#      - rebuilt: after the view is rebuilt once more (the old one is kept while it builds),
#        and LINGER (default 3) times 20 s later.
#
#   benches/server_memory.sh                          # 10M customers, 90 days (~76M events)
#   CUSTOMERS=1000000 DAYS=365 benches/server_memory.sh   # the API benchmark's store
#   SKIP_BUILD=1 PATRON_BIN=... benches/server_memory.sh
#   MEMORY_LIMIT_MB=1024 benches/server_memory.sh     # serve inside a memory cgroup (root)
#
# RSS counts the pages of the scoring view's mapped file that the process has touched; the
# kernel drops those under pressure. MEMORY_LIMIT_MB runs serve in a memory cgroup with that
# limit (heap and page cache together, no swap), so it shows whether the server works in that
# much memory: past it the kernel kills it, and the script says so.
#
# Building the 10M store takes about 15 GB of disk for the events (deleted after) and 10 GB for
# the store, and most of an hour on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOMERS=${CUSTOMERS:-10000000}
DAYS=${DAYS:-90}
PORT=${PORT:-18090}
PROFILE_READS=${PROFILE_READS:-20000}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PATRON_BIN:-$TARGET/release/patron}
CACHE=out/bench
WORK=${WORK:-/tmp/patron-memory-bench}
STORE=$CACHE/mem-$CUSTOMERS-$DAYS.redb
if [ "$CUSTOMERS" = 1000000 ] && [ "$DAYS" = 365 ] && [ -f "$CACHE/api-1000000.redb" ]; then
    STORE=$CACHE/api-1000000.redb # benches/api_latency.sh built the same store
fi
mkdir -p "$CACHE"
rm -rf "$WORK" && mkdir -p "$WORK"
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin patron >&2

if [ ! -f "$STORE" ]; then
    echo "building $STORE: $CUSTOMERS customers over $DAYS days" >&2
    EVENTS=$CACHE/mem-events.jsonl
    /usr/bin/time -f 'generate: %e s, peak RSS %M KB' "$BIN" generate --customers "$CUSTOMERS" \
        --days "$DAYS" --seed 1 --out "$EVENTS" >&2
    /usr/bin/time -f 'replay: %e s, peak RSS %M KB' "$BIN" replay --input "$EVENTS" \
        --store "$STORE.tmp" >&2
    rm -f "$EVENTS" "$EVENTS.truth.json" "$STORE.tmp.dead-letters.jsonl"
    mv "$STORE.tmp" "$STORE"
fi

. benches/common.sh
api_config "$WORK/serve.toml" "$PORT" admin
LAUNCH=()
if [ -n "${MEMORY_LIMIT_MB:-}" ]; then
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then # cgroup v2
        CGROUP=/sys/fs/cgroup/patron-memory-bench
        mkdir -p "$CGROUP"
        echo $((MEMORY_LIMIT_MB << 20)) > "$CGROUP/memory.max"
        echo 0 > "$CGROUP/memory.swap.max" 2>/dev/null || true
        PROCS=$CGROUP/cgroup.procs
    else # cgroup v1
        CGROUP=/sys/fs/cgroup/memory/patron-memory-bench
        mkdir -p "$CGROUP"
        echo $((MEMORY_LIMIT_MB << 20)) > "$CGROUP/memory.limit_in_bytes"
        PROCS=$CGROUP/cgroup.procs
    fi
    echo "serve runs in $CGROUP, limited to $MEMORY_LIMIT_MB MiB" >&2
    # The shell joins the cgroup, then becomes serve (same pid).
    LAUNCH=(sh -c 'echo $$ > "$0" && exec "$@"' "$PROCS")
fi
"${LAUNCH[@]}" "$BIN" serve --config "$WORK/serve.toml" --store "$STORE" --log info \
    > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVE_PID=$!
# The heap's peak, sampled every 0.2 s (VmHWM counts mapped file pages too).
HEAP_PEAK=$WORK/heap-peak
( peak=0; while kill -0 $SERVE_PID 2>/dev/null; do
    anon=$(awk '$1 == "RssAnon:" { print int($2 / 1024) }' "/proc/$SERVE_PID/status" 2>/dev/null || echo 0)
    [ "${anon:-0}" -gt "$peak" ] && peak=$anon && echo "$peak" > "$HEAP_PEAK"
    sleep 0.2
done ) &
killed() {
    kill -0 $SERVE_PID 2>/dev/null && return 1
    echo "serve is gone$([ -n "${MEMORY_LIMIT_MB:-}" ] && echo " (killed by the ${MEMORY_LIMIT_MB} MiB limit?)")" >&2
    tail -3 "$WORK/serve.err" >&2
}
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
trap 'exit 143' INT TERM
URL="http://127.0.0.1:$PORT"
AUTH=(-H "Authorization: Bearer $KEY")
for _ in $(seq 1200); do
    curl -sf "$URL/readyz" > /dev/null 2>&1 && break
    kill -0 $SERVE_PID 2>/dev/null || { cat "$WORK/serve.err" >&2; exit 1; }
    sleep 0.1
done

mib() { awk -v k="$1:" '$1 == k { printf "%d", $2 / 1024 }' "/proc/$SERVE_PID/status"; }
# RssAnon is the heap; RssFile counts the pages of mapped files this process has touched (the
# scoring view's spilled tables, the binary), which the kernel can drop and read back.
stage() {
    printf '| %s | %s MiB | %s MiB | %s MiB (peak %s) | %s MiB | %s |\n' "$1" "$(mib VmRSS)" \
        "$(mib VmHWM)" "$(mib RssAnon)" "$(cat "$HEAP_PEAK" 2>/dev/null || echo ?)" \
        "$(mib RssFile)" "$2"
}
{
    echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; binary: $BIN"
    echo "store: $STORE, $CUSTOMERS customers, $(du -m "$STORE" | cut -f1) MB"
    echo
    echo "| stage | RSS | peak RSS | of it heap (RssAnon) | of it mapped files (RssFile) | took |"
    echo "|---|---|---|---|---|---|"
} | tee "$WORK/result.txt"
stage ready "" | tee -a "$WORK/result.txt"

# The first query waits for the view; past the request timeout it answers 503, so ask again.
SECONDS=0
until COUNT=$(curl -sf "${AUTH[@]}" -H 'content-type: application/json' \
    -d '{"sql": "SELECT count(*) AS n FROM customers"}' "$URL/v1/query"); do
    [ $SECONDS -lt 900 ] || { echo "no view after 900 s" >&2; exit 1; }
    killed && exit 1
    sleep 2
done
stage view "${SECONDS} s; $COUNT" | tee -a "$WORK/result.txt"

# A query that reads every column of every row (every page of the view).
SECONDS=0
curl -sf -o /dev/null "${AUTH[@]}" -H 'content-type: application/json' -d '{"sql":
    "SELECT sum(length(customer_id) + length(traits) + length(rfm_segment)), avg(clv), avg(p_alive), avg(expected_purchases), avg(expected_avg_value), avg(monetary), avg(frequency), avg(recency_days), avg(avg_order_value), avg(r_score + f_score + m_score), max(first_purchase), max(last_purchase), sum(array_length(segments)) FROM customers"}' \
    "$URL/v1/query" || echo "the full scan failed" >&2
stage "full scan" "${SECONDS} s" | tee -a "$WORK/result.txt"

SECONDS=0
curl -sf -o /dev/null "${AUTH[@]}" "$URL/v1/kpis" || echo "GET /v1/kpis failed" >&2
stage kpis "${SECONDS} s" | tee -a "$WORK/result.txt"

# Ids of customers c0000000 .. (the generator's form), read in a random order.
SECONDS=0
python3 - "$URL" "$KEY" "$CUSTOMERS" "$PROFILE_READS" <<'PY'
import http.client, random, sys
url, key, customers, reads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host, port = url.removeprefix("http://").split(":")
conn = http.client.HTTPConnection(host, int(port))
random.seed(1)
found = 0
for _ in range(reads):
    conn.request("GET", f"/v1/customers/c{random.randrange(customers):07d}",
                 headers={"Authorization": f"Bearer {key}"})
    r = conn.getresponse()
    r.read()
    found += r.status == 200
print(f"{found} of {reads} profiles found", file=sys.stderr)
PY
stage "profiles (${PROFILE_READS})" "${SECONDS} s" | tee -a "$WORK/result.txt"

# A commit (a CLV refit a minute after start) makes the view stale; the next query rebuilds it
# while the old one still answers.
SECONDS=0
until grep -q 'CLV models refitted\|CLV refit skipped' "$WORK/serve.err"; do
    [ $SECONDS -lt 600 ] || { echo "no refit after 600 s" >&2; break; }
    sleep 1
done
BUILT=$(grep -c 'scoring view built' "$WORK/serve.err" || true)
until [ "$(grep -c 'scoring view built' "$WORK/serve.err" || true)" -gt "$BUILT" ]; do
    curl -sf -o /dev/null "${AUTH[@]}" -H 'content-type: application/json' \
        -d '{"sql": "SELECT count(*) FROM customers"}' "$URL/v1/query" || true
    [ $SECONDS -lt 900 ] || { echo "no view rebuild" >&2; break; }
    killed && exit 1
    sleep 2
done
stage rebuilt "${SECONDS} s after the profiles" | tee -a "$WORK/result.txt"
# Whether the old view's memory goes back to the system once nothing uses it.
for i in $(seq "${LINGER:-3}"); do
    sleep 20
    stage "rebuilt + $((20 * i)) s" "" | tee -a "$WORK/result.txt"
done
grep -E 'scoring view built|CLV models refitted|stopped:' "$WORK/serve.err" | tail -4 >&2 || true
if [ -n "${MEMORY_LIMIT_MB:-}" ]; then
    killed && exit 1
    echo "serve answered every stage inside the $MEMORY_LIMIT_MB MiB limit" | tee -a "$WORK/result.txt"
fi
