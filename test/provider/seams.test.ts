// The provider seams without QEMU: secrets kept out of messages and errors, generated names that
// are a function of the URN and the engine's names (so preview and up agree), and the forkvm home
// a resource lives in (config, recorded home, environment).
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Engine, ForkvmError } from "../../engine";
import { autoName, homeChange, homeForCheck, homeOf, PartialFailure, providerCall } from "../../provider/common";
import { redact, redactError, reporter, secretFields, secretValues } from "../../provider/report";
import * as parent from "../../provider/parent-vm";
import * as template from "../../provider/template";
import { deadline } from "../helpers/deadline";
import { urnOf } from "./harness";

type Props = Record<string, any>;
const TOKEN = "s3cr3t-token";

// ---------------------------------------------------------------------------------------------
const secrets = suite("secrets");

secrets("secretValues takes every string at or under the paths the SDK listed, and nothing else", () => {
  const props = { init: ["echo a", `echo ${TOKEN}`], metadata: { ROLE: "web", TOKEN: "t0k" }, __secrets: [["init", 1], ["metadata", "TOKEN"]] };
  assert.equal(secretValues(props).sort(), [`echo ${TOKEN}`, "t0k"]);
  assert.equal(secretValues({ init: ["a", "b"], __secrets: [["init"]] }).sort(), ["a", "b"], "a whole secret input");
  assert.equal(secretValues({ init: ["a"] }), [], "no __secrets, no secrets");
  assert.equal(secretFields(props), ["init[1]", "metadata.TOKEN"]);
});

secrets("redact replaces a secret as written, as JSON escapes it, as a shell word quotes it, and line by line", () => {
  const secret = `printf '%s' "${TOKEN}"\ncurl -H "X-Key: ${TOKEN}" http://x`;
  const text = [
    `raw: ${secret}`,
    `json: ${JSON.stringify(secret)}`,
    `shell: '${secret.replace(/'/g, "'\\''")}'`,
    `line: sh: 2: curl -H "X-Key: ${TOKEN}" http://x: not found`,
  ].join("\n");
  const out = redact(text, [secret]);
  assert.not.match(out, TOKEN);
  assert.match(out, /raw: \[secret\]/);
  assert.match(out, /json: "\[secret\]"/);
  assert.is(redact("nothing to hide", []), "nothing to hide");
});

secrets("redactError cleans message, stack, reasons, details and causes; a secret command's output is withheld too", () => {
  const cause = new ForkvmError("AGENT", `Cannot run init command 2 of VM web-1a2b: exit 3: using ${TOKEN}`, {
    details: { field: "init[1]", exitCode: 3, stderr: `using ${TOKEN}\n` },
  });
  const err = new ForkvmError("AGENT", `Cannot create parent web-1a2b: ${cause.message}`, { cause, details: cause.details });
  const secret = `echo using ${TOKEN} >&2; exit 3`;
  const out = redactError(err, [secret], ["init[1]"]) as ForkvmError;
  for (const text of [out.message, out.stack ?? "", (out.cause as Error).message, String(out.details.stderr)]) assert.not.match(text, TOKEN);
  assert.match(out.message, /Cannot create parent web-1a2b: Cannot run init command 2 of VM web-1a2b: exit 3: \[secret\]/);
  const plain = new ForkvmError("AGENT", "Cannot run init command 1 of VM web: exit 1: boom", { details: { field: "init[0]", stderr: "boom" } });
  assert.match((redactError(plain, [secret], ["init[1]"]) as Error).message, /exit 1: boom/, "the output of a command that is not secret stays");
  const partial = redactError(new PartialFailure("p", {}, `failed: ${TOKEN}`, [`child 1: ${TOKEN}`]), [TOKEN]) as PartialFailure;
  assert.equal([partial.message, ...partial.reasons], ["failed: [secret]", "child 1: [secret]"]);
  assert.is((redactError(`thrown ${TOKEN}`, [TOKEN]) as Error).message, "thrown [secret]");
});

secrets("a reporter redacts its status, info and warning lines", deadline(5_000, async () => {
  const lines: string[] = [];
  const r = reporter(undefined, "parent web", (l) => lines.push(l), [TOKEN]);
  r.status(`running ${TOKEN}`);
  r.info(`done ${TOKEN}`);
  r.warn(`careful ${JSON.stringify(TOKEN)}`);
  await r.flush();
  assert.equal(lines, ["forkvm parent web: running [secret]", "forkvm parent web: done [secret]", 'forkvm parent web: warning: careful "[secret]"']);
}));

