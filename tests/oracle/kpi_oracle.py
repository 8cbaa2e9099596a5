#!/usr/bin/env python3
"""Independent oracle for Patron's KPIs, cohort matrix, objective progress and daily KPI table.

Written from DESIGN.md ("KPIs", "Objectives") and the definitions in docs/ARCHITECTURE.md
("KPIs"), not from Patron's code. Event validation, deduplication and identity resolution are
those of rfm_oracle.py (itself written from DESIGN.md alone); this script records every applied
event and each profile's purchases on top of it and computes:

- the KPI set of GET /v1/kpis, as of as_of (the newest applied event):
  customers (>= 1 purchase), prospects, active_customers (as_of - last purchase <= active
  window), new_customers_30d / revenue_30d / orders_30d (the 30 UTC days ending with as_of's
  day), avg_order_value (gross / purchases, all time), repeat_purchase_rate, retention_rate
  (customers with a purchase in the previous calendar month who also bought in as_of's month),
  churn_rate = 1 - retention, predicted_churn_rate (share with P(alive) < 0.5), conversion_rate,
  offer_acceptance_rate_30d (accepted / shown in the window), offer_uplift (null: no holdout
  data), avg_clv, total_clv, segments (count per RFM segment), rfm_grid[r-1][f-1];
- the cohort matrix: first-purchase month x months since, share of the cohort buying then;
- objective progress against a straight line from baseline (at start, else the first day with
  data) to target (a relative "-25%" resolved against the baseline) at the deadline;
- the kpi_daily table: one row per day with an applied event, that day's totals and the KPIs
  exact for the end of that day (cumulative customers, 30-day rolling sums);
- the dense history of the last `history_days` days (GET /v1/kpis/history).

P(alive), expected purchases and the Gamma-Gamma expected value come from the `lifetimes`
package (BetaGeoFitter / GammaGammaFitter set to the parameters in model.json, in the model's
time unit). CLV is the discounted monthly sum DESIGN.md's "expected margin over the horizon,
discounted at discount_rate (annual)" is computed with in Patron (months of 30 days, monthly
rate (1 + annual)^(1/12) - 1, a fractional last month):
    CLV = sum_i (E[Y(t_i)] - E[Y(t_{i-1})]) * value * margin / (1 + d)^(m_i), m_i = min(i, H).
Money is held as exact decimals rounded to the micro-unit per event, as Patron stores it.

Usage: kpi_oracle.py [--events F] [--config F] [--model F] [--history-days N] [--out F]
"""

import argparse
import json
import math
import sys
import tomllib
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rfm_oracle as ro  # noqa: E402

KPI_DIR = ro.GOLDEN / "kpi"
MICRO = Decimal("0.000001")


class KpiOracle(ro.Oracle):
    """rfm_oracle's Oracle, also keeping the applied events and each profile's purchases."""

    def __init__(self, cfg, now):
        super().__init__(cfg, now)
        self.log = []  # applied events, in arrival order

    def validate(self, line):
        out = super().validate(line)
        if out["type"] == "interaction":
            obj = json.loads(line.decode("utf-8"), parse_constant=ro.reject_constant)
            out["kind"] = ro.to_native(obj)["kind"]
        if "base_amount" in out:
            out["base_amount"] = out["base_amount"].quantize(MICRO, rounding=ROUND_HALF_UP)
        return out

    def profile(self, pid):
        prof = super().profile(pid)
        prof.setdefault("buys", [])
        return prof

    def merge(self, old, into):
        old_r, into_r = self.resolve(old), self.resolve(into)
        src = self.profiles.get(old_r)
        moved = list(src["buys"]) if src is not None and old_r != into_r else []
        super().merge(old, into)
        if moved:
            self.profile(into_r)["buys"] += moved

    def apply(self, ev):
        before = self.applied
        super().apply(ev)
        if self.applied == before:
            return  # a duplicate
        self.log.append(ev)
        if ev["type"] == "purchase":
            buy = (ev["ts"], ev["event_id"], ev["base_amount"])
            self.profile(self.resolve(ev["customer"]))["buys"].append(buy)


def month_of(dt):
    return (dt.year - 1970) * 12 + dt.month - 1


