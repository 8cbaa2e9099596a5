//! Per-route latency (hdrhistogram) and request counts per route and status.
//!
//! Recorded once per request by [`track`], keyed by the route pattern (`MatchedPath`), so the
//! label set stays bounded whatever ids clients send; unmatched paths share one label.
//! Exported in Prometheus/OpenMetrics text by `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hdrhistogram::Histogram;

use crate::ApiState;

/// Metric names, units and descriptions.
pub const LATENCY: &str = "patron_http_request_duration_seconds";
pub const LATENCY_HELP: &str = "HTTP request latency per route, from hdrhistogram (quantiles)";
pub const REQUESTS: &str = "patron_http_requests";
pub const REQUESTS_HELP: &str = "HTTP requests per route and status code";
pub const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
/// The label of requests no route matched.
pub const UNMATCHED: &str = "unmatched";

struct RouteStats {
    /// Microseconds, 1 µs to 1 h at 3 significant digits.
    latency: Histogram<u64>,
    sum_us: u64,
    by_status: BTreeMap<u16, u64>,
}

impl RouteStats {
    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            sum_us: 0,
            by_status: BTreeMap::new(),
        }
    }
}

#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<String, RouteStats>>,
}

/// One route's figures, for `/v1/status`-like reports and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RouteSummary {
    pub route: String,
    pub count: u64,
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p99_seconds: f64,
    pub p999_seconds: f64,
    pub by_status: BTreeMap<u16, u64>,
}

impl HttpMetrics {
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut routes = self.routes.lock().expect("metrics lock");
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteStats::new());
        }
        let stats = routes.get_mut(route).expect("inserted above");
        stats.latency.saturating_record(us);
        stats.sum_us = stats.sum_us.saturating_add(us);
        *stats.by_status.entry(status).or_default() += 1;
    }

    pub fn summaries(&self) -> Vec<RouteSummary> {
        let routes = self.routes.lock().expect("metrics lock");
        routes
            .iter()
            .map(|(route, s)| {
                let q = |q: f64| s.latency.value_at_quantile(q) as f64 / 1e6;
                RouteSummary {
                    route: route.clone(),
                    count: s.latency.len(),
                    p50_seconds: q(0.5),
                    p90_seconds: q(0.9),
                    p99_seconds: q(0.99),
                    p999_seconds: q(0.999),
                    by_status: s.by_status.clone(),
                }
            })
            .collect()
    }

    /// The families in OpenMetrics text (without the final `# EOF`).
    pub fn encode(&self, out: &mut String) {
        let routes = self.routes.lock().expect("metrics lock");
        let _ = writeln!(out, "# TYPE {LATENCY} summary");
        let _ = writeln!(out, "# HELP {LATENCY} {LATENCY_HELP}");
        let _ = writeln!(out, "# UNIT {LATENCY} seconds");
        for (route, s) in routes.iter() {
            let route = escape(route);
            for q in QUANTILES {
                let v = s.latency.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(out, "{LATENCY}{{route=\"{route}\",quantile=\"{q}\"}} {v}");
            }
            let _ = writeln!(
                out,
                "{LATENCY}_sum{{route=\"{route}\"}} {}",
                s.sum_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "{LATENCY}_count{{route=\"{route}\"}} {}",
                s.latency.len()
            );
        }
        let _ = writeln!(out, "# TYPE {REQUESTS} counter");
        let _ = writeln!(out, "# HELP {REQUESTS} {REQUESTS_HELP}");
        for (route, s) in routes.iter() {
            let route = escape(route);
            for (status, n) in &s.by_status {
                let _ = writeln!(
                    out,
                    "{REQUESTS}_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: times the request and records it under its route pattern.
pub async fn track(State(state): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .http
        .record(&route, response.status().as_u16(), started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_counts_per_route() {
        let m = HttpMetrics::default();
        for i in 1..=1000u64 {
            m.record("/a", 200, Duration::from_micros(i));
        }
        m.record("/a", 404, Duration::from_micros(5));
        let s = &m.summaries()[0];
        assert_eq!(s.count, 1001);
        assert_eq!(s.by_status[&200], 1000);
        assert_eq!(s.by_status[&404], 1);
        // 3 significant digits: within 0.1% of the exact rank.
        assert!(
            (s.p50_seconds * 1e6 - 500.0).abs() <= 1.0,
            "{}",
            s.p50_seconds
        );
        let mut text = String::new();
        m.encode(&mut text);
        assert!(text.contains("patron_http_requests_total{route=\"/a\",status=\"404\"} 1"));
        assert!(text.contains("patron_http_request_duration_seconds_count{route=\"/a\"} 1001"));
    }
}
