// The one spec of every input: the rules each layer calls instead of restating.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { checkName, ForkArgs, parseArgs, PoolArgs } from "../../engine/spec";
import { ForkvmError } from "../../engine/errors";

const fails = (fn: () => unknown) => { try { fn(); } catch (e) { return e as ForkvmError; } return undefined; };

test("a name is never a path: empty, '.', '..', '/' and upper case are refused naming the field", () => {
  for (const bad of ["", ".", "..", "../../..", "a/b", "Web", undefined]) {
    const err = fails(() => checkName(bad, "name", "remove"));
    assert.is(err?.code, "INVALID_ARGUMENT", String(bad));
    assert.is(err?.details.field, "name");
  }
  assert.is(checkName("web-1"), "web-1");
});

test("a pool's cross-field rules name every field at once", () => {
  const err = fails(() => parseArgs(PoolArgs, {
    name: "p", template: "t", size: 10, metadata: { FORKVM_X: "1", A: "{nope}" }, forwards: [{ guest: 80, hostBase: 65530 }, { guest: 80 }],
  }, "apply pool"));
  assert.is(err?.code, "INVALID_ARGUMENT");
  const fields = (err!.details.fields as Array<{ field: string }>).map((f) => f.field);
  assert.equal(fields, ["metadata.FORKVM_X", "metadata.A", "forwards.0.hostBase", "forwards.1.guest"]);
});

test("unknown fields are named with the allowed ones; ranges say what is allowed", () => {
  const err = fails(() => parseArgs(ForkArgs, { template: "t", colour: "x" }, "fork"));
  assert.match(err!.message, /colour: unknown field \(allowed: template, count, prefix/);
  const big = fails(() => parseArgs(ForkArgs, { template: "t", concurrency: 65 }, "fork"));
  assert.match(big!.message, /concurrency: must be at most 64/);
});

test.run();
