// `npm run bench [-- --quick] [-- --json]` (built first, run from dist/ like the CLI and the
// providers): instant clone against cold boot and full clone, in one
// run on one image and guest size, in a private FORKVM_HOME and FORKVM_MEMDIR that are removed at
// the end (also on failure and Ctrl-C), with no QEMU left behind. Progress goes to stderr; the
// table (or with --json the result) to stdout; the result and a chart to bench/results/.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { Engine } from "../engine/engine";
import { buildDefaultImage } from "../engine/image";
import { coldBoots, hostInfo, makeTemplates, qemuPidsWith, removeAll, sequentialForks, throughput, type BenchCtx, type ForkSample, type TemplateRun } from "./measure";
import { buildResult, renderText, type Raw } from "./report";
import { renderSvg } from "./svg";

interface Options {
  quick: boolean;
  json: boolean;
  concurrency: number;
  accel: "auto" | "tcg" | "kvm";
  out: string;
}

const USAGE = `usage: npm run bench -- [--quick] [--json] [--concurrency N] [--accel auto|tcg|kvm] [--out DIR]`;

/** The checkout this file belongs to, whether it runs as bench/main.ts or dist/bench/main.js. */
function repoRoot(): string {
  const up = path.join(__dirname, "..");
  return fs.existsSync(path.join(up, "package.json")) ? up : path.join(up, "..");
}

