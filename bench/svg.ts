// A hand-written SVG chart of one benchmark run: the fork latency distribution (a CDF on a log
// time axis, with full clone and cold boot marked) and the throughput curve. Pure: data in, text out.

export interface ChartInput {
  title: string;
  subtitle: string;
  /** Fork latency samples in ms. */
  running: number[];
  ready: number[];
  fullCloneMs?: number;
  coldBootMs?: number;
  throughput: Array<{ n: number; readyS: number; clonesPerS: number }>;
}

const W = 960, H = 470, TOP = 84, BOTTOM = 76, PANEL_W = 400;
const LEFT_X = 70, RIGHT_X = 540;
const PLOT_H = H - TOP - BOTTOM;

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!);
}

const f = (x: number) => (Math.round(x * 10) / 10).toString();

function text(x: number, y: number, s: string, attrs = ""): string {
  return `<text x="${f(x)}" y="${f(y)}" ${attrs}>${escapeXml(s)}</text>`;
}

/** Points of an empirical CDF as (value, fraction ≤ value) steps. */
export function cdfPoints(samples: number[]): Array<[number, number]> {
  const s = [...samples].sort((a, b) => a - b);
  return s.map((v, i) => [v, (i + 1) / s.length]);
}

/** Decades covering [lo, hi] for a log axis: 10^a .. 10^b. */
export function logRange(lo: number, hi: number): [number, number] {
  const a = Math.floor(Math.log10(Math.max(lo, 1e-3)));
  const b = Math.ceil(Math.log10(Math.max(hi, lo * 10, 1e-3)));
  return [a, b === a ? a + 1 : b];
}

function latencyPanel(c: ChartInput): string {
  const all = [...c.running, ...c.ready, ...(c.fullCloneMs ? [c.fullCloneMs] : []), ...(c.coldBootMs ? [c.coldBootMs] : [])].filter((v) => v > 0);
  if (!all.length) return text(LEFT_X, TOP + 20, "no latency samples");
  const [a, b] = logRange(Math.min(...all), Math.max(...all));
  const x = (v: number) => LEFT_X + ((Math.log10(Math.max(v, 10 ** a)) - a) / (b - a)) * PANEL_W;
  const y = (p: number) => TOP + PLOT_H - p * PLOT_H;
  const out: string[] = [];
  out.push(text(LEFT_X, TOP - 14, "Fork latency, sequential (CDF)", `font-weight="bold"`));
  for (let d = a; d <= b; d++) {
    const xv = x(10 ** d);
    out.push(`<line x1="${f(xv)}" y1="${TOP}" x2="${f(xv)}" y2="${TOP + PLOT_H}" stroke="#ddd"/>`);
    const label = 10 ** d >= 1000 ? `${10 ** (d - 3)} s` : `${10 ** d} ms`;
    out.push(text(xv, TOP + PLOT_H + 18, label, `text-anchor="middle"`));
  }
  for (const p of [0, 0.5, 0.9, 1]) {
    out.push(`<line x1="${LEFT_X}" y1="${f(y(p))}" x2="${LEFT_X + PANEL_W}" y2="${f(y(p))}" stroke="#eee"/>`);
    out.push(text(LEFT_X - 8, y(p) + 4, `p${Math.round(p * 100)}`, `text-anchor="end"`));
  }
  const series: Array<[string, number[], string]> = [["fork → running", c.running, "#1f77b4"], ["fork → agent-ready", c.ready, "#d62728"]];
  series.forEach(([name, xs, color], i) => {
    if (!xs.length) return;
    let d = `M${f(x(Math.min(...xs)))},${f(y(0))}`;
    for (const [v, p] of cdfPoints(xs)) d += ` H${f(x(v))} V${f(y(p))}`;
    out.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"/>`);
    const lx = LEFT_X + i * 200;
    out.push(`<rect x="${lx}" y="${TOP + PLOT_H + 50}" width="12" height="3" fill="${color}"/>`);
    out.push(text(lx + 18, TOP + PLOT_H + 55, `${name} (n=${xs.length})`));
  });
  out.push(text(LEFT_X + PANEL_W, TOP + PLOT_H + 36, "time from the fork() call (log scale)", `text-anchor="end" fill="#555"`));
  const marks: Array<[string, number | undefined]> = [["full clone", c.fullCloneMs], ["cold boot", c.coldBootMs]];
  for (const [name, v] of marks) {
    if (!v) continue;
    out.push(`<line x1="${f(x(v))}" y1="${TOP}" x2="${f(x(v))}" y2="${TOP + PLOT_H}" stroke="#555" stroke-dasharray="4,3"/>`);
    out.push(text(x(v) - 4, TOP + PLOT_H - 6, `${name} ${v >= 1000 ? `${f(v / 1000)} s` : `${Math.round(v)} ms`}`, `text-anchor="end" font-size="11"`));
  }
  out.push(`<rect x="${LEFT_X}" y="${TOP}" width="${PANEL_W}" height="${PLOT_H}" fill="none" stroke="#999"/>`);
  return out.join("\n");
}

