// The whole lifecycle through Pulumi's own dynamic-provider host, as the CLI drives it:
// Check → Create parent, template, pool of 3 → Diff/Update to 5 → a child's QEMU killed → Read
// shows it → Update heals → a new template → rolling update in batches → Delete everything.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { LogSink, ProviderHost, HostError } from "../../deploy/provider-host";
import { instantClonePoolProvider, parentVmProvider, templateProvider } from "../../provider/serialisable";
import { engine, ensureBuilt, qemuOfThisSuite, removeAll, ROOT, secs, serialised, urnOf } from "./harness";

type Props = Record<string, any>;
const test = suite("lifecycle through the dynamic-provider host");
const timings: Record<string, number> = {};
const URN = { parent: urnOf("ParentVm", "web"), t1: urnOf("Template", "web-t"), t2: urnOf("Template", "web-t2"), pool: urnOf("InstantClonePool", "web-pool") };

let sink: LogSink;
let host: ProviderHost;
const prov: Record<string, string> = {};
/** Per resource: the program's inputs (news), the checked inputs, the id and the outputs. */
const state: Record<string, { id: string; news: Props; inputs: Props; outs: Props }> = {};

async function checkOk(urn: string, olds: Props, news: Props): Promise<Props> {
  const r = await host.check(urn, olds, news);
  assert.equal(r.failures, [], `check of ${urn} failed: ${JSON.stringify(r.failures)}`);
  return r.inputs;
}

test.before(async () => {
  ensureBuilt();
  prov.parent = await serialised(parentVmProvider);
  prov.template = await serialised(templateProvider);
  prov.pool = await serialised(instantClonePoolProvider);
  sink = await LogSink.start();
  host = await ProviderHost.start({ cwd: ROOT, project: "forkvm", engineAddress: sink.address });
});

test.after(async () => {
  await host?.stop();
  await sink?.stop();
  await removeAll();
  console.log(`\nlifecycle timings (s): ${JSON.stringify(timings)}`);
});

