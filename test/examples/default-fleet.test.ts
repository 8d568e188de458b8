// The root program (the default fleet) and `npm run up`: with a Pulumi CLI on PATH it runs
// `pulumi up` on a local file backend with an empty passphrase; with the offline deployment (no
// Pulumi CLI), which says why it is used: up, up again, a resize previewed with its estimate and
// plan, applied, destroyed; no QEMU left.
import * as fs from "node:fs";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { engine, ensureBuilt, qemuOfThisSuite, removeAll, ROOT } from "../provider/harness";
import { checkInFreshHost, outputsOf, run, runUnderMocks, summaryOf, up } from "./harness";

const test = suite("root program and npm run up");
const stack = `test-${process.pid}`;
const stackFile = path.join(ROOT, `Pulumi.${stack}.yaml`);

test.before(() => ensureBuilt());

test.after(async () => {
  await up(ROOT, "--destroy", "--stack", stack).catch(() => undefined);
  fs.rmSync(stackFile, { force: true });
  await removeAll();
});

test("under mocks: the default fleet of 4 and its serialised providers check in a fresh host", deadline(30_000, async () => {
  const r = await runUnderMocks(ROOT);
  assert.equal(r.registrations.map((x) => `${x.type.split(":").pop()} ${x.name}`), ["ParentVm fleet", "Template fleet-t", "InstantClonePool fleet-pool"]);
  assert.is(r.registrations[2].inputs.size, 4);
  assert.is(r.outputs.tryIt, "forkvm exec fleet-pool-mock-1 -- cat /tmp/state /etc/forkvm/metadata");
  for (const c of await checkInFreshHost(ROOT, "forkvm-fleet", r.registrations)) assert.equal(c.failures, [], `${c.name}: ${JSON.stringify(c.failures)}`);
}));

test("with a Pulumi CLI on PATH, npm run up runs it on a file backend with an empty passphrase", deadline(30_000, async () => {
  const bin = fs.mkdtempSync(path.join(process.env.FORKVM_TEST_HOME ?? "/tmp", "fake-pulumi-"));
  const logFile = path.join(bin, "calls");
  fs.writeFileSync(path.join(bin, "pulumi"), `#!/bin/sh\necho "$PULUMI_BACKEND_URL|[$PULUMI_CONFIG_PASSPHRASE]|$*" >> ${logFile}\n`, { mode: 0o755 });
  const r = await run(process.execPath, [path.join(ROOT, "dist", "deploy", "up.js")], { cwd: ROOT, env: { PATH: `${bin}:${process.env.PATH}`, PULUMI_CONFIG_PASSPHRASE: "" } });
  assert.is(r.code, 0, r.err);
  const calls = fs.readFileSync(logFile, "utf8").trim().split("\n");
  const backend = `file://${path.join(process.env.FORKVM_HOME!, "pulumi")}`;
  assert.equal(calls, [
    `${backend}|[]|stack select --create dev --non-interactive`,
    `${backend}|[]|up --yes --non-interactive --stack dev`,
  ]);
  assert.not.match(r.out, /offline deployment/);
}));

test("offline: the reason in one line, then up, up again, a previewed resize to 5, applied, destroyed", deadline(240_000, async () => {
  const first = await up(ROOT, "--stack", stack);
  assert.is(first.code, 0, first.out + first.err);
  assert.match(first.out, /^Using the offline deployment \(no Pulumi CLI\): FORKVM_NO_PULUMI_CLI is set$/m);
  assert.is(summaryOf(first.out), "3 create");
  const outputs = outputsOf(first.out);
  assert.is(outputs.children.length, 4);
  assert.ok(outputs.children.every((c: { status: string }) => c.status === "running"));
  const state = await engine().exec(outputs.children[0].name, ["cat", "/tmp/state"]);
  assert.match(state.stdout.toString(), /^warm since \d+/, "the child has the parent's warm RAM");
  assert.is(summaryOf((await up(ROOT, "--stack", stack)).out), "3 same");
  fs.writeFileSync(stackFile, `config:\n  forkvm-fleet:size: "5"\n`);
  const preview = await up(ROOT, "--stack", stack, "--preview");
  assert.match(preview.out, /~ {2}forkvm:InstantClonePool fleet-pool update/);
  assert.match(preview.out, /estimate: 5 × 256 MiB children: 256 MiB shared copy-on-write \+ 5 × ~[\d.]+ MiB private ≈ \d+ MiB \(as full VMs ≈ \d+ MiB\); delta disks 5 × 0\.2 MiB on tmpfs \(measured\)/);
  assert.match(preview.out, /plan: add 1 \(fleet-pool-\w+-5\)/);
  console.log(`\nwhat a preview of the resize shows:\n${preview.out}`);
  const resized = await up(ROOT, "--stack", stack);
  assert.is(summaryOf(resized.out), "1 update, 2 same");
  assert.is(outputsOf(resized.out).children.length, 5);
  const down = await up(ROOT, "--destroy", "--stack", stack);
  assert.is(summaryOf(down.out), "3 delete");
  assert.equal(qemuOfThisSuite(), []);
}));

test.run();
