// The provider methods called directly against the real engine (one parent boot): a crashed
// parent healed in place, a frozen template consuming its parent, a persistent pool whose
// children serve their own metadata through per-child host ports, scale down, metadata rewritten
// in place, a child removed behind the program's back, a broken template and a partial failure.
import * as fs from "node:fs";
import * as http from "node:http";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { PartialFailure } from "../../provider/common";
import * as parent from "../../provider/parent-vm";
import * as template from "../../provider/template";
import * as pool from "../../provider/instant-clone-pool";
import { engine, qemuOfThisSuite, removeAll, secs } from "./harness";

type Props = Record<string, any>;
const test = suite("providers on the real engine");
const timings: Record<string, number> = {};
const s: Record<string, { id: string; news: Props; inputs: Props; outs: Props }> = {};
const HOST_BASE = 20000 + (process.pid % 2000) * 10;

function get(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: "127.0.0.1", port, path, timeout: 5000 }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve(body));
    });
    req.on("error", reject);
    req.on("timeout", () => req.destroy(new Error(`GET :${port}${path} timed out`)));
  });
}

async function checked<T extends { check: Function }>(p: T, olds: Props, news: Props): Promise<Props> {
  const r = await (p.check as (o: Props, n: Props) => Promise<{ inputs: Props; failures: unknown[] }>)(olds, news);
  assert.equal(r.failures, [], JSON.stringify(r.failures));
  return r.inputs;
}

test.after(async () => {
  await removeAll();
  console.log(`\nprovider timings (s): ${JSON.stringify(timings)}`);
});

test("a parent serving HTTP boots; when its QEMU dies, diff wants an update and update restarts it and re-runs init", deadline(150_000, async () => {
  const news = {
    memoryMiB: 160,
    init: ["mkdir -p /www && echo warm > /www/index.html && ln -sf /etc/forkvm/metadata /www/metadata && httpd -p 80 -h /www"],
    __logicalName: "web",
  };
  const inputs = await checked(parent, {}, news);
  let t0 = Date.now();
  const { id, outs } = await parent.create(inputs);
  timings.createParent = secs(t0);
  assert.is(outs.status, "running");
  process.kill(outs.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 300));
  assert.is((await parent.read(id, outs)).props.status, "crashed");
  const d = await parent.diff(id, outs, inputs);
  assert.equal(d, { changes: true, replaces: [], deleteBeforeReplace: false });
  t0 = Date.now();
  const healed = (await parent.update(id, outs, inputs)).outs;
  timings.healParent = secs(t0);
  assert.is(healed.status, "running");
  const r = await engine().exec(id, ["cat", "/www/index.html"]);
  assert.is(r.stdout.toString().trim(), "warm", "init ran again");
  s.parent = { id, news, inputs, outs: healed };
}));

test("a frozen template consumes the parent: read shows it consumed, diff sees nothing to do, a second capture is refused by check", deadline(60_000, async () => {
  const inputs = await checked(template, {}, { parent: s.parent.id, source: "frozen", __logicalName: "web-t" });
  const t0 = Date.now();
  const { id, outs } = await template.create(inputs);
  timings.createFrozenTemplate = secs(t0);
  assert.is(outs.status, "ready");
  assert.equal(outs.shape.memoryMiB, 160);
  const p = await parent.read(s.parent.id, s.parent.outs);
  assert.is(p.props.status, "consumed");
  assert.equal(p.props.templates, [id]);
  assert.is((await parent.diff(s.parent.id, p.props, s.parent.inputs)).changes, false);
  const again = await template.check({}, { parent: s.parent.id, source: "frozen", __logicalName: "web-t2" });
  assert.match(again.failures.map((f) => `${f.property}: ${f.reason}`).join(), /parent: VM .* was consumed by template/);
  s.t = { id, news: {}, inputs, outs };
}));

test("a persistent pool with hostBase forwards: child n gets host port hostBase+n-1 and its own metadata", deadline(90_000, async () => {
  const news = {
    template: s.t.id, size: 3, persistent: true, forwards: [{ guest: 80, hostBase: HOST_BASE }],
    metadata: { GREETING: "hello from {hostname}" }, __logicalName: "web-pool",
  };
  const inputs = await checked(pool, {}, news);
  assert.is(inputs.estimate.disk.location, "state-dir");
  const t0 = Date.now();
  const { id, outs } = await pool.create(inputs);
  timings.createPersistentPoolOf3 = secs(t0);
  s.pool = { id, news, inputs, outs };
  assert.equal(outs.children.map((c: Props) => c.forwards[0].host), [HOST_BASE, HOST_BASE + 1, HOST_BASE + 2]);
  for (const c of outs.children) {
    assert.is(c.persistent, true);
    const meta = (await engine().exec(c.name, ["cat", "/etc/forkvm/metadata"])).stdout.toString();
    assert.match(meta, new RegExp(`GREETING='hello from ${c.name}'`));
    assert.match(meta, new RegExp(`FORKVM_NAME='${c.name}'`));
  }
}));

