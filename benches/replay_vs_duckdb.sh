#!/usr/bin/env bash
# End-to-end benchmark: `patron replay` of a generated JSONL into a fresh store, against DuckDB
# computing the same per-customer aggregates (frequency, monetary, first and last purchase) from
# the same file on the same machine. Prints the ratio of wall times (target <= 1.0), events/s,
# peak RSS and store bytes per customer.
#
#   CUSTOMERS=500000 DAYS=730 benches/replay_vs_duckdb.sh
#
# Needs a release build (cargo build --release) and a Python with duckdb (.ci/run makes one).
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOMERS=${CUSTOMERS:-500000}
DAYS=${DAYS:-730}
WORK=${WORK:-/tmp/patron-bench}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PATRON_BIN:-$TARGET/release/patron}
PY=${PYTHON:-$HOME/.cache/patron/venv-lifetimes/bin/python}
mkdir -p "$WORK"
EVENTS="$WORK/events-$CUSTOMERS-$DAYS.jsonl"

if [ ! -s "$EVENTS" ]; then
    echo "generating $CUSTOMERS customers over $DAYS days -> $EVENTS" >&2
    "$BIN" generate --customers "$CUSTOMERS" --days "$DAYS" --start 2023-01-01 --seed 1 --out "$EVENTS"
fi
LINES=$(wc -l < "$EVENTS")
BYTES=$(stat -c %s "$EVENTS")
# Warm the page cache for both contestants alike.
cat "$EVENTS" > /dev/null

STORE="$WORK/bench.redb"
rm -f "$STORE" "$STORE.dead-letters.jsonl"
/usr/bin/time -f '%e %M' -o "$WORK/patron.time" "$BIN" replay --input "$EVENTS" --store "$STORE" > "$WORK/patron.out"
read -r P_SECS P_RSS_KB < "$WORK/patron.time"
CUST=$(awk '/customers/ {print $2}' "$WORK/patron.out")
STORE_BYTES=$(stat -c %s "$STORE")

/usr/bin/time -f '%e %M' -o "$WORK/duckdb.time" "$PY" tests/oracle/duckdb_rfm.py --input "$EVENTS" > "$WORK/duckdb.out"
D_SECS=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$WORK/duckdb.out")
read -r D_WALL D_RSS_KB < "$WORK/duckdb.time"

"$PY" - "$LINES" "$BYTES" "$P_SECS" "$P_RSS_KB" "$CUST" "$STORE_BYTES" "$D_SECS" "$D_WALL" "$D_RSS_KB" <<'PYEOF'
import sys
lines, nbytes, p, prss, cust, store, d, dwall, drss = sys.argv[1:]
lines, nbytes, cust, store = int(lines), int(nbytes), int(cust), int(store)
p, d, dwall = float(p), float(d), float(dwall)
print(f"input            {lines:,} events, {nbytes/1e6:.0f} MB")
print(f"patron replay    {p:.2f} s wall, {lines/p:,.0f} events/s, peak RSS {int(prss)/1024:.0f} MiB")
print(f"duckdb query     {d:.2f} s (process {dwall:.2f} s), peak RSS {int(drss)/1024:.0f} MiB")
print(f"ratio            patron / duckdb = {p/d:.2f}  (target <= 1.0; vs DuckDB process wall {p/dwall:.2f})")
print(f"store            {store/1e6:.1f} MB for {cust:,} customers = {store/max(cust,1):.0f} bytes/customer (file, all tables)")
PYEOF
