// `npm run demo`: the whole product in one run without Pulumi: boot a parent, freeze it into a
// powered-on template, fork a small fleet, print it, clean up. It uses its own state directory,
// so it never touches the user's VMs, and removes everything it made even on Ctrl-C or failure.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Engine } from "../engine/engine";
import { buildDefaultImage } from "../engine/image";
import { doctor } from "../engine/doctor";
import { cliLogger, progressReporter, reportError, table } from "./output";

const COUNT = Number(process.env.FORKVM_DEMO_COUNT ?? 8);

async function main(): Promise<void> {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-demo-"));
  const p = progressReporter(false);
  const engine = new Engine({ home, log: cliLogger(false), progress: p.report });
  let cleaning = false;
  const cleanup = async () => {
    if (cleaning) return;
    cleaning = true;
    const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
    await engine.remove(names, { force: true }).catch((e) => process.stderr.write(`cleanup: ${e}\n`));
    fs.rmSync(home, { recursive: true, force: true });
    fs.rmSync(engine.store.memDir, { recursive: true, force: true });
  };
  process.once("SIGINT", () => void cleanup().then(() => process.exit(130)));
  try {
    const d = await doctor(engine.store);
    if ("error" in d.accel) throw new Error(d.accel.error);
    console.log(`host: QEMU ${d.qemu.version}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB; accelerator ${d.accel.accel}: ${d.accel.reason}`);
    await buildDefaultImage({ onProgress: (s) => p.report({ step: "image", message: s }) });

    const parent = await engine.createParent({
      name: "demo", memoryMiB: 256,
      init: ["echo warmed-at-$(date +%s) > /tmp/warm", "dd if=/dev/urandom of=/tmp/cache bs=1M count=16 2>/dev/null"],
    });
    console.log(`parent booted to agent-ready in ${parent.timings?.bootMs} ms (+${parent.timings?.initMs} ms init)`);
    const t = await engine.createTemplate({ name: "demo-t", parent: "demo", source: "frozen" });
    console.log(`template ${t.name} (generation ${t.generation}) frozen in ${t.timings.freezeMs} ms; checkpoint ${(t.stateBytes / 1048576).toFixed(2)} MiB`);

    const f0 = Date.now();
    const r = await engine.fork({ template: "demo-t", count: COUNT, prefix: "child", concurrency: 4 });
    p.done();
    const fleetMs = Date.now() - f0;
    for (const x of r.failed) process.stderr.write(`fork failed: ${x.error.message}\n`);

    const stats = new Map(engine.stats().map((s) => [s.name, s]));
    const rows = [];
    for (const c of r.children) {
      const out = await engine.exec(c.name, ["sh", "-c", "cat /tmp/warm; hostname"]);
      const [warm, host] = out.stdout.toString().trim().split("\n");
      const s = stats.get(c.name);
      rows.push([c.name, c.pid, c.mac, host, warm, `${c.timings?.runningMs} ms`, `${c.timings?.readyMs} ms`, s ? `${s.rssMiB}` : "-", s ? `${s.pssMiB}` : "-", s ? `${s.sharedWithTemplateMiB}` : "-"]);
    }
    console.log(table(["child", "pid", "mac", "hostname (guest)", "/tmp/warm (from parent RAM)", "running", "ready", "RSS MiB", "PSS MiB", "shared MiB"], rows));
    const ready = r.children.map((c) => c.timings?.readyMs ?? 0).sort((a, b) => a - b);
    const p50 = ready[Math.floor(ready.length / 2)];
    console.log(`${r.children.length} children ready in ${fleetMs} ms (fork-to-ready p50 ${p50} ms, 4 at a time) vs ${parent.timings?.bootMs} ms for one cold boot: ${(parent.timings!.bootMs / p50).toFixed(1)}x`);
  } finally {
    await cleanup();
  }
  console.log("cleaned up: every VM of the demo is gone");
}

main().catch((err) => {
  process.exitCode = reportError(err, false);
});
