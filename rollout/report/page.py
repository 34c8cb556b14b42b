"""The report as one self-contained HTML file: the data as JSON, plots drawn as inline SVG
by a small script, no external resource (it opens offline, from a file:// URL)."""

from __future__ import annotations

import html
import json
import time
from typing import Any

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header{background:#1d232b;color:#fff;padding:12px 20px}
header h1{font-size:18px;margin:0}
header .sub{color:#aab4c0;font-size:12px}
main{padding:16px 20px;display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:16px}
section{background:#fff;border:1px solid #dde2e8;border-radius:6px;padding:12px 14px}
section.wide{grid-column:1/-1}
h2{font-size:15px;margin:0 0 8px}
.figs{display:flex;flex-wrap:wrap;gap:10px}
.fig{background:#f0f3f6;border-radius:4px;padding:8px 12px;min-width:120px}
.fig b{display:block;font-size:20px}
.fig span{font-size:12px;color:#5b6672}
svg{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:#44505c}
svg text.moved{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.legend span{display:inline-block;margin-right:10px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
pre{background:#f3f5f7;padding:6px 8px;white-space:pre-wrap;word-break:break-all;max-height:260px;overflow:auto;margin:4px 0;font-size:12px}
#trajs button{margin:2px;border:1px solid #c4ccd5;background:#fff;border-radius:4px;padding:3px 8px;cursor:pointer}
#trajs button.sel{background:#1d232b;color:#fff}
.ev{border-left:3px solid #c4ccd5;padding:2px 8px;margin:6px 0}
.ev.tool{border-color:#3a7bd5}.ev.turn{border-color:#8e6bd1}.ev.verify{border-color:#2f9e62}
.ev.bad{border-color:#d64545}
.muted{color:#6b7783;font-size:12px}
select{max-width:100%}
.player{margin:8px 0;border:1px solid #c4ccd5;border-radius:4px;padding:6px;background:#fafbfc}
.player pre.term{background:#111;color:#ddd;font:12px/1.25 monospace;white-space:pre;max-height:none;overflow:hidden;display:inline-block;padding:6px}
.player input[type=range]{width:300px;vertical-align:middle}
"""

SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#3a7bd5','#e08a2c','#8e6bd1','#2f9e62','#d64545','#7c8a99','#c2b280','#3fb8c4'];
function el(tag, attrs, parent, text) {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function svg(id, w, h) {
  const s = el('svg', {viewBox: `0 0 ${w} ${h}`, role: 'img'});
  document.getElementById(id).appendChild(s);
  return s;
}
function fmt(v, unit) {
  if (v === null || v === undefined) return '-';
  if (unit === '%') return (100 * v).toFixed(1) + '%';
  if (unit === 's') return v < 1 ? (1000 * v).toFixed(0) + ' ms' : v.toFixed(2) + ' s';
  return String(Math.round(v * 100) / 100);
}
function short(label, n) { return label.length > n ? '…' + label.slice(-(n - 1)) : label; }
function empty(s, w, h, what) { el('text', {x: w / 2, y: h / 2, 'text-anchor': 'middle'}, s, what); }

function lineChart(id, series, xlabel, ylabel) {
  const W = 460, H = 230, L = 46, B = 30, T = 22, R = 14;
  const s = svg(id, W, H);
  const pts = series.flatMap(x => x.points);
  if (!pts.length) return empty(s, W, H, 'no data yet');
  const xmax = Math.max(...pts.map(p => p[0]), 1e-9), ymax = Math.max(...pts.map(p => p[1]), 1e-9);
  const X = x => L + (W - L - R) * x / xmax, Y = y => H - B - (H - B - T) * y / ymax;
  el('line', {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#99a3ad'}, s);
  el('line', {x1: L, y1: T, x2: L, y2: H - B, stroke: '#99a3ad'}, s);
  for (const f of [0, 0.5, 1]) {
    el('text', {x: L - 4, y: Y(ymax * f) + 4, 'text-anchor': 'end'}, s, fmt(ymax * f));
    el('text', {x: X(xmax * f), y: H - B + 14, 'text-anchor': f === 1 ? 'end' : 'middle'}, s, fmt(xmax * f));
  }
  el('text', {x: (W + L) / 2, y: H - 5, 'text-anchor': 'middle'}, s, xlabel);
  el('text', {x: 4, y: 12}, s, ylabel);
  series.forEach((ser, i) => {
    const d = ser.points.map((p, j) => (j ? 'L' : 'M') + X(p[0]).toFixed(1) + ' ' + Y(p[1]).toFixed(1)).join(' ');
    el('path', {d, fill: 'none', stroke: ser.color || COLORS[i], 'stroke-width': 2}, s);
  });
  legend(id, series.map(x => x.name), series.map((x, i) => x.color || COLORS[i]));
}
function legend(id, names, colors) {
  const div = document.createElement('div');
  div.className = 'legend';
  names.forEach((n, i) => { div.innerHTML += `<span><i style="background:${colors[i]}"></i>${n}</span>`; });
  document.getElementById(id).appendChild(div);
}
function barChart(id, items, color) {
  const W = 460, rowH = 22, L = 190, R = 50;
  const H = Math.max(rowH * items.length + 10, 40);
  const s = svg(id, W, H);
  if (!items.length) return empty(s, W, H, 'none');
  const max = Math.max(...items.map(x => x[1]), 1e-9);
  items.forEach(([label, v], i) => {
    const y = 5 + i * rowH;
    el('text', {x: L - 6, y: y + 14, 'text-anchor': 'end'}, s, short(label, 28)).appendChild(el('title', {}, null, label));
    el('rect', {x: L, y: y + 3, width: Math.max((W - L - R) * v / max, 1), height: rowH - 6, fill: color}, s);
    el('text', {x: L + (W - L - R) * v / max + 4, y: y + 14}, s, fmt(v));
  });
}
function stackedBars(id, rows, keys) {
  const W = 460, rowH = 22, L = 190, R = 50;
  const H = Math.max(rowH * rows.length + 10, 40);
  const s = svg(id, W, H);
  if (!rows.length) return empty(s, W, H, 'no trajectories yet');
  const total = r => keys.reduce((a, k) => a + (r[1][k] || 0), 0);
  const max = Math.max(...rows.map(total), 1e-9);
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    let x = L;
    el('text', {x: L - 6, y: y + 14, 'text-anchor': 'end'}, s, short(r[0], 28)).appendChild(el('title', {}, null, r[0]));
    keys.forEach((k, j) => {
      const w = (W - L - R) * (r[1][k] || 0) / max;
      const rect = el('rect', {x, y: y + 3, width: w, height: rowH - 6, fill: COLORS[j]}, s);
      el('title', {}, rect, `${k}: ${fmt(r[1][k], 's')}`);
      x += w;
    });
    el('text', {x: x + 4, y: y + 14}, s, fmt(total(r), 's'));
  });
  legend(id, keys, COLORS);
}
function stripPlot(id, rows) {
  const W = 460, rowH = 22, L = 190, R = 20;
  const H = Math.max(rowH * rows.length + 26, 50);
  const s = svg(id, W, H);
  if (!rows.length) return empty(s, W, H, 'no scored trajectories yet');
  const X = v => L + (W - L - R) * v;
  for (const f of [0, 0.5, 1]) {
    el('line', {x1: X(f), y1: 2, x2: X(f), y2: H - 18, stroke: '#dde2e8'}, s);
    el('text', {x: X(f), y: H - 4, 'text-anchor': 'middle'}, s, f.toFixed(1));
  }
  rows.forEach(([label, vals], i) => {
    const y = 5 + i * rowH + rowH / 2;
    el('text', {x: L - 6, y: y + 4, 'text-anchor': 'end'}, s, short(label, 28)).appendChild(el('title', {}, null, label));
    vals.forEach((v, j) => el('circle', {cx: X(Math.min(Math.max(v, 0), 1)), cy: y + ((j % 5) - 2) * 2, r: 4, fill: COLORS[0], 'fill-opacity': 0.5}, s));
    if (vals.length) {
      const m = vals.reduce((a, b) => a + b, 0) / vals.length;
      el('line', {x1: X(m), y1: y - 8, x2: X(m), y2: y + 8, stroke: '#d64545', 'stroke-width': 2}, s);
    }
  });
}

function figures() {
  const r = D.reliability, box = document.getElementById('figures');
  const items = [
    ['success rate', fmt(r.success_rate, '%'), 'no infrastructure failure'],
    ['solved', fmt(r.solved_rate, '%'), 'score 1.0'],
    ['tool call p50', fmt(r.tool_p50, 's'), r.tool_calls + ' calls'],
    ['tool call p99', fmt(r.tool_p99, 's'), ''],
    ['completion p50', fmt(r.completion_p50, 's'), 'trajectory, to graded'],
    ['completion p99', fmt(r.completion_p99, 's'), ''],
    ['mean time to error', r.mean_time_to_error === null ? 'no errors' : fmt(r.mean_time_to_error, 's'), r.infra_errors + ' infra errors'],
    ['retry success', r.retry_success_rate === null ? 'no retries' : fmt(r.retry_success_rate, '%'), r.retried_tasks + ' tasks retried'],
    ['trajectories', String(r.trajectories), ''],
  ];
  for (const [name, v, sub] of items) {
    const d = document.createElement('div');
    d.className = 'fig';
    d.innerHTML = `<span>${name}</span><b>${v}</b><span>${sub}</span>`;
    box.appendChild(d);
  }
}

function text(tag, content, cls) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  e.textContent = content;
  return e;
}
function showTrajectory(t) {
  const box = document.getElementById('trajectory');
  box.innerHTML = '';
  // its own time (to the end of its grading), then its group's: the line is written when the
  // whole group is done, so `wall` includes the wait for the group's slowest member
  const own = `${t.ev.some(e => e[0] === 'verify') ? 'graded' : 'ended'} after ${fmt(t.own, 's')}`;
  box.appendChild(text('div', `${t.id}: ${t.outcome}, score ${t.score}, ${t.turns} turns, ${t.tokens} tokens, ${own}; group done after ${fmt(t.wall, 's')}: ${t.group}` + (t.error ? `; error: ${t.error}` : '')));
  for (const [kind, cast] of Object.entries(t.casts || {})) {
    try { box.appendChild(player(kind, cast)); }
    catch (e) { box.appendChild(text('div', `recording ${kind} cannot be played: ${e}`, 'muted')); }
  }
  for (const [kind, off, dur, f] of t.ev) {
    const bad = (kind === 'tool' && (f.err || (f.exit !== null && f.exit !== 0))) || f.ok === false;
    const d = document.createElement('div');
    d.className = `ev ${kind}${bad ? ' bad' : ''}`;
    d.dataset.kind = kind;
    let head = `${kind} at ${off.toFixed(2)} s, ${fmt(dur, 's')}`;
    if (kind === 'tool') head += `: ${f.name}` + (f.exit !== null && f.exit !== undefined ? `, exit ${f.exit}` : '') + (f.err ? ', error' : '');
    if (kind === 'turn') head += `: turn ${f.n}, ${f.tok} tokens, ${f.fin}`;
    if (kind === 'verify') head += `: score ${f.score} (${f.reason || f.error || ''})`;
    if (kind === 'send') head += `: ${f.result}`;
    if (kind === 'acquire') head += f.waited === null ? ': no slot' : `: queued ${fmt(f.waited, 's')}`;
    d.appendChild(text('div', head));
    if (kind === 'turn' && f.text) d.appendChild(text('pre', f.text));
    if (kind === 'tool') {
      d.appendChild(text('pre', f.args && f.args.command !== undefined ? '$ ' + f.args.command : JSON.stringify(f.args, null, 1), 'args'));
      d.appendChild(text('pre', f.out, 'out'));
    }
    if (kind === 'verify') {
      const tests = Object.entries(f.tests || {}).map(([k, v]) => `${v}  ${k}`).join('\n');
      if (tests) d.appendChild(text('pre', tests));
      if (f.log) d.appendChild(text('pre', f.log));
    }
    box.appendChild(d);
  }
}
// A recording (asciinema v2 cast, rollout/record/casts.py) played on a tiny terminal: text, CR,
// LF, BS, TAB, clear, cursor position; other escape sequences are skipped.
class Term {
  constructor(w, h) { this.w = w; this.h = h; this.reset(); }
  reset() { this.rows = Array.from({length: this.h}, () => Array(this.w).fill(' ')); this.x = 0; this.y = 0; }
  nl() { if (this.y === this.h - 1) { this.rows.shift(); this.rows.push(Array(this.w).fill(' ')); } else this.y++; }
  feed(s) {
    const csi = /^\x1b\[([0-9;?]*)([@-~])/, other = /^\x1b(\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78DEHMNOZc])/;
    for (let i = 0; i < s.length;) {
      const ch = s[i];
      if (ch === '\x1b') {
        const rest = s.slice(i, i + 64);
        let m = csi.exec(rest);
        if (m) { this.csi(m[1], m[2]); i += m[0].length; continue; }
        m = other.exec(rest);
        i += m ? m[0].length : 1;
        continue;
      }
      i++;
      if (ch === '\r') this.x = 0;
      else if (ch === '\n') this.nl();
      else if (ch === '\b') this.x = Math.max(this.x - 1, 0);
      else if (ch === '\t') this.x = Math.min((Math.floor(this.x / 8) + 1) * 8, this.w - 1);
      else if (ch >= ' ') {
        if (this.x >= this.w) { this.x = 0; this.nl(); }
        this.rows[this.y][this.x++] = ch;
      }
    }
  }
  csi(p, f) {
    const n = p ? p.replace('?', '').split(';').map(v => parseInt(v, 10) || 0) : [];
    if (f === 'H' || f === 'f') { this.y = Math.min((n[0] || 1) - 1, this.h - 1); this.x = Math.min((n[1] || 1) - 1, this.w - 1); }
    else if (f === 'J' && (n[0] || 0) === 2) this.rows = Array.from({length: this.h}, () => Array(this.w).fill(' '));
    else if (f === 'K') for (let x = this.x; x < this.w; x++) this.rows[this.y][x] = ' ';
  }
  text() {
    const lines = this.rows.map(r => r.join('').replace(/ +$/, ''));
    while (lines.length && !lines[lines.length - 1]) lines.pop();
    return lines.join('\n');
  }
}
function parseCast(text) {
  const lines = text.split('\n').filter(l => l.trim());
  const header = JSON.parse(lines[0]);
  const events = lines.slice(1).map(l => JSON.parse(l)).filter(e => e[1] === 'o');
  return {header, events};
}
function player(kind, castText) {
  const {header, events} = parseCast(castText);
  const box = document.createElement('div');
  box.className = 'player';
  box.dataset.kind = kind;
  box.dataset.frames = events.length;
  const term = new Term(header.width, header.height);
  const screen = document.createElement('pre');
  screen.className = 'term';
  const play = document.createElement('button');
  play.textContent = 'play';
  const slider = document.createElement('input');
  Object.assign(slider, {type: 'range', min: 0, max: Math.max(events.length - 1, 0), value: 0});
  const label = document.createElement('span');
  label.className = 'muted';
  let shown = -1, timer = null;
  function show(i) {  // frame i: every event up to it fed in order
    if (i < shown) { term.reset(); shown = -1; }
    for (let k = shown + 1; k <= i; k++) term.feed(events[k][2]);
    shown = i;
    screen.textContent = term.text() + '\n'.repeat(Math.max(0, header.height - term.text().split('\n').length));
    slider.value = i;
    box.dataset.frame = i;
    label.textContent = ` ${kind}: frame ${i + 1} of ${events.length}, ${events.length ? events[i][0].toFixed(2) : 0} s`;
  }
  function step() {
    if (shown >= events.length - 1) { timer = null; play.textContent = 'play'; box.dataset.playing = 'no'; return; }
    show(shown + 1);
    const gap = shown + 1 < events.length ? events[shown + 1][0] - events[shown][0] : 0;
    timer = setTimeout(step, Math.min(Math.max(gap, 0), 1.0) * 1000 / (Number(box.dataset.speed) || 1));
  }
  play.onclick = () => {
    if (timer) { clearTimeout(timer); timer = null; play.textContent = 'play'; box.dataset.playing = 'no'; return; }
    if (shown >= events.length - 1) show(0);
    play.textContent = 'pause'; box.dataset.playing = 'yes'; step();
  };
  slider.oninput = () => show(Number(slider.value));
  box.appendChild(text('div', `recording: ${header.title || kind} (${header.width}x${header.height}, ${events.length} frames)`));
  box.append(play, slider, label, document.createElement('br'), screen);
  if (events.length) show(0);
  return box;
}
function showTask(task) {
  const list = document.getElementById('trajs');
  list.innerHTML = '';
  (D.viewer[task] || []).forEach((t, i) => {
    const b = document.createElement('button');
    b.textContent = `#${i + 1} ${t.outcome} ${t.score}`;
    b.title = t.id;
    b.onclick = () => { list.querySelectorAll('button').forEach(x => x.classList.remove('sel')); b.classList.add('sel'); showTrajectory(t); };
    list.appendChild(b);
    if (i === 0) b.click();
  });
}
function viewer() {
  const sel = document.getElementById('task');
  for (const task of Object.keys(D.viewer)) sel.appendChild(new Option(task, task));
  sel.onchange = () => showTask(sel.value);
  if (sel.options.length) showTask(sel.options[0].value);
  if (D.viewer_truncated) document.getElementById('viewer-note').textContent = 'A sample of the trajectories is shown; events.jsonl has them all.';
}
function keepLabelsInside() {
  // a value label at the end of the longest bar, or a long tick, may run past the SVG's box
  // (and be cut off): move it back inside, with a halo where it now sits on a bar
  for (const s of document.querySelectorAll('main section svg')) {
    const vb = s.viewBox.baseVal;
    for (const t of s.querySelectorAll('text')) {
      const b = t.getBBox();
      const shift = b.x < vb.x + 1 ? vb.x + 1 - b.x
        : Math.min(0, vb.x + vb.width - 1 - (b.x + b.width));
      if (shift) { t.setAttribute('x', Number(t.getAttribute('x')) + shift); t.classList.add('moved'); }
      const down = b.y < vb.y ? vb.y - b.y : Math.min(0, vb.y + vb.height - (b.y + b.height));
      if (down) t.setAttribute('y', Number(t.getAttribute('y')) + down);
    }
  }
}

figures();
lineChart('throughput', [{name: 'trajectories / min', points: D.throughput}], 'seconds since start', 'per min');
stripPlot('scores', Object.entries(D.scores));
stackedBars('phases', Object.entries(D.phases_by_task), D.phases);
barChart('outcomes', Object.entries(D.outcomes).sort((a, b) => b[1] - a[1]), '#3a7bd5');
barChart('drops', Object.entries(D.drops).sort((a, b) => b[1] - a[1]), '#d64545');
barChart('kinds', Object.entries(D.kinds).map(([k, v]) => [`${k} (${v.trajectories})`, v.mean_score]), '#2e9e6a');
lineChart('slots', [{name: 'slots in use', points: D.slots.map(p => [p[0], p[1]])},
                    {name: 'slots in all', points: D.slots.map(p => [p[0], p[2]]), color: '#99a3ad'}],
          'seconds since start', 'slots');
keepLabelsInside();
viewer();
document.body.dataset.rendered = 'yes';
"""

SECTIONS = [
    ("figures", "Reliability", "wide"),
    ("throughput", "Throughput (trajectories finished per minute)", ""),
    ("slots", "Slot utilisation", ""),
    ("scores", "Score distribution per task (red: mean)", ""),
    ("phases", "Mean latency per phase, per task", ""),
    ("outcomes", "Trajectory outcomes", ""),
    ("drops", "Groups not delivered, by reason", ""),
    ("kinds", "Mean score per task kind (trajectories graded)", ""),
]


def render(data: dict[str, Any]) -> str:
    state = "finished" if data["finished"] else "in progress (this page is refreshed while it runs)"
    sections = "\n".join(f'<section class="{cls}"><h2>{title}</h2><div id="{id_}" class="{"figs" if id_ == "figures" else ""}"></div></section>'
                         for id_, title, cls in SECTIONS)
    summary = (f'<section class="wide"><h2>Summary</h2><pre>{html.escape(data["summary"])}</pre></section>'
               if data["summary"] else "")
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>rollout run {html.escape(data["run_id"])}</title>
<style>{STYLE}</style></head>
<body>
<header><h1>rollout run {html.escape(data["run_id"])}</h1>
<div class="sub">{html.escape(data["run_dir"])}: {state}; written {time.strftime("%Y-%m-%d %H:%M:%S")}</div></header>
<main>
{sections}
<section class="wide"><h2>Trajectories</h2>
<label>task <select id="task"></select></label> <span id="viewer-note" class="muted"></span>
<div id="trajs"></div><div id="trajectory"></div></section>
{summary}
</main>
<script type="application/json" id="data">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""
