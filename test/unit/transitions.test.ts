// The one table of legal VM transitions: which operation may run from which status, and why not.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { allowed, transition, TRANSITIONS, type VmStatus } from "../../engine/state/transitions";
import { ForkvmError } from "../../engine/errors";
import type { VmManifest } from "../../engine/state/manifest";

const vm = (over: Partial<VmManifest> = {}): VmManifest => ({
  version: 1, kind: "vm", name: "v", role: "child", createdAt: "", state: "stopped", token: "t", memoryPath: "/m", mac: "52:54:00:00:00:01",
  hostname: "v", forwards: [], startedBy: "fork", persistent: false,
  shape: { accel: "tcg", machine: "pc", memoryMiB: 128, vcpus: 1, kernel: "k", initrd: "i", cmdline: "", disk: true, nic: true },
  ...over,
});
const STATUSES: VmStatus[] = ["creating", "running", "stopped", "crashed", "consumed"];

test("start runs from stopped or crashed and leaves running; nothing starts a consumed VM", () => {
  assert.equal(STATUSES.filter((s) => allowed(vm(), "start", s)), ["stopped", "crashed"]);
  assert.is(transition(vm(), "start", "crashed"), "running");
  const err = (() => { try { transition(vm({ templates: ["t"] }), "start", "consumed"); } catch (e) { return e as ForkvmError; } })();
  assert.is(err?.code, "CONFLICT");
  assert.is(err?.message, "Cannot start VM v: it was consumed by template t (start needs a stopped or crashed VM)");
});

test("only a non-persistent child resets, and the refusal says what it is", () => {
  assert.is(transition(vm(), "reset", "running"), "running");
  assert.throws(() => transition(vm({ persistent: true }), "reset", "running"), /persistent child/);
  assert.throws(() => transition(vm({ role: "parent", persistent: undefined }), "reset", "running"), /it is a parent/);
});

test("a frozen capture consumes; a running capture and exec need a running VM", () => {
  assert.is(transition(vm(), "capture-frozen", "running"), "consumed");
  assert.is(transition(vm({ state: "running" }), "capture-running", "running"), "running");
  assert.throws(() => transition(vm(), "exec", "stopped"), /Cannot exec VM v: it is stopped \(exec needs a running VM\)/);
  for (const op of Object.keys(TRANSITIONS) as Array<keyof typeof TRANSITIONS>) assert.not.ok(allowed(vm(), op, "consumed"), op);
});

test.run();