def month_label(m):
    return "%04d-%02d" % (1970 + m // 12, m % 12 + 1)


def ratio(num, den):
    return None if den == 0 else float(num) / float(den)


def fmt_ts(dt):
    return ro.fmt_ts(dt)


def parse_when(text):
    """RFC 3339, or YYYY-MM-DD as midnight UTC."""
    try:
        d = date.fromisoformat(text)
        return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
    except ValueError:
        return ro.parse_ts(text)


def clv_scores(customers, as_of, model, clv_cfg):
    """(p_alive, clv) per customer id, with lifetimes at the model's parameters."""
    import numpy as np
    import pandas as pd
    from lifetimes import BetaGeoFitter, GammaGammaFitter

    def scalar(v):
        return float(np.asarray(v, dtype=float).reshape(-1)[0])

    bgf = BetaGeoFitter()
    bgf.params_ = pd.Series(model["bgnbd"])[["r", "alpha", "a", "b"]]
    ggf = GammaGammaFitter()
    gg = model["gamma_gamma"]
    ggf.params_ = pd.Series({"p": gg["p"], "q": gg["q"], "v": gg["gamma"]})
    unit_days = {"day": 1.0, "week": 7.0}[model["time_unit"]]
    horizon_months = ro.parse_duration(clv_cfg.get("horizon", "365d")).total_seconds() / (
        30 * 86400
    )
    margin = float(clv_cfg.get("margin", 0.3))
    monthly = (1.0 + float(clv_cfg.get("discount_rate", 0.1))) ** (1.0 / 12.0) - 1.0
    steps = math.ceil(horizon_months)
    months = [min(float(i), horizon_months) for i in range(1, steps + 1)]

    def units(delta):
        return delta.total_seconds() / 86400.0 / unit_days

    out = {}
    for pid, c in customers.items():
        x = c["freq"] - 1
        t_x, big_t = units(c["last"] - c["first"]), units(as_of - c["first"])
        p_alive = scalar(bgf.conditional_probability_alive(x, t_x, big_t))
        mean = float(c["repeat_mean"]) if x > 0 else 0.0
        value = scalar(ggf.conditional_expected_average_profit(x, mean))
        total, prev = 0.0, 0.0
        for m in months:
            cum = scalar(
                bgf.conditional_expected_number_of_purchases_up_to_time(
                    m * 30.0 / unit_days, x, t_x, big_t
                )
            )
            total += (cum - prev) / (1.0 + monthly) ** m
            prev = cum
        out[pid] = (p_alive, total * value * margin)
    return out


def zero_totals():
    return {"revenue": Decimal(0), "refunded": Decimal(0), "orders": 0, "refunds": 0,
            "interactions": 0, "offers_shown": 0, "offers_accepted": 0, "offers_declined": 0}


def day_rows(oracle, customers, days):
    """kpi_daily / history rows for the given dates."""
    totals = {}
    for ev in oracle.log:
        t = totals.setdefault(ev["ts"].date(), zero_totals())
        if ev["type"] == "purchase":
            t["orders"] += 1
            t["revenue"] += ev["base_amount"]
        elif ev["type"] == "refund":
            t["refunds"] += 1
            t["refunded"] += ev["base_amount"]
        elif ev["type"] == "interaction":
            t["interactions"] += 1
            if ev["kind"] in ("offer_shown", "offer_accepted", "offer_declined"):
                t[ev["kind"].replace("offer_", "offers_", 1)] += 1
    firsts = [c["first"].date() for c in customers.values()]
    rows = []
    for d in days:
        t = totals.get(d, zero_totals())
        lo = d - timedelta(days=29)
        window = [v for k, v in totals.items() if lo <= k <= d]
        shown = sum(v["offers_shown"] for v in window)
        rows.append({
            "date": d.isoformat(),
            "revenue": float(t["revenue"]),
            "refunded": float(t["refunded"]),
            "orders": t["orders"],
            "refunds": t["refunds"],
            "new_customers": sum(1 for f in firsts if f == d),
            "interactions": t["interactions"],
            "offers_shown": t["offers_shown"],
            "offers_accepted": t["offers_accepted"],
            "offers_declined": t["offers_declined"],
            "avg_order_value": ratio(t["revenue"], t["orders"]),
            "customers": sum(1 for f in firsts if f <= d),
            "new_customers_30d": sum(1 for f in firsts if lo <= f <= d),
            "revenue_30d": float(sum((v["revenue"] for v in window), Decimal(0))),
            "orders_30d": sum(v["orders"] for v in window),
            "offer_acceptance_rate_30d": ratio(sum(v["offers_accepted"] for v in window), shown),
        })
    return rows


def compute(oracle, cfg, model, history_days):
    as_of = oracle.as_of
    window = ro.parse_duration(cfg.get("kpi", {}).get("active_window", "90d"))
    customers = {}
    for pid, p in oracle.profiles.items():
        if not p["buys"]:
            continue
        buys = p["buys"]
        gross = sum((b[2] for b in buys), Decimal(0))
        first_buy = min(buys, key=lambda b: (b[0], b[1]))
        customers[pid] = {
            "freq": len(buys),
            "gross": gross,
            "first": min(b[0] for b in buys),
            "last": max(b[0] for b in buys),
            "months": {month_of(b[0]) for b in buys},
            "repeat_mean": (gross - first_buy[2]) / (len(buys) - 1) if len(buys) > 1 else None,
        }
    n = len(customers)
    prospects = len(oracle.profiles) - n
    now_m = month_of(as_of)
    today = as_of.date()
    rows = day_rows(oracle, customers, [today])[0]

    # RFM scores and segments from rfm_oracle.
    segments = {name: 0 for name, _, _ in ro.SEGMENT_MAP}
    segments["Prospect"] = 0
    grid = [[0] * 5 for _ in range(5)]
    for pid, _f, _m, _rec, r, fs, _ms, seg in oracle.rows():
        segments[seg] = segments.get(seg, 0) + 1
        if r is not None:
            grid[r - 1][fs - 1] += 1

    prev = [c for c in customers.values() if now_m - 1 in c["months"]]
    kept = [c for c in prev if now_m in c["months"]]
    retention = ratio(len(kept), len(prev))
    scores = clv_scores(customers, as_of, model, cfg.get("clv", {})) if model else {}
    clvs = [s[1] for s in scores.values()]
    kpis = {
        "customers": n,
        "prospects": prospects,
        "active_customers": sum(1 for c in customers.values() if as_of - c["last"] <= window),
        "new_customers_30d": rows["new_customers_30d"],
        "revenue_30d": rows["revenue_30d"],
        "orders_30d": rows["orders_30d"],
        "avg_order_value": ratio(sum((c["gross"] for c in customers.values()), Decimal(0)),
                                 sum(c["freq"] for c in customers.values())),
        "repeat_purchase_rate": ratio(sum(1 for c in customers.values() if c["freq"] >= 2), n),
        "retention_rate": retention,
        "churn_rate": None if retention is None else 1.0 - retention,
        "predicted_churn_rate": ratio(sum(1 for s in scores.values() if s[0] < 0.5), len(scores)),
        "conversion_rate": ratio(n, n + prospects),
        "offer_acceptance_rate_30d": rows["offer_acceptance_rate_30d"],
        "offer_uplift": None,
        "avg_clv": sum(clvs) / len(clvs) if clvs else None,
        "total_clv": sum(clvs) if clvs else None,
        "segments": dict(sorted(segments.items())),
        "rfm_grid": grid,
    }

    cohorts = []
    for c_month in sorted({month_of(c["first"]) for c in customers.values()}):
        if c_month > now_m:
            continue
        members = [c for c in customers.values() if month_of(c["first"]) == c_month]
        cohorts.append({
            "cohort": month_label(c_month),
            "customers": len(members),
            "retention": [
                sum(1 for c in members if c_month + k in c["months"]) / len(members)
                for k in range(now_m - c_month + 1)
            ],
        })

    data_days = sorted({ev["ts"].date() for ev in oracle.log})
    first_day = data_days[0]
    data_start = datetime(first_day.year, first_day.month, first_day.day, tzinfo=timezone.utc)
    objectives = []
    for o in cfg.get("objectives", []):
        baseline = float(o["baseline"])
        target = o["target"]
        if isinstance(target, str) and target.strip().endswith("%"):
            target = baseline * (1.0 + float(target.strip()[:-1]) / 100.0)
        else:
            target = float(target)
        deadline = parse_when(o["deadline"])
        start = parse_when(o["start"]) if "start" in o else data_start
        current = kpis[o["kpi"]]
        frac = min(1.0, max(0.0, (as_of - start) / (deadline - start)))
        expected = baseline + (target - baseline) * frac
        objectives.append({
            "name": o["name"],
            "kpi": o["kpi"],
            "current": current,
            "baseline": baseline,
            "target": target,
            "progress": None if current is None or target == baseline
            else (current - baseline) / (target - baseline),
            "expected": expected,
            "on_track": None if current is None
            else (current <= expected if target < baseline else current >= expected),
            "start": fmt_ts(start),
            "deadline": fmt_ts(deadline),
        })

    history_start = max(first_day, today - timedelta(days=history_days - 1))
    history = [history_start + timedelta(days=i) for i in range((today - history_start).days + 1)]
    return {
        "as_of": fmt_ts(as_of),
        "kpis": kpis,
        "cohorts": cohorts,
        "objectives": objectives,
        "kpi_daily": day_rows(oracle, customers, data_days),
        "history_days": history_days,
        "history": day_rows(oracle, customers, history),
    }


def rounded(v):
    """Floats to 12 significant digits, so the committed file does not depend on the last bits
    of a library's arithmetic (the test compares with a tolerance of 1e-9 or looser)."""
    if isinstance(v, float):
        return float("%.12g" % v)
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [rounded(x) for x in v]
    return v


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", default=str(KPI_DIR / "events.jsonl"))
    ap.add_argument("--config", default=str(KPI_DIR / "patron.toml"))
    ap.add_argument("--model", default=str(KPI_DIR / "model.json"))
    ap.add_argument("--history-days", type=int, default=45)
    ap.add_argument("--out", default=str(KPI_DIR / "expected_kpis.json"))
    args = ap.parse_args()

    with open(args.config, "rb") as f:
        cfg = tomllib.load(f)
    model = json.loads(Path(args.model).read_text()) if args.model else None
    oracle = KpiOracle(cfg, datetime.now(timezone.utc))
    lines = Path(args.events).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for line in lines:
        oracle.feed(line[:-1] if line.endswith(b"\r") else line)
    result = rounded(compute(oracle, cfg, model, args.history_days))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("%s: %d customers, %d cohorts, %d days" % (
        args.out, result["kpis"]["customers"], len(result["cohorts"]), len(result["kpi_daily"])))


if __name__ == "__main__":
    main()
