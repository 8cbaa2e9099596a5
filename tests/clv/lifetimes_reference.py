#!/usr/bin/env python3
"""Reference values from the Python `lifetimes` package (0.11.3) for patron-clv's cross-check.

Reads a customer-summary CSV (columns x, t_x, T and optionally monetary; the lifetimes/CDNOW
names frequency, recency, zbar, monetary_value are accepted too) and writes a JSON with:

- BG/NBD and Gamma-Gamma log-likelihoods at several fixed parameter sets, from lifetimes'
  own `_negative_log_likelihood` (which returns the *mean* negative log-likelihood plus a
  penalty; we call it with penalizer 0 and also record the total = -mean * customers);
- lifetimes' fitted BG/NBD and Gamma-Gamma parameters (default options: penalizer 0,
  scipy BFGS, tol 1e-7) and the log-likelihood at them;
- for a sample of rows, at lifetimes' fitted parameters: P(alive), conditional expected
  purchases over several horizons, conditional expected average value, and CLV assembled
  from lifetimes' predictions with patron's month convention (30 days; see below).

Usage (from the workspace root):
    python3 -m venv .venv-clv
    .venv-clv/bin/pip install 'lifetimes==0.11.3' 'pandas<2' 'numpy<2' 'scipy<1.13'
    .venv-clv/bin/python tests/clv/lifetimes_reference.py \
        --input tests/data/clv/cdnow_customers_summary_with_transactions.csv \
        --time-unit-days 7 --output tests/data/clv/lifetimes_expected.json
"""

import argparse
import json
import sys

import numpy as np
import pandas as pd
import scipy

import lifetimes
from lifetimes import BetaGeoFitter, GammaGammaFitter

ALIASES = {
    "x": ["x", "frequency"],
    "t_x": ["t_x", "recency"],
    "T": ["T"],
    "monetary": ["monetary", "monetary_value", "zbar"],
}

BG_FIXED = [
    {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426},
    {"r": 1.0, "alpha": 1.0, "a": 1.0, "b": 1.0},
    {"r": 0.5, "alpha": 10.0, "a": 2.0, "b": 5.0},
    {"r": 2.0, "alpha": 3.0, "a": 0.4, "b": 0.9},
]
GG_FIXED = [
    {"p": 6.25, "q": 3.74, "gamma": 15.44},
    {"p": 1.0, "q": 2.0, "gamma": 10.0},
    {"p": 3.0, "q": 8.0, "gamma": 100.0},
]
HORIZONS = [1.0, 10.0, 52.0, 520.0]
CLV_OPTIONS = {"horizon_months": 12.0, "margin": 0.3, "annual_discount_rate": 0.1}


def column(df, name):
    for alias in ALIASES[name]:
        if alias in df.columns:
            return df[alias].to_numpy(dtype=float)
    return None


