#!/usr/bin/env python3
"""Runs tests/oracle/duckdb_rfm.sql over a native-form JSONL file and reports the time.

This is the DuckDB side of the "file replay vs DuckDB" benchmark. Needs the `duckdb` package
(the venv made by .ci/run has it).

Usage: python3 tests/oracle/duckdb_rfm.py --input events.jsonl [--out rfm.csv] [--threads N]
Prints one JSON line: {"rows": N, "seconds": S, "threads": T}.
"""

import argparse
import json
import time
from pathlib import Path

import duckdb

SQL = Path(__file__).with_name("duckdb_rfm.sql")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", help="write the aggregates as CSV")
    ap.add_argument("--threads", type=int, help="DuckDB worker threads (default: all cores)")
    args = ap.parse_args()

    con = duckdb.connect()
    if args.threads:
        con.execute("SET threads = %d" % args.threads)
    con.execute("SET VARIABLE input = ?", [args.input])
    query = SQL.read_text().strip().rstrip(";")
    start = time.perf_counter()
    if args.out:
        con.execute("COPY (%s) TO '%s' (HEADER, DELIMITER ',')" % (query, args.out.replace("'", "''")))
        rows = con.execute("SELECT count(*) FROM read_csv(?)", [args.out]).fetchone()[0]
    else:
        rows = len(con.execute(query).fetchall())
    seconds = time.perf_counter() - start
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    print(json.dumps({"rows": rows, "seconds": round(seconds, 3), "threads": threads}))


if __name__ == "__main__":
    main()