test("each child answers on its own host port with its own metadata, served by the httpd it inherited from the parent", deadline(30_000, async () => {
  for (const c of s.pool.outs.children) {
    const ip = (await engine().exec(c.name, ["sh", "-c", "ip -4 -o addr show dev eth0"])).stdout.toString();
    assert.match(ip, /inet 10\.0\.2\.15\//, `${c.name} must keep the guest address QEMU's port forwards point at (10.0.2.15); it has: ${ip.trim()}`);
    assert.is((await get(c.forwards[0].host, "/")).trim(), "warm");
    assert.match(await get(c.forwards[0].host, "/metadata"), new RegExp(`FORKVM_NAME='${c.name}'`));
  }
}));

test("size 3 → 1 removes the highest children; a metadata change is written in place", deadline(60_000, async () => {
  const news = { ...s.pool.news, size: 1, metadata: { GREETING: "bonjour from {hostname}" } };
  const inputs = await checked(pool, s.pool.inputs, news);
  assert.equal(inputs.plan, [`remove 2 (${s.pool.id}-3, ${s.pool.id}-2)`, "rewrite /etc/forkvm/metadata in 1 running child"]);
  const { outs } = await pool.update(s.pool.id, s.pool.outs, inputs);
  assert.equal(outs.children.map((c: Props) => c.name), [`${s.pool.id}-1`]);
  assert.is(outs.children[0].vmId, s.pool.outs.children[0].vmId, "kept, not re-forked");
  assert.match((await engine().exec(`${s.pool.id}-1`, ["cat", "/etc/forkvm/metadata.json"])).stdout.toString(), /"GREETING": "bonjour from/);
  assert.equal(engine().listVms().filter((v) => v.role === "child").map((v) => v.name), [`${s.pool.id}-1`]);
  s.pool = { id: s.pool.id, news, inputs, outs };
}));

test("a persistent child that crashed restarts from its own disk; one removed behind the program's back shows missing and is re-forked", deadline(120_000, async () => {
  const grow = { ...s.pool.news, size: 2 };
  let inputs = await checked(pool, s.pool.inputs, grow);
  let outs = (await pool.update(s.pool.id, s.pool.outs, inputs)).outs;
  const [one, two] = outs.children;
  await engine().exec(one.name, ["sh", "-c", "echo kept > /data/proof && sync"]);
  process.kill(one.pid!, "SIGKILL");
  await engine().remove([two.name], { force: true });
  const read = (await pool.read(s.pool.id, outs)).props;
  assert.equal(read.children.map((c: Props) => [c.name, c.status]), [[one.name, "crashed"], [two.name, "missing"]]);
  inputs = await checked(pool, inputs, grow);
  assert.match(inputs.plan.join(), /heal 1: .*-1 crashed → start/);
  assert.match(inputs.plan.join(), /add 1 \(.*-2\)/);
  const t0 = Date.now();
  outs = (await pool.update(s.pool.id, read, inputs)).outs;
  timings.healPersistentChildColdBoot = secs(t0);
  assert.equal(outs.children.map((c: Props) => c.status), ["running", "running"]);
  const proof = await engine().exec(one.name, ["cat", "/data/proof"]);
  assert.is(proof.stdout.toString().trim(), "kept", "the persistent child kept its disk");
  s.pool = { id: s.pool.id, news: grow, inputs, outs };
}));

test("a template whose checkpoint is damaged reads as broken; an update that would fork from it is refused before it changes anything", deadline(60_000, async () => {
  const t = engine().template(s.t.id);
  fs.chmodSync(t.statePath, 0o644);
  fs.appendFileSync(t.statePath, "x");
  const read = await template.read(s.t.id, s.t.outs);
  assert.is(read.props.status, "broken");
  assert.match(read.props.problems.join(), /does not match its checksum/);
  const news = { ...s.pool.news, size: 3 };
  const inputs = await checked(pool, s.pool.inputs, news);
  const err = await pool.update(s.pool.id, s.pool.outs, inputs).then(() => undefined, (e) => e);
  assert.ok(err, "the update must fail");
  assert.not.instance(err, PartialFailure);
  assert.match(err.message, new RegExp(`Cannot apply pool ${s.pool.id}: template ${s.t.id} is not whole: .*does not match its checksum`));
  const after = (await pool.read(s.pool.id, s.pool.outs)).props;
  assert.equal(after.children.map((c: Props) => [c.name, c.status]), s.pool.outs.children.map((c: Props) => [c.name, "running"]), "the pool's children are untouched");
}));

test("deletes are idempotent and leave no QEMU", deadline(60_000, async () => {
  await pool.remove(s.pool.id, s.pool.outs);
  await pool.remove(s.pool.id, s.pool.outs);
  await template.remove(s.t.id, s.t.outs);
  await template.remove(s.t.id, s.t.outs);
  await parent.remove(s.parent.id, s.parent.outs);
  await parent.remove(s.parent.id, s.parent.outs);
  assert.equal(engine().listVms(), []);
  assert.equal(engine().listTemplates(), []);
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
