// Pure statistics for the benchmark: percentiles (linear interpolation between closest ranks,
// as numpy's default) and a summary of a sample. No I/O.

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** The p-th percentile (0..100) of `values`; NaN for an empty sample. */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  if (p < 0 || p > 100) throw new RangeError(`percentile must be in 0..100, got ${p}`);
  const s = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (s.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return s[lo] + (s[hi] - s[lo]) * (rank - lo);
}

export function median(values: number[]): number {
  return percentile(values, 50);
}

/** Rounds to `digits` decimals (NaN stays NaN). */
export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function summarize(values: number[], digits = 1): Summary {
  const r = (x: number) => round(x, digits);
  return {
    n: values.length,
    min: r(Math.min(...values)),
    p50: r(percentile(values, 50)),
    p90: r(percentile(values, 90)),
    p99: r(percentile(values, 99)),
    max: r(Math.max(...values)),
    mean: r(values.reduce((a, b) => a + b, 0) / values.length),
  };
}

/** Median of each numeric field over a list of records (fields missing in some are skipped there). */
export function medianFields<T extends Record<string, number | undefined>>(rows: T[]): Record<string, number> {
  const keys = new Set(rows.flatMap((r) => Object.keys(r)));
  const out: Record<string, number> = {};
  for (const k of keys) {
    const xs = rows.map((r) => r[k]).filter((x): x is number => typeof x === "number" && Number.isFinite(x));
    if (xs.length) out[k] = round(median(xs));
  }
  return out;
}
