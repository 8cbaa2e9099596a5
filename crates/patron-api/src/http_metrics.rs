//! Per-route latency (hdrhistogram) and request counts per route and status.
//!
//! Recorded once per request by [`track`], keyed by the route pattern (`MatchedPath`), so the
//! label set stays bounded whatever ids clients send; unmatched paths share one label.
//! Exported in Prometheus/OpenMetrics text by `/metrics`.
//!
//! Each thread records into one of [`SHARDS`] shards (picked once per thread), so the workers of
//! a many-core host do not all queue for one lock on every request; reports merge the shards.
//! The price is memory and report time: a route's histogram (1 µs to 1 h at 3 significant
//! digits) is about 190 KB in each shard a thread recorded it in, and a report adds them up.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Adds `other`'s figures to these.
    fn merge(&mut self, other: &RouteStats) {
        // Same bounds on both sides, so every value fits.
        let _ = self.latency.add(&other.latency);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        for (status, n) in &other.by_status {
            *self.by_status.entry(*status).or_default() += n;
        }
    }

    fn new() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            sum_us: 0,
            by_status: BTreeMap::new(),
        }
    }
}

/// How many shards the figures are recorded in; threads beyond that share them.
pub const SHARDS: usize = 16;

#[derive(Default)]
pub struct HttpMetrics {
    shards: [Mutex<BTreeMap<String, RouteStats>>; SHARDS],
}

/// This thread's shard: threads are numbered as they first record, round robin.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
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
        let mut routes = self.shards[shard()].lock().expect("metrics lock");
        if !routes.contains_key(route) {
            routes.insert(route.to_owned(), RouteStats::new());
        }
        let stats = routes.get_mut(route).expect("inserted above");
        stats.latency.saturating_record(us);
        stats.sum_us = stats.sum_us.saturating_add(us);
        *stats.by_status.entry(status).or_default() += 1;
    }

    /// Every shard's figures, merged per route.
    fn merged(&self) -> BTreeMap<String, RouteStats> {
        let mut all: BTreeMap<String, RouteStats> = BTreeMap::new();
        for shard in &self.shards {
            for (route, stats) in shard.lock().expect("metrics lock").iter() {
                all.entry(route.clone())
                    .or_insert_with(RouteStats::new)
                    .merge(stats);
            }
        }
        all
    }

    pub fn summaries(&self) -> Vec<RouteSummary> {
        let routes = self.merged();
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
        let routes = self.merged();
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
    // A clone of the pattern is a reference count, not a copy of the text.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(req).await;
    state.http.record(
        route.as_ref().map_or(UNMATCHED, MatchedPath::as_str),
        response.status().as_u16(),
        started.elapsed(),
    );
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

    #[test]
    fn threads_recording_apart_add_up() {
        // More threads than shards, so some share one; each records its own slice of 1..=6000 µs.
        let m = HttpMetrics::default();
        let threads = SHARDS + 4;
        let per_thread = 6000 / threads as u64;
        std::thread::scope(|scope| {
            for t in 0..threads as u64 {
                let m = &m;
                scope.spawn(move || {
                    for i in 1..=per_thread {
                        let status = if i % 10 == 0 { 500 } else { 200 };
                        m.record("/b", status, Duration::from_micros(t * per_thread + i));
                    }
                    m.record("/c", 204, Duration::from_micros(7));
                });
            }
        });
        let all = m.summaries();
        let b = all.iter().find(|s| s.route == "/b").expect("route /b");
        let n = threads as u64 * per_thread;
        assert_eq!(b.count, n);
        assert_eq!(b.by_status[&500], n / 10);
        assert_eq!(b.by_status[&200], n - n / 10);
        // Values 1..=n µs, one each: the 99th percentile is about 0.99 n (3 significant digits).
        let p99_us = b.p99_seconds * 1e6;
        assert!(
            (p99_us - 0.99 * n as f64).abs() <= 0.002 * n as f64,
            "{p99_us}"
        );
        let c = all.iter().find(|s| s.route == "/c").expect("route /c");
        assert_eq!(
            (c.count, c.by_status[&204]),
            (threads as u64, threads as u64)
        );
        let mut text = String::new();
        m.encode(&mut text);
        let sum_line = format!(
            "patron_http_request_duration_seconds_sum{{route=\"/b\"}} {}",
            (n * (n + 1) / 2) as f64 / 1e6
        );
        assert!(text.contains(&sum_line), "{sum_line} not in {text}");
    }
}