function parseOptions(argv: string[]): Options {
  const o: Options = { quick: false, json: false, concurrency: 4, accel: "auto", out: path.join(repoRoot(), "bench", "results") };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value\n${USAGE}`);
      return v;
    };
    if (a === "--quick") o.quick = true;
    else if (a === "--json") o.json = true;
    else if (a === "--concurrency") o.concurrency = Number(value());
    else if (a === "--accel") o.accel = value() as Options["accel"];
    else if (a === "--out") o.out = path.resolve(value());
    else if (a === "--help" || a === "-h") { process.stdout.write(`${USAGE}\n`); process.exit(0); }
    else throw new Error(`unknown option ${a}\n${USAGE}`);
  }
  if (!Number.isInteger(o.concurrency) || o.concurrency < 1 || o.concurrency > 256) throw new Error(`--concurrency must be an integer 1..256`);
  if (!["auto", "tcg", "kvm"].includes(o.accel)) throw new Error(`--accel must be auto, tcg or kvm`);
  return o;
}

/** What one run measures; quick keeps every kind of figure with fewer and smaller samples. */
function plan(quick: boolean) {
  return quick
    ? { guestMiB: 256, sizes: [256, 1024], coldBoots: 1, forks: 50, fullClones: 3, batches: [10, 50], perSize: 3 }
    : { guestMiB: 256, sizes: [128, 256, 512, 1024, 2048], coldBoots: 3, forks: 100, fullClones: 5, batches: [10, 50, 100, 200], perSize: 5 };
}

async function main(): Promise<void> {
  const opts = parseOptions(process.argv.slice(2));
  const p = plan(opts.quick);
  const started = performance.now();
  const load0 = os.loadavg()[0];
  const say = (msg: string) => process.stderr.write(`[bench ${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${msg}\n`);

  const home = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-bench-"));
  const memDir = path.join("/dev/shm", path.basename(home));
  process.env.FORKVM_HOME = home;
  process.env.FORKVM_MEMDIR = memDir;
  const engine = new Engine({ home, memDir });
  const c: BenchCtx = { engine, accel: opts.accel, say };

  let cleaned: Promise<void> | undefined;
  const cleanup = () => (cleaned ??= (async () => {
    say("cleaning up");
    const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
    await removeAll(engine, names).catch((e) => say(`cleanup: ${e instanceof Error ? e.message : e}`));
    // A safety net for a fork still in flight when interrupted: anything pointing into our dirs.
    for (const pid of [...qemuPidsWith(home), ...qemuPidsWith(memDir)]) try { process.kill(pid, "SIGKILL"); } catch { /* gone */ }
    fs.rmSync(home, { recursive: true, force: true });
    fs.rmSync(memDir, { recursive: true, force: true });
    const left = [...qemuPidsWith(home), ...qemuPidsWith(memDir)];
    say(left.length ? `WARNING: QEMU processes left: ${left.join(" ")}` : "no QEMU left");
  })());
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.once(sig, () => {
      say(`${sig}: stopping`);
      void cleanup().finally(() => process.exit(sig === "SIGINT" ? 130 : 143));
    });
  }

  try {
    const host = await hostInfo(engine);
    say(`QEMU ${host.qemu}, accelerator ${host.accel}, ${host.cores} cores, ${host.memoryGiB} GiB`);
    await buildDefaultImage({ onProgress: (s) => say(`image: ${s}`) });

    const templates: TemplateRun[] = [];
    templates.push(await makeTemplates(c, p.guestMiB));
    const main = `t${p.guestMiB}`;
    const coldBootMs = await coldBoots(c, engine.template(main).diskPath!, p.guestMiB, p.coldBoots);
    const forks = await sequentialForks(c, main, p.forks);
    const fullClones = await sequentialForks(c, main, p.fullClones, "full");
    const points = [];
    for (const n of p.batches) points.push(await throughput(c, main, n, opts.concurrency));
    const memoryScaling: Array<{ memoryMiB: number; forks: ForkSample[] }> = [{ memoryMiB: p.guestMiB, forks }];
    for (const size of p.sizes.filter((s) => s !== p.guestMiB)) {
      templates.push(await makeTemplates(c, size));
      memoryScaling.push({ memoryMiB: size, forks: await sequentialForks(c, `t${size}`, p.perSize) });
      await engine.remove([`t${size}`, `t${size}-live`, `p${size}`], { force: true });
    }
    templates.sort((a, b) => a.memoryMiB - b.memoryMiB);
    memoryScaling.sort((a, b) => a.memoryMiB - b.memoryMiB);

    const raw: Raw = {
      mode: opts.quick ? "quick" : "full", host, guestMemoryMiB: p.guestMiB, concurrency: opts.concurrency,
      coldBootMs, fullClones, forks, throughput: points, templates, memoryScaling, durationS: (performance.now() - started) / 1000,
      loadAverage: { start: Math.round(load0 * 100) / 100, end: Math.round(os.loadavg()[0] * 100) / 100 },
    };
    const result = buildResult(raw);
    const text = renderText(result);
    fs.mkdirSync(opts.out, { recursive: true });
    const base = path.join(opts.out, `${result.date.slice(0, 10)}-${host.hostname}${opts.quick ? "-quick" : ""}`);
    fs.writeFileSync(`${base}.json`, JSON.stringify(result, null, 2) + "\n");
    fs.writeFileSync(`${base}.svg`, renderSvg({
      title: `forkvm: instant clone vs cold boot and full clone (${result.mode})`,
      subtitle: `${host.hostname}: ${host.cores} cores, ${host.memoryGiB} GiB, QEMU ${host.qemu}, ${host.accel}; ${p.guestMiB} MiB guest; throughput at concurrency ${opts.concurrency}`,
      running: forks.map((s) => s.runningMs), ready: forks.map((s) => s.readyMs),
      fullCloneMs: result.fullCloneReadyMs, coldBootMs: result.coldBootReadyMs,
      throughput: points.map((x) => ({ n: x.n, readyS: x.readyS, clonesPerS: x.clonesPerS })),
    }));
    if (opts.json) {
      process.stderr.write(`${text}\n`);
      process.stdout.write(JSON.stringify(result, null, 2) + "\n");
    } else {
      process.stdout.write(`${text}\n`);
    }
    say(`wrote ${base}.json and ${base}.svg`);
  } finally {
    await cleanup();
  }
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exitCode = 1;
});