secrets("providerCall redacts what the call throws and what it reports", deadline(5_000, async () => {
  const props = { init: [TOKEN], __secrets: [["init", 0]], __logicalName: "web" };
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  (process.stderr as { write: unknown }).write = (chunk: string) => (lines.push(String(chunk)), true);
  let err: Error | undefined;
  try {
    await providerCall(props, "web", async (report) => {
      report.info(`about to fail with ${TOKEN}`);
      throw new Error(`Cannot do it: ${TOKEN}`);
    });
  } catch (e) {
    err = e as Error;
  } finally {
    (process.stderr as { write: unknown }).write = write;
  }
  assert.is(err?.message, "Cannot do it: [secret]");
  assert.not.match(err?.stack ?? "", TOKEN);
  assert.equal(lines, ["forkvm web: about to fail with [secret]\n"]);
}));

secrets("check failures never quote a secret", deadline(10_000, async () => {
  const kernel = `/nonexistent/${TOKEN}/vmlinuz`;
  const r = await parent.check({}, { kernel, initrd: "/nonexistent/initrd", __secrets: [["kernel"]] });
  assert.equal(r.failures.map((f) => f.property).sort(), ["initrd", "kernel"]);
  for (const f of r.failures) assert.not.match(`${f.property} ${f.reason}`, TOKEN);
  assert.match(r.failures.find((f) => f.property === "kernel")!.reason, /^\[secret\] does not exist$/);
}));

secrets.run();

// ---------------------------------------------------------------------------------------------
const names = suite("generated names");
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-seams-"));
const homeA = path.join(scratch, "a");
const homeB = path.join(scratch, "b");
names.after(() => fs.rmSync(scratch, { recursive: true, force: true }));

names("autoName is a function of the seed and of what is taken", () => {
  const free = () => false;
  const a = autoName({ seed: "urn:x", base: "Web Parent", fallback: "parent", taken: free });
  assert.match(a, /^web-parent-[0-9a-f]{4}$/);
  assert.is(autoName({ seed: "urn:x", base: "Web Parent", fallback: "parent", taken: free }), a);
  assert.is.not(autoName({ seed: "urn:y", base: "Web Parent", fallback: "parent", taken: free }), a);
  const next = autoName({ seed: "urn:x", base: "Web Parent", fallback: "parent", taken: (n) => n === a });
  assert.is.not(next, a);
  assert.is(autoName({ seed: "urn:x", base: "Web Parent", fallback: "parent", taken: (n) => n === a }), next);
  assert.match(autoName({ seed: "s", base: "___", fallback: "pool", taken: free }), /^pool-[0-9a-f]{4}$/);
  const long = autoName({ seed: "s", base: "x".repeat(80), fallback: "pool", maxLen: 57, taken: free });
  assert.is(long.length, 57);
  try {
    autoName({ seed: "s", base: "web", fallback: "parent", taken: () => true });
    assert.unreachable("every candidate is taken");
  } catch (err) {
    assert.is((err as ForkvmError).code, "ALREADY_EXISTS");
  }
});

names("ParentVm: preview's and up's check give the same name; a replacement checked while the old parent exists gets the next candidate", deadline(10_000, async () => {
  const news = { memoryMiB: 160, __logicalName: "web", __urn: urnOf("ParentVm", "web"), __home: homeA };
  const preview = await parent.check({}, news);
  const up = await parent.check({}, news);
  assert.equal(preview.failures.filter((f) => f.property === "name"), []);
  assert.match(preview.inputs.name, /^web-[0-9a-f]{4}$/);
  assert.is(up.inputs.name, preview.inputs.name);
  const other = await parent.check({}, { ...news, __urn: urnOf("ParentVm", "web").replace("test::", "prod::") });
  assert.is.not(other.inputs.name, preview.inputs.name, "another stack, another name");
  const kept = await parent.check(up.inputs, { ...news, bootTimeoutS: 60 });
  assert.is(kept.inputs.name, up.inputs.name, "an update keeps the name");

  new Engine({ home: homeA }).store.reserve("vms", up.inputs.name); // the old parent exists
  const replaced = await parent.check(up.inputs, { ...news, memoryMiB: 192 });
  const replacement = await parent.check({}, { ...news, memoryMiB: 192 }); // Pulumi's re-check of a replacement: no olds
  const again = await parent.check({}, { ...news, memoryMiB: 192 });
  assert.is.not(replacement.inputs.name, up.inputs.name);
  assert.is(again.inputs.name, replacement.inputs.name, "the replacement's name is deterministic too");
  assert.is(replaced.inputs.name, replacement.inputs.name, "the check with olds names the same replacement");
  const d = await parent.diff(up.inputs.name, { ...up.inputs, home: homeA }, replacement.inputs);
  assert.equal(d.replaces.sort(), ["memoryMiB", "name"]);
  assert.is(d.deleteBeforeReplace, false, "a generated name is created before the old one goes");
}));

