// check and diff of the three providers without QEMU: bad inputs give failures that name the
// property, values unknown during preview are not judged, names are generated once and kept,
// and diff says exactly what replaces and what updates in place.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { loadImage } from "../../engine";
import { deadline } from "../helpers/deadline";
import { UNKNOWN } from "../../provider/common";
import * as parent from "../../provider/parent-vm";
import * as template from "../../provider/template";
import * as pool from "../../provider/instant-clone-pool";


function props(failures: Array<{ property: string; reason: string }>): string[] {
  return failures.map((f) => f.property).sort();
}

function reasonFor(failures: Array<{ property: string; reason: string }>, property: string): string {
  const f = failures.find((x) => x.property === property);
  assert.ok(f, `no failure names ${property}: ${JSON.stringify(failures)}`);
  return f!.reason;
}

const SHAPE = { memoryMiB: 256, vcpus: 1, diskMiB: 256, accel: "tcg" };

const parentChecks = suite("ParentVm check");

parentChecks("accepts the issue's example and fills defaults and a name", deadline(10_000, async () => {
  const r = await parent.check({}, { memoryMiB: 256, init: ["echo warm > /tmp/state"], __logicalName: "Web Parent" });
  assert.equal(r.failures, []);
  assert.match(r.inputs.name, /^web-parent-[0-9a-f]{4}$/);
  assert.is(r.inputs.__autoNamed, true);
  assert.equal(r.inputs.shape, { memoryMiB: 256, vcpus: 1, diskMiB: 256, accel: "auto" });
  assert.is(r.inputs.image, "default");
}));

parentChecks("memory below what the image needs names memoryMiB and the minimum", deadline(10_000, async () => {
  const image = await loadImage().catch(() => undefined);
  const r = await parent.check({}, { memoryMiB: 64 });
  if (image) assert.match(reasonFor(r.failures, "memoryMiB"), new RegExp(`at least ${image.minMemoryMiB}: image default needs`));
  else assert.match(reasonFor(r.failures, "image"), /not built: run `forkvm image build`/);
}));

parentChecks("negative numbers, wrong types and unknown fields each name their property", deadline(10_000, async () => {
  const r = await parent.check({}, { memoryMiB: -5, vcpus: "two", init: "echo hi", forwards: [{ guest: 70000 }], colour: "blue", name: "Web_1" });
  assert.equal(props(r.failures), ["colour", "forwards[0].guest", "init", "memoryMiB", "name", "vcpus"]);
  assert.match(reasonFor(r.failures, "memoryMiB"), /at least 32/);
  assert.is(reasonFor(r.failures, "vcpus"), "must be a number, not a string");
  assert.is(reasonFor(r.failures, "init"), "must be an array, not a string");
  assert.match(reasonFor(r.failures, "colour"), /unknown property; known properties are name, image/);
  assert.match(reasonFor(r.failures, "forwards[0].guest"), /at most 65535/);
  assert.match(reasonFor(r.failures, "name"), /lower-case letters/);
}));

parentChecks("a kernel without initrd, and files that do not exist", deadline(10_000, async () => {
  const r = await parent.check({}, { kernel: "/nonexistent/vmlinuz" });
  assert.match(reasonFor(r.failures, "initrd"), /go together/);
  assert.match(reasonFor(r.failures, "kernel"), /does not exist/);
}));

parentChecks("a generated name is kept from one run to the next, and renewed when the parent is replaced", deadline(10_000, async () => {
  const first = await parent.check({}, { __logicalName: "web" });
  const again = await parent.check(first.inputs, { __logicalName: "web" });
  assert.is(again.inputs.name, first.inputs.name);
  const bigger = await parent.check(first.inputs, { __logicalName: "web", memoryMiB: 512 });
  assert.is.not(bigger.inputs.name, first.inputs.name);
  const pinned = await parent.check(first.inputs, { name: "web", __logicalName: "web" });
  assert.is(pinned.inputs.name, "web");
  assert.is(pinned.inputs.__autoNamed, undefined);
}));

parentChecks.run();

const diffs = suite("diff");

diffs("ParentVm: a changed init replaces; a pinned name is deleted before it is replaced", deadline(10_000, async () => {
  const olds = { name: "web-1a2b", __autoNamed: true, init: ["a"], memoryMiB: 256, bootTimeoutS: 300 };
  const d = await parent.diff("web-1a2b", olds, { ...olds, init: ["b"] });
  assert.equal(d.replaces, ["init"]);
  assert.is(d.deleteBeforeReplace, false);
  const pinned = await parent.diff("web", { ...olds, name: "web", __autoNamed: undefined }, { ...olds, name: "web", __autoNamed: undefined, init: ["b"] });
  assert.is(pinned.deleteBeforeReplace, true);
  const timeout = await parent.diff("web-1a2b", olds, { ...olds, bootTimeoutS: 60 });
  assert.equal(timeout.replaces, []);
  assert.is(timeout.changes, true);
}));

