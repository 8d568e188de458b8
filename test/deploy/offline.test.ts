// The offline deployment (no Pulumi CLI) refuses what it cannot model, before deploying anything:
// other resources, resource options it does not honour, imports, reads, invokes; an unreadable or
// newer state file; a second run of the same stack. Its deletion order and state format, alone.
// No QEMU: every refusal comes before a VM would be created.
import * as fs from "node:fs";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { qemuOfThisSuite } from "../provider/harness";
import { deletionOrder, displayValue, loadState, providerValue, refusalOf, STATE_VERSION, stateFileOf, type RegistrationView } from "../../deploy/offline";
import { makeProject, tempDir, up } from "./harness";

const test = suite("offline deployment (no Pulumi CLI)");
const OFFLINE = "offline deployment (no Pulumi CLI)";
const T = (kind: string) => `pulumi-nodejs:dynamic/forkvm:${kind}`;
const urn = (kind: string, name: string) => `urn:pulumi:dev::p::${T(kind)}::${name}`;

function view(over: Partial<RegistrationView> = {}): RegistrationView {
  return {
    type: T("ParentVm"), name: "web", custom: true, remote: false, root: false, importId: "", provider: "", providers: 0, protect: false,
    retainOnDelete: false, ignoreChanges: [], replaceOnChanges: [], aliases: 0, customTimeouts: [], deleteBeforeReplace: false, deletedWith: "",
    replaceWith: [], replacementTrigger: false, hooks: false, additionalSecretOutputs: [], hideDiffs: [], transforms: 0, version: "", pluginDownloadUrl: "",
    ...over,
  };
}

