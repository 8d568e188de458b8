// The benchmark's pure parts: percentiles and summaries, the result's headline keys and targets,
// the text table, and the SVG chart (well-formed, escaped, one path per latency series).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { medianFields, percentile, summarize } from "../../bench/stats";
import { cdfPoints, escapeXml, logRange, niceStep, renderSvg } from "../../bench/svg";
import { buildResult, textTable, type Raw } from "../../bench/report";

test("percentiles interpolate between closest ranks", () => {
  const xs = [10, 20, 30, 40, 50];
  assert.is(percentile(xs, 0), 10);
  assert.is(percentile(xs, 50), 30);
  assert.is(percentile(xs, 100), 50);
  assert.is(percentile(xs, 90), 46);
  assert.is(percentile([5, 1, 3], 50), 3, "unsorted input is sorted first");
  assert.ok(Number.isNaN(percentile([], 50)));
  assert.throws(() => percentile(xs, 101));
});

test("a summary gives n, min, p50, p90, p99, max and mean", () => {
  const xs = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(summarize(xs), { n: 100, min: 1, p50: 50.5, p90: 90.1, p99: 99, max: 100, mean: 50.5 });
});

test("medianFields takes each field's median and skips missing values", () => {
  assert.equal(medianFields([{ a: 1, b: 10 }, { a: 3 }, { a: 2, b: 30 }]), { a: 2, b: 20 });
});

const sample = (readyMs: number, runningMs: number) => ({ readyMs, runningMs, phases: { spawnMs: 10, readyMs } });
const raw: Raw = {
  mode: "quick",
  host: { hostname: "h", cores: 2, cpuModel: "cpu", memoryGiB: 24, kernel: "6.1", qemu: "7.2.22", machine: "pc-i440fx-7.2", accel: "tcg", accelReason: "test" },
  guestMemoryMiB: 256, concurrency: 8, coldBootMs: [5000, 6000, 7000],
  fullClones: [sample(700, 150), sample(800, 160)],
  forks: [sample(100, 50), sample(120, 60), sample(140, 70)],
  throughput: [
    { n: 10, concurrency: 8, readyS: 1, clonesPerS: 10, failed: 0, childRssMiB: 60, childPssMiB: 30, childPrivateMiB: 25, childSharedWithTemplateMiB: 20, hostUsedMiB: 300, hostUsedPerChildMiB: 30, memAvailableBeforeMiB: 20000, childCpuMs: 300, childReadyP50Ms: 500, removeS: 0.1 },
    { n: 100, concurrency: 8, readyS: 9, clonesPerS: 11.1, failed: 0, childRssMiB: 60, childPssMiB: 25, childPrivateMiB: 24, childSharedWithTemplateMiB: 20, hostUsedMiB: 2500, hostUsedPerChildMiB: 25, memAvailableBeforeMiB: 20000, childCpuMs: 300, childReadyP50Ms: 700, removeS: 1 },
  ],
  templates: [{ memoryMiB: 256, parentBootMs: 6000, freezeMs: 20, runningDowntimeMs: 12 }],
  memoryScaling: [{ memoryMiB: 256, forks: [sample(100, 50)] }],
  durationS: 100,
};

test("the result carries the headline keys, ratios and targets", () => {
  const r = buildResult(raw, new Date("2026-01-02T03:04:05Z"));
  for (const k of ["accel", "coldBootReadyMs", "fullCloneReadyMs", "forkRunningP50Ms", "forkReadyP50Ms", "forkReadyP99Ms", "speedupVsColdBoot", "speedupVsFullClone", "children100ReadyS", "childPssMiB", "runningSourceDowntimeMs"]) {
    assert.ok(k in r, `missing ${k}`);
  }
  assert.is(r.coldBootReadyMs, 6000);
  assert.is(r.forkReadyP50Ms, 120);
  assert.is(r.speedupVsColdBoot, 50);
  assert.is(r.children100ReadyS, 9);
  assert.is(r.childPssMiB, 25, "PSS of the largest batch");
  assert.is(r.childrenFitEstimate, 800);
  assert.is(r.runningSourceDowntimeMs, 12);
  const met = Object.fromEntries(r.targets.map((t) => [t.name, t.met]));
  assert.equal(met, {
    "fork-to-ready p50": true, "100 children ready": true, "per-child PSS": true,
    "children alive at once (measured)": false, "fork vs cold boot": true, "running-mode downtime": true,
  });
});

test("a missing measurement is null and its target unknown, not failed", () => {
  const r = buildResult({ ...raw, throughput: raw.throughput.slice(0, 1) });
  assert.is(r.children100ReadyS, null);
  assert.is(r.targets.find((t) => t.name === "100 children ready")!.met, null);
});

test("the text table aligns columns under a header", () => {
  const t = textTable(["what", "ms"], [["fork", "120 ms"], ["cold boot", "6000 ms"]]).split("\n");
  assert.is(t.length, 4);
  assert.is(t[2].length, t[3].length);
  assert.ok(t[2].endsWith(" 120 ms"));
});

test("chart helpers: CDF steps, log decades, nice steps, XML escaping", () => {
  assert.equal(cdfPoints([3, 1, 2, 4]), [[1, 0.25], [2, 0.5], [3, 0.75], [4, 1]]);
  assert.equal(logRange(80, 6000), [1, 4]);
  assert.equal(logRange(100, 100), [2, 3]);
  assert.is(niceStep(23), 5);
  assert.is(niceStep(9), 2);
  assert.is(escapeXml(`a<b & "c"`), "a&lt;b &amp; &quot;c&quot;");
});

test("the SVG is one well-formed document with both panels and escaped text", () => {
  const svg = renderSvg({
    title: "fork <vs> boot", subtitle: "s", running: [50, 60, 70], ready: [100, 120, 140], fullCloneMs: 700, coldBootMs: 6000,
    throughput: [{ n: 10, readyS: 1, clonesPerS: 10 }, { n: 50, readyS: 4, clonesPerS: 12.5 }],
  });
  assert.ok(svg.startsWith("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  assert.ok(svg.trimEnd().endsWith("</svg>"));
  assert.ok(svg.includes("fork &lt;vs&gt; boot"));
  assert.is((svg.match(/<path /g) ?? []).length, 2);
  assert.is((svg.match(/<circle /g) ?? []).length, 2);
  assert.not.match(svg, /NaN|undefined/);
  // Tags balance: every opened element is closed (self-closing ones aside).
  const open = (svg.match(/<(svg|text)\b/g) ?? []).length;
  const close = (svg.match(/<\/(svg|text)>/g) ?? []).length;
  assert.is(open, close);
});

test("the SVG says so when there is nothing to draw", () => {
  const svg = renderSvg({ title: "t", subtitle: "s", running: [], ready: [], throughput: [] });
  assert.ok(svg.includes("no latency samples"));
  assert.ok(svg.includes("no throughput points"));
});

test.run();
