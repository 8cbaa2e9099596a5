-- DuckDB baseline for the benchmark "file replay to final RFM table" (DESIGN.md, Targets):
-- the same per-customer aggregates Patron keeps, computed straight from a native-form JSONL file
-- as written by `patron generate` (purchases and refunds only; amounts in base currency).
-- It does no dedup, fx conversion or validation: the generated benchmark input has none of
-- duplicates, foreign currencies or invalid lines.
--
-- Set the input path first, e.g. with the DuckDB CLI:
--   duckdb -c "SET VARIABLE input = 'events.jsonl'" -c ".read tests/oracle/duckdb_rfm.sql"
-- or run tests/oracle/duckdb_rfm.py, which times it.
SELECT
    customer_id,
    count(*) FILTER (WHERE type = 'purchase') AS frequency,
    sum(CASE WHEN type = 'purchase' THEN amount ELSE -amount END) AS monetary,
    min(ts) FILTER (WHERE type = 'purchase') AS first_purchase,
    max(ts) FILTER (WHERE type = 'purchase') AS last_purchase
FROM (
    SELECT customer_id, type, ts, CAST(amount AS DOUBLE) AS amount
    FROM read_json(
        getvariable('input'),
        format = 'newline_delimited',
        -- amount is a JSON number or a decimal string; read it as text and cast.
        columns = {customer_id: 'VARCHAR', type: 'VARCHAR', ts: 'TIMESTAMPTZ', amount: 'VARCHAR'}
    )
    WHERE type IN ('purchase', 'refund')
)
GROUP BY customer_id
ORDER BY customer_id;