test("forkvm's resources with inputs, dependsOn and parent only are deployable; anything else is refused by name", () => {
  assert.is(refusalOf(view()), undefined);
  assert.is(refusalOf(view({ type: "pulumi:pulumi:Stack", custom: false, root: true })), undefined);
  assert.is(refusalOf(view({ type: "aws:s3/bucket:Bucket", name: "logs" })), "aws:s3/bucket:Bucket logs: a resource of another provider, not one of forkvm's (ParentVm, Template, InstantClonePool), the only ones it deploys; use the Pulumi CLI for this program");
  assert.match(refusalOf(view({ type: "acme:index:Group", custom: false }))!, /^acme:index:Group web: a component resource, not one of forkvm's/);
  assert.is(refusalOf(view({ protect: true })), "forkvm:ParentVm web: it does not honour the resource option protect; remove it or use the Pulumi CLI");
  assert.is(
    refusalOf(view({ importId: "web-1", retainOnDelete: true, ignoreChanges: ["init"], customTimeouts: ["create"], deleteBeforeReplace: true, aliases: 1, replaceOnChanges: ["memoryMiB"], provider: "urn::p" })),
    "forkvm:ParentVm web: it does not honour the resource options import (id web-1), provider/providers, retainOnDelete, ignoreChanges (init), replaceOnChanges (memoryMiB), aliases, customTimeouts (create), deleteBeforeReplace; remove them or use the Pulumi CLI",
  );
});

test("dependents are deleted first: a template added later goes after the pool that uses it and before its parent", () => {
  const state = [
    { urn: urn("ParentVm", "web"), dependencies: [] },
    { urn: urn("Template", "web-t"), dependencies: [urn("ParentVm", "web")] },
    { urn: urn("InstantClonePool", "pool"), dependencies: [urn("Template", "web-t2")] },
    { urn: urn("Template", "web-t2"), dependencies: [urn("ParentVm", "web")] },
  ];
  assert.equal(deletionOrder(state).map((r) => r.urn.split("::").pop()), ["pool", "web-t2", "web-t", "web"]);
  // The old half of a replacement shares its URN with the new one: neither waits for the other.
  const replaced = [...state, { urn: urn("Template", "web-t2"), dependencies: [urn("ParentVm", "web")], pendingDelete: true }];
  assert.equal(deletionOrder(replaced).map((r) => r.urn.split("::").pop()), ["pool", "web-t2", "web-t2", "web-t", "web"]);
  const cycle = [{ urn: "a", dependencies: ["b"] }, { urn: "b", dependencies: ["a"] }];
  assert.throws(() => deletionOrder(cycle), /Cannot order the deletion of a, b: their dependencies form a cycle/);
});

test("values reach providers as the CLI hands them over; stack outputs never show a secret", () => {
  const secret = { "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", value: "s3cret" };
  const ref = { "4dabf18193072939515e22adb298388d": "5cf8f73096256a8f31e491e813e4eb8e", urn: "urn:x", id: "web" };
  assert.equal(providerValue({ init: ["echo", secret], parent: ref, gone: undefined, n: 1 }), { init: ["echo", "s3cret"], parent: "web", n: 1 });
  assert.equal(displayValue({ token: secret, later: "04da6b54-80e4-46f7-96ec-b56ff0331ba9", names: ["a"] }), { token: "[secret]", later: "[unknown]", names: ["a"] });
});

test("state: a missing file is a first run; version 1 files migrate with dependencies found by id; another stack's file is refused", () => {
  const dir = tempDir("state");
  const file = path.join(dir, "p-dev.json");
  assert.equal(loadState(file, "p", "dev"), { version: STATE_VERSION, project: "p", stack: "dev", resources: [], outputs: {} });
  const r = (kind: string, name: string, inputs: Record<string, unknown>) => ({ urn: urn(kind, name), type: T(kind), name, id: `${name}-x1`, inputs: { __provider: "text", ...inputs }, outputs: {} });
  fs.writeFileSync(file, JSON.stringify({
    version: 1, project: "p", stack: "dev", outputs: {},
    resources: [r("ParentVm", "web", {}), r("Template", "web-t", { parent: "web-x1" }), r("InstantClonePool", "pool", { template: "web-t2-x1" }), r("Template", "web-t2", { parent: "web-x1" })],
  }));
  const s = loadState(file, "p", "dev");
  assert.equal(s.resources.map((x) => x.dependencies), [[], [urn("ParentVm", "web")], [urn("Template", "web-t2")], [urn("ParentVm", "web")]]);
  assert.equal(deletionOrder(s.resources).map((x) => x.name), ["pool", "web-t2", "web-t", "web"]);
  assert.throws(() => loadState(file, "p", "prod"), (e: Error) => e.message === `Cannot read the ${OFFLINE} state ${file}: it holds the stack p/dev, not p/prod`);
});

test("refuses a program with a resource that is not forkvm's, before deploying its ParentVm; no state is written", deadline(60_000, async () => {
  const dir = makeProject("foreign", `
import * as pulumi from "@pulumi/pulumi";
import { ParentVm } from "forkvm";
const parent = new ParentVm("web", { memoryMiB: 128 });
new pulumi.CustomResource("aws:s3/bucket:Bucket", "logs", { tags: { vm: parent.name } });
export const name = parent.name;
`);
  const r = await up(["--offline", dir]);
  assert.is(r.code, 2, r.out + r.err);
  assert.match(r.out, `Using the ${OFFLINE}: --offline was given`);
  assert.match(r.err, `error: Cannot update the stack foreign/dev with the ${OFFLINE}: aws:s3/bucket:Bucket logs: a resource of another provider, not one of forkvm's`);
  assert.not.match(r.out, /\+ {2}forkvm:ParentVm web create/);
  assert.not.ok(fs.existsSync(stateFileOf("foreign", "dev")), "no state written");
  assert.equal(qemuOfThisSuite(), []);
}));

test("refuses, in one run and each by name, a component, resource options it does not honour, an import, a read and an invoke", deadline(60_000, async () => {
  const dir = makeProject("options", `
import * as pulumi from "@pulumi/pulumi";
import { ParentVm } from "forkvm";
class Group extends pulumi.ComponentResource {
  constructor(name: string) { super("acme:index:Group", name, {}); this.registerOutputs({}); }
}
new Group("group");
new ParentVm("guarded", { memoryMiB: 128 }, { protect: true, retainOnDelete: true, ignoreChanges: ["init"], customTimeouts: { create: "5m" }, aliases: [{ name: "old" }] });
new ParentVm("adopted", { memoryMiB: 128 }, { import: "web-1" });
new pulumi.CustomResource("${T("ParentVm")}", "existing", {}, { id: "web-2" });
export const region = pulumi.runtime.invoke("aws:index/getRegion:getRegion", {}).then(() => "x", () => "refused");
`);
  const r = await up(["--offline", dir]);
  assert.is(r.code, 2, r.out + r.err);
  assert.match(r.err, `Cannot update the stack options/dev with the ${OFFLINE}:\n`);
  assert.match(r.err, "acme:index:Group group: a component resource, not one of forkvm's");
  assert.match(r.err, "forkvm:ParentVm guarded: it does not honour the resource options protect, retainOnDelete, ignoreChanges (init), aliases, customTimeouts (create); remove them or use the Pulumi CLI");
  assert.match(r.err, "forkvm:ParentVm adopted: it does not honour the resource option import (id web-1)");
  assert.match(r.err, "forkvm:ParentVm existing: it does not read existing resources (Resource.get or the id option)");
  assert.match(r.err, "function aws:index/getRegion:getRegion: it runs no provider functions");
  assert.equal(qemuOfThisSuite(), []);
}));

test("a corrupt state file is an error naming it, never a first run; the file is left as it was", deadline(60_000, async () => {
  const dir = makeProject("corrupt", `import { ParentVm } from "forkvm";\nexport const name = new ParentVm("web", { memoryMiB: 128 }).name;\n`);
  const file = stateFileOf("corrupt", "dev");
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `{"version": 2, "project": "corrupt", "resources": [`);
  const r = await up(["--offline", dir]);
  assert.is(r.code, 1, r.out + r.err);
  assert.match(r.err, `error: Cannot read the ${OFFLINE} state ${file}: not valid JSON`);
  assert.is(fs.readFileSync(file, "utf8"), `{"version": 2, "project": "corrupt", "resources": [`);
  fs.writeFileSync(file, JSON.stringify({ version: 2, project: "corrupt", stack: "dev", resources: [{ urn: "u" }], outputs: {} }));
  const invalid = await up(["--offline", "--destroy", dir]);
  assert.match(invalid.err, `error: Cannot read the ${OFFLINE} state ${file}: resources.0.type:`);
  assert.equal(qemuOfThisSuite(), []);
}));

