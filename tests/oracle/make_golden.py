#!/usr/bin/env python3
"""Writes tests/data/golden/events.jsonl: a small, hand-reviewable event log for Patron.

Deterministic (fixed seed, no clock): running it twice gives the same bytes. It covers every
native event type, the Segment Spec forms, duplicates, out-of-order arrival, identity merges
(identify with anonymous_id, alias) and one or more lines per rejection reason. The expected
results come from tests/oracle/rfm_oracle.py, which does not share code with this script.

Usage: python3 tests/oracle/make_golden.py [--out tests/data/golden/events.jsonl]
"""

import argparse
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2025, 1, 1, tzinfo=timezone.utc)
# The newest event of all: an interaction, not a purchase, so as_of must come from any type.
LAST_TS = datetime(2025, 6, 30, 18, 0, 0, tzinfo=timezone.utc)
CATEGORIES = ["books", "electronics", "garden", "grocery", "home", "toys"]
KINDS = ["page_view", "email_open", "email_click", "cart_add", "support_ticket"]

rng = random.Random(int(__import__("os").environ.get("GOLDEN_SEED", "1")))


def ts_str(dt, style=0):
    """RFC 3339 in a few equivalent spellings: Z, fractional seconds, or a +02:00 offset."""
    if style == 1:
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + ".%03dZ" % (dt.microsecond // 1000)
    if style == 2:
        return dt.astimezone(timezone(timedelta(hours=2))).strftime("%Y-%m-%dT%H:%M:%S+02:00")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def money(cents):
    return "%d.%02d" % (cents // 100, cents % 100)


def amount_value(cents, as_string):
    """A 2-decimal amount as a JSON number (float or int) or a decimal string."""
    if as_string:
        return money(cents)
    if cents % 100 == 0:
        return cents // 100
    return cents / 100


class Log:
    """Events in ts order plus notes on how to disturb the arrival order."""

    def __init__(self):
        self.events = []  # (ts datetime, seq, key, dict or bytes)
        self.seq = 0
        self.ids = 0

    def new_id(self, prefix="ev"):
        self.ids += 1
        return "%s-%04d" % (prefix, self.ids)

    def add(self, dt, obj, key):
        self.seq += 1
        self.events.append([dt, self.seq, key, obj])
        return obj


log = Log()
PURCHASES = {}  # customer -> [(dt, cents, currency, order_id)]


def rand_time(lo_day, hi_day):
    """A whole-second (sometimes millisecond) time between two day offsets from START."""
    secs = rng.randint(int(lo_day * 86400), int(hi_day * 86400))
    dt = START + timedelta(seconds=secs)
    if rng.random() < 0.15:
        dt += timedelta(milliseconds=rng.randint(1, 999))
    return dt


def items_for(cents):
    """1-3 items whose quantity × unit_price adds up to exactly `cents`."""
    n = 1 if cents < 300 else rng.randint(1, 3)
    left, out = cents, []
    for i in range(n):
        cat = rng.choice(CATEGORIES)
        sku = "SKU-%s-%03d" % (cat[:3], rng.randint(0, 199))
        if i == n - 1:
            out.append((sku, cat, 1, left))
        else:
            line = max(1, int(left * rng.uniform(0.2, 0.5)))
            q = rng.randint(1, 3)
            unit = max(1, line // q)
            left -= unit * q
            out.append((sku, cat, q, unit))
    return out


def purchase(cid, dt, cents, currency="USD", segment=False, with_items=True, as_string=None,
             order_id=None, amount_key="revenue", explicit_currency=None):
    if as_string is None:
        as_string = rng.random() < 0.5
    if explicit_currency is None:
        explicit_currency = currency != "USD" or rng.random() < 0.5
    eid = log.new_id("sg" if segment else "ev")
    order_id = order_id or "ord-%s-%d" % (cid, log.ids)
    items = items_for(cents) if with_items else None
    style = rng.choice([0, 0, 0, 1, 2])
    if segment:
        props = {"order_id": order_id, amount_key: amount_value(cents, as_string)}
        if explicit_currency:
            props["currency"] = currency
        if items:
            props["products"] = [
                {"sku": s, "category": c, "quantity": q, "price": amount_value(u, as_string)}
                for s, c, q, u in items
            ]
        obj = {"type": "track", "event": "Order Completed", "messageId": eid, "userId": cid,
               "timestamp": ts_str(dt, style), "properties": props}
    else:
        obj = {"event_id": eid, "type": "purchase", "ts": ts_str(dt, style), "customer_id": cid,
               "amount": amount_value(cents, as_string), "order_id": order_id}
        if explicit_currency:
            obj["currency"] = currency
        if items:
            obj["items"] = [
                {"sku": s, "category": c, "quantity": q, "unit_price": amount_value(u, as_string)}
                for s, c, q, u in items
            ]
    PURCHASES.setdefault(cid, []).append((dt, cents, currency, order_id))
    return log.add(dt, obj, cid)


def refund(cid, dt, cents, currency="USD", segment=False, order_id=None, amount_key="total"):
    eid = log.new_id("sg" if segment else "ev")
    as_string = rng.random() < 0.5
    if segment:
        props = {amount_key: amount_value(cents, as_string), "currency": currency}
        if order_id:
            props["order_id"] = order_id
        obj = {"type": "track", "event": "Order Refunded", "messageId": eid, "userId": cid,
               "timestamp": ts_str(dt), "properties": props}
    else:
        obj = {"event_id": eid, "type": "refund", "ts": ts_str(dt), "customer_id": cid,
               "amount": amount_value(cents, as_string)}
        if currency != "USD" or rng.random() < 0.5:
            obj["currency"] = currency
        if order_id:
            obj["order_id"] = order_id
    return log.add(dt, obj, cid)


def interaction(who, dt, kind, anonymous=False, segment=False, offer_id=None, channel=None,
                properties=None):
    eid = log.new_id("sg" if segment else "ev")
    channel = channel or ("email" if kind.startswith("email") else rng.choice(["web", "app", "store"]))
    if segment:
        idk = "anonymousId" if anonymous else "userId"
        props = {"channel": channel}
        if offer_id:
            props["offer_id"] = offer_id
        if properties:
            props.update(properties)
        if kind in ("page", "screen"):
            obj = {"type": kind, "name": "Home" if kind == "page" else "Cart", "messageId": eid,
                   idk: who, "timestamp": ts_str(dt), "properties": props}
        else:
            obj = {"type": "track", "event": kind, "messageId": eid, idk: who,
                   "timestamp": ts_str(dt), "properties": props}
    else:
        obj = {"event_id": eid, "type": "interaction", "ts": ts_str(dt),
               ("anonymous_id" if anonymous else "customer_id"): who, "kind": kind,
               "channel": channel}
        if offer_id:
            obj["offer_id"] = offer_id
        if properties:
            obj["properties"] = properties
    return log.add(dt, obj, who)


NAMES = ["Ada Okafor", "Bruno Petit", "Chloe Quinn", "Dmitri Rossi", "Elena Schmidt",
         "Farid Tanaka", "Grace Varga", "Hiro Nakamura"]
COUNTRIES = ["US", "FR", "DE", "GB", "JP", "BR"]


def identify(cid, dt, anonymous_id=None, segment=False):
    eid = log.new_id("sg" if segment else "ev")
    traits = {"email": "%s@example.com" % cid, "name": rng.choice(NAMES),
              "country": rng.choice(COUNTRIES)}
    if segment:
        obj = {"type": "identify", "messageId": eid, "userId": cid, "timestamp": ts_str(dt),
               "traits": traits}
        if anonymous_id:
            obj["anonymousId"] = anonymous_id
    else:
        obj = {"event_id": eid, "type": "identify", "ts": ts_str(dt), "customer_id": cid,
               "traits": traits}
        if anonymous_id:
            obj["anonymous_id"] = anonymous_id
    return log.add(dt, obj, cid)


def alias(previous_id, cid, dt, segment=False):
    eid = log.new_id("sg" if segment else "ev")
    if segment:
        obj = {"type": "alias", "messageId": eid, "previousId": previous_id, "userId": cid,
               "timestamp": ts_str(dt)}
    else:
        obj = {"event_id": eid, "type": "alias", "ts": ts_str(dt), "previous_id": previous_id,
               "customer_id": cid}
    return log.add(dt, obj, cid)


def day(d, h=12, m=0, s=0):
    return START + timedelta(days=d, hours=h, minutes=m, seconds=s)


# --- The ordinary customers: cust-01 .. cust-40 -------------------------------------------------
FREQS = [1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5, 6, 7, 9, 11, 14]
SPECIAL = {"cust-05", "cust-06", "cust-07", "cust-08", "cust-13", "cust-20", "cust-21",
           "cust-30", "cust-31"}
for i in range(1, 41):
    cid = "cust-%02d" % i
    if cid in SPECIAL:
        continue
    freq = rng.choice(FREQS)
    last_day = rng.uniform(0.5, 178.0)
    first_day = rng.uniform(0.0, last_day) if freq > 1 else last_day
    days = sorted([first_day, last_day] + [rng.uniform(first_day, last_day) for _ in range(freq - 2)])[:freq]
    segment_share = 0.25
    for d in days:
        cents = rng.randint(500, 30000)
        cur = rng.choices(["USD", "EUR", "GBP"], weights=[80, 12, 8])[0]
        purchase(cid, rand_time(d, d), cents, currency=cur, segment=rng.random() < segment_share,
                 with_items=rng.random() < 0.6, amount_key=rng.choice(["revenue", "total"]))
    for _ in range(rng.randint(0, 4)):
        d = rng.uniform(0, 180)
        if rng.random() < segment_share:
            kind = rng.choice(["Product Viewed", "Email Opened", "Product Added", "page", "screen"])
            interaction(cid, rand_time(d, d), kind, segment=True)
        else:
            interaction(cid, rand_time(d, d), rng.choice(KINDS))
    if rng.random() < 0.5:
        identify(cid, rand_time(days[0] - 0.01, days[0] - 0.001), segment=rng.random() < 0.3)
    if rng.random() < 0.3:
        d = rng.uniform(1, 175)
        t = rand_time(d, d)
        offer = rng.choice(["offer-spring", "offer-vip", "offer-freeship"])
        interaction(cid, t, "offer_shown", offer_id=offer, channel="web")
        answer = rng.choice(["offer_accepted", "offer_declined"])
        interaction(cid, t + timedelta(minutes=rng.randint(1, 30)), answer, offer_id=offer,
                    channel="web")

# Partial and full refunds of some ordinary customers' purchases, in every form.
refunded = [c for c in sorted(PURCHASES) if len(PURCHASES[c]) >= 2][:8]
for n, cid in enumerate(refunded):
    dt, cents, cur, order_id = PURCHASES[cid][0]
    amount = cents if n % 3 == 0 else max(1, cents * rng.randint(10, 90) // 100)
    when = min(dt + timedelta(days=rng.uniform(0.1, 10)), LAST_TS - timedelta(hours=1))
    form = n % 4
    refund(cid, when, amount, currency=cur, segment=form >= 2, order_id=order_id,
           amount_key="total" if form == 2 else "revenue")

# --- Identity: anonymous browsing linked by identify ---------------------------------------------
interaction("anon-05", day(40, 9), "page_view", anonymous=True)
interaction("anon-05", day(40, 21), "page", anonymous=True, segment=True)
interaction("anon-05", day(41, 8), "cart_add", anonymous=True)
late_anon = interaction("anon-05", day(40, 23), "email_click", anonymous=True)
ident5 = identify("cust-05", day(41, 9), anonymous_id="anon-05")
ident5["traits"]["name"] = "Zoë Müller"  # valid non-ASCII UTF-8
purchase("cust-05", day(41, 10), 8990, as_string=True)
purchase("cust-05", day(90, 14), 4500, currency="EUR", as_string=False)
purchase("cust-05", day(150, 16), 12000, segment=True, amount_key="revenue")
refund("cust-05", day(95, 10), 1000, currency="EUR")  # part of the EUR order: 11.00 USD

interaction("anon-06", day(60, 10), "Product Viewed", anonymous=True, segment=True)
interaction("anon-06", day(60, 11), "screen", anonymous=True, segment=True)
identify("cust-06", day(60, 12), anonymous_id="anon-06", segment=True)
purchase("cust-06", day(60, 13), 3550, segment=True, with_items=False, amount_key="total")
purchase("cust-06", day(170, 9), 6000, as_string=False, with_items=False)

# --- Identity: alias merges an older id and its history -----------------------------------------
interaction("legacy-07", day(10, 8), "page_view")
purchase("legacy-07", day(10, 9), 15000, as_string=False, explicit_currency=True)
alias("legacy-07", "cust-07", day(100, 8))
purchase("cust-07", day(100, 9), 2599)
purchase("cust-07", day(160, 9), 4100)

interaction("old-08", day(20, 8), "email_open")
purchase("old-08", day(20, 9), 4000, currency="GBP")
alias("old-08", "cust-08", day(120, 8), segment=True)
purchase("cust-08", day(121, 9), 9999, segment=True, amount_key="revenue")

# --- A refund bigger than everything the customer bought: monetary < 0 --------------------------
purchase("cust-13", day(30, 10), 2000, as_string=True, with_items=False)
refund("cust-13", day(35, 10), 5000, order_id="ord-cust-13-return")

# --- Exact ties on every measure --------------------------------------------------------------
for cid in ("cust-20", "cust-21"):
    purchase(cid, day(80, 12), 7500, as_string=False, with_items=False, explicit_currency=False)
    purchase(cid, day(140, 12), 7500, as_string=True, with_items=False, explicit_currency=False)

# --- One event_id used by two different customers: not a duplicate -----------------------------
p30 = purchase("cust-30", day(50, 10), 10000, with_items=False)
p31 = purchase("cust-31", day(55, 10), 2500, with_items=False)
p30["event_id"] = p31["event_id"] = "shared-0001"
purchase("cust-30", day(120, 10), 3333)
purchase("cust-31", day(175, 10), 1999, currency="EUR")

# --- Prospects: profiles without a purchase ------------------------------------------------------
interaction("cust-41", day(33, 10), "page_view")
interaction("cust-41", day(33, 11), "offer_shown", offer_id="offer-spring", channel="email")
interaction("cust-41", day(33, 12), "offer_declined", offer_id="offer-spring", channel="email")
interaction("cust-41", day(34, 10), "wishlist_add", properties={"sku": "SKU-toy-001"})
interaction("anon-99", day(170, 10), "page_view", anonymous=True)
interaction("anon-99", day(170, 11), "Product Viewed", anonymous=True, segment=True)
identify("cust-42", day(90, 10), segment=True)
interaction("cust-42", day(90, 11), "screen", segment=True)

# --- A valid event of exactly 65536 bytes (the limit is "larger than") -------------------------
big = interaction("cust-03", day(100, 10), "page_view", properties={"note": ""})
big["properties"]["note"] = "y" * (65536 - len(json.dumps(big).encode()))
assert len(json.dumps(big).encode()) == 65536

# --- The newest event of all, an interaction -------------------------------------------------
interaction("cust-02", LAST_TS, "email_open")

# --- Arrival order: jitter everything, deliver a few events days late -------------------------
for ev in log.events:
    ev.append(ev[0] + timedelta(hours=rng.uniform(0, 6)))  # ev[4] = arrival
candidates = [ev for ev in log.events if isinstance(ev[3], dict) and ev[0] < day(170)]
late = rng.sample(candidates, 6)
for ev in late:
    ev[4] = ev[0] + timedelta(days=rng.uniform(3, 20))
# The anonymous click arrives after the identify that linked its id.
for ev in log.events:
    if ev[3] is late_anon:
        ev[4] = day(45)
# The newest event is not the last line.
for ev in log.events:
    if ev[0] == LAST_TS:
        ev[4] = LAST_TS - timedelta(hours=2)

# --- Producer duplicates: the same bytes again, shortly after ----------------------------------
plain = [ev for ev in log.events
         if isinstance(ev[3], dict) and ev not in late and ev[3] is not big
         and not str(ev[2]).startswith(("anon-", "legacy-", "old-"))
         and ev[3].get("event_id") != "shared-0001"]
dups = rng.sample(plain, 8)
seg_dup = [ev for ev in plain if "messageId" in ev[3] and ev not in dups][0]
for ev in dups + [seg_dup]:
    log.seq += 1
    log.events.append([ev[0], log.seq, ev[2], ev[3], ev[4] + timedelta(minutes=rng.uniform(1, 90))])


# --- Rejected lines: every reason, each line breaking exactly one rule -------------------------
def bad(dt, raw):
    log.seq += 1
    raw = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    log.events.append([dt, log.seq, None, raw, dt])


def p(eid, dt, **kw):
    obj = {"event_id": eid, "type": "purchase", "ts": ts_str(dt), "customer_id": "cust-01",
           "amount": 19.99, "currency": "USD"}
    obj.update(kw)
    return obj


def without(obj, key):
    obj = dict(obj)
    del obj[key]
    return obj


# invalid_utf8
bad(day(15), b'{"event_id":"bad-u1","type":"interaction","ts":"2025-01-16T12:00:00Z",'
             b'"customer_id":"cust-01","kind":"page_view","properties":{"q":"\xff\xfe"}}')
bad(day(95), b'{"event_id":"bad-u2","type":"identify","ts":"2025-04-06T12:00:00Z",'
             b'"customer_id":"cust-02","traits":{"name":"Ren\xc3\x28e"}}')
# malformed_json
bad(day(16), json.dumps(p("bad-m1", day(16)))[:40].encode())
bad(day(66), b'{"event_id":"bad-m2","type":"purchase","ts":"2025-03-08T12:00:00Z",'
             b'"customer_id":"cust-01","amount":19.99,}')
bad(day(116), b"this is not json")
# missing_field
bad(day(17), without(p("bad-f1", day(17)), "event_id"))
bad(day(37), without(p("bad-f2", day(37)), "ts"))
bad(day(57), without(p("bad-f3", day(57)), "type"))
bad(day(77), without(p("bad-f4", day(77)), "customer_id"))
bad(day(97), without(p("bad-f5", day(97)), "amount"))
bad(day(117), {"event_id": "bad-f6", "type": "interaction", "ts": ts_str(day(117)),
               "kind": "page_view"})
bad(day(137), {"event_id": "bad-f7", "type": "alias", "ts": ts_str(day(137)),
               "customer_id": "cust-01"})
bad(day(157), {"type": "track", "event": "Order Completed", "userId": "cust-01",
               "timestamp": ts_str(day(157)), "properties": {"revenue": 10}})
# wrong_type
bad(day(18), p("bad-t1", day(18), amount=True))
bad(day(58), p("bad-t2", day(58), customer_id={"id": "cust-01"}))
bad(day(98), p("bad-t3", day(98), items="three socks"))
bad(day(138), {"event_id": "bad-t4", "type": "identify", "ts": ts_str(day(138)),
               "customer_id": "cust-01", "traits": "vip"})
bad(day(158), {"event_id": "bad-t5", "type": "interaction", "ts": ts_str(day(158)),
               "customer_id": "cust-01", "kind": 5})
# unknown_type
bad(day(19), {"event_id": "bad-y1", "type": "teleport", "ts": ts_str(day(19)),
              "customer_id": "cust-01"})
bad(day(79), {"type": "group", "messageId": "bad-y2", "userId": "cust-01", "groupId": "acme",
              "timestamp": ts_str(day(79)), "traits": {"name": "Acme"}})
bad(day(139), {"event_id": "bad-y3", "type": "subscription", "ts": ts_str(day(139)),
               "customer_id": "cust-01", "amount": 9.99})
# invalid_amount: zero, negative, not finite, over max_amount
bad(day(21), p("bad-a1", day(21), amount=0))
bad(day(41), p("bad-a2", day(41), amount=-5.5))
bad(day(61), p("bad-a3", day(61), amount="NaN"))
bad(day(81), p("bad-a4", day(81), amount="Infinity"))
bad(day(101), p("bad-a5", day(101), amount=1e12))
bad(day(121), p("bad-a6", day(121), amount="1000000.01"))
bad(day(141), {"event_id": "bad-a7", "type": "refund", "ts": ts_str(day(141)),
               "customer_id": "cust-01", "amount": "0.00"})
# unknown_currency
bad(day(22), p("bad-c1", day(22), currency="XXZ"))
bad(day(122), {"type": "track", "event": "Order Completed", "messageId": "bad-c2",
               "userId": "cust-01", "timestamp": ts_str(day(122)),
               "properties": {"revenue": 12.5, "currency": "XXZ"}})
# future_timestamp
bad(day(23), p("bad-s1", datetime(2099, 1, 1, tzinfo=timezone.utc)))
bad(day(123), {"type": "page", "name": "Home", "messageId": "bad-s2", "userId": "cust-01",
               "timestamp": "2099-06-01T00:00:00Z"})
# too_large: a valid interaction padded past 64 KiB
bad(day(124), {"event_id": "bad-l1", "type": "interaction", "ts": ts_str(day(124)),
               "customer_id": "cust-01", "kind": "page_view",
               "properties": {"blob": "x" * 70000}})


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tests/data/golden/events.jsonl"))
    args = ap.parse_args()
    lines = []
    for ev in sorted(log.events, key=lambda e: (e[4], e[1])):
        raw = ev[3]
        if isinstance(raw, dict):
            raw = json.dumps(raw, ensure_ascii=False).encode()
        assert b"\n" not in raw
        lines.append(raw)
    Path(args.out).write_bytes(b"\n".join(lines) + b"\n")
    print("wrote %d lines to %s" % (len(lines), args.out))


if __name__ == "__main__":
    main()
