#!/usr/bin/env python3
"""Independent oracle for Patron's RFM table, written from DESIGN.md alone (stdlib only).

Reads a JSONL event log in arrival order and the Patron config beside it, and writes:
- expected_customers.csv: customer_id,frequency,monetary,recency_days,r_score,f_score,m_score,
  rfm_segment for every profile, sorted by customer_id;
- expected_summary.json: {"applied", "duplicates", "rejected": {reason: count}, "as_of"}.

Rules, as this oracle reads the contract:
- A line is rejected (one reason, checked in this order): too_large (> max_event_bytes, newline
  excluded), invalid_utf8, malformed_json (also a JSON value that is not an object),
  missing_field / wrong_type, unknown_type (incl. Segment `group`), invalid_amount (not finite,
  <= 0, or > max_amount), unknown_currency (neither base nor in fx_rates), future_timestamp
  (ts > wall clock + max_future_skew).
- Segment Spec messages (no `event_id`; `messageId`, `userId`, `anonymousId`, `timestamp`) are
  mapped: track "Order Completed" -> purchase (properties.revenue, else total), "Order Refunded"
  -> refund (same amount rule), other track / page / screen -> interaction, identify, alias.
- Identity: ids are resolved through links made by identify (anonymous_id -> customer_id) and
  alias (previous_id -> customer_id). Linking merges the old profile into the customer's, and
  the old profile disappears. Later events under a linked id land on the customer.
- A duplicate is an event whose (resolved customer, event_id) was already applied; it is counted
  and not applied. The oracle checks that each duplicate falls within dedup_window of the
  newest ts applied for that customer, where DESIGN.md promises it is always caught.
- frequency = purchases; monetary = sum(amount * fx) of purchases minus refunds (exact decimal,
  printed to at most 6 decimals); as_of = max ts over applied events of any type;
  recency_days = (as_of - last_purchase) / 1 day; scores min(5, 1 + floor(5 * worse / N)) over
  customers with frequency >= 1; segment from the DESIGN.md table; no purchase -> Prospect.

Usage: python3 tests/oracle/rfm_oracle.py [--events F] [--config F] [--out-dir D]
"""

import argparse
import csv
import io
import json
import re
import sys
import tomllib
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"

SEGMENT_MAP = [  # (name, r_scores, f_scores); first match wins
    ("Lost", {1}, {1}),
    ("Champions", {5}, {4, 5}),
    ("Loyal Customers", {3, 4}, {4, 5}),
    ("Potential Loyalists", {4, 5}, {2, 3}),
    ("New Customers", {5}, {1}),
    ("Promising", {4}, {1}),
    ("Need Attention", {3}, {3}),
    ("About To Sleep", {3}, {1, 2}),
    ("Can't Lose Them", {1, 2}, {5}),
    ("At Risk", {1, 2}, {3, 4}),
    ("Hibernating", {1, 2}, {1, 2}),
]

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Reject(Exception):
    def __init__(self, reason, detail=""):
        super().__init__(detail)
        self.reason = reason


def reject_constant(name):
    """NaN and Infinity are not JSON, though Python's parser takes them by default."""
    raise ValueError("not JSON: %s" % name)


def parse_duration(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d|w)\s*", text)
    if not m:
        sys.exit("bad duration %r" % text)
    return timedelta(seconds=int(m.group(1)) * DURATION_UNITS[m.group(2)])


def parse_ts(value):
    if not isinstance(value, str):
        raise Reject("wrong_type", "ts is not a string")
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d", text):
        raise Reject("wrong_type", "ts is not RFC 3339: %r" % value)
    # fromisoformat takes at most 6 fractional digits.
    text = re.sub(r"\.(\d{6})\d+", r".\1", text)
    return datetime.fromisoformat(text).astimezone(timezone.utc)


def snake_case(name):
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")


def need(obj, key, kinds, what=None):
    """A required field of one of the JSON types in `kinds`."""
    if key not in obj or obj[key] is None:
        raise Reject("missing_field", "%s is missing" % (what or key))
    return typed(obj, key, kinds, what)


def typed(obj, key, kinds, what=None):
    value = obj.get(key)
    if value is None:
        return None
    ok = any(
        (k is str and isinstance(value, str))
        or (k is dict and isinstance(value, dict))
        or (k is list and isinstance(value, list))
        or (k == "number" and isinstance(value, (int, float)) and not isinstance(value, bool))
        for k in kinds
    )
    if not ok:
        raise Reject("wrong_type", "%s has the wrong type" % (what or key))
    return value