test("a state file of a newer version is an error naming the file and both versions", deadline(60_000, async () => {
  const dir = makeProject("newer", `export const nothing = 1;\n`);
  const file = stateFileOf("newer", "dev");
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify({ version: STATE_VERSION + 1, project: "newer", stack: "dev", resources: [], outputs: {}, rollouts: [] }));
  const r = await up(["--offline", "--destroy", dir]);
  assert.is(r.code, 1, r.out + r.err);
  assert.match(r.err, `error: Cannot read the ${OFFLINE} state ${file}: its version ${STATE_VERSION + 1} is newer than this forkvm writes (${STATE_VERSION}); use the forkvm that wrote it`);
}));

test("a second run of the same stack while the first holds its lock is refused; the first ends normally", deadline(90_000, async () => {
  const dir = makeProject("locked", `export const slow = new Promise((resolve) => setTimeout(() => resolve("done"), 2500));\n`);
  const file = stateFileOf("locked", "dev");
  const first = up(["--offline", dir]);
  const t0 = Date.now();
  while (!fs.existsSync(`${file}.lock`)) {
    assert.ok(Date.now() - t0 < 30_000, "the first run takes the lock");
    await new Promise((r) => setTimeout(r, 50));
  }
  const second = await up(["--offline", "--destroy", dir]);
  assert.is(second.code, 1, second.out + second.err);
  assert.match(second.err, `error: Cannot lock the ${OFFLINE} state ${file}: another run of this stack holds ${file}.lock; wait for it to end`);
  const r = await first;
  assert.is(r.code, 0, r.out + r.err);
  assert.match(r.out, /Resources: no changes;/);
  assert.match(r.out, /Outputs:\n\{\n {2}"slow": "done"\n\}/);
  assert.not.ok(fs.existsSync(`${file}.lock`), "the lock is released");
  const state = JSON.parse(fs.readFileSync(file, "utf8"));
  assert.equal(state, { version: STATE_VERSION, project: "locked", stack: "dev", resources: [], outputs: { slow: "done" } });
  assert.is(fs.statSync(file).mode & 0o777, 0o600);
}));

test.run();