def sample_indices(x, t_x, T, step):
    """Every `step`-th row plus the rows that stress the formulas: the largest x, the x = 0
    row with the smallest T, and the repeat buyer with the longest silence T - t_x."""
    n = len(x)
    stress = {int(np.argmax(x)), int(np.argmin(np.where(x == 0, T, np.inf))),
              int(np.argmax(np.where(x > 0, T - t_x, -1)))}
    return sorted(set(range(0, n, step)) | stress)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--time-unit-days", type=float, default=7.0,
                    help="days per time unit of the summaries (7 for CDNOW weeks)")
    ap.add_argument("--sample-step", type=int, default=50)
    args = ap.parse_args()

    df = pd.read_csv(args.input)
    x = column(df, "x")
    t_x = column(df, "t_x")
    T = column(df, "T")
    monetary = column(df, "monetary")
    if x is None or t_x is None or T is None:
        sys.exit("input needs columns x, t_x, T (or frequency, recency, T)")
    n = len(x)
    weights = np.ones(n)

    out = {
        "source": {
            "lifetimes": lifetimes.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "pandas": pd.__version__,
            "input": args.input,
            "customers": n,
            "time_unit_days": args.time_unit_days,
            "note": "log_likelihood = -(lifetimes mean negative log-likelihood) * customers, penalizer 0",
        }
    }

    # --- BG/NBD ---------------------------------------------------------------------------
    bg_fixed = []
    for p in BG_FIXED:
        log_params = np.log([p["r"], p["alpha"], p["a"], p["b"]])
        mean_nll = BetaGeoFitter._negative_log_likelihood(log_params, x.astype(int), t_x, T, weights, 0.0)
        bg_fixed.append({"params": p, "mean_negative_log_likelihood": float(mean_nll),
                         "log_likelihood": float(-mean_nll * n)})

    bgf = BetaGeoFitter(penalizer_coef=0.0)
    bgf.fit(x, t_x, T)
    fitted = {k: float(v) for k, v in bgf.params_.items()}
    bg_params = {"r": fitted["r"], "alpha": fitted["alpha"], "a": fitted["a"], "b": fitted["b"]}
    ll_at_fit = -BetaGeoFitter._negative_log_likelihood(
        np.log([bg_params[k] for k in ("r", "alpha", "a", "b")]), x.astype(int), t_x, T, weights, 0.0) * n

    idx = sample_indices(x, t_x, T, args.sample_step)
    rows = []
    for i in idx:
        row = {"index": i, "x": float(x[i]), "t_x": float(t_x[i]), "T": float(T[i]),
               "p_alive": float(bgf.conditional_probability_alive(x[i], t_x[i], T[i])[0]),
               "expected_purchases": {}}
        for h in HORIZONS:
            e = bgf.conditional_expected_number_of_purchases_up_to_time(h, x[i], t_x[i], T[i])
            row["expected_purchases"][repr(h)] = float(np.asarray(e).ravel()[0])
        rows.append(row)

    new_customer = {repr(h): float(bgf.expected_number_of_purchases_up_to_time(h)) for h in HORIZONS}

    out["bgnbd"] = {
        "fixed_params_log_likelihood": bg_fixed,
        "fitted": {"params": bg_params, "log_likelihood": float(ll_at_fit)},
        "horizons": HORIZONS,
        "rows": rows,
        "new_customer_expected_purchases": new_customer,
    }

    # --- Gamma-Gamma ----------------------------------------------------------------------
    if monetary is not None:
        repeat = x > 0
        fx, fm = x[repeat], monetary[repeat]
        w = np.ones(len(fx))
        gg_fixed = []
        for p in GG_FIXED:
            log_params = np.log([p["p"], p["q"], p["gamma"]])
            mean_nll = GammaGammaFitter._negative_log_likelihood(log_params, fx, fm, w, 0.0)
            gg_fixed.append({"params": p, "mean_negative_log_likelihood": float(mean_nll),
                             "log_likelihood": float(-mean_nll * len(fx))})
        ggf = GammaGammaFitter(penalizer_coef=0.0)
        ggf.fit(fx, fm)
        gp = {"p": float(ggf.params_["p"]), "q": float(ggf.params_["q"]), "gamma": float(ggf.params_["v"])}
        gg_ll = -GammaGammaFitter._negative_log_likelihood(
            np.log([gp["p"], gp["q"], gp["gamma"]]), fx, fm, w, 0.0) * len(fx)
        gg_rows = []
        for i in idx:
            m = float(monetary[i]) if x[i] > 0 else 0.0
            value = ggf.conditional_expected_average_profit(pd.Series([x[i]]), pd.Series([m]))
            gg_rows.append({"index": i, "x": float(x[i]), "mean_value": m,
                            "expected_average_value": float(np.asarray(value).ravel()[0])})
        out["gamma_gamma"] = {
            "repeat_buyers": int(len(fx)),
            "fixed_params_log_likelihood": gg_fixed,
            "fitted": {"params": gp, "log_likelihood": float(gg_ll)},
            "rows": gg_rows,
        }

        # --- CLV from lifetimes' predictions, with patron's conventions ---------------------
        # lifetimes' own customer_lifetime_value takes a *monthly* discount rate and counts
        # 4.345 weeks per month; patron takes an annual rate and a 30-day month. The sum is
        # the same discounted-cash-flow scheme, so it is assembled here from lifetimes'
        # conditional_expected_number_of_purchases_up_to_time and expected average profit.
        month = 30.0 / args.time_unit_days
        monthly = (1.0 + CLV_OPTIONS["annual_discount_rate"]) ** (1.0 / 12.0) - 1.0
        clv_rows = []
        for row, gg_row in zip(rows, gg_rows):
            total, prev = 0.0, 0.0
            for i in range(1, int(CLV_OPTIONS["horizon_months"]) + 1):
                cum = float(np.asarray(bgf.conditional_expected_number_of_purchases_up_to_time(
                    i * month, row["x"], row["t_x"], row["T"])).ravel()[0])
                total += (cum - prev) / (1.0 + monthly) ** i
                prev = cum
            clv = total * gg_row["expected_average_value"] * CLV_OPTIONS["margin"]
            clv_rows.append({"index": row["index"], "x": row["x"], "t_x": row["t_x"], "T": row["T"],
                             "mean_value": gg_row["mean_value"], "clv": clv})
        out["clv"] = {"options": dict(CLV_OPTIONS, time_unit_days=args.time_unit_days), "rows": clv_rows}

    with open(args.output, "w") as f:
        json.dump(out, f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {args.output}: BG/NBD fit {bg_params}", file=sys.stderr)


if __name__ == "__main__":
    main()
