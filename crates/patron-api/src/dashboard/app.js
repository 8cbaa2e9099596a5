// Patron dashboard: fetches the JSON API with a reader key and draws every chart as SVG.
//
// No library and no other origin (the Content-Security-Policy allows only 'self'). Every text
// goes in through textContent, never as markup. Each chart marks its data elements with the
// class "mark" and sets data-state on its card ("ok", "empty" or "error"), which the browser
// test in tests/browser/ asserts on.
'use strict';

(function () {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const KEY_STORAGE = 'patron.dashboard.key';
  // The ingest-rate series of this tab, so a reload does not restart it.
  const SAMPLES_STORAGE = 'patron.dashboard.ingest';
  const KPI_SAMPLES_STORAGE = 'patron.dashboard.kpis';
  const REFRESH_MS = 5000;
  const MAX_RATE_SAMPLES = 120;
  const MAX_COHORTS = 24;
  const MAX_COHORT_MONTHS = 24;
  // Literal colours: SVG presentation attributes do not take CSS variables everywhere.
  const COLOURS = {
    accent: '#1f6fb2', accent2: '#e07b24', good: '#2e8540', warn: '#c7671b', bad: '#b3261e',
    track: '#eceff3', user: '#9aa5b1', ink: '#1d2733',
  };
  const CURRENCY = (document.querySelector('meta[name="patron-currency"]') || {}).content || '';

  const state = {
    key: null,
    timer: null,
    generation: 0,
    refreshes: 0,
    historyDays: 90,
    // One entry per /v1/status poll: {t: ms, applied, lag}, for the ingest rate.
    statusSamples: [],
    // Values of KPIs that history does not carry, one per poll, for their sparklines.
    kpiSamples: {},
  };

  // ---------------------------------------------------------------------------------------
  // Formatting

  const nf0 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const nf2 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
  const dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
  const timeFmt = new Intl.DateTimeFormat(undefined, {
    hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false,
  });

  function isNum(v) {
    return typeof v === 'number' && Number.isFinite(v);
  }

  function moneyFormat(opts) {
    if (CURRENCY) {
      try {
        return new Intl.NumberFormat(undefined, Object.assign({ style: 'currency', currency: CURRENCY }, opts));
      } catch (_) {
        // Not a code Intl knows: fall through to a plain number with the code after it.
      }
    }
    const plain = new Intl.NumberFormat(undefined, opts);
    return { format: (v) => plain.format(v) + (CURRENCY ? ' ' + CURRENCY : '') };
  }
  const money0 = moneyFormat({ maximumFractionDigits: 0 });
  const money2 = moneyFormat({ minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const moneyCompact = moneyFormat({ notation: 'compact', maximumFractionDigits: 1 });

  const fmt = {
    count: (v) => (isNum(v) ? nf0.format(v) : '—'),
    compact: (v) => (isNum(v) ? (Math.abs(v) >= 10000 ? compact.format(v) : nf2.format(v)) : '—'),
    money: (v) => (isNum(v) ? (Math.abs(v) >= 1e6 ? moneyCompact.format(v) : Math.abs(v) >= 100 ? money0.format(v) : money2.format(v)) : '—'),
    moneyAxis: (v) => (isNum(v) ? (Math.abs(v) >= 1000 ? moneyCompact.format(v) : money0.format(v)) : ''),
    pct: (v) => (isNum(v) ? (v * 100).toFixed(1) + '%' : '—'),
    pctAxis: (v) => (isNum(v) ? Math.round(v * 100) + '%' : ''),
    points: (v) => (isNum(v) ? (v >= 0 ? '+' : '') + (v * 100).toFixed(1) + ' pp' : '—'),
  };

  function parseDay(s) {
    // "YYYY-MM-DD" as a UTC date.
    const d = new Date(s + 'T00:00:00Z');
    return Number.isNaN(d.getTime()) ? null : d;
  }

  function fmtStamp(s) {
    if (!s) return '—';
    const d = new Date(s);
    if (Number.isNaN(d.getTime())) return String(s);
    return d.toISOString().replace('T', ' ').replace(/:\d\d(\.\d+)?Z$/, ' UTC');
  }

  // ---------------------------------------------------------------------------------------
  // SVG helpers

  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG_NS, tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v !== undefined && v !== null) node.setAttribute(k, String(v));
      }
    }
    if (parent) parent.appendChild(node);
    return node;
  }

  function label(parent, x, y, text, cls, anchor, extra) {
    const t = el('text', Object.assign({ x, y, class: cls || null, 'text-anchor': anchor || null }, extra || {}), parent);
    t.textContent = text;
    return t;
  }

  function tip(node, text) {
    el('title', null, node).textContent = text;
    return node;
  }

  function reset(svg, width, height) {
    svg.replaceChildren();
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
    return svg;
  }

  function emptyChart(svg, width, height, message) {
    reset(svg, width, height);
    label(svg, width / 2, height / 2, message, 'empty', 'middle');
  }

  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  // A "nice" top for an axis from 0, and its ticks.
  function niceAxis(max, count) {
    if (!(max > 0)) max = 1;
    const step = niceStep(max, count);
    const top = Math.ceil(max / step - 1e-9) * step;
    const ticks = [];
    for (let v = 0; v <= top + step * 1e-6; v += step) ticks.push(Number(v.toPrecision(12)));
    return { top, ticks };
  }

  // Colour ramp from light to dark blue; t in 0..1.
  function ramp(t) {
    const lo = [238, 244, 251];
    const hi = [8, 69, 148];
    const c = lo.map((l, i) => Math.round(l + (hi[i] - l) * Math.max(0, Math.min(1, t))));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  const SEGMENT_COLOURS = {
    'Champions': '#1a7f4b',
    'Loyal Customers': '#2e9e5e',
    'Potential Loyalists': '#6bbf59',
    'New Customers': '#1f6fb2',
    'Promising': '#5b9bd5',
    'Need Attention': '#e3b23c',
    'About To Sleep': '#e08b3c',
    "Can't Lose Them": '#c0392b',
    'At Risk': '#d9534f',
    'Hibernating': '#8e7cc3',
    'Lost': '#7f8c8d',
    'Prospect': '#b8c2cc',
  };

  // ---------------------------------------------------------------------------------------
  // Charts

  // Bars or a line over an ordered series, with y axis from 0, gridlines and titles.
  // points: [{tick: short x label, tip: hover text, v: number}]
  function seriesChart(svg, points, opts) {
    const W = 600;
    const H = opts.height || 230;
    const m = { l: 70, r: 14, t: 26, b: 44 };
    const w = W - m.l - m.r;
    const h = H - m.t - m.b;
    reset(svg, W, H);
    label(svg, m.l, 14, opts.title, 'chart-title');
    const values = points.map((p) => p.v).filter(isNum);
    if (points.length === 0 || values.length === 0) {
      label(svg, W / 2, H / 2, opts.emptyText || 'no data yet', 'empty', 'middle');
      return 0;
    }
    const { top, ticks } = niceAxis(Math.max(opts.minTop || 0, ...values), 4);
    const y = (v) => m.t + h - (v / top) * h;
    const g = el('g', null, svg);
    for (const t of ticks) {
      el('line', { x1: m.l, x2: m.l + w, y1: y(t), y2: y(t), class: 'grid' }, g);
      label(g, m.l - 6, y(t) + 4, opts.yFmt(t), 'tick', 'end');
    }
    el('line', { x1: m.l, x2: m.l + w, y1: m.t + h, y2: m.t + h, class: 'axis' }, g);
    el('line', { x1: m.l, x2: m.l, y1: m.t, y2: m.t + h, class: 'axis' }, g);
    label(g, 14, m.t + h / 2, opts.yTitle, 'axis-title', 'middle', { transform: `rotate(-90 14 ${m.t + h / 2})` });
    label(g, m.l + w / 2, H - 6, opts.xTitle, 'axis-title', 'middle');

    const n = points.length;
    const band = w / n;
    const cx = (i) => m.l + band * (i + 0.5);
    const tickEvery = Math.max(1, Math.ceil(n / 6));
    for (let i = 0; i < n; i += tickEvery) {
      el('line', { x1: cx(i), x2: cx(i), y1: m.t + h, y2: m.t + h + 4, class: 'axis' }, g);
      label(g, cx(i), m.t + h + 16, points[i].tick, 'tick', 'middle');
    }

    let marks = 0;
    const colour = opts.colour || COLOURS.accent;
    if (opts.kind === 'bars') {
      const bw = Math.max(0.6, band * 0.8);
      points.forEach((p, i) => {
        if (!isNum(p.v)) return;
        const r = el('rect', {
          x: cx(i) - bw / 2, y: y(p.v), width: bw, height: Math.max(0, m.t + h - y(p.v)),
          fill: colour, class: 'mark',
        }, g);
        tip(r, p.tip);
        marks++;
      });
    } else {
      const pts = points.map((p, i) => (isNum(p.v) ? [cx(i), y(p.v)] : null)).filter(Boolean);
      el('path', {
        d: pts.map((p, i) => (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1)).join(''),
        class: 'line', stroke: colour,
      }, g);
      const r = n > 150 ? 1.2 : 2.2;
      points.forEach((p, i) => {
        if (!isNum(p.v)) return;
        tip(el('circle', { cx: cx(i), cy: y(p.v), r, fill: colour, class: 'mark' }, g), p.tip);
        marks++;
      });
    }
    if (opts.trend && n >= 14) {
      // A 7-point trailing mean, so weekly rhythm does not hide the trend.
      const avg = points.map((_, i) => {
        const win = points.slice(Math.max(0, i - 6), i + 1).map((p) => p.v).filter(isNum);
        return win.length ? win.reduce((a, b) => a + b, 0) / win.length : null;
      });
      const d = avg.map((v, i) => (isNum(v) ? `${i > 0 ? 'L' : 'M'}${cx(i).toFixed(1)} ${y(v).toFixed(1)}` : '')).join('');
      el('path', { d, class: 'trend' }, g);
      label(g, m.l + w, 14, '- - 7-day mean', 'legend', 'end');
    }
    return marks;
  }

  // Horizontal bars with a label on the left and the value on the right.
  // items: [{label, v, text, colour, tip}]
  function hbarChart(svg, items, opts) {
    const W = 600;
    const row = 22;
    const m = { l: opts.labelWidth || 160, r: 120, t: 26, b: 40 };
    const H = m.t + m.b + row * Math.max(1, items.length);
    const w = W - m.l - m.r;
    reset(svg, W, H);
    label(svg, 0, 14, opts.title, 'chart-title');
    if (items.length === 0) {
      label(svg, W / 2, m.t + row, opts.emptyText || 'no data yet', 'empty', 'middle');
      return 0;
    }
    const { top, ticks } = niceAxis(Math.max(opts.minTop || 0, ...items.map((i) => i.v)), 4);
    const x = (v) => m.l + (v / top) * w;
    const g = el('g', null, svg);
    const bottom = m.t + row * items.length;
    for (const t of ticks) {
      el('line', { x1: x(t), x2: x(t), y1: m.t, y2: bottom, class: 'grid' }, g);
      label(g, x(t), bottom + 14, opts.xFmt(t), 'tick', 'middle');
    }
    el('line', { x1: m.l, x2: m.l, y1: m.t, y2: bottom, class: 'axis' }, g);
    label(g, m.l + w / 2, H - 6, opts.xTitle, 'axis-title', 'middle');
    let marks = 0;
    items.forEach((item, i) => {
      const yy = m.t + i * row;
      label(g, m.l - 8, yy + row / 2 + 4, item.label, null, 'end');
      const bar = el('rect', {
        x: m.l, y: yy + 3, width: Math.max(item.v > 0 ? 1.5 : 0, x(item.v) - m.l), height: row - 6,
        fill: item.colour || COLOURS.accent, class: 'mark',
      }, g);
      tip(bar, item.tip || `${item.label}: ${item.text}`);
      label(g, Math.max(x(item.v), m.l) + 6, yy + row / 2 + 4, item.text, 'tick');
      marks++;
    });
    return marks;
  }

  // A heatmap: rows top to bottom, columns left to right, one rect.mark per cell with a value.
  function heatmap(svg, opts) {
    const m = { l: opts.labelWidth, r: 16, t: 30, b: 56 };
    const cw = opts.cellW;
    const ch = opts.cellH;
    const W = m.l + m.r + cw * opts.cols.length;
    const H = m.t + m.b + ch * opts.rows.length;
    reset(svg, Math.max(W, opts.minWidth || 0), H);
    label(svg, 0, 16, opts.title, 'chart-title');
    const g = el('g', null, svg);
    let marks = 0;
    opts.rows.forEach((rowLabel, r) => {
      label(g, m.l - 8, m.t + r * ch + ch / 2 + 4, rowLabel, 'tick', 'end');
      opts.cols.forEach((_, c) => {
        const v = opts.value(r, c);
        if (!isNum(v)) return;
        const t = opts.scale(v, r, c);
        const cell = el('rect', {
          x: m.l + c * cw + 1, y: m.t + r * ch + 1, width: cw - 2, height: ch - 2,
          fill: ramp(t), class: 'mark',
        }, g);
        tip(cell, opts.tip(r, c, v));
        marks++;
        if (cw >= 26 && ch >= 14) {
          label(g, m.l + c * cw + cw / 2, m.t + r * ch + ch / 2 + 4, opts.text(v),
            'cell-label' + (t > 0.55 ? ' light' : ''), 'middle');
        }
      });
    });
    const bottom = m.t + ch * opts.rows.length;
    const colEvery = Math.max(1, Math.ceil(opts.cols.length / 24));
    opts.cols.forEach((colLabel, c) => {
      if (c % colEvery === 0) label(g, m.l + c * cw + cw / 2, bottom + 14, colLabel, 'tick', 'middle');
    });
    label(g, m.l + (cw * opts.cols.length) / 2, bottom + 32, opts.xTitle, 'axis-title', 'middle');
    label(g, 12, m.t + (ch * opts.rows.length) / 2, opts.yTitle, 'axis-title', 'middle',
      { transform: `rotate(-90 12 ${m.t + (ch * opts.rows.length) / 2})` });
    if (opts.legend) legend(g, m.l, bottom + 40, opts.legend);
    return marks;
  }

  function legend(g, x, y, spec) {
    const steps = 10;
    const w = 16;
    label(g, x - 6, y + 10, spec.from, 'legend', 'end');
    for (let i = 0; i < steps; i++) {
      el('rect', { x: x + i * w, y, width: w, height: 10, fill: ramp(i / (steps - 1)) }, g);
    }
    label(g, x + steps * w + 6, y + 10, spec.to, 'legend');
  }

  function sparkline(svg, values) {
    const W = 160;
    const H = 30;
    reset(svg, W, H);
    svg.setAttribute('preserveAspectRatio', 'none');
    const vs = values.filter(isNum);
    if (vs.length < 2) {
      svg.dataset.points = String(vs.length);
      if (vs.length === 1) el('circle', { cx: W - 3, cy: H / 2, r: 2.5, class: 'spark-dot mark' }, svg);
      return;
    }
    const lo = Math.min(...vs);
    const hi = Math.max(...vs);
    const x = (i) => 2 + (i / (vs.length - 1)) * (W - 4);
    // A constant series is a level line through the middle, not along the floor.
    const y = (v) => (hi > lo ? H - 3 - ((v - lo) / (hi - lo)) * (H - 6) : H / 2);
    const line = vs.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)} ${y(v).toFixed(1)}`).join('');
    el('path', { d: `${line}L${x(vs.length - 1).toFixed(1)} ${H}L${x(0).toFixed(1)} ${H}Z`, class: 'spark-area' }, svg);
    el('path', { d: line, class: 'spark-line mark' }, svg);
    el('circle', { cx: x(vs.length - 1), cy: y(vs[vs.length - 1]), r: 2, class: 'spark-dot' }, svg);
    svg.dataset.points = String(vs.length);
  }

  // ---------------------------------------------------------------------------------------
  // Cards

  function card(id) {
    return document.getElementById(id);
  }

  function setCard(id, cardState, note) {
    const c = card(id);
    c.dataset.state = cardState;
    c.querySelector('.card-note').textContent = note || '';
  }

  // Each KPI tile: the field, its label, how to show it, and where its sparkline comes from
  // (a field of /v1/kpis/history days; otherwise the values seen while this page is open).
  const TILES = [
    { key: 'customers', label: 'Customers', f: fmt.count },
    { key: 'active_customers', label: 'Active customers', f: fmt.count },
    { key: 'new_customers_30d', label: 'New customers (30 d)', f: fmt.count, daily: 'new_customers' },
    { key: 'revenue_30d', label: 'Revenue (30 d)', f: fmt.money, daily: 'revenue' },
    { key: 'orders_30d', label: 'Orders (30 d)', f: fmt.count, daily: 'orders' },
    { key: 'avg_order_value', label: 'Avg order value', f: fmt.money, derived: (d) => (d.orders > 0 ? d.revenue / d.orders : null) },
    { key: 'repeat_purchase_rate', label: 'Repeat purchase rate', f: fmt.pct },
    { key: 'retention_rate', label: 'Retention (month)', f: fmt.pct },
    { key: 'churn_rate', label: 'Churn (month)', f: fmt.pct },
    { key: 'predicted_churn_rate', label: 'Predicted churn', f: fmt.pct, nullNote: 'needs a fitted CLV model', title: 'share of customers with P(alive) < 0.5' },
    { key: 'conversion_rate', label: 'Conversion rate', f: fmt.pct },
    { key: 'prospects', label: 'Prospects', f: fmt.count },
    { key: 'offer_acceptance_rate_30d', label: 'Offer take-up (30 d)', title: 'offer acceptance rate over the last 30 days', f: fmt.pct },
    { key: 'offer_uplift', label: 'Offer uplift', f: fmt.points, nullNote: 'no holdout results yet', title: 'conversion of treated minus holdout, percentage points' },
    { key: 'avg_clv', label: 'Avg CLV', f: fmt.money, nullNote: 'needs a fitted CLV model' },
    { key: 'total_clv', label: 'Total CLV', f: fmt.money, nullNote: 'needs a fitted CLV model' },
  ];

  function renderTiles(kpis, history) {
    const days = (history && Array.isArray(history.days)) ? history.days : [];
    const box = document.getElementById('tiles');
    if (box.children.length !== TILES.length) {
      box.replaceChildren();
      for (const t of TILES) {
        const tile = document.createElement('div');
        tile.className = 'tile';
        tile.dataset.kpi = t.key;
        const l = document.createElement('div');
        l.className = 'tile-label';
        l.textContent = t.label;
        l.title = (t.title || t.label) + ' (' + t.key + ')';
        const v = document.createElement('div');
        v.className = 'tile-value';
        const s = document.createElementNS(SVG_NS, 'svg');
        s.setAttribute('class', 'spark');
        const n = document.createElement('div');
        n.className = 'tile-note';
        tile.append(l, v, s, n);
        box.appendChild(tile);
      }
    }
    let shown = 0;
    TILES.forEach((t, i) => {
      const tile = box.children[i];
      const raw = kpis[t.key];
      const value = tile.querySelector('.tile-value');
      value.textContent = t.f(raw);
      value.classList.toggle('na', !isNum(raw));
      value.title = isNum(raw) ? String(raw) : 'not available yet (no data, or no fitted model)';
      if (isNum(raw)) shown++;
      let series = null;
      let note = '';
      if (days.some((d) => isNum(d[t.key]))) {
        series = days.map((d) => d[t.key]);
        note = `daily, last ${days.length} d`;
      } else if (t.daily && days.some((d) => isNum(d[t.daily]))) {
        series = days.map((d) => d[t.daily]);
        note = `per day, last ${days.length} d`;
      } else if (t.derived && days.length) {
        series = days.map(t.derived);
        note = `per day, last ${days.length} d`;
      } else {
        let samples = state.kpiSamples[t.key];
        if (!Array.isArray(samples)) samples = state.kpiSamples[t.key] = [];
        if (isNum(raw)) samples.push(raw);
        if (samples.length > MAX_RATE_SAMPLES) samples.shift();
        series = samples;
        note = 'each refresh, this tab';
      }
      if (!isNum(raw)) note = t.nullNote || 'no value yet';
      sparkline(tile.querySelector('.spark'), series);
      tile.querySelector('.tile-note').textContent = note;
    });
    saveSession(KPI_SAMPLES_STORAGE, state.kpiSamples);
    document.getElementById('tiles-hint').textContent =
      `as of ${fmtStamp(kpis.as_of)}; computed ${fmtStamp(kpis.computed_at)}`;
    setCard('tiles-card', shown > 0 ? 'ok' : 'empty', shown > 0 ? '' : 'No indicator has a value yet.');
  }

  function renderHistory(history) {
    const days = Array.isArray(history.days) ? history.days : [];
    const points = (field, f) => days.map((d) => {
      const date = parseDay(d.date);
      const refunds = isNum(d.refunded) && d.refunded > 0 ? `, refunds ${fmt.money(d.refunded)}` : '';
      return {
        tick: date ? dayFmt.format(date) : String(d.date),
        tip: `${d.date}: ${f(d[field])}` + (field === 'revenue' ? refunds : ''),
        v: d[field],
      };
    });
    const unit = CURRENCY ? `${CURRENCY} per day` : 'per day';
    const r = seriesChart(document.getElementById('chart-revenue'), points('revenue', fmt.money), {
      kind: 'bars', title: 'Revenue per day (gross purchases)', yFmt: fmt.moneyAxis,
      yTitle: `revenue, ${unit}`, xTitle: 'event date (UTC)', trend: true, emptyText: 'no days yet',
    });
    const o = seriesChart(document.getElementById('chart-orders'), points('orders', fmt.count), {
      kind: 'line', title: 'Orders per day', yFmt: fmt.compact, yTitle: 'orders per day',
      xTitle: 'event date (UTC)', colour: COLOURS.accent2, trend: true, emptyText: 'no days yet',
    });
    setCard('history-card', r > 0 && o > 0 ? 'ok' : 'empty',
      days.length ? `${days.length} days to ${days[days.length - 1].date}` : 'No daily totals yet.');
  }

  function renderSegments(segList, kpis) {
    let items = [];
    let total = 0;
    if (segList && Array.isArray(segList.segments)) {
      const rfm = segList.segments.filter((s) => s.kind !== 'user');
      const user = segList.segments.filter((s) => s.kind === 'user');
      total = rfm.reduce((a, s) => a + (s.customers || 0), 0);
      const share = (n) => (total > 0 ? ` (${((n / total) * 100).toFixed(1)}%)` : '');
      items = rfm.map((s) => ({
        label: s.name, v: s.customers, colour: SEGMENT_COLOURS[s.name] || COLOURS.accent,
        text: fmt.count(s.customers) + share(s.customers),
        tip: `${s.name}: ${fmt.count(s.customers)} profiles${share(s.customers)}, revenue ${fmt.money(s.revenue)}` +
          (isNum(s.avg_clv) ? `, avg CLV ${fmt.money(s.avg_clv)}` : ''),
      })).concat(user.map((s) => ({
        label: `${s.name} (user)`, v: s.customers, colour: COLOURS.user,
        text: fmt.count(s.customers) + share(s.customers),
        tip: `user segment ${s.name}: ${fmt.count(s.customers)} customers, revenue ${fmt.money(s.revenue)}`,
      })));
    } else if (kpis && kpis.segments) {
      total = Object.values(kpis.segments).reduce((a, n) => a + n, 0);
      items = Object.entries(kpis.segments).map(([name, n]) => ({
        label: name, v: n, colour: SEGMENT_COLOURS[name] || COLOURS.accent,
        text: fmt.count(n) + (total > 0 ? ` (${((n / total) * 100).toFixed(1)}%)` : ''),
      }));
    }
    const marks = hbarChart(document.getElementById('chart-segments'), items, {
      title: 'Profiles per RFM segment', xFmt: fmt.compact, minTop: 10, xTitle: 'profiles (customers; prospects have no purchase)',
      labelWidth: 170, emptyText: 'no segments yet',
    });
    setCard('segments-card', marks > 0 && total > 0 ? 'ok' : 'empty',
      total > 0 ? `${fmt.count(total)} profiles` : 'No profiles yet.');
  }

  function renderRfm(kpis) {
    const grid = kpis.rfm_grid;
    const svg = document.getElementById('chart-rfm');
    if (!Array.isArray(grid) || grid.length !== 5) {
      emptyChart(svg, 600, 300, 'rfm_grid missing from /v1/kpis');
      setCard('rfm-card', 'error', 'The KPI answer has no 5×5 rfm_grid.');
      return;
    }
    const cell = (r, f) => (Array.isArray(grid[r - 1]) ? grid[r - 1][f - 1] : null);
    let total = 0;
    let max = 0;
    for (let r = 1; r <= 5; r++) for (let f = 1; f <= 5; f++) {
      const v = cell(r, f);
      if (isNum(v)) { total += v; max = Math.max(max, v); }
    }
    // Rows are R = 5 (most recent) at the top down to 1.
    const marks = heatmap(svg, {
      title: 'Customers by R score (rows) × F score (columns)',
      rows: ['R 5', 'R 4', 'R 3', 'R 2', 'R 1'],
      cols: ['F 1', 'F 2', 'F 3', 'F 4', 'F 5'],
      value: (r, c) => cell(5 - r, c + 1),
      scale: (v) => (max > 0 ? v / max : 0),
      text: fmt.count,
      tip: (r, c, v) => `R ${5 - r} × F ${c + 1}: ${fmt.count(v)} customers` +
        (total > 0 ? ` (${((v / total) * 100).toFixed(1)}%)` : ''),
      cellW: 96, cellH: 40, labelWidth: 70, minWidth: 600,
      xTitle: 'F score: 1 = fewest purchases … 5 = most',
      yTitle: 'R score: 5 = most recent',
      legend: { from: '0', to: fmt.count(max) + ' customers' },
    });
    svg.dataset.total = String(total);
    setCard('rfm-card', marks === 25 && total > 0 ? 'ok' : 'empty',
      total > 0 ? `${fmt.count(total)} customers with a purchase` : 'No scored customers yet.');
  }

  function renderCohorts(data) {
    const all = Array.isArray(data.cohorts) ? data.cohorts : [];
    const cohorts = all.slice(-MAX_COHORTS);
    const svg = document.getElementById('chart-cohorts');
    if (cohorts.length === 0) {
      emptyChart(svg, 1100, 120, 'no cohorts yet');
      setCard('cohorts-card', 'empty', 'No cohorts yet.');
      return;
    }
    const months = Math.min(MAX_COHORT_MONTHS,
      Math.max(...cohorts.map((c) => (Array.isArray(c.retention) ? c.retention.length : 0))));
    // Month 0 is 100% by construction; scale the colours on the later months so they differ.
    let maxLater = 0;
    for (const c of cohorts) {
      (c.retention || []).slice(1, months).forEach((v) => { if (isNum(v)) maxLater = Math.max(maxLater, v); });
    }
    const top = maxLater > 0 ? maxLater : 1;
    const cellW = Math.max(20, Math.min(44, Math.floor((1100 - 130) / Math.max(1, months))));
    const marks = heatmap(svg, {
      title: 'Retention by first-purchase month (share of the cohort with a purchase N months later)',
      rows: cohorts.map((c) => `${c.cohort} · ${fmt.count(c.customers)}`),
      cols: Array.from({ length: months }, (_, i) => String(i)),
      value: (r, c) => (cohorts[r].retention || [])[c],
      scale: (v) => Math.min(1, v / top),
      text: (v) => Math.round(v * 100) + '%',
      tip: (r, c, v) => `${cohorts[r].cohort} (${fmt.count(cohorts[r].customers)} customers), month ${c}: ${fmt.pct(v)}`,
      cellW, cellH: 20, labelWidth: 130, minWidth: 1100,
      xTitle: 'months since first purchase',
      yTitle: 'cohort · customers',
      legend: { from: '0%', to: `≥ ${fmt.pct(top)} (month 0 is 100%)` },
    });
    setCard('cohorts-card', marks > 0 ? 'ok' : 'empty',
      all.length > cohorts.length ? `latest ${cohorts.length} of ${all.length} cohorts` : `${cohorts.length} cohorts`);
  }

  function kpiFormat(kpi) {
    const k = String(kpi || '');
    if (/rate|uplift|share/.test(k)) return fmt.pct;
    if (/revenue|clv|value|monetary/.test(k)) return fmt.money;
    return fmt.compact;
  }

  function renderObjectives(data) {
    const list = Array.isArray(data.objectives) ? data.objectives : [];
    const svg = document.getElementById('chart-objectives');
    const W = 600;
    const row = 64;
    const m = { l: 12, r: 12, t: 26, b: 34 };
    if (list.length === 0) {
      emptyChart(svg, W, 90, 'no objectives configured ([[objectives]] in the config)');
      setCard('objectives-card', 'empty', 'No objectives configured.');
      return;
    }
    const H = m.t + m.b + row * list.length;
    const w = W - m.l - m.r;
    reset(svg, W, H);
    label(svg, 0, 14, 'Progress from baseline to target', 'chart-title');
    const g = el('g', null, svg);
    const x = (p) => m.l + Math.max(0, Math.min(1, p)) * w;
    const bottom = m.t + row * list.length;
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      el('line', { x1: x(t), x2: x(t), y1: m.t, y2: bottom, class: 'grid' }, g);
      label(g, x(t), bottom + 14, Math.round(t * 100) + '%', 'tick', t === 0 ? 'start' : t === 1 ? 'end' : 'middle');
    }
    label(g, m.l + w / 2, H - 4, 'progress: 0% = baseline, 100% = target reached; | = expected by now', 'axis-title', 'middle');
    let marks = 0;
    list.forEach((o, i) => {
      const f = kpiFormat(o.kpi);
      const yy = m.t + i * row;
      const onTrack = o.on_track === true;
      const status = o.on_track === true ? 'on track' : o.on_track === false ? 'behind' : 'no data';
      const due = o.deadline ? String(o.deadline).slice(0, 10) : '—';
      label(g, m.l, yy + 14, `${o.name}`, null, 'start', { 'font-weight': 600 });
      label(g, m.l + w, yy + 14, `due ${due}`, 'tick', 'end');
      label(g, m.l, yy + 52, o.error ? `${o.kpi}: ${o.error}` :
        `${o.kpi} now ${f(o.current)} · baseline ${f(o.baseline)} → target ${f(o.target)}` +
        (isNum(o.expected) ? ` · expected by now ${f(o.expected)}` : ''),
        'tick', 'start');
      el('rect', { x: m.l, y: yy + 22, width: w, height: 14, fill: COLOURS.track }, g);
      const p = isNum(o.progress) ? o.progress : 0;
      const bar = el('rect', {
        x: m.l, y: yy + 22, width: Math.max(isNum(o.progress) ? 2 : 0, x(p) - m.l), height: 14,
        fill: onTrack ? COLOURS.good : o.on_track === false ? COLOURS.warn : COLOURS.user, class: 'mark',
      }, g);
      tip(bar, `${o.name}: progress ${fmt.pct(o.progress)}, ${status}`);
      // Where a straight line from baseline to target says the KPI should be by now.
      if (isNum(o.expected) && isNum(o.target) && o.target !== o.baseline) {
        const ex = x((o.expected - o.baseline) / (o.target - o.baseline));
        tip(el('line', { x1: ex, x2: ex, y1: yy + 19, y2: yy + 39, stroke: COLOURS.ink, 'stroke-width': 2 }, g),
          `expected by now: ${f(o.expected)}`);
      }
      const inside = x(p) - m.l > 140;
      label(g, inside ? x(p) - 6 : x(p) + 6, yy + 33, `${fmt.pct(o.progress)} · ${status}`,
        'cell-label' + (inside ? ' light' : ''), inside ? 'end' : 'start');
      marks++;
    });
    setCard('objectives-card', marks > 0 ? 'ok' : 'empty',
      `${list.filter((o) => o.on_track === true).length} of ${list.length} on track`);
  }

  function renderIngest(status) {
    const now = Date.now();
    const lagTotal = (status.partitions || []).reduce((a, p) => a + (isNum(p.lag) ? p.lag : 0), 0);
    const samples = state.statusSamples;
    const prev = samples[samples.length - 1];
    // Polls closer than 2 s (a reload, a range change) would give a noisy rate: skip them.
    if (!prev || now - prev.t >= 2000) {
      const sample = { t: now, applied: status.applied, lag: lagTotal, rate: null };
      if (prev && isNum(prev.applied) && isNum(status.applied)) {
        sample.rate = Math.max(0, (status.applied - prev.applied) / ((now - prev.t) / 1000));
      }
      samples.push(sample);
      if (samples.length > MAX_RATE_SAMPLES) samples.shift();
      saveSession(SAMPLES_STORAGE, samples);
    }

    const rated = samples.filter((s) => isNum(s.rate));
    const ratePoints = rated.map((s) => {
      const t = timeFmt.format(new Date(s.t));
      return { tick: t, tip: `${t}: ${fmt.compact(s.rate)} events/s, lag ${fmt.count(s.lag)}`, v: s.rate };
    });
    const rateMarks = seriesChart(document.getElementById('chart-ingest-rate'), ratePoints, {
      kind: 'line', title: 'Events applied per second (between polls)', yFmt: fmt.compact, yTitle: 'events/s',
      xTitle: 'local time', height: 200, emptyText: 'measuring… (needs two polls, 5 s apart)', minTop: 10,
    });

    const parts = (status.partitions || []).slice().sort((a, b) => a.partition - b.partition);
    const lagMarks = hbarChart(document.getElementById('chart-lag'), parts.map((p) => ({
      label: `partition ${p.partition}`,
      v: isNum(p.lag) ? p.lag : 0,
      colour: p.state === 'stopped' ? COLOURS.bad : COLOURS.accent,
      text: `${isNum(p.lag) ? fmt.count(p.lag) : 'unknown'} · ${String(p.state || '').replace('_', ' ')}`,
      tip: `partition ${p.partition}: committed ${fmt.count(p.committed_offset)}, log end ` +
        `${isNum(p.high_watermark) ? fmt.count(p.high_watermark) : 'unknown'}` + (p.message ? ` — ${p.message}` : ''),
    })), {
      title: 'Lag per partition (records not yet committed)', xFmt: fmt.compact,
      xTitle: 'records between committed offset and log end', labelWidth: 110, emptyText: 'no partitions assigned',
      minTop: 10,
    });

    const stats = document.getElementById('ingest-stats');
    stats.replaceChildren();
    const pairs = [
      ['applied', fmt.count(status.applied)],
      ['rejected', fmt.count(status.rejected)],
      ['duplicates', fmt.count(status.duplicates)],
      ['checkpoints', fmt.count(status.checkpoints)],
      ['broker', status.broker_connected ? 'connected' : 'not connected'],
      ['dead letters pending', fmt.count(status.dead_letters && status.dead_letters.pending)],
    ];
    for (const [k, v] of pairs) {
      const div = document.createElement('div');
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v;
      div.append(dt, dd);
      stats.appendChild(div);
    }
    const stopped = parts.filter((p) => p.state === 'stopped' || p.message);
    setCard('ingest-card', rateMarks > 0 && lagMarks > 0 ? 'ok' : 'empty',
      (stopped.length ? stopped.map((p) => `partition ${p.partition}: ${p.message || p.state}`).join('; ') + ' · ' : '') +
      `${status.source || ''} ${status.topic ? '· topic ' + status.topic : ''}`);
    card('ingest-card').querySelector('.card-note').classList.toggle('warn', stopped.length > 0);
  }

  // ---------------------------------------------------------------------------------------
  // Data and the refresh loop

  class HttpError extends Error {
    constructor(path, status, code, message) {
      super(`GET ${path}: ${status ? status + ' ' : ''}${code}: ${message}`);
      this.status = status;
      this.path = path;
    }
  }

  async function api(path) {
    let res;
    try {
      res = await fetch(path, {
        headers: { Authorization: 'Bearer ' + state.key, Accept: 'application/json' },
        cache: 'no-store',
      });
    } catch (e) {
      throw new HttpError(path, 0, 'network', 'the server did not answer (' + e.message + ')');
    }
    let body = null;
    try {
      body = await res.json();
    } catch (_) {
      // Not JSON; reported below.
    }
    if (!res.ok) {
      const err = (body && body.error) || {};
      throw new HttpError(path, res.status, err.code || 'http_error', err.message || res.statusText || 'request failed');
    }
    if (body === null || typeof body !== 'object') throw new HttpError(path, res.status, 'bad_body', 'the answer is not a JSON object');
    return body;
  }

  const SOURCES = [
    ['kpis', () => '/v1/kpis'],
    ['cohorts', () => '/v1/kpis/cohorts'],
    ['history', () => '/v1/kpis/history?days=' + state.historyDays],
    ['objectives', () => '/v1/objectives'],
    ['segments', () => '/v1/segments'],
    ['status', () => '/v1/status'],
  ];

  // Which cards draw from which sources, and how.
  const RENDERERS = [
    ['tiles-card', ['kpis'], (d) => renderTiles(d.kpis, d.history)],
    ['history-card', ['history'], (d) => renderHistory(d.history)],
    ['segments-card', ['segments'], (d) => renderSegments(d.segments, d.kpis)],
    ['rfm-card', ['kpis'], (d) => renderRfm(d.kpis)],
    ['cohorts-card', ['cohorts'], (d) => renderCohorts(d.cohorts)],
    ['objectives-card', ['objectives'], (d) => renderObjectives(d.objectives)],
    ['ingest-card', ['status'], (d) => renderIngest(d.status)],
  ];

  function render(data, errors) {
    const problems = Object.values(errors).map((e) => e.message);
    for (const [id, needs, draw] of RENDERERS) {
      const missing = needs.filter((n) => errors[n]);
      if (missing.length) {
        // Keep whatever was drawn before and say why it is not current.
        setCard(id, 'error', missing.map((n) => errors[n].message).join('; '));
        continue;
      }
      try {
        draw(data);
      } catch (e) {
        setCard(id, 'error', 'could not draw: ' + e.message);
        problems.push(`${id}: could not draw: ${e.message}`);
      }
    }
    const box = document.getElementById('errors');
    box.textContent = problems.length ? 'Some data could not be loaded:\n' + problems.join('\n') : '';
    box.hidden = problems.length === 0;

    const asOf = (data.kpis && data.kpis.as_of) || (data.status && data.status.as_of);
    const computed = data.kpis && data.kpis.computed_at;
    document.getElementById('clock').textContent =
      `Event clock (as_of): ${fmtStamp(asOf)}` +
      (computed ? ` · KPIs computed ${fmtStamp(computed)}` : '') +
      ` · updated ${timeFmt.format(new Date())}, every ${REFRESH_MS / 1000} s`;
    const live = document.getElementById('live');
    live.className = 'live ' + (problems.length ? 'fail' : 'ok');
    live.title = problems.length ? 'last refresh had errors' : 'live: refreshes every ' + REFRESH_MS / 1000 + ' s';
  }

  async function refresh() {
    clearTimeout(state.timer);
    const generation = ++state.generation;
    if (!state.key) {
      askForKey('');
      return;
    }
    document.getElementById('live').className = 'live busy';
    const results = await Promise.allSettled(SOURCES.map(([, path]) => api(path())));
    if (generation !== state.generation) return; // a newer refresh (new key, new range) took over
    const data = {};
    const errors = {};
    SOURCES.forEach(([name], i) => {
      if (results[i].status === 'fulfilled') data[name] = results[i].value;
      else errors[name] = results[i].reason;
    });
    if (Object.values(errors).some((e) => e.status === 401)) {
      forgetKey();
      document.body.dataset.auth = 'refused';
      askForKey('The server refused this key (401). Enter a key with the reader role.');
      return;
    }
    document.body.dataset.auth = Object.values(errors).some((e) => e.status === 403) ? 'forbidden' : 'ok';
    render(data, errors);
    state.refreshes++;
    document.body.dataset.refreshes = String(state.refreshes);
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  // ---------------------------------------------------------------------------------------
  // The key: asked once, kept in localStorage; `#key=...` in the URL is taken and removed.

  function storedKey() {
    try {
      return localStorage.getItem(KEY_STORAGE);
    } catch (_) {
      return null;
    }
  }

  function keepKey(key) {
    state.key = key;
    try {
      localStorage.setItem(KEY_STORAGE, key);
    } catch (_) {
      // Storage disabled: the key lives until the page closes.
    }
  }

  function forgetKey() {
    state.key = null;
    try {
      localStorage.removeItem(KEY_STORAGE);
    } catch (_) {
      // Nothing stored.
    }
  }

  function keyFromFragment() {
    const hash = location.hash.replace(/^#/, '');
    if (!hash) return null;
    const params = new URLSearchParams(hash);
    if (!params.has('key')) return null;
    const key = (params.get('key') || '').trim();
    params.delete('key');
    const rest = params.toString();
    // Out of the address bar and the history, so it is not shared by copying the URL.
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    return key || null;
  }

  // Series this tab collected (ingest rate, KPIs without history) survive a reload.
  function saveSession(name, value) {
    try {
      sessionStorage.setItem(name, JSON.stringify(value));
    } catch (_) {
      // Storage full or disabled: the series restarts on reload, nothing else is lost.
    }
  }

  function loadSession(name, fallback) {
    try {
      const v = JSON.parse(sessionStorage.getItem(name) || 'null');
      return v === null ? fallback : v;
    } catch (_) {
      return fallback;
    }
  }

  function restoredSamples() {
    const saved = loadSession(SAMPLES_STORAGE, []);
    const since = Date.now() - MAX_RATE_SAMPLES * REFRESH_MS;
    return Array.isArray(saved) ? saved.filter((s) => s && isNum(s.t) && s.t > since) : [];
  }

  function askForKey(message) {
    clearTimeout(state.timer);
    document.getElementById('key-message').textContent = message;
    document.getElementById('key-panel').hidden = false;
    document.getElementById('key-input').focus();
  }

  function start() {
    document.getElementById('key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const input = document.getElementById('key-input');
      const key = input.value.trim();
      if (!key) return;
      input.value = '';
      keepKey(key);
      document.getElementById('key-panel').hidden = true;
      refresh();
    });
    document.getElementById('change-key').addEventListener('click', () => {
      forgetKey();
      document.body.dataset.auth = 'missing';
      askForKey('');
    });
    const range = document.getElementById('history-days');
    state.historyDays = Number(range.value) || 90;
    range.addEventListener('change', () => {
      state.historyDays = Number(range.value) || 90;
      refresh();
    });
    window.addEventListener('error', (ev) => {
      const box = document.getElementById('errors');
      box.hidden = false;
      box.textContent = 'Dashboard script error: ' + ev.message;
    });

    // A link with #key=... opened on a page that is already loaded changes only the fragment.
    window.addEventListener('hashchange', () => {
      const key = keyFromFragment();
      if (!key) return;
      keepKey(key);
      document.getElementById('key-panel').hidden = true;
      refresh();
    });

    state.statusSamples = restoredSamples();
    const kpiSamples = loadSession(KPI_SAMPLES_STORAGE, {});
    state.kpiSamples = kpiSamples && typeof kpiSamples === 'object' ? kpiSamples : {};
    const fromUrl = keyFromFragment();
    if (fromUrl) keepKey(fromUrl);
    else state.key = storedKey();
    refresh();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