def to_native(obj):
    """Maps a Segment Spec message onto the native shape; native events pass through."""
    if "event_id" in obj or "ts" in obj or "messageId" not in obj and "timestamp" not in obj:
        return obj
    kind = obj.get("type")
    out = {"event_id": obj.get("messageId"), "ts": obj.get("timestamp")}
    if "userId" in obj:
        out["customer_id"] = obj["userId"]
    if "anonymousId" in obj:
        out["anonymous_id"] = obj["anonymousId"]
    props = typed(obj, "properties", [dict]) or {}
    if kind == "track":
        event = need(obj, "event", [str])
        if event in ("Order Completed", "Order Refunded"):
            out["type"] = "purchase" if event == "Order Completed" else "refund"
            amount = props.get("revenue")
            if amount is None:
                amount = props.get("total")
            if amount is not None:
                out["amount"] = amount
            for k in ("currency", "order_id"):
                if k in props:
                    out[k] = props[k]
            if "products" in props:
                out["items"] = props["products"]
        else:
            out["type"] = "interaction"
            out["kind"] = snake_case(event)
    elif kind in ("page", "screen"):
        out["type"] = "interaction"
        out["kind"] = kind
    elif kind == "identify":
        out["type"] = "identify"
        if "traits" in obj:
            out["traits"] = obj["traits"]
    elif kind == "alias":
        out["type"] = "alias"
        if "previousId" in obj:
            out["previous_id"] = obj["previousId"]
    else:
        out["type"] = kind  # group and anything else: unknown_type below
    return out