test("the serialised providers hold no copy of the engine, only a load by package name", () => {
  for (const text of Object.values(prov)) {
    assert.ok(text.length < 4000, `provider text is ${text.length} bytes`);
    assert.match(text, /forkvm\/provider\//);
    for (const leak of ["createParent", "forkChildren", "qemu", "zod", "class Engine"]) assert.not.ok(text.includes(leak), `provider text contains ${leak}`);
  }
});

test("bad inputs come back from the host as check failures naming the property", deadline(20_000, async () => {
  const parent = await host.check(URN.parent, {}, { memoryMiB: 64, vcpus: "2", colour: "blue", __provider: prov.parent });
  assert.equal(parent.failures.map((f) => f.property).sort(), ["colour", "vcpus"]);
  const small = await host.check(URN.parent, {}, { memoryMiB: 64, __provider: prov.parent });
  assert.match(small.failures.map((f) => `${f.property}: ${f.reason}`).join(), /memoryMiB: must be at least \d+: image default needs/);
  const pool = await host.check(URN.pool, {}, { template: "t", size: -1, updatePolicy: { maxUnavailable: 0 }, __provider: prov.pool });
  assert.equal(pool.failures.map((f) => f.property).sort(), ["size", "updatePolicy.maxUnavailable"]);
}));

test("Check then Create boot a parent with its init commands", deadline(120_000, async () => {
  const news = { memoryMiB: 192, init: ["echo warm > /tmp/state"], __logicalName: "web", __urn: URN.parent, __provider: prov.parent };
  const inputs = await checkOk(URN.parent, {}, news);
  assert.match(inputs.name, /^web-[0-9a-f]{4}$/);
  assert.equal(inputs.shape.memoryMiB, 192);
  const t0 = Date.now();
  const { id, outs } = await host.create(URN.parent, inputs);
  timings.createParent = secs(t0);
  assert.is(id, inputs.name);
  assert.is(outs.status, "running");
  assert.ok(outs.pid > 0);
  assert.is(outs.__provider, prov.parent, "the host keeps the provider in the outputs");
  state.parent = { id, news, inputs, outs };
}));

test("Create captures a running-source template; the parent keeps running", deadline(60_000, async () => {
  const news = { parent: state.parent.id, source: "running", __logicalName: "web-t", __urn: URN.t1, __provider: prov.template };
  const inputs = await checkOk(URN.t1, {}, news);
  assert.equal(inputs.shape.memoryMiB, 192, "the shape comes from the live parent");
  const t0 = Date.now();
  const { id, outs } = await host.create(URN.t1, inputs);
  timings.createTemplate = secs(t0);
  assert.is(outs.status, "ready");
  assert.match(outs.generation, /^g/);
  assert.is(engine().vm(state.parent.id).status, "running");
  state.t1 = { id, news, inputs, outs };
}));

test("Check of a pool of 3 gives a cost estimate and a plan; Create forks 3 running children", deadline(90_000, async () => {
  const news = {
    template: state.t1.id, size: 3, metadata: { ROLE: "web", SLOT: "{name}#{index}" }, updatePolicy: { maxUnavailable: 2 },
    __logicalName: "web-pool", __urn: URN.pool, __provider: prov.pool,
  };
  const inputs = await checkOk(URN.pool, {}, news);
  assert.is(inputs.estimate.children, 3);
  assert.is(inputs.estimate.memory.sharedMiB, 192);
  assert.ok(inputs.estimate.memory.privatePerChildMiB > 0);
  assert.match(inputs.estimate.summary, /3 × 192 MiB children/);
  assert.equal(inputs.plan, ["add 3 (" + [1, 2, 3].map((i) => `${inputs.name}-${i}`).join(", ") + ")"]);
  const t0 = Date.now();
  const { id, outs } = await host.create(URN.pool, inputs);
  timings.createPoolOf3 = secs(t0);
  assert.is(id, inputs.name);
  assert.is(outs.children.length, 3);
  assert.ok(outs.children.every((c: Props) => c.status === "running" && c.generation === state.t1.outs.generation));
  assert.is(outs.ready, 3);
  const meta = await engine().exec(`${id}-2`, ["cat", "/etc/forkvm/metadata"]);
  assert.match(meta.stdout.toString(), new RegExp(`SLOT='${id}-2#2'`));
  assert.match(meta.stdout.toString(), /FORKVM_INDEX='2'/);
  state.pool = { id, news, inputs, outs };
}));

test("size 3 → 5: Diff reports an in-place update, Update adds 2 and leaves the 3 untouched", deadline(60_000, async () => {
  const news = { ...state.pool.news, size: 5 };
  const inputs = await checkOk(URN.pool, state.pool.inputs, news);
  assert.equal(inputs.plan, [`add 2 (${state.pool.id}-4, ${state.pool.id}-5)`]);
  const d = await host.diff(URN.pool, state.pool.id, state.pool.outs, inputs);
  assert.equal(d, { changes: "some", replaces: [], deleteBeforeReplace: false });
  const t0 = Date.now();
  const outs = await host.update(URN.pool, state.pool.id, state.pool.outs, inputs);
  timings.resize3to5 = secs(t0);
  assert.is(outs.children.length, 5);
  assert.is(outs.ready, 5);
  const before = Object.fromEntries(state.pool.outs.children.map((c: Props) => [c.name, c.vmId]));
  for (const c of outs.children.slice(0, 3)) assert.is(c.vmId, before[c.name], `${c.name} was not touched`);
  state.pool = { id: state.pool.id, news, inputs, outs };
}));

test("a child whose QEMU is killed: Read shows it crashed, Diff wants an update, Update heals it in place", deadline(60_000, async () => {
  const victim = state.pool.outs.children[1];
  process.kill(victim.pid, "SIGKILL");
  await new Promise((r) => setTimeout(r, 300));
  const read = await host.read(URN.pool, state.pool.id, state.pool.outs);
  const seen = read.props.children.find((c: Props) => c.name === victim.name);
  assert.is(seen.status, "crashed");
  assert.is(read.props.ready, 4);
  const news = state.pool.news;
  const inputs = await checkOk(URN.pool, state.pool.inputs, news);
  assert.match(inputs.plan.join(), new RegExp(`heal 1: ${victim.name} crashed → start`));
  const d = await host.diff(URN.pool, state.pool.id, read.props, inputs);
  assert.is(d.changes, "some");
  const t0 = Date.now();
  const outs = await host.update(URN.pool, state.pool.id, read.props, inputs);
  timings.heal1 = secs(t0);
  const healed = outs.children.find((c: Props) => c.name === victim.name);
  assert.is(healed.status, "running");
  assert.is(healed.mac, victim.mac, "healed in place: same MAC");
  assert.is.not(healed.pid, victim.pid);
  assert.is(outs.ready, 5);
  const meta = await engine().exec(victim.name, ["cat", "/etc/forkvm/metadata"]);
  assert.match(meta.stdout.toString(), /ROLE='web'/, "the healed child got its metadata again");
  state.pool = { id: state.pool.id, news, inputs, outs };
}));

test("a second template of the same running parent is a new generation", deadline(60_000, async () => {
  const news = { parent: state.parent.id, source: "running", __logicalName: "web-t2", __urn: URN.t2, __provider: prov.template };
  const inputs = await checkOk(URN.t2, {}, news);
  const t0 = Date.now();
  const { id, outs } = await host.create(URN.t2, inputs);
  timings.createTemplate2 = secs(t0);
  assert.is.not(outs.generation, state.t1.outs.generation);
  state.t2 = { id, news, inputs, outs };
}));

test("template t1 → t2: a rolling update in batches of 2, never more than 2 children down", deadline(120_000, async () => {
  const news = { ...state.pool.news, template: state.t2.id };
  const inputs = await checkOk(URN.pool, state.pool.inputs, news);
  assert.match(inputs.plan.join(), /roll 5 \(template .* → .*\) in 3 batches of at most 2/);
  const d = await host.diff(URN.pool, state.pool.id, state.pool.outs, inputs);
  assert.equal(d, { changes: "some", replaces: [], deleteBeforeReplace: false });
  // Watch the fleet while it rolls: how many children run at the worst moment.
  let minRunning = Infinity;
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      const running = engine().listVms().filter((v) => v.name.startsWith(`${state.pool.id}-`) && v.status === "running").length;
      minRunning = Math.min(minRunning, running);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const t0 = Date.now();
  const logsBefore = sink.entries.length;
  const outs = await host.update(URN.pool, state.pool.id, state.pool.outs, inputs);
  timings.rollingUpdate5 = secs(t0);
  watching = false;
  await watcher;
  assert.ok(minRunning >= 3, `at worst ${minRunning} of 5 children were running`);
  assert.ok(outs.children.every((c: Props) => c.generation === state.t2.outs.generation && c.status === "running"));
  assert.is(outs.generation, state.t2.outs.generation);
  assert.is(outs.ready, 5);
  const names = outs.children.map((c: Props) => c.name);
  assert.equal(names, state.pool.outs.children.map((c: Props) => c.name), "same names after the roll");
  const logs = sink.entries.slice(logsBefore);
  assert.ok(logs.some((e) => e.ephemeral && e.urn === URN.pool && /roll: batch 1\/3/.test(e.message)), "progress reached the engine's Log on the pool's URN");
  assert.ok(logs.some((e) => !e.ephemeral && /5\/5 children ready/.test(e.message)));
  console.log(`\nwhat the user sees on the pool's row:\n${logs.map((e) => `  ${e.ephemeral ? "(status)" : e.severity}: ${e.message}`).join("\n")}`);
  state.pool = { id: state.pool.id, news, inputs, outs };
}));

test("the old template goes once no child uses it; a template with a child the program does not manage is refused", deadline(60_000, async () => {
  await host.delete(URN.t1, state.t1.id, state.t1.outs);
  assert.not.ok(engine().listTemplates().some((t) => t.name === state.t1.id));
  const stray = await engine().fork({ template: state.t2.id, names: ["stray-1"] });
  assert.is(stray.children.length, 1);
  try {
    const refused = await host.delete(URN.t2, state.t2.id, state.t2.outs).then(() => undefined, (err) => err);
    assert.instance(refused, HostError, "delete should be refused");
    assert.match(refused.message, new RegExp(`Cannot delete template ${state.t2.id}: 6 children still use it: stray-1 \\(in no pool\\); .* \\(pool ${state.pool.id}\\)`));
    assert.match(refused.message, /forkvm rm stray-1/);
    assert.ok(engine().listTemplates().some((t) => t.name === state.t2.id), "the template is still there");
  } finally {
    await engine().remove(["stray-1"], { force: true });
  }
}));

test("Delete removes pool, template and parent; deleting again is fine; no QEMU is left", deadline(60_000, async () => {
  const t0 = Date.now();
  await host.delete(URN.pool, state.pool.id, state.pool.outs);
  timings.deletePool5 = secs(t0);
  await host.delete(URN.t2, state.t2.id, state.t2.outs);
  await host.delete(URN.parent, state.parent.id, state.parent.outs);
  timings.deleteAll = secs(t0);
  await host.delete(URN.pool, state.pool.id, state.pool.outs);
  await host.delete(URN.t2, state.t2.id, state.t2.outs);
  await host.delete(URN.parent, state.parent.id, state.parent.outs);
  assert.equal(engine().listVms(), []);
  assert.equal(engine().listTemplates(), []);
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
