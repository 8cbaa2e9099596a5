// A stand-in for Patron's JSON API with the contract's shapes (DESIGN.md, HTTP API and KPIs),
// serving the dashboard's own files from crates/patron-api/src/dashboard/. It lets the page be
// developed and checked without building the server: `node fake_api.mjs [--port N]`, then
// `node dashboard.mjs --url http://127.0.0.1:N --key fake-key`. The real test (run.sh) uses
// `patron demo`.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const assets = path.join(here, '../../crates/patron-api/src/dashboard');
const KEY = 'fake-key';
const argPort = process.argv.indexOf('--port');
const port = argPort > 0 ? Number(process.argv[argPort + 1]) : 0;
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
  "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// Deterministic pseudo-random numbers, so the pictures are the same every run.
let seed = 7;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);

const asOf = new Date(Date.UTC(2026, 10, 22, 7, 13, 48));
const day = 86400000;
const history = Array.from({ length: 365 }, (_, i) => {
  const d = new Date(asOf.getTime() - (364 - i) * day);
  const weekly = [0.8, 1, 1, 1.05, 1.1, 1.3, 1.2][d.getUTCDay()];
  const orders = Math.round((20 + i * 0.05) * weekly * (0.8 + 0.4 * rnd()));
  return {
    date: d.toISOString().slice(0, 10),
    revenue: Math.round(orders * (38 + 10 * rnd()) * 100) / 100,
    orders,
    new_customers: Math.round(orders * 0.3),
    interactions: orders * 6,
  };
});
const cohorts = Array.from({ length: 14 }, (_, i) => {
  const month = new Date(Date.UTC(2025, 9 + i, 1)).toISOString().slice(0, 7);
  const span = 14 - i;
  return {
    cohort: month,
    customers: 80 + Math.round(rnd() * 60),
    retention: Array.from({ length: span }, (_, m) => (m === 0 ? 1 : Math.round(0.35 * Math.pow(0.86, m) * (0.8 + 0.4 * rnd()) * 1000) / 1000)),
  };
});
const segments = {
  'Lost': 54, 'Champions': 45, 'Loyal Customers': 27, 'Potential Loyalists': 34, 'New Customers': 3,
  'Promising': 21, 'Need Attention': 8, 'About To Sleep': 45, "Can't Lose Them": 2, 'At Risk': 11,
  'Hibernating': 53, 'Prospect': 17,
};
let applied = 1000;
const started = Date.now();

function kpis() {
  const customers = Object.entries(segments).filter(([k]) => k !== 'Prospect').reduce((a, [, n]) => a + n, 0);
  const last30 = history.slice(-30);
  const revenue = last30.reduce((a, d) => a + d.revenue, 0);
  const orders = last30.reduce((a, d) => a + d.orders, 0);
  return {
    as_of: asOf.toISOString(), computed_at: new Date().toISOString(),
    customers, prospects: segments.Prospect, active_customers: 140, new_customers_30d: 31,
    revenue_30d: revenue, orders_30d: orders, avg_order_value: revenue / orders,
    repeat_purchase_rate: 0.41, retention_rate: 0.28, churn_rate: 0.72, predicted_churn_rate: 0.35,
    conversion_rate: customers / (customers + segments.Prospect), offer_acceptance_rate_30d: 0.12,
    offer_uplift: null, avg_clv: 84.2, total_clv: 84.2 * customers, segments,
    rfm_grid: [[54, 30, 12, 6, 2], [23, 11, 6, 5, 1], [19, 26, 8, 9, 4], [21, 17, 8, 11, 9], [3, 9, 8, 14, 31]],
  };
}

function json(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  const file = { '/': 'index.html', '/assets/app.js': 'app.js', '/assets/app.css': 'app.css' }[url.pathname];
  if (file) {
    let text = fs.readFileSync(path.join(assets, file), 'utf8');
    if (file === 'index.html') text = text.replace('{{BASE_CURRENCY}}', 'USD');
    const type = { html: 'text/html', js: 'text/javascript', css: 'text/css' }[file.split('.').pop()];
    res.writeHead(200, { 'content-type': type + '; charset=utf-8', 'content-security-policy': CSP });
    return res.end(text);
  }
  if ((req.headers.authorization || '') !== 'Bearer ' + KEY) {
    return json(res, 401, { error: { code: 'unauthorized', message: 'missing or unknown API key' } });
  }
  switch (url.pathname) {
    case '/v1/kpis': return json(res, 200, kpis());
    case '/v1/kpis/cohorts': return json(res, 200, { as_of: asOf.toISOString(), computed_at: new Date().toISOString(), cohorts });
    case '/v1/kpis/history': {
      const days = Math.max(1, Math.min(365, Number(url.searchParams.get('days')) || 90));
      return json(res, 200, { as_of: asOf.toISOString(), days: history.slice(-days) });
    }
    case '/v1/objectives': return json(res, 200, {
      as_of: asOf.toISOString(), objectives: [
        { name: 'reduce churn', kpi: 'churn_rate', current: 0.72, baseline: 0.8, target: 0.6, progress: 0.4, on_track: true, expected: 0.74, deadline: '2027-06-30T00:00:00Z' },
        { name: 'grow revenue', kpi: 'revenue_30d', current: 31000, baseline: 30000, target: 40000, progress: 0.1, on_track: false, expected: 34000, deadline: '2027-03-31T00:00:00Z' },
      ],
    });
    case '/v1/segments': return json(res, 200, {
      as_of: asOf.toISOString(),
      segments: Object.entries(segments).map(([name, customers]) => ({ name, kind: 'rfm', customers, revenue: customers * 120, avg_clv: 80 }))
        .concat([{ name: 'vip', kind: 'user', customers: 12, revenue: 9000, avg_clv: 400 }]),
    });
    case '/v1/status': {
      applied = 1000 + Math.round((Date.now() - started) * 0.4);
      return json(res, 200, {
        source: 'kafka:patron.events', topic: 'patron.events', ready: true, broker_connected: true,
        applied, rejected: 7, rejected_by_reason: {}, duplicates: 38, as_of: asOf.toISOString(), checkpoints: 5,
        dead_letters: { pending: 0, delivered: 7, topic: 'patron.dead-letters' },
        partitions: [0, 1, 2, 3].map((p) => ({ partition: p, committed_offset: applied / 4, applied_offset: applied / 4, high_watermark: applied / 4 + p * 30, lag: p * 30, state: p ? 'reading' : 'caught_up' })),
      });
    }
    default: return json(res, 404, { error: { code: 'not_found', message: 'no such route' } });
  }
});
server.listen(port, '127.0.0.1', () => {
  console.log(`fake API: http://127.0.0.1:${server.address().port} key ${KEY}`);
});
