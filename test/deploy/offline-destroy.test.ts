// The offline deployment (no Pulumi CLI) on real QEMU: a program that gains a second Template later
// (the pool moves to it) records each resource's dependencies, and destroy deletes dependents first:
// the pool, the template added later, the first template, the parent. One parent boot, TCG.
import * as fs from "node:fs";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { engine, ensureBuilt, qemuOfThisSuite, removeAll } from "../provider/harness";
import { stateFileOf } from "../../deploy/offline";
import { makeProject, up } from "./harness";

const test = suite("offline deployment (no Pulumi CLI) on QEMU");
const PROGRAM = `
import * as pulumi from "@pulumi/pulumi";
import { InstantClonePool, ParentVm, Template } from "forkvm";

const stage = new pulumi.Config().getNumber("stage") ?? 1;
const parent = new ParentVm("web", { memoryMiB: 128, accel: "tcg", init: ["echo warm > /tmp/state"] });
const first = new Template("web-t", { parent, source: "running" });
// Stage 2 adds a second template of the same parent, and the pool moves to it.
const template = stage >= 2 ? new Template("web-t2", { parent, source: "running" }) : first;
const pool = new InstantClonePool("pool", { template: template.id, size: 1, persistent: false });
export const children = pool.children.apply((cs) => cs.map((c) => c.name));
`;
let dir = "";
const urn = (kind: string, name: string) => `urn:pulumi:dev::later::pulumi-nodejs:dynamic/forkvm:${kind}::${name}`;

test.before(() => {
  ensureBuilt();
  dir = makeProject("later", PROGRAM);
});

test.after(async () => {
  if (dir) await up(["--offline", "--destroy", dir], { timeoutMs: 120_000 }).catch(() => undefined);
  await removeAll();
});

test("a second Template added later is deleted after the pool that uses it and before the parent", deadline(420_000, async () => {
  const first = await up(["--offline", dir], { timeoutMs: 240_000 });
  assert.is(first.code, 0, first.out + first.err);
  assert.match(first.out, /^Resources: 3 create;/m, first.out);

  fs.writeFileSync(path.join(dir, "Pulumi.dev.yaml"), `config:\n  later:stage: "2"\n`);
  const second = await up(["--offline", dir], { timeoutMs: 240_000 });
  assert.is(second.code, 0, second.out + second.err);
  assert.match(second.out, /^ \+ {2}forkvm:Template web-t2 create done/m, second.out);
  assert.match(second.out, /^Resources: .*2 same;/m, second.out);
  const file = stateFileOf("later", "dev");
  const state = JSON.parse(fs.readFileSync(file, "utf8"));
  const deps = Object.fromEntries(state.resources.map((r: { name: string; dependencies: string[] }) => [r.name, r.dependencies]));
  assert.equal(deps, { web: [], "web-t": [urn("ParentVm", "web")], pool: [urn("Template", "web-t2")], "web-t2": [urn("ParentVm", "web")] });
  assert.is(engine().listTemplates().length, 2);
  // An in-place update of the pool leaves it before web-t2 in the state, the order in which the old
  // deployer deleted web-t2 first (and failed: it has the pool's children). The provider may
  // replace the pool instead (then it comes last): put the state in that order either way.
  const names = state.resources.map((r: { name: string }) => r.name);
  console.log(`  the pool was ${/ ~ {2}forkvm:InstantClonePool pool update/.test(second.out) ? "updated in place" : "replaced"}; state order ${names.join(", ")}`);
  const order = ["web", "web-t", "pool", "web-t2"];
  state.resources.sort((a: { name: string }, b: { name: string }) => order.indexOf(a.name) - order.indexOf(b.name));
  fs.writeFileSync(file, JSON.stringify(state, null, 2));

  const down = await up(["--offline", "--destroy", dir], { timeoutMs: 120_000 });
  assert.is(down.code, 0, down.out + down.err);
  const deleted = [...down.out.matchAll(/^ -  (\S+ \S+) delete done/gm)].map((m) => m[1]);
  assert.equal(deleted, ["forkvm:InstantClonePool pool", "forkvm:Template web-t2", "forkvm:Template web-t", "forkvm:ParentVm web"]);
  assert.match(down.out, /^Resources: 4 delete;/m);
  assert.equal(JSON.parse(fs.readFileSync(stateFileOf("later", "dev"), "utf8")).resources, []);
  assert.equal(engine().listVms(), []);
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
