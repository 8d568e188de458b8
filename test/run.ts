// Runs every uvu suite in its own process with its own FORKVM_HOME and memory dir, under a
// deadline; afterwards kills any QEMU left pointing into that home (a safety net: suites clean up
// themselves), and ends with the plain line "N passed, N failed".
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const root = path.join(__dirname, "..");
const filter = process.argv[2];
const SUITE_DEADLINE_MS = Number(process.env.FORKVM_SUITE_DEADLINE_MS ?? 10 * 60_000);

function suites(): string[] {
  const order = ["unit", "engine", "provider", "deploy", "examples"];
  const out: string[] = [];
  for (const dir of order) {
    const d = path.join(__dirname, dir);
    if (!fs.existsSync(d)) continue;
    for (const f of fs.readdirSync(d).sort()) if (f.endsWith(".test.ts")) out.push(path.join(d, f));
  }
  for (const f of fs.readdirSync(__dirname).sort()) if (f.endsWith(".test.ts")) out.push(path.join(__dirname, f));
  return filter ? out.filter((f) => f.includes(filter)) : out;
}

function killLeftovers(marker: string): number {
  let killed = 0;
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (!cmd.includes(marker)) continue;
      // A QEMU left behind fails the suite; a VM's passt (its command line names the VM directory)
      // ends with its QEMU, maybe a moment later, so it is killed without counting.
      if (cmd.includes("qemu")) {
        process.kill(Number(pid), "SIGKILL");
        killed++;
      } else if (cmd.includes("passt")) process.kill(Number(pid), "SIGKILL");
    } catch { /* gone */ }
  }
  return killed;
}

async function runSuite(file: string): Promise<{ passed: number; failed: number; skipped: number; ms: number }> {
  const tag = `forkvm-test-${path.basename(file, ".test.ts")}-${process.pid}`;
  const home = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-`));
  const memDir = path.join("/dev/shm", path.basename(home));
  const t0 = Date.now();
  const child = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", file], {
    cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true,
    env: { ...process.env, FORKVM_HOME: path.join(home, "home"), FORKVM_MEMDIR: memDir, FORKVM_TEST_HOME: home, FORCE_COLOR: "0" },
  });
  let out = "";
  child.stdout.on("data", (d) => { out += d; process.stdout.write(d); });
  child.stderr.on("data", (d) => { out += d; process.stderr.write(d); });
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; try { process.kill(-child.pid!, "SIGKILL"); } catch { /* gone */ } }, SUITE_DEADLINE_MS);
  const code = await new Promise<number | null>((resolve) => child.on("close", (c) => resolve(c)));
  clearTimeout(timer);
  const left = killLeftovers(home) + killLeftovers(memDir);
  fs.rmSync(home, { recursive: true, force: true });
  fs.rmSync(memDir, { recursive: true, force: true });
  const clean = out.replace(/\x1b\[[0-9;]*m/g, "");
  let passed = Number(clean.match(/Passed:\s+(\d+)/)?.[1] ?? 0);
  // uvu's Total counts the tests that ran; skipped ones are counted apart (not in Total).
  let failed = Number(clean.match(/Total:\s+(\d+)/)?.[1] ?? 0) - passed;
  const skipped = Number(clean.match(/Skipped:\s+(\d+)/)?.[1] ?? 0);
  if (timedOut) { failed += 1; console.log(`\n${path.relative(root, file)}: suite deadline of ${SUITE_DEADLINE_MS} ms passed`); }
  else if (code !== 0 && failed === 0) { failed = 1; console.log(`\n${path.relative(root, file)}: exited with ${code}`); }
  if (left) { failed += 1; console.log(`\n${path.relative(root, file)}: left ${left} QEMU processes running (killed now)`); }
  return { passed, failed, skipped, ms: Date.now() - t0 };
}

(async () => {
  let passed = 0, failed = 0, skipped = 0;
  const summary: string[] = [];
  for (const file of suites()) {
    console.log(`\n== ${path.relative(root, file)}`);
    const r = await runSuite(file);
    passed += r.passed;
    failed += r.failed;
    skipped += r.skipped;
    summary.push(`${path.relative(root, file).padEnd(40)} ${String(r.passed).padStart(3)} passed ${String(r.failed).padStart(3)} failed ${(r.ms / 1000).toFixed(1).padStart(7)} s`);
  }
  console.log(`\n${summary.join("\n")}`);
  console.log(`\n${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
  process.exitCode = failed === 0 && passed > 0 ? 0 : 1;
})();