diffs("Template: every input replaces; a generated name creates the new one first", deadline(10_000, async () => {
  const olds = { name: "t-1a2b", __autoNamed: true, parent: "p", source: "frozen", downtimeLimitMs: 30 };
  const d = await template.diff("t-1a2b", olds, { ...olds, parent: "q" });
  assert.equal(d, { changes: true, replaces: ["parent"], deleteBeforeReplace: false });
  const same = await template.diff("t-1a2b", olds, { ...olds, __urn: "urn:other" });
  assert.is(same.changes, false, "hidden inputs never cause a change");
}));

diffs("InstantClonePool: size, template and metadata update in place; only namePrefix replaces", deadline(10_000, async () => {
  const olds = { namePrefix: "p-1a2b", template: "t", size: 3, persistent: false, metadata: {}, forwards: [], updatePolicy: { maxUnavailable: 1 }, concurrency: 4, readyTimeoutS: 60 };
  const d = await pool.diff("p-1a2b", olds, { ...olds, size: 5, template: "t2", metadata: { A: "b" } });
  assert.equal(d, { changes: true, replaces: [], deleteBeforeReplace: false });
  const r = await pool.diff("p-1a2b", olds, { ...olds, namePrefix: "web" });
  assert.equal(r.replaces, ["namePrefix"]);
}));

diffs.run();

const poolChecks = suite("InstantClonePool check");
const base = { template: "t", size: 3, __shape: SHAPE, __logicalName: "web-pool" };

poolChecks("a valid pool gets a name prefix, an estimate from the template's shape and a plan", deadline(10_000, async () => {
  const r = await pool.check({}, base);
  assert.equal(r.failures, []);
  assert.match(r.inputs.name, /^web-pool-[0-9a-f]{4}$/);
  assert.is(r.inputs.estimate.basis, "model");
  assert.is(r.inputs.estimate.memory.sharedMiB, 256);
  assert.equal(r.inputs.plan, [`add 3 (${[1, 2, 3].map((i) => `${r.inputs.name}-${i}`).join(", ")})`, "template t is created in this deployment"]);
}));

poolChecks("negative size, a string size, a fractional size each name size", deadline(10_000, async () => {
  for (const [size, reason] of [[-1, /at least 0/], ["3", /must be a number, not a string/], [2.5, /integer/]] as const) {
    const r = await pool.check({}, { ...base, size });
    assert.equal(props(r.failures), ["size"], `size ${size}`);
    assert.match(reasonFor(r.failures, "size"), reason);
  }
}));

poolChecks("bad metadata keys, reserved keys and unknown placeholders name the key", deadline(10_000, async () => {
  const r = await pool.check({}, { ...base, metadata: { "bad-key": "x" } });
  assert.equal(props(r.failures), ["metadata.bad-key"]);
  const r2 = await pool.check({}, { ...base, metadata: { FORKVM_POOL: "x", OWNER: "{owner}" } });
  assert.equal(props(r2.failures), ["metadata.FORKVM_POOL", "metadata.OWNER"]);
  assert.match(reasonFor(r2.failures, "metadata.OWNER"), /unknown placeholder \{owner\}; use \{name\}, \{index\}/);
}));

poolChecks("update policy, forwards and name prefix are checked against the size", deadline(10_000, async () => {
  const r = await pool.check({}, { ...base, size: 10, updatePolicy: { maxUnavailable: "half" }, forwards: [{ guest: 80, hostBase: 65530 }, { guest: 80 }], namePrefix: "x".repeat(61) });
  assert.equal(props(r.failures), ["forwards[0].hostBase", "forwards[1].guest", "namePrefix", "updatePolicy.maxUnavailable"], "every problem at once");
  const r2 = await pool.check({}, { ...base, size: 10, forwards: [{ guest: 80, hostBase: 65530 }, { guest: 80 }], namePrefix: "x".repeat(61) });
  assert.equal(props(r2.failures), ["forwards[0].hostBase", "forwards[1].guest", "namePrefix"]);
  assert.match(reasonFor(r2.failures, "forwards[0].hostBase"), /at most 65526/);
}));

poolChecks("values unknown during preview are not judged, and the plan says so", deadline(10_000, async () => {
  const r = await pool.check({}, { ...base, template: UNKNOWN });
  assert.equal(r.failures, []);
  assert.is(r.inputs.template, UNKNOWN);
  assert.is(r.inputs.estimate.memory.sharedMiB, 256, "the shape hint still gives an estimate");
  assert.equal(r.inputs.plan, ["fork 3 children from a template known after deploy"]);
  const r2 = await pool.check({}, { ...base, size: UNKNOWN, __shape: undefined });
  assert.equal(r2.failures, []);
  assert.is(r2.inputs.estimate.basis, "unknown");
}));

poolChecks("Template check: a missing parent and an unknown field name their property", deadline(10_000, async () => {
  const r = await template.check({}, { source: "warm", speed: 1 });
  assert.equal(props(r.failures), ["parent", "source", "speed"]);
  assert.is(reasonFor(r.failures, "parent"), "required: must be a string");
  const ok = await template.check({}, { parent: UNKNOWN, __shape: SHAPE, __logicalName: "web-t" });
  assert.equal(ok.failures, []);
  assert.equal(ok.inputs.shape, SHAPE);
}));

poolChecks.run();
