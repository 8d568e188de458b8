// examples/web-fleet: its wiring under mocks, its serialised providers in a fresh host started in
// the example's directory, then for real: up, a revision bump in the stack's config that captures
// a new template and rolls the servers over one at a time, destroy; no QEMU left.
import * as fs from "node:fs";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { engine, ensureBuilt, qemuOfThisSuite, removeAll, ROOT } from "../provider/harness";
import { checkInFreshHost, linkForkvm, outputsOf, runUnderMocks, summaryOf, up, type Registration } from "./harness";

const dir = path.join(ROOT, "examples", "web-fleet");
const stackFile = path.join(dir, `Pulumi.test-${process.pid}.yaml`);
const test = suite("examples/web-fleet");
let registrations: Registration[] = [];

test.before(() => {
  ensureBuilt();
  linkForkvm(dir);
});

test.after(async () => {
  await up(dir, "--destroy", "--stack", `test-${process.pid}`).catch(() => undefined);
  fs.rmSync(stackFile, { force: true });
  await removeAll();
});

test("under mocks: a running-source template, a persistent pool on ports 18080.., upstream lines for a load balancer", deadline(30_000, async () => {
  const r = await runUnderMocks(dir, { size: "2", basePort: "28080" });
  registrations = r.registrations;
  const [, template, pool] = r.registrations.map((x) => x.inputs);
  assert.is(template.source, "running");
  assert.is(template.revision, "1");
  assert.is(pool.persistent, true);
  assert.is(pool.size, 2);
  assert.equal(pool.forwards, [{ guest: 80, hostBase: 28080 }]);
  assert.equal(pool.updatePolicy, { maxUnavailable: 1 });
  assert.equal(r.outputs.urls, ["http://127.0.0.1:28080/", "http://127.0.0.1:28081/"]);
  assert.is(r.outputs.upstream, "server 127.0.0.1:28080;\nserver 127.0.0.1:28081;");
}));

test("the serialised providers load and check cleanly in a fresh host started in the example's directory", deadline(30_000, async () => {
  const checks = await checkInFreshHost(dir, "forkvm-web-fleet", registrations);
  for (const c of checks) assert.equal(c.failures, [], `${c.name}: ${JSON.stringify(c.failures)}`);
  assert.is(checks[2].inputs.estimate.disk.location, "state-dir");
}));

test("up, then revision 2 captures a new template and rolls the servers one at a time, then destroy", deadline(240_000, async () => {
  const stack = `test-${process.pid}`;
  const base = 30000 + (process.pid % 1000) * 10;
  fs.writeFileSync(stackFile, `config:\n  forkvm-web-fleet:size: "2"\n  forkvm-web-fleet:basePort: "${base}"\n`);
  const first = await up(dir, "--stack", stack);
  assert.is(first.code, 0, first.out + first.err);
  assert.is(summaryOf(first.out), "3 create");
  const before = outputsOf(first.out);
  assert.equal(before.urls, [`http://127.0.0.1:${base}/`, `http://127.0.0.1:${base + 1}/`]);
  fs.appendFileSync(stackFile, `  forkvm-web-fleet:revision: "2"\n`);
  const preview = await up(dir, "--stack", stack, "--preview");
  assert.match(preview.out, /\+- forkvm:Template web-t replace \[diff: name, revision\]/);
  assert.match(preview.out, /plan: roll 2 \(template web-t-\w+ → web-t-\w+\) in 2 batches of at most 1/);
  const rolled = await up(dir, "--stack", stack);
  assert.is(rolled.code, 0, rolled.out + rolled.err);
  assert.is(summaryOf(rolled.out), "1 create, 1 update, 1 replace, 1 delete, 1 same");
  assert.match(rolled.out, /roll: batch 1\/2 .*\n(.*\n)*.*roll: batch 2\/2/);
  const after = outputsOf(rolled.out);
  assert.is.not(after.generation, before.generation);
  assert.equal(after.urls, before.urls, "same ports after the roll");
  const children = engine().listVms().filter((v) => v.role === "child");
  assert.ok(children.every((c) => c.template?.generation === after.generation && c.persistent));
  assert.is(engine().listTemplates().length, 1, "the old template is gone");
  const down = await up(dir, "--destroy", "--stack", stack);
  assert.is(summaryOf(down.out), "3 delete");
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
