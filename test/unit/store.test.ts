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

test("a truncated manifest is a STATE error naming the file, never a crash; manifests are 0600", () => {
  const s = new Store(tmp(), tmp());
  s.reserve("templates", "t");
  const file = s.manifestPath("templates", "t");
  fs.writeFileSync(file, '{"version": 1, "kind": "templ');
  const err = (() => { try { s.findTemplate("t"); } catch (e) { return e as ForkvmError; } })();
  assert.is(err?.code, "STATE");
  assert.ok(err!.message.includes(file), err!.message);
  assert.match(err!.message, /not JSON/);
  assert.equal(s.listTemplates(), [], "lists skip it (gc and ls report it)");
  s.reserve("pools", "p");
  s.writePool({ version: 1, kind: "pool", name: "p", createdAt: "x", updatedAt: "x", children: [],
    spec: { name: "p", template: "t", size: 0, persistent: false, metadata: {}, forwards: [], updatePolicy: { maxUnavailable: 1 }, concurrency: 4, readyTimeoutS: 60 } });
  assert.is(fs.statSync(s.manifestPath("pools", "p")).mode & 0o777, 0o600);
});

test("VMs, templates and pools share one namespace; names never resolve outside their directory", () => {
  const s = new Store(tmp(), tmp());
  s.reserve("pools", "web");
  for (const kind of ["vms", "templates"] as const) {
    const err = (() => { try { s.reserve(kind, "web"); } catch (e) { return e as ForkvmError; } })();
    assert.is(err?.code, "ALREADY_EXISTS");
    assert.match(err!.message, /taken by a pool/);
  }
  assert.is(s.kindOf("web"), "pools");
  for (const bad of ["", ".", "..", "../../..", "a/b", "/etc"]) {
    for (const fn of [() => s.dir("vms", bad), () => s.memoryPath("templates", bad), () => s.lockPath("pools", bad)]) {
      const err = (() => { try { fn(); } catch (e) { return e as ForkvmError; } })();
      assert.is(err?.code, "INVALID_ARGUMENT", JSON.stringify(bad));
    }
  }
});

test("the lock a holder has is the lock isLocked sees (what gc checks)", deadline(10_000, async () => {
  const s = new Store(tmp(), tmp());
  assert.not.ok(s.isLocked("vms", "x"));
  await s.withLock("vms", "x", async () => {
    assert.ok(s.isLocked("vms", "x"));
    assert.ok(fs.existsSync(s.lockPath("vms", "x")));
  });
  assert.not.ok(s.isLocked("vms", "x"));
  assert.equal(s.names("vms"), [], "lock directories are not objects");
}));

test("a lock taken from its holder is reported to the holder, not thrown from a timer", deadline(30_000, async () => {
  const s = new Store(tmp(), tmp());
  const seen: string[] = [];
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);
  process.on("uncaughtException", onUncaught);
  try {
    await s.withLock("vms", "y", async () => {
      fs.rmSync(s.lockPath("vms", "y"), { recursive: true, force: true });
      await new Promise((r) => setTimeout(r, 6_500)); // past the lock's refresh (every 5 s)
    }, 1000, (err) => seen.push(err.message));
  } finally {
    process.off("uncaughtException", onUncaught);
  }
  assert.equal(uncaught, []);
  assert.is(seen.length, 1, "the holder heard of it once");
}));

test.run();