names("Template: the same rule", deadline(10_000, async () => {
  const news = { parent: "p", __logicalName: "web-t", __urn: urnOf("Template", "web-t"), __home: homeA };
  const preview = await template.check({}, news);
  const up = await template.check({}, news);
  assert.match(preview.inputs.name, /^web-t-[0-9a-f]{4}$/);
  assert.is(up.inputs.name, preview.inputs.name);
  new Engine({ home: homeA }).store.reserve("templates", up.inputs.name);
  const replacement = await template.check({}, { ...news, revision: "2" });
  assert.is.not(replacement.inputs.name, up.inputs.name);
  assert.is((await template.check({}, { ...news, revision: "2" })).inputs.name, replacement.inputs.name);
}));

names.run();

// ---------------------------------------------------------------------------------------------
const homes = suite("the forkvm home");

homes("check places a resource by forkvm:home, else where it lives, else the environment's home", () => {
  const env = path.resolve(process.env.FORKVM_HOME ?? "");
  assert.is(homeForCheck({}, { __home: homeA }), homeA);
  assert.is(homeForCheck({ __home: homeA }, {}), homeA, "the config removed: the resource stays");
  assert.is(homeForCheck({ __home: homeA }, { __home: homeB }), homeB, "the config changed: the resource moves");
  assert.is(homeForCheck({}, {}), env);
  assert.is(homeForCheck({}, { __home: "rel/dir" }), path.resolve("rel/dir"), "relative to the project directory");
});

homes("later calls open the recorded home; a new forkvm:home is a replacement", () => {
  assert.is(homeOf({ home: homeA, __home: homeB }), homeA);
  assert.is(homeOf({ __home: homeA }), homeA, "create: the home check chose");
  assert.is(homeOf({}), path.resolve(process.env.FORKVM_HOME ?? ""), "state from before homes were recorded");
  assert.equal(homeChange({ home: homeA }, { __home: homeA }), []);
  assert.equal(homeChange({ home: homeA }, { __home: homeB }), ["home"]);
  assert.equal(homeChange({}, { __home: path.resolve(process.env.FORKVM_HOME ?? "") }), [], "no recorded home: it lives in the environment's");
  assert.equal(homeChange({}, { __home: homeB }), ["home"]);
});

homes("ParentVm check records the home in __home; diff replaces a parent whose forkvm:home changed", deadline(10_000, async () => {
  const news: Props = { __logicalName: "web", __urn: urnOf("ParentVm", "web") };
  const first = await parent.check({}, { ...news, __home: homeA });
  assert.is(first.inputs.__home, homeA);
  const unset = await parent.check(first.inputs, news);
  assert.is(unset.inputs.__home, homeA);
  assert.is(unset.inputs.name, first.inputs.name);
  const moved = await parent.check(first.inputs, { ...news, __home: homeB });
  assert.is(moved.inputs.__home, homeB);
  const outs = { ...first.inputs, home: homeA };
  const d = await parent.diff(first.inputs.name, outs, moved.inputs);
  assert.ok(d.replaces.includes("home"), JSON.stringify(d));
  const t = await template.diff("t", { name: "t", parent: "p", source: "frozen", downtimeLimitMs: 30, __autoNamed: true, home: homeA }, { name: "t", parent: "p", source: "frozen", downtimeLimitMs: 30, __autoNamed: true, __home: homeB });
  assert.equal(t.replaces, ["home"]);
}));

homes.run();
