// examples/ci-runners: its wiring under mocks, its serialised providers in a fresh host started in
// the example's directory, then for real: up, a job in a runner followed by a reset, up again
// (nothing to do), destroy; no QEMU left.
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { ensureBuilt, qemuOfThisSuite, removeAll, ROOT } from "../provider/harness";
import { checkInFreshHost, linkForkvm, outputsOf, run, runUnderMocks, summaryOf, up, type Registration } from "./harness";

const dir = path.join(ROOT, "examples", "ci-runners");
const test = suite("examples/ci-runners");
let registrations: Registration[] = [];

test.before(() => {
  ensureBuilt();
  linkForkvm(dir);
});

test.after(async () => {
  await up(dir, "--destroy").catch(() => undefined);
  await removeAll();
});

test("under mocks: a parent, a frozen template of it, a non-persistent pool of 4 with runner metadata", deadline(30_000, async () => {
  const r = await runUnderMocks(dir);
  registrations = r.registrations;
  assert.equal(r.registrations.map((x) => x.type.split(":").pop()), ["ParentVm", "Template", "InstantClonePool"]);
  const [parent, template, pool] = r.registrations.map((x) => x.inputs);
  assert.is(template.parent, "runner-mock", "the template gets the parent's name (known in preview), not its id");
  assert.equal(template.__shape, { memoryMiB: 256, vcpus: 1, diskMiB: 256, accel: "tcg" });
  assert.is(template.source, "frozen");
  assert.is(pool.template, "runner-t-mock");
  assert.is(pool.size, 4);
  assert.is(pool.persistent, false);
  assert.equal(Object.keys(pool.metadata).sort(), ["RUNNER_LABELS", "RUNNER_NAME", "RUNNER_POOL"]);
  assert.equal(pool.updatePolicy, { maxUnavailable: "50%" });
  assert.ok(parent.init.length === 2);
  assert.equal(r.outputs.runnerNames, [1, 2, 3, 4].map((i) => `runners-mock-${i}`));
  assert.is(r.outputs.runAJob, "npm run job -- runners-mock-1 uname -a");
  assert.ok(r.logs.some((l) => l.includes("estimate: mock estimate")), "the pool logs its estimate on itself");
}));

test("the serialised providers load and check cleanly in a fresh host started in the example's directory", deadline(30_000, async () => {
  const checks = await checkInFreshHost(dir, "forkvm-ci-runners", registrations);
  for (const c of checks) assert.equal(c.failures, [], `${c.name}: ${JSON.stringify(c.failures)}`);
  const pool = checks[2].inputs;
  assert.match(pool.estimate.summary, /^4 × 256 MiB children/);
  assert.match(pool.plan.join(), /add 4 .*template runner-t-mock is created in this deployment/);
}));

test("up for real, a job in a runner then a reset that leaves nothing of it, up again changes nothing, destroy", deadline(240_000, async () => {
  const first = await up(dir);
  assert.is(first.code, 0, first.out + first.err);
  assert.is(summaryOf(first.out), "3 create");
  const outputs = outputsOf(first.out);
  assert.is(outputs.runnerNames.length, 4);
  const runner = outputs.runnerNames[0];
  const job = await run(process.execPath, ["-r", "ts-node/register/transpile-only", "job.ts", runner, "sh", "-c", "echo building on $(hostname); . /etc/forkvm/metadata; echo labels $RUNNER_LABELS"], { cwd: dir });
  assert.is(job.code, 0, job.err);
  assert.match(job.out, new RegExp(`building on ${runner}\\nlabels forkvm,linux,x64`));
  assert.match(job.err, new RegExp(`${runner} reset to the template in \\d+ ms \\(clean\\)`));
  const again = await up(dir);
  assert.is(summaryOf(again.out), "3 same");
  const down = await up(dir, "--destroy");
  assert.is(summaryOf(down.out), "3 delete");
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
