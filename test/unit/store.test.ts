import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { Store, defaultHome, defaultMemDir } from "../../engine/state/store";
import { ForkvmError } from "../../engine/errors";
import { deadline } from "../helpers/deadline";

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), "store-"));

test("the home follows FORKVM_HOME, then XDG_STATE_HOME", () => {
  assert.is(defaultHome({ FORKVM_HOME: "/x/y" }), "/x/y");
  assert.is(defaultHome({ XDG_STATE_HOME: "/s" }), "/s/forkvm");
  assert.match(defaultMemDir("/a", {}), /^\/dev\/shm\/forkvm-[0-9a-f]{10}$/);
  assert.is.not(defaultMemDir("/a", {}), defaultMemDir("/b", {}));
});

test("a name is reserved once; a second reservation says the name is taken", () => {
  const s = new Store(tmp(), tmp());
  s.reserve("vms", "web-1");
  const err = (() => { try { s.reserve("vms", "web-1"); } catch (e) { return e as ForkvmError; } })();
  assert.is(err?.code, "ALREADY_EXISTS");
});

test("VMs and templates share one namespace", () => {
  const s = new Store(tmp(), tmp());
  s.reserve("templates", "web");
  const err = (() => { try { s.reserve("vms", "web"); } catch (e) { return e as ForkvmError; } })();
  assert.is(err?.code, "ALREADY_EXISTS");
  assert.match(err!.message, /taken by a template/);
  assert.not.ok(s.exists("vms", "web"));
});

test("bad names are refused naming the rule", () => {
  const s = new Store(tmp(), tmp());
  for (const bad of ["", "Web", "a b", "../x", "-x", "x".repeat(64)]) {
    const err = (() => { try { s.reserve("vms", bad); } catch (e) { return e as ForkvmError; } })();
    assert.is(err?.code, "INVALID_ARGUMENT", bad);
    assert.is(err?.details.field, "name");
  }
});

test("a directory without a manifest is not an object; a corrupt manifest is a STATE error", () => {
  const s = new Store(tmp(), tmp());
  s.reserve("vms", "half");
  assert.is(s.findVm("half"), undefined);
  assert.equal(s.listVms(), []);
  fs.writeFileSync(path.join(s.dir("vms", "half"), "manifest.json"), JSON.stringify({ version: 1, kind: "vm" }));
  const err = (() => { try { s.findVm("half"); } catch (e) { return e as ForkvmError; } })();
  assert.is(err?.code, "STATE");
  assert.equal(s.listVms(), []);
});

test("locks serialise work on one object across callers", deadline(10_000, async () => {
  const s = new Store(tmp(), tmp());
  const order: string[] = [];
  const work = (tag: string) => s.withLock("vms", "x", async () => {
    order.push(`${tag}+`);
    await new Promise((r) => setTimeout(r, 50));
    order.push(`${tag}-`);
  });
  await Promise.all([work("a"), work("b")]);
  assert.ok(order.join(" ") === "a+ a- b+ b-" || order.join(" ") === "b+ b- a+ a-", order.join(" "));
}));

test.run();
