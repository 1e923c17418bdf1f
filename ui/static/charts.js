// The dashboard's charts: Plotly (served from the installed `plotly` package, no CDN) drawing
//  - the live view of a run (.distill-live): downsampled history from /api/runs/{id}/metrics, then
//    every new point from the run's event stream (/api/runs/{id}/events, server-sent events) appended
//    with Plotly.extendTraces; a zoom fetches finer buckets of the zoomed steps;
//  - a comparison (.distill-compare): one chart per metric, one colour (and dash) per run id, from
//    /api/compare: the colours come with the runs (ui/charts.py run_style), so a run keeps its colour
//    whatever its place in the list.
// A series of one point is drawn as a marker; a flat series (all zeros, a constant) gets a y range
// around its value instead of Plotly's -1..1.
// Gradio renders the containers (ui/charts.py); a MutationObserver binds them here.
// window.distillCharts.draws records, per streamed point, when it was logged, arrived and was drawn
// (benchmarks/bench_dashboard.py reads it); .compareDrawn the time each comparison finished drawing.
(() => {
  "use strict";
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac"];
  const TERMINAL = new Set(["succeeded", "failed", "cancelled", "lost"]);
  const MAX_DRAWS = 20000; // instrumentation entries kept
  const REFETCH_FACTOR = 4; // a streamed series longer than this x max_points is re-fetched downsampled
  const RETRY_MS = 5000;
  const stats = (window.distillCharts = window.distillCharts || { draws: [], compareDrawn: [], charts: 0 });
  const bound = new Map(); // element -> controller

  const isSparse = (key) => key.startsWith("eval/"); // evaluations: markers, never smoothed
  const modeOf = (key, n) => (isSparse(key) || n === 1 ? "lines+markers" : "lines"); // one point: a line draws nothing

  // the y range of a chart whose every value is the same (null otherwise): Plotly's own is v-1..v+1,
  // which makes an all-zero accuracy a -1..1 % axis
  function flatRange(traces, family) {
    let lo = Infinity, hi = -Infinity;
    for (const t of traces) for (const v of t.y) if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    if (lo === Infinity || lo !== hi) return null;
    if (family.percent) return lo === 0 ? [0, 100] : [Math.max(0, lo - 10), Math.min(100, lo + 10)];
    return lo === 0 ? [0, 1] : [lo - Math.abs(lo) * 0.1, lo + Math.abs(lo) * 0.1];
  }
  function applyFlat(layout, range, log) { if (range && !log) Object.assign(layout.yaxis, { range, autorange: false }); }
  function logRelayout(div, on, range) { // the log toggle: autorange, or back to the flat range
    return Plotly.relayout(div, on || !range ? { "yaxis.type": on ? "log" : "linear", "yaxis.autorange": true }
      : { "yaxis.type": "linear", "yaxis.range": range });
  }
  const ENDED = { succeeded: "succeeded", failed: "failed", cancelled: "was cancelled", lost: "was lost" };
  const endedWords = (st) => `The run ${ENDED[st] || `is ${st}`}`; // true words for each finished status

  function familyOf(families, key) {
    for (const f of families) if (f.keys.includes(key)) return f;
    return { name: "other:" + key, title: key, unit: key, keys: [key], percent: false };
  }

  function clock(wall, t0) {
    const d = new Date(wall * 1000);
    const s = Math.max(0, Math.round(wall - t0));
    const since = s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`
      : s >= 60 ? `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
    return `${d.toLocaleTimeString([], { hour12: false })} (+${since})`;
  }

  // TensorBoard-style EMA, debiased so the first points are not pulled towards 0 (as ui/live.py's ema)
  function emaState(weight) { return { w: Math.min(weight, 0.999), last: 0, norm: 0 }; }
  function emaNext(st, v) { st.last = st.last * st.w + (1 - st.w) * v; st.norm = st.norm * st.w + (1 - st.w); return st.last / st.norm; }

  // --- one series held in the page: what was fetched plus what streamed in ---------------------------
  class Series {
    constructor(key, points) { this.key = key; this.steps = []; this.walls = []; this.values = []; this.add(points); }
    get last() { return this.steps.length ? this.steps[this.steps.length - 1] : -Infinity; }
    add(points) { // points sorted by step; only steps after the last one are new (history and stream overlap)
      const fresh = [];
      for (const p of points) {
        if (p.step <= this.last) continue;
        this.steps.push(p.step); this.walls.push(p.wall_time); this.values.push(p.value); fresh.push(p);
      }
      return fresh;
    }
    truncate(step) {
      let n = this.steps.length;
      while (n && this.steps[n - 1] > step) n--;
      this.steps.length = n; this.walls.length = n; this.values.length = n;
    }
  }

  function baseLayout(title, unit, xTitle, log) {
    return {
      title: { text: title, font: { size: 14 }, x: 0.01, xanchor: "left" },
      height: 330, margin: { l: 70, r: 16, t: 40, b: 84 },
      xaxis: { title: { text: xTitle }, zeroline: false, showspikes: true, spikemode: "across", spikethickness: 1 },
      yaxis: { title: { text: unit }, type: log ? "log" : "linear", exponentformat: "power" },
      hovermode: "x unified", hoverlabel: { namelength: -1 },
      legend: { orientation: "h", x: 0, y: -0.3, yanchor: "top", font: { size: 11 } },
      showlegend: true, uirevision: "keep",
    };
  }
  // the teacher's score (where it is known) as a dashed horizontal line with its value and source
  function referenceLines(layout, family, refs) {
    const scale = family.percent ? 100 : 1;
    layout.shapes = refs.map((r) => ({ type: "line", xref: "paper", x0: 0, x1: 1, y0: r.value * scale, y1: r.value * scale,
      line: { dash: "dash", color: "#222", width: 1.5 } }));
    layout.annotations = refs.map((r) => ({ xref: "paper", x: 0.99, y: r.value * scale, xanchor: "right", yanchor: "bottom",
      showarrow: false, text: `${r.label}: ${+(r.value * scale).toFixed(2)}${family.percent ? " %" : ""}`, font: { size: 11, color: "#222" } }));
  }
  const CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function toolbar(host, onLog) {
    const bar = document.createElement("div");
    bar.className = "distill-toolbar";
    bar.innerHTML = `<label><input type="checkbox" class="distill-log"> log-scale y axes</label>
      <span class="distill-status"></span>`;
    bar.querySelector(".distill-log").addEventListener("change", (e) => onLog(e.target.checked));
    host.appendChild(bar);
    return bar;
  }

  // --- the live view of one run --------------------------------------------------------------------
  class LiveView {
    constructor(el) {
      this.el = el;
      this.run = Number(el.dataset.run);
      this.families = JSON.parse(el.dataset.families);
      this.smoothing = Number(el.dataset.smoothing || 0);
      this.x = el.dataset.x || "step";
      this.maxPoints = Number(el.dataset.maxPoints || 500);
      this.references = JSON.parse(el.dataset.references || "[]"); // [{key, value, label}]: the teacher's score
      this.finished = el.dataset.finished || ""; // a finished run's status: its history is all there is
      this.log = false;
      this.series = new Map(); // key -> Series
      this.charts = new Map(); // family name -> {div, family, traces: [{key, kind}], zoomed}
      this.t0 = null;
      this.pending = []; // [point, arrival time] waiting for the next frame
      this.compacting = new Set(); // families whose history is being re-read
      this.flushing = false;
      this.closed = false;
      this.bar = toolbar(el, (on) => this.setLog(on));
      this.grid = document.createElement("div");
      this.grid.className = "distill-grid";
      el.appendChild(this.grid);
      this.empty = document.createElement("div");
      this.empty.className = "distill-empty";
      this.empty.textContent = "No data yet: the charts appear with the run's first logged step.";
      el.appendChild(this.empty);
      this.start();
    }

    status(text) { this.bar.querySelector(".distill-status").textContent = text; }

    async fetchHistory(keys, steps) {
      const q = new URLSearchParams({ max_points: String(this.maxPoints), x: "step" });
      if (keys) q.set("keys", keys.join(","));
      if (steps) { q.set("step_min", String(Math.max(0, Math.floor(steps[0])))); q.set("step_max", String(Math.ceil(steps[1]))); }
      const r = await fetch(`/api/runs/${this.run}/metrics?${q}`, { credentials: "same-origin" });
      if (!r.ok) throw new Error(`metrics: HTTP ${r.status}`);
      return { body: await r.json(), cursor: r.headers.get("X-Stream-Cursor") };
    }

    async start() {
      try {
        const { body, cursor } = await this.fetchHistory(null, null);
        if (this.closed) return;
        this.series.clear();
        for (const [key, points] of Object.entries(body.series)) if (points.length) this.series.set(key, new Series(key, points));
        this.drawAll();
        if (this.finished) { this.ended(this.finished); return; }
        this.follow(cursor || "0-0");
      } catch (err) {
        this.status(`history unavailable (${err.message}); retrying`);
        this.retry = setTimeout(() => this.start(), RETRY_MS);
      }
    }

    follow(cursor) {
      if (this.closed) return;
      const es = (this.es = new EventSource(`/api/runs/${this.run}/events?after=${encodeURIComponent(cursor)}`));
      es.onopen = () => this.status("following the run live");
      es.addEventListener("metrics", (e) => this.onPoints(JSON.parse(e.data).points, performance.timeOrigin + performance.now()));
      es.addEventListener("resumed", (e) => { this.flush(); const s = JSON.parse(e.data).step; this.series.forEach((v) => v.truncate(s)); this.drawAll(); });
      es.addEventListener("status", (e) => {
        const st = JSON.parse(e.data).status;
        if (TERMINAL.has(st)) { es.close(); this.ended(st); }
      });
      es.onerror = () => {
        if (es.readyState !== EventSource.CLOSED || this.closed) { this.status("reconnecting…"); return; } // the browser retries with Last-Event-ID
        // refused (no Redis, the server restarted): re-read the history, then follow again
        this.status("live stream lost: re-reading the history");
        this.retry = setTimeout(() => this.start(), RETRY_MS);
      };
    }

    ended(st) { // the run is over: no stream to follow
      this.status(`${endedWords(st)}: every point it logged is shown.`);
      if (!this.series.size) this.empty.textContent = `${endedWords(st)} without logging a metric: nothing to chart.`;
    }

    close() { this.closed = true; clearTimeout(this.retry); if (this.es) this.es.close(); this.charts.forEach((c) => Plotly.purge(c.div)); }

    xOf(series, i) { return this.x === "step" ? series.steps[i] : series.walls[i] - this.t0; }

    traceData(family, key) { // (raw, smoothed or null) trace objects of one series
      const s = this.series.get(key);
      const scale = family.percent ? 100 : 1;
      const n = s.steps.length;
      const xs = new Array(n), ys = new Array(n), custom = new Array(n);
      for (let i = 0; i < n; i++) { xs[i] = this.xOf(s, i); ys[i] = s.values[i] * scale; custom[i] = [s.steps[i], clock(s.walls[i], this.t0)]; }
      const color = PALETTE[family.keys.indexOf(key) % PALETTE.length];
      const sparse = isSparse(key);
      const hover = "%{y:.6~g}  <span style='color:#777'>step %{customdata[0]} · %{customdata[1]}</span>";
      const raw = { x: xs, y: ys, customdata: custom, name: key, type: "scatter", mode: modeOf(key, n),
        line: { color, width: sparse ? 2 : 1.5 }, marker: { size: 7 }, hovertemplate: hover,
        meta: { key, kind: "raw", single: n === 1 } };
      if (sparse || this.smoothing <= 0) return [raw];
      Object.assign(raw, { opacity: 0.25, name: `${key} (raw)`, legendgroup: key, showlegend: false });
      const st = emaState(this.smoothing);
      const smooth = { x: xs.slice(), y: ys.map((v) => emaNext(st, v)), customdata: custom, name: `${key} (smoothed ${this.smoothing})`,
        type: "scatter", mode: modeOf(key, n), line: { color, width: 2 }, legendgroup: key, hovertemplate: hover,
        meta: { key, kind: "smooth", ema: st, single: n === 1 } };
      return [raw, smooth];
    }

    drawAll() {
      const present = [...this.series.keys()].filter((k) => this.series.get(k).steps.length);
      const firsts = present.map((k) => this.series.get(k).walls[0]);
      this.t0 = firsts.length ? Math.min(...firsts) : null; // the run's first point: wall time 0
      const byFamily = new Map();
      for (const key of present) {
        const f = familyOf(this.families, key);
        if (!byFamily.has(f.name)) byFamily.set(f.name, f);
      }
      // catalogue order, then anything else
      const order = this.families.map((f) => f.name).filter((n) => byFamily.has(n));
      for (const n of byFamily.keys()) if (!order.includes(n)) order.push(n);
      for (const [name, c] of this.charts) if (!byFamily.has(name)) { Plotly.purge(c.div); c.div.remove(); this.charts.delete(name); }
      for (const name of order) this.drawFamily(byFamily.get(name));
      const divs = order.map((n) => this.charts.get(n).div); // catalogue order, also for charts added later
      if (divs.some((d, i) => this.grid.children[i] !== d)) this.grid.append(...divs);
      this.empty.style.display = this.charts.size ? "none" : "";
    }

    drawFamily(family) {
      const keys = family.keys.filter((k) => this.series.has(k)).concat(
        [...this.series.keys()].filter((k) => !family.keys.includes(k) && familyOf(this.families, k).name === family.name));
      let chart = this.charts.get(family.name);
      if (!chart) {
        const div = document.createElement("div");
        div.className = "distill-chart";
        div.dataset.family = family.name;
        this.grid.appendChild(div);
        chart = { div, family, zoomed: null };
        this.charts.set(family.name, chart);
      }
      const traces = keys.flatMap((k) => this.traceData(family, k));
      const xTitle = this.x === "step" ? "optimizer step" : "wall time since the run's first point (s)";
      const layout = baseLayout(family.title, family.unit, xTitle, this.log);
      referenceLines(layout, family, this.references.filter((r) => keys.includes(r.key)));
      chart.flat = flatRange(traces, family); // kept whatever the log toggle: unticking it returns to this range
      applyFlat(layout, chart.flat, this.log);
      const fresh = !chart.div.classList.contains("js-plotly-plot");
      Plotly.react(chart.div, traces, layout, CONFIG);
      chart.traces = traces.map((t) => t.meta);
      if (fresh) chart.div.on("plotly_relayout", (ev) => this.onZoom(chart, ev));
      stats.charts += fresh ? 1 : 0;
    }

    onPoints(points, arrived) { // queued, then drawn once per frame: a busy page never falls behind per event
      for (const p of points) this.pending.push([p, arrived]);
      if (this.flushing) return;
      this.flushing = true;
      requestAnimationFrame(() => { this.flushing = false; this.flush(); });
    }

    flush() {
      const queued = this.pending;
      this.pending = [];
      const byKey = new Map();
      for (const [p] of queued) { if (!byKey.has(p.key)) byKey.set(p.key, []); byKey.get(p.key).push(p); }
      const fresh = new Map(); // key -> new points
      let redraw = false;
      for (const [key, pts] of byKey) {
        pts.sort((a, b) => a.step - b.step);
        let s = this.series.get(key);
        if (!s) { this.series.set(key, (s = new Series(key, pts))); redraw = true; fresh.set(key, pts); continue; }
        const added = s.add(pts);
        if (!added.length) continue;
        fresh.set(key, added);
        if (s.steps.length > REFETCH_FACTOR * this.maxPoints) this.compact(key);
      }
      if (this.t0 === null && fresh.size) this.t0 = Math.min(...[...fresh.values()].map((pts) => pts[0].wall_time));
      if (redraw) this.drawAll();
      else this.extend(fresh);
      const drawn = performance.timeOrigin + performance.now(); // the charts' SVG holds the points now
      const arrivedAt = new Map(queued.map(([p, t]) => [p, t]));
      for (const pts of fresh.values()) for (const p of pts) stats.draws.push({ key: p.key, step: p.step, logged: p.wall_time * 1000, arrived: arrivedAt.get(p), drawn });
      if (stats.draws.length > MAX_DRAWS) stats.draws.splice(0, stats.draws.length - MAX_DRAWS);
    }

    extend(fresh) { // one extendTraces per chart: the raw (and smoothed) traces of every key that moved
      const perChart = new Map();
      for (const [key, pts] of fresh) {
        const family = familyOf(this.families, key);
        const chart = this.charts.get(family.name);
        if (!chart) { this.drawAll(); return; }
        if (chart.zoomed) continue; // a zoomed chart shows its range; new points appear on reset
        const scale = family.percent ? 100 : 1;
        const xs = pts.map((p) => (this.x === "step" ? p.step : p.wall_time - this.t0));
        const ys = pts.map((p) => p.value * scale);
        const custom = pts.map((p) => [p.step, clock(p.wall_time, this.t0)]);
        if (!perChart.has(chart)) perChart.set(chart, { idx: [], upd: { x: [], y: [], customdata: [] }, missing: false });
        const job = perChart.get(chart);
        let found = false;
        chart.traces.forEach((meta, i) => {
          if (meta.key !== key) return;
          found = !meta.single; // a one-point series becomes a line: redraw it (and the chart) whole
          job.idx.push(i); job.upd.x.push(xs); job.upd.customdata.push(custom);
          job.upd.y.push(meta.kind === "smooth" ? ys.map((v) => emaNext(meta.ema, v)) : ys);
        });
        job.missing = job.missing || !found || chart.flat !== null; // a flat chart's fixed range must move
      }
      for (const [chart, job] of perChart) {
        if (job.missing) this.drawFamily(chart.family); // a key new to this chart: redraw it whole
        else if (job.idx.length) Plotly.extendTraces(chart.div, job.upd, job.idx);
      }
    }

    async compact(key) { // a long live stream: swap the page's copy for the server's downsampled one
      const family = familyOf(this.families, key);
      if (this.compacting.has(family.name)) return; // one fetch per chart, not one per key
      this.compacting.add(family.name);
      try {
        const { body } = await this.fetchHistory(family.keys.filter((k) => this.series.has(k)), null);
        for (const [k, pts] of Object.entries(body.series)) {
          const s = this.series.get(k); const tail = s ? s.steps.map((st, i) => ({ step: st, wall_time: s.walls[i], value: s.values[i] })) : [];
          const fresh = new Series(k, pts); fresh.add(tail.filter((p) => p.step > fresh.last));
          this.series.set(k, fresh);
        }
        this.drawFamily(family);
      } catch (err) { /* keep the long copy; the next point tries again */ } finally { this.compacting.delete(family.name); }
    }

    stepRange(lo, hi) { // an x range of the chart -> the steps it covers
      if (this.x === "step") return [lo, hi];
      let a = Infinity, b = -Infinity;
      for (const s of this.series.values()) s.walls.forEach((w, i) => { const t = w - this.t0; if (t >= lo && t <= hi) { a = Math.min(a, s.steps[i]); b = Math.max(b, s.steps[i]); } });
      return a <= b ? [a, b] : null;
    }

    async onZoom(chart, ev) {
      if (chart.ownRelayout) return;
      if (ev["xaxis.autorange"]) { chart.zoomed = null; this.drawFamily(chart.family); return; }
      const range = ev["xaxis.range"] || [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
      const [lo, hi] = range;
      if (lo === undefined || hi === undefined) return;
      const steps = this.stepRange(lo, hi);
      if (!steps) return;
      chart.zoomed = steps;
      const keys = chart.traces.map((m) => m.key).filter((k, i, a) => a.indexOf(k) === i);
      try {
        const { body } = await this.fetchHistory(keys, steps);
        if (chart.zoomed !== steps) return; // zoomed again meanwhile
        const saved = this.series;
        this.series = new Map([...saved].filter(([k]) => !keys.includes(k)));
        for (const [k, pts] of Object.entries(body.series)) if (pts.length) this.series.set(k, new Series(k, pts));
        chart.ownRelayout = true;
        try {
          this.drawFamily(chart.family);
          await Plotly.relayout(chart.div, { "xaxis.range": [lo, hi] });
        } finally { chart.ownRelayout = false; this.series = saved; }
        chart.div.dataset.zoomedPoints = String(Object.values(body.series).reduce((n, p) => n + p.length, 0));
      } catch (err) { this.status(`zoom: ${err.message}`); }
    }

    setLog(on) {
      this.log = on;
      this.charts.forEach((c) => logRelayout(c.div, on, c.flat));
    }
  }

  // --- a comparison: one chart per metric, one colour per run --------------------------------------
  class CompareView {
    constructor(el) {
      this.el = el;
      this.families = JSON.parse(el.dataset.families);
      this.runs = JSON.parse(el.dataset.runs); // [[id, label, colour, dash], ...]: the style is the run's own
      this.keys = JSON.parse(el.dataset.keys);
      this.smoothing = Number(el.dataset.smoothing || 0);
      this.x = el.dataset.x || "step";
      this.maxPoints = Number(el.dataset.maxPoints || 100);
      this.references = JSON.parse(el.dataset.references || "[]");
      this.charts = [];
      this.bar = toolbar(el, (on) => this.charts.forEach((d) => logRelayout(d, on, d.flatRange)));
      this.grid = document.createElement("div");
      this.grid.className = "distill-grid";
      el.appendChild(this.grid);
      this.load();
    }

    async load() {
      const t0 = performance.now();
      const q = new URLSearchParams({ run_ids: this.runs.map((r) => r[0]).join(","), keys: this.keys.join(","),
        max_points: String(this.maxPoints), x: this.x });
      let body;
      try {
        const r = await fetch(`/api/compare?${q}`, { credentials: "same-origin" });
        if (!r.ok) throw new Error(`HTTP ${r.status}`);
        body = await r.json();
      } catch (err) { this.bar.querySelector(".distill-status").textContent = `cannot load the curves: ${err.message}`; return; }
      const xTitle = this.x === "step" ? "optimizer step" : "wall time since the run's first point (s)";
      for (const key of this.keys) {
        const family = familyOf(this.families, key);
        const scale = family.percent ? 100 : 1;
        const sparse = isSparse(key);
        const traces = [];
        this.runs.forEach(([id, label, color, dash]) => {
          const pts = (body.series[String(id)] || {})[key] || [];
          if (!pts.length) return;
          const w0 = pts[0].wall_time;
          const xs = pts.map((p) => (this.x === "step" ? p.step : p.wall_time - w0));
          const ys = pts.map((p) => p.value * scale);
          const custom = pts.map((p) => [p.step, clock(p.wall_time, w0)]);
          const hover = "%{y:.6~g}  <span style='color:#777'>step %{customdata[0]} · %{customdata[1]}</span>";
          const smooth = !sparse && this.smoothing > 0;
          traces.push({ x: xs, y: ys, customdata: custom, name: smooth ? `${label} (raw)` : label, legendgroup: label,
            showlegend: !smooth, opacity: smooth ? 0.25 : 1, mode: modeOf(key, pts.length),
            line: { color, dash, width: smooth ? 1 : 1.5 }, marker: { size: 6 }, hovertemplate: hover, type: "scatter",
            meta: { run: id } });
          if (smooth) {
            const st = emaState(this.smoothing);
            traces.push({ x: xs, y: ys.map((v) => emaNext(st, v)), customdata: custom, name: label, legendgroup: label,
              mode: modeOf(key, pts.length), line: { color, dash, width: 2 }, hovertemplate: hover, type: "scatter",
              meta: { run: id } });
          }
        });
        const div = document.createElement("div");
        div.className = "distill-chart";
        div.dataset.key = key;
        div.dataset.family = family.name;
        this.grid.appendChild(div);
        if (!traces.length) { div.className += " distill-nodata"; div.textContent = `${family.title} · ${key}: no data in these runs`; continue; }
        const layout = baseLayout(`${family.title} · ${key}`, family.unit, xTitle, false);
        referenceLines(layout, family, this.references.filter((r) => r.key === key));
        div.flatRange = flatRange(traces, family);
        applyFlat(layout, div.flatRange, false);
        Plotly.newPlot(div, traces, layout, CONFIG);
        this.charts.push(div);
      }
      requestAnimationFrame(() => { stats.compareDrawn.push({ charts: this.charts.length, ms: performance.now() - t0, at: performance.now() }); this.el.dataset.drawn = "1"; });
    }

    close() { this.charts.forEach((d) => Plotly.purge(d)); }
  }

  function scan() {
    for (const [el, view] of bound) if (!el.isConnected) { view.close(); bound.delete(el); }
    if (typeof Plotly === "undefined") return;
    document.querySelectorAll(".distill-live:not([data-bound]), .distill-compare:not([data-bound])").forEach((el) => {
      el.dataset.bound = "1";
      bound.set(el, el.classList.contains("distill-live") ? new LiveView(el) : new CompareView(el));
    });
  }

  // Plotly sizes a chart drawn in a hidden tab to nothing: resize when a tab shows it
  const resize = new ResizeObserver((entries) => entries.forEach((e) => {
    e.target.querySelectorAll(".js-plotly-plot").forEach((d) => { if (d.clientWidth) Plotly.Plots.resize(d); });
  }));
  const observed = new WeakSet();
  let pending = false;
  function rescan() { // at most once a frame: Plotly's own redraws mutate the DOM too
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      scan();
      document.querySelectorAll(".distill-grid").forEach((el) => {
        if (observed.has(el)) return; // observing again would fire (and resize every chart) again
        observed.add(el);
        resize.observe(el);
      });
    });
  }
  // Enter in a slider's number box (smoothing) applies it: Gradio applies it on blur only (its `release`)
  document.addEventListener("keydown", (e) => {
    const box = e.target;
    if (e.key !== "Enter" || !(box instanceof HTMLInputElement) || box.type !== "number") return;
    const block = box.closest(".block");
    if (block && block.querySelector("input[type=range]")) box.blur();
  }, true);

  function start() {
    new MutationObserver(rescan).observe(document.body, { childList: true, subtree: true });
    rescan();
  }
  if (document.body) start(); else document.addEventListener("DOMContentLoaded", start);
})();
