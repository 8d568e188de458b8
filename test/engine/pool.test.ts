// Pools through the `forkvm pool` CLI, as a user drives them, on real QEMU (TCG here): create,
// resize, heal, roll, plan, a foreign object holding a child's name, the provider's view, rm.
// One parent, captured twice (running source); every object is removed in `after`.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as path from "node:path";
import { spawn } from "node:child_process";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { isAlive } from "../../engine/qemu/process";
import { pollUntil } from "../../engine/util/poll";
import * as spec from "../../engine/spec";
import type { ApplyResult, PoolChange, PoolInfo } from "../../engine";
import { deadline } from "../helpers/deadline";

const engine = new Engine();
const root = path.join(__dirname, "..", "..");
const test = suite("forkvm pool");

type Run = { code: number | null; stdout: string; stderr: string };
/** The CLI as a user runs it, with this suite's FORKVM_HOME and FORKVM_MEMDIR (from the runner). */
const cli = (args: string[]) =>
  new Promise<Run>((resolve, reject) => {
    const c = spawn(process.execPath, ["-r", "ts-node/register/transpile-only", path.join(root, "cli", "main.ts"), ...args], { cwd: root, env: process.env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "", stderr = "";
    c.stdout.on("data", (d) => (stdout += d));
    c.stderr.on("data", (d) => (stderr += d));
    c.on("error", reject);
    c.on("close", (code) => resolve({ code, stdout, stderr }));
  });
/** `forkvm ... --json`, parsed; fails the test with the CLI's stderr when stdout is not JSON. */
const cliJson = async <T = any>(args: string[]): Promise<Run & { json: T }> => {
  const r = await cli([...args, "--json"]);
  try {
    return { ...r, json: JSON.parse(r.stdout) as T };
  } catch {
    throw new Error(`forkvm ${args.join(" ")} --json (exit ${r.code}) printed no JSON: ${r.stdout}\n${r.stderr}`);
  }
};
const ok = (r: Run, what: string) => assert.is(r.code, 0, `${what}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
const sh = async (vm: string, cmd: string) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs: 30_000 });
  assert.is(r.exitCode, 0, `${vm}: ${cmd}: ${r.stderr}`);
  return r.stdout.toString().trim();
};
const pids = (names: string[]) => names.map((n) => engine.vm(n).pid);
const names = (p: PoolInfo) => p.children.map((c) => c.name);

test.before(deadline(300_000, async () => {
  await buildDefaultImage({});
  const p = await engine.createParent({ name: "p", memoryMiB: 192, accel: "tcg", init: ["echo warm > /tmp/warm"] });
  assert.is(p.status, "running");
  await engine.createTemplate({ name: "t1", parent: "p", source: "running" });
}));

test.after(async () => {
  const pools = engine.listPools().map((p) => p.name);
  const templates = engine.listTemplates().map((t) => t.name);
  await engine.remove(pools).catch((e) => console.error("cleanup (pools):", e));
  await engine.remove(templates, { force: true }).catch((e) => console.error("cleanup (templates):", e));
  await engine.remove(engine.listVms().map((v) => v.name), { force: true }).catch((e) => console.error("cleanup (vms):", e));
});

test("bad pool flags are refused before anything is done, naming the flag and the allowed form", deadline(60_000, async () => {
  const noTemplate = await cli(["pool", "apply", "web", "--size", "2"]);
  assert.is(noTemplate.code, 2, noTemplate.stderr);
  assert.match(noTemplate.stderr, /--template is required for a new pool/);
  const kv = await cli(["pool", "apply", "web", "--template", "t1", "--size", "2", "--metadata", "ROLE"]);
  assert.is(kv.code, 2, kv.stderr);
  assert.match(kv.stderr, /Cannot parse --metadata ROLE: expected KEY=VALUE/);
  const fwd = await cli(["pool", "plan", "web", "--template", "t1", "--size", "2", "--forward", "80:x"]);
  assert.is(fwd.code, 2, fwd.stderr);
  assert.match(fwd.stderr, /Cannot parse --forward 80:x: expected GUEST or GUEST:HOSTBASE/);
  // The range is the engine spec's, not a copy of it.
  const max = (spec.Concurrency.unwrap() as unknown as { maxValue: number }).maxValue;
  const conc = await cli(["pool", "apply", "web", "--template", "t1", "--size", "2", "--concurrency", String(max + 1)]);
  assert.is.not(conc.code, 0);
  assert.match(conc.stderr, `--concurrency must be a whole number from 1 to ${max}`);
  const mu = await cli(["pool", "apply", "web", "--template", "t1", "--size", "2", "--max-unavailable", "0"]);
  assert.is.not(mu.code, 0);
  assert.match(mu.stderr, /--max-unavailable must be a count .* or a percentage/);
  assert.is(engine.findPool("web"), undefined);
  assert.is(engine.listVms().filter((v) => v.role === "child").length, 0);
}));

test("pool apply creates web-1 and web-2 running, with the pool's metadata in each guest", deadline(120_000, async () => {
  const t1 = engine.template("t1");
  const r = await cliJson<ApplyResult>(["pool", "apply", "web", "--template", "t1", "--size", "2", "--metadata", "ROLE=web-{index}"]);
  ok(r, "pool apply");
  assert.equal(r.json.errors, []);
  assert.equal(names(r.json), ["web-1", "web-2"]);
  for (const c of r.json.children) {
    assert.is(c.status, "running", c.name);
    assert.is(c.generation, t1.generation, c.name);
    assert.equal(engine.vm(c.name).pool, { name: "web", index: c.index });
  }
  assert.is(r.json.ready, 2);
  for (const [i, n] of ["web-1", "web-2"].entries()) {
    const md = await sh(n, "cat /etc/forkvm/metadata");
    assert.ok(md.split("\n").includes("FORKVM_POOL='web'"), md);
    assert.is(await sh(n, `. /etc/forkvm/metadata && echo "$ROLE $FORKVM_INDEX"`), `web-${i + 1} ${i + 1}`);
    assert.is(await sh(n, "cat /tmp/warm"), "warm");
  }
  // One namespace: the top-level inspect and ls know the pool too.
  const top = await cliJson<PoolInfo>(["inspect", "web"]);
  ok(top, "inspect web");
  assert.equal(names(top.json), ["web-1", "web-2"]);
  const ls = await cli(["ls"]);
  ok(ls, "ls");
  assert.match(ls.stdout, /│ pool\s+│/);
  assert.match(ls.stdout, /│ web-1\s+│ child\s+│ running\s+│ \d+\s+│ web\s+│ t1/);
  assert.match(ls.stdout, /│ web\s+│ t1\s+│ \S+\s+│ 2\s+│ 2\s+│ web-1 web-2/);
}));

test("resizing to 3 adds web-3 and leaves web-1 and web-2 as they were", deadline(120_000, async () => {
  const before = pids(["web-1", "web-2"]);
  const r = await cliJson<ApplyResult>(["pool", "apply", "web", "--size", "3"]);
  ok(r, "pool apply --size 3");
  assert.equal(names(r.json), ["web-1", "web-2", "web-3"]);
  assert.ok(r.json.children.every((c) => c.status === "running"), JSON.stringify(r.json.children));
  assert.equal(r.json.lines, ["add 1 (web-3)"]);
  assert.equal(pids(["web-1", "web-2"]), before);
  // Flags not given keep the pool's values: the metadata is still the declared one.
  assert.is(await sh("web-3", `. /etc/forkvm/metadata && echo "$ROLE $FORKVM_POOL"`), "web-3 web");
}));

test("a child whose QEMU was killed shows crashed in pool inspect, and the next apply heals it", deadline(120_000, async () => {
  const victim = engine.vm("web-2");
  const others = pids(["web-1", "web-3"]);
  process.kill(victim.pid!, "SIGKILL");
  await pollUntil(() => (isAlive(victim.pid, victim.token) ? undefined : true), { what: "see web-2's QEMU die", deadlineMs: 10_000, intervalMs: 20 });
  const seen = await cliJson<PoolInfo>(["pool", "inspect", "web"]);
  ok(seen, "pool inspect");
  assert.equal(seen.json.children.map((c) => [c.name, c.status]), [["web-1", "running"], ["web-2", "crashed"], ["web-3", "running"]]);
  assert.is(seen.json.ready, 2);
  const r = await cliJson<ApplyResult>(["pool", "apply", "web"]);
  ok(r, "pool apply (heal)");
  assert.equal(r.json.errors, []);
  assert.match(r.json.lines.join("\n"), /heal 1: web-2 crashed/);
  assert.is(r.json.ready, 3);
  const healed = engine.vm("web-2");
  assert.is(healed.status, "running");
  assert.is.not(healed.pid, victim.pid);
  assert.equal(pids(["web-1", "web-3"]), others);
  assert.is(await sh("web-2", `. /etc/forkvm/metadata && echo "$ROLE $FORKVM_POOL"`), "web-2 web");
}));

test("a new template generation rolls the pool over one child at a time", deadline(180_000, async () => {
  const t2 = await engine.createTemplate({ name: "t2", parent: "p", source: "running" });
  assert.is.not(t2.generation, engine.template("t1").generation);
  const before = pids(["web-1", "web-2", "web-3"]);
  const r = await cliJson<ApplyResult>(["pool", "apply", "web", "--template", "t2", "--max-unavailable", "1"]);
  ok(r, "pool apply --template t2");
  assert.equal(r.json.errors, []);
  assert.match(r.json.lines.join("\n"), /roll 3 .* in 3 batches of at most 1/);
  for (const b of [1, 2, 3]) assert.match(r.stderr, `batch ${b}/3`);
  assert.is(r.json.generation, t2.generation);
  assert.is(r.json.ready, 3);
  for (const c of r.json.children) {
    assert.is(c.generation, t2.generation, c.name);
    assert.is(c.template, "t2", c.name);
    assert.is(engine.vm(c.name).template?.generation, t2.generation);
    assert.is(await sh(c.name, `. /etc/forkvm/metadata && echo "$FORKVM_GENERATION $ROLE"`), `${t2.generation} ${c.name}`);
  }
  const after = pids(["web-1", "web-2", "web-3"]);
  assert.ok(after.every((p, i) => p !== before[i]), `pids ${before} → ${after}`);
}));

test("pool plan with a changed size prints the plan and the estimate and changes nothing", deadline(60_000, async () => {
  const before = { pids: pids(["web-1", "web-2", "web-3"]), updatedAt: engine.pool("web").updatedAt };
  const human = await cli(["pool", "plan", "web", "--size", "1"]);
  ok(human, "pool plan");
  assert.match(human.stdout, /pool web \(exists\):\n\s+remove 2 \(web-3, web-2\)/);
  assert.match(human.stdout, /estimate: 1 × 192 MiB children: 192 MiB shared copy-on-write/);
  const r = await cliJson<PoolChange>(["pool", "plan", "web", "--size", "1"]);
  ok(r, "pool plan --json");
  assert.equal(r.json.plan.remove, ["web-3", "web-2"]);
  assert.is(r.json.changes, true);
  assert.is(r.json.exists, true);
  assert.equal(r.json.clashes, []);
  const same = await cliJson<PoolChange>(["pool", "plan", "web"]);
  assert.is(same.json.changes, false, same.json.lines.join("; "));
  assert.is(engine.pool("web").spec.size, 3);
  assert.is(engine.pool("web").updatedAt, before.updatedAt);
  assert.equal(pids(["web-1", "web-2", "web-3"]), before.pids);
}));

test("resizing to 1 removes web-3 and web-2 only", deadline(60_000, async () => {
  const keep = engine.vm("web-1").pid;
  const r = await cliJson<ApplyResult>(["pool", "apply", "web", "--size", "1"]);
  ok(r, "pool apply --size 1");
  assert.equal(names(r.json), ["web-1"]);
  assert.equal(r.json.lines, ["remove 2 (web-3, web-2)"]);
  assert.is(engine.vm("web-1").pid, keep);
  assert.is(engine.findVm("web-2"), undefined);
  assert.is(engine.findVm("web-3"), undefined);
}));

test("a foreign VM holding a child's name is never touched, and the apply says why", deadline(120_000, async () => {
  const f = await engine.fork({ template: "t1", names: ["web-2"] });
  assert.is(f.failed.length, 0, f.failed.map((x) => x.error.message).join("; "));
  const foreign = engine.vm("web-2");
  const plan = await cliJson<PoolChange>(["pool", "plan", "web", "--size", "2"]);
  assert.is(plan.code, 1, "a plan the apply would refuse exits 1");
  assert.equal(plan.json.clashes, [{ name: "web-2", kind: "VM" }]);
  const r = await cliJson<{ error: { code: string; message: string } }>(["pool", "apply", "web", "--size", "2"]);
  assert.is(r.code, 1, r.stdout);
  assert.is(r.json.error.code, "ALREADY_EXISTS");
  assert.match(r.json.error.message, /web-2 is a VM this pool did not create/);
  const human = await cli(["pool", "apply", "web", "--size", "2"]);
  assert.is(human.code, 1);
  assert.match(human.stderr, /^forkvm: Cannot apply pool web: web-2 is a VM this pool did not create/m);
  const now = engine.vm("web-2");
  assert.is(now.status, "running");
  assert.is(now.pid, foreign.pid);
  assert.is(now.pool, undefined);
  assert.is(now.createdAt, foreign.createdAt);
  assert.is(await sh("web-2", "test -e /etc/forkvm/metadata && echo yes || echo no"), "no");
  assert.is(engine.pool("web").spec.size, 1);
  assert.equal(names(engine.pool("web")), ["web-1"]);
}));

test("the CLI reports the same pool as the Pulumi provider's read", deadline(60_000, async () => {
  const provider = require("../../provider/instant-clone-pool") as typeof import("../../provider/instant-clone-pool");
  const fromProvider = await provider.read("web", { home: engine.store.home });
  const fromCli = await cliJson<PoolInfo>(["pool", "inspect", "web"]);
  ok(fromCli, "pool inspect");
  const view = (cs: Array<{ name: string; generation: string; status: string; mac: string; vmId: string }>) => cs.map((c) => ({ name: c.name, generation: c.generation, status: c.status, mac: c.mac, vmId: c.vmId }));
  assert.is(fromProvider.id, "web");
  assert.equal(view(fromProvider.props.children as never), view(fromCli.json.children));
  assert.is(fromProvider.props.generation, fromCli.json.generation);
  assert.is(fromProvider.props.ready, fromCli.json.ready);
}));

test("pool rm removes the pool and its children, leaves the foreign VM alone, and is safe to repeat", deadline(60_000, async () => {
  const foreign = engine.vm("web-2");
  const r = await cliJson<{ name: string; kind: string; removed: string[] }>(["pool", "rm", "web"]);
  ok(r, "pool rm");
  assert.equal(r.json, { name: "web", kind: "pool", removed: ["web-1", "web"] });
  assert.is(engine.findPool("web"), undefined);
  assert.is(engine.findVm("web-1"), undefined);
  assert.is(engine.vm("web-2").status, "running");
  assert.is(engine.vm("web-2").pid, foreign.pid);
  const again = await cliJson<{ removed: string[] }>(["pool", "rm", "web"]);
  ok(again, "pool rm (again)");
  assert.equal(again.json.removed, []);
  assert.is(engine.vm("web-2").pid, foreign.pid);
}));

test("forkvm fork --metadata hands each child its metadata; forkvm rm removes a pool with the children it owns", deadline(90_000, async () => {
  const f = await cliJson<{ children: Array<{ name: string; metadata?: Record<string, string> }>; failed: unknown[] }>(["fork", "t1", "--prefix", "solo", "--metadata", "ROLE=db", "--metadata", "NOTE=it's here"]);
  ok(f, "fork --metadata");
  assert.equal(f.json.children.map((c) => c.name), ["solo-1"]);
  assert.equal(engine.vm("solo-1").metadata, { ROLE: "db", NOTE: "it's here" });
  assert.is(await sh("solo-1", `. /etc/forkvm/metadata && echo "$ROLE/$NOTE"`), "db/it's here");
  ok(await cli(["-q", "pool", "apply", "tiny", "--template", "t1", "--size", "1"]), "pool apply tiny");
  const rm = await cliJson<Array<{ name: string; kind: string; removed: string[] }>>(["rm", "tiny"]);
  ok(rm, "rm tiny");
  assert.equal(rm.json, [{ name: "tiny", kind: "pool", removed: ["tiny-1", "tiny"] }]);
  assert.is(engine.findPool("tiny"), undefined);
  assert.is(engine.findVm("tiny-1"), undefined);
  assert.is(engine.vm("solo-1").status, "running");
}));

test.run();