class Oracle:
    def __init__(self, cfg, now):
        money = cfg.get("money", {})
        ingest = cfg.get("ingest", {})
        self.base = money.get("base_currency", "USD")
        self.fx = {k: Decimal(str(v)) for k, v in money.get("fx_rates", {}).items()}
        self.fx[self.base] = Decimal(1)
        self.max_amount = Decimal(str(money.get("max_amount", 1_000_000_000)))
        self.max_bytes = int(ingest.get("max_event_bytes", 1 << 20))
        self.future_limit = now + parse_duration(ingest.get("max_future_skew", "5m"))
        self.dedup_window = parse_duration(ingest.get("dedup_window", "7d"))
        self.profiles = {}  # id -> profile dict
        self.links = {}  # old id -> id it was merged into
        self.rejected = {}
        self.applied = 0
        self.duplicates = 0
        self.as_of = None

    # ---- validation -------------------------------------------------------------------------
    def amount(self, ev):
        raw = need(ev, "amount", [str, "number"])
        try:
            value = Decimal(raw) if isinstance(raw, str) else Decimal(str(raw))
        except InvalidOperation:
            raise Reject("wrong_type", "amount is not a decimal: %r" % raw)
        if not value.is_finite() or value <= 0 or value > self.max_amount:
            raise Reject("invalid_amount", "amount %r" % raw)
        return value

    def validate(self, line):
        if len(line) > self.max_bytes:
            raise Reject("too_large")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise Reject("invalid_utf8")
        try:
            obj = json.loads(text, parse_constant=reject_constant)
        except ValueError:
            raise Reject("malformed_json")
        if not isinstance(obj, dict):
            raise Reject("malformed_json", "not an object")
        ev = to_native(obj)
        need(ev, "event_id", [str])
        kind = need(ev, "type", [str])
        ts = parse_ts(need(ev, "ts", [str]))
        out = {"event_id": ev["event_id"], "type": kind, "ts": ts}
        if kind in ("purchase", "refund"):
            out["customer"] = need(ev, "customer_id", [str])
            amount = self.amount(ev)
            currency = typed(ev, "currency", [str]) or self.base
            typed(ev, "order_id", [str])
            if kind == "purchase":
                for item in typed(ev, "items", [list]) or []:
                    if not isinstance(item, dict):
                        raise Reject("wrong_type", "items")
            if currency not in self.fx:
                raise Reject("unknown_currency", currency)
            out["base_amount"] = amount * self.fx[currency]
        elif kind == "interaction":
            cid = typed(ev, "customer_id", [str])
            anon = typed(ev, "anonymous_id", [str])
            if cid is None and anon is None:
                raise Reject("missing_field", "customer_id or anonymous_id")
            need(ev, "kind", [str])
            typed(ev, "offer_id", [str])
            typed(ev, "channel", [str])
            typed(ev, "properties", [dict])
            out["customer"] = cid if cid is not None else anon
        elif kind == "identify":
            out["customer"] = need(ev, "customer_id", [str])
            out["anonymous_id"] = typed(ev, "anonymous_id", [str])
            typed(ev, "traits", [dict])
        elif kind == "alias":
            out["customer"] = need(ev, "customer_id", [str])
            out["previous_id"] = need(ev, "previous_id", [str])
        else:
            raise Reject("unknown_type", kind)
        if ts > self.future_limit:
            raise Reject("future_timestamp")
        return out

    # ---- identity and state -----------------------------------------------------------------
    def resolve(self, pid):
        seen = set()
        while pid in self.links and pid not in seen:
            seen.add(pid)
            pid = self.links[pid]
        return pid

    def profile(self, pid):
        return self.profiles.setdefault(
            pid, {"purchases": [], "net": Decimal(0), "event_ids": set(), "newest": None}
        )

    def merge(self, old, into):
        """Moves profile `old` (if any) into `into`, and sends later events for `old` there."""
        old, into = self.resolve(old), self.resolve(into)
        if old == into:
            return
        self.links[old] = into
        src = self.profiles.pop(old, None)
        dst = self.profile(into)
        if src is not None:
            dst["purchases"] += src["purchases"]
            dst["net"] += src["net"]
            dst["event_ids"] |= src["event_ids"]
            if src["newest"] is not None and (dst["newest"] is None or src["newest"] > dst["newest"]):
                dst["newest"] = src["newest"]

    def apply(self, ev):
        pid = self.resolve(ev["customer"])
        prof = self.profiles.get(pid)
        if prof is not None and ev["event_id"] in prof["event_ids"]:
            if prof["newest"] - ev["ts"] > self.dedup_window:
                sys.exit(
                    "duplicate %s of %s is older than dedup_window: DESIGN.md does not promise "
                    "it is caught, so the golden set must not contain it" % (ev["event_id"], pid)
                )
            self.duplicates += 1
            return
        prof = self.profile(pid)
        prof["event_ids"].add(ev["event_id"])
        if prof["newest"] is None or ev["ts"] > prof["newest"]:
            prof["newest"] = ev["ts"]
        if ev["type"] == "purchase":
            prof["purchases"].append(ev["ts"])
            prof["net"] += ev["base_amount"]
        elif ev["type"] == "refund":
            prof["net"] -= ev["base_amount"]
        elif ev["type"] == "identify" and ev["anonymous_id"] is not None:
            self.merge(ev["anonymous_id"], pid)
        elif ev["type"] == "alias":
            self.merge(ev["previous_id"], pid)
        self.applied += 1
        if self.as_of is None or ev["ts"] > self.as_of:
            self.as_of = ev["ts"]

    def feed(self, line):
        try:
            ev = self.validate(line)
        except Reject as r:
            self.rejected[r.reason] = self.rejected.get(r.reason, 0) + 1
            return
        self.apply(ev)

    # ---- scores -----------------------------------------------------------------------------
    def rows(self):
        buyers = {pid: p for pid, p in self.profiles.items() if p["purchases"]}
        n = len(buyers)
        last = {pid: max(p["purchases"]) for pid, p in buyers.items()}
        freq = {pid: len(p["purchases"]) for pid, p in buyers.items()}
        net = {pid: p["net"] for pid, p in buyers.items()}

        def score(worse):
            return min(5, 1 + (5 * worse) // n)

        out = []
        for pid in sorted(self.profiles):
            p = self.profiles[pid]
            monetary = p["net"]
            if pid not in buyers:
                out.append([pid, 0, monetary, None, None, None, None, "Prospect"])
                continue
            # Larger recency = an earlier last purchase.
            r = score(sum(1 for q in buyers if last[q] < last[pid]))
            f = score(sum(1 for q in buyers if freq[q] < freq[pid]))
            m = score(sum(1 for q in buyers if net[q] < net[pid]))
            seg = next(name for name, rs, fs in SEGMENT_MAP if r in rs and f in fs)
            recency = self.as_of - last[pid]
            out.append([pid, freq[pid], monetary, recency, r, f, m, seg])
        return out


def fmt_money(d):
    q = d.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
    text = format(q, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def fmt_days(delta):
    micros = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    d = (Decimal(micros) / Decimal(86_400_000_000)).quantize(
        Decimal("0.000000001"), rounding=ROUND_HALF_EVEN
    )
    return format(d, "f")


def fmt_ts(dt):
    text = dt.astimezone(timezone.utc).isoformat(timespec="milliseconds")
    text = text.replace("+00:00", "Z")
    return text.replace(".000Z", "Z")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default=str(GOLDEN / "events.jsonl"))
    ap.add_argument("--config", default=str(GOLDEN / "patron.toml"))
    ap.add_argument("--out-dir", default=str(GOLDEN))
    args = ap.parse_args()

    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    oracle = Oracle(cfg, datetime.now(timezone.utc))
    data = Path(args.events).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        oracle.feed(line)

    out_dir = Path(args.out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["customer_id", "frequency", "monetary", "recency_days", "r_score", "f_score",
                "m_score", "rfm_segment"])
    for pid, f, monetary, recency, r, fs, m, seg in oracle.rows():
        w.writerow([pid, f, fmt_money(monetary), "" if recency is None else fmt_days(recency),
                    "" if r is None else r, "" if fs is None else fs, "" if m is None else m, seg])
    (out_dir / "expected_customers.csv").write_text(buf.getvalue())
    summary = {
        "applied": oracle.applied,
        "duplicates": oracle.duplicates,
        "rejected": dict(sorted(oracle.rejected.items())),
        "as_of": fmt_ts(oracle.as_of) if oracle.as_of else None,
    }
    (out_dir / "expected_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("%d profiles, %s" % (len(oracle.profiles), json.dumps(summary)))


if __name__ == "__main__":
    main()