function throughputPanel(c: ChartInput): string {
  const pts = [...c.throughput].sort((p, q) => p.n - q.n);
  if (!pts.length) return text(RIGHT_X, TOP + 20, "no throughput points");
  const maxN = Math.max(...pts.map((p) => p.n));
  const maxS = Math.max(...pts.map((p) => p.readyS)) * 1.15 || 1;
  const x = (n: number) => RIGHT_X + (n / maxN) * PANEL_W;
  const y = (s: number) => TOP + PLOT_H - (s / maxS) * PLOT_H;
  const out: string[] = [];
  out.push(text(RIGHT_X, TOP - 14, "Throughput: N children to agent-ready", `font-weight="bold"`));
  const step = niceStep(maxS);
  for (let s = 0; s <= maxS; s += step) {
    out.push(`<line x1="${RIGHT_X}" y1="${f(y(s))}" x2="${RIGHT_X + PANEL_W}" y2="${f(y(s))}" stroke="#eee"/>`);
    out.push(text(RIGHT_X - 8, y(s) + 4, `${f(s)} s`, `text-anchor="end"`));
  }
  for (const p of pts) out.push(text(x(p.n), TOP + PLOT_H + 18, String(p.n), `text-anchor="middle"`));
  // The issue's target rate, 100 children in 10 s, as a reference line.
  const tn = Math.min(maxN, maxS * 10);
  out.push(`<line x1="${f(x(0))}" y1="${f(y(0))}" x2="${f(x(tn))}" y2="${f(y(tn / 10))}" stroke="#999" stroke-dasharray="5,4"/>`);
  out.push(text(x(tn) - 4, y(tn / 10) - 8, "target: 10 children/s", `text-anchor="end" fill="#777" font-size="11"`));
  out.push(text(RIGHT_X + PANEL_W / 2, TOP + PLOT_H + 38, "children (N)", `text-anchor="middle"`));
  out.push(`<polyline points="${[[0, 0] as const, ...pts.map((p) => [p.n, p.readyS] as const)].map(([n, s]) => `${f(x(n))},${f(y(s))}`).join(" ")}" fill="none" stroke="#2ca02c" stroke-width="2"/>`);
  for (const p of pts) {
    out.push(`<circle cx="${f(x(p.n))}" cy="${f(y(p.readyS))}" r="4" fill="#2ca02c"/>`);
    out.push(text(x(p.n) - 6, y(p.readyS) - 8, `${f(p.readyS)} s, ${f(p.clonesPerS)}/s`, `text-anchor="end" font-size="11"`));
  }
  out.push(`<rect x="${RIGHT_X}" y="${TOP}" width="${PANEL_W}" height="${PLOT_H}" fill="none" stroke="#999"/>`);
  return out.join("\n");
}

/** A step of 1, 2 or 5 × 10^k giving 4 to 10 grid lines up to `max`. */
export function niceStep(max: number): number {
  const raw = max / 5;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const m = raw / mag;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * mag;
}

export function renderSvg(c: ChartInput): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    text(LEFT_X, 24, c.title, `font-size="16" font-weight="bold"`),
    text(LEFT_X, 44, c.subtitle, `fill="#555"`),
    latencyPanel(c),
    throughputPanel(c),
    `</svg>`,
    "",
  ].join("\n");
}
