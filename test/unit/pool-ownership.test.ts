// A pool owns what it created and nothing else; children an earlier forkvm marked for it are
// adopted once. Pure store work: the children here are stopped manifests, no QEMU runs.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Engine } from "../../engine/engine";
import type { VmManifest } from "../../engine/state/manifest";
import { deadline } from "../helpers/deadline";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "pool-own-"));

function child(e: Engine, name: string, extra: Partial<VmManifest> = {}): void {
  e.store.reserve("vms", name);
  e.store.writeVm({
    version: 1, kind: "vm", name, role: "child", createdAt: new Date().toISOString(), state: "stopped", token: "0123456789ab", memoryPath: e.store.memoryPath("vms", name),
    mac: "52:54:00:00:00:01", hostname: name, forwards: [], startedBy: "fork", persistent: false, template: { name: "t", generation: "g1" },
    shape: { accel: "tcg", machine: "pc", memoryMiB: 128, vcpus: 1, kernel: "k", initrd: "i", cmdline: "", disk: false, nic: true },
    ...extra,
  });
}

test("children an earlier forkvm marked are adopted once; a lookalike without the marker, and another pool's, are never touched", deadline(20_000, async () => {
  const home = tmp();
  const e = new Engine({ home, memDir: path.join(home, "mem") });
  child(e, "legacy-1", { metadata: { FORKVM_POOL: "legacy" } });
  child(e, "legacy-2"); // same name pattern, no marker: not the pool's
  child(e, "legacy-3", { metadata: { FORKVM_POOL: "other" } });
  const plan = e.planPool({ name: "legacy", template: "t", size: 0 });
  assert.equal(plan.plan.remove, ["legacy-1"], "only the marked child is the pool's");
  const r = await e.applyPool({ name: "legacy", template: "t", size: 0 });
  assert.equal(r.errors, []);
  assert.equal(e.listVms().map((v) => v.name).sort(), ["legacy-2", "legacy-3"]);
  // Once the pool exists, the marker alone no longer makes a VM the pool's.
  child(e, "legacy-4", { metadata: { FORKVM_POOL: "legacy" } });
  assert.equal(e.planPool({ name: "legacy", template: "t", size: 0 }).plan.remove, []);
  assert.equal(await e.removePool("legacy"), ["legacy"], "the pool goes alone: it owns no child");
  assert.equal(e.listVms().map((v) => v.name).sort(), ["legacy-2", "legacy-3", "legacy-4"]);
  fs.rmSync(home, { recursive: true, force: true });
}));

test("a name the pool needs that another object holds is refused before anything changes, naming it", deadline(20_000, async () => {
  const home = tmp();
  const e = new Engine({ home, memDir: path.join(home, "mem") });
  child(e, "web-1", { pool: { name: "web", index: 1 } });
  e.store.reserve("templates", "web-2"); // a template that happens to be called like child 2
  e.store.reserve("pools", "web");
  e.store.writePool({ version: 1, kind: "pool", name: "web", createdAt: "x", updatedAt: "x", children: [{ name: "web-1", index: 1, createdAt: "x" }],
    spec: { name: "web", template: "t", size: 1, persistent: false, metadata: {}, forwards: [], updatePolicy: { maxUnavailable: 1 }, concurrency: 4, readyTimeoutS: 60 } });
  const plan = e.planPool({ name: "web", template: "t", size: 2 }, { templatePending: true });
  assert.equal(plan.clashes, [{ name: "web-2", kind: "template" }]);
  assert.ok(plan.lines.some((l) => /refused: web-2 is a template this pool did not create/.test(l)), plan.lines.join("; "));
  const rm = await e.remove(["web"]);
  assert.equal(rm, [{ name: "web", kind: "pool", removed: ["web-1", "web"] }]);
  assert.ok(e.store.exists("templates", "web-2"), "the template of the clashing name is still there");
  fs.rmSync(home, { recursive: true, force: true });
}));

test("a pool's prefix cannot change under its children", deadline(20_000, async () => {
  const home = tmp();
  const e = new Engine({ home, memDir: path.join(home, "mem") });
  await e.applyPool({ name: "p", template: "t", size: 0 });
  const err = (() => { try { e.planPool({ name: "p", template: "t", size: 0, prefix: "x" }); } catch (x) { return x as Error & { code?: string; details?: { field?: string } }; } })();
  assert.is(err?.code, "INVALID_ARGUMENT");
  assert.is(err?.details?.field, "prefix");
  fs.rmSync(home, { recursive: true, force: true });
}));

test.run();
