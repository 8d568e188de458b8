// `npm run up` with the real Pulumi CLI, without the CLI: a stand-in `pulumi` first on PATH records
// what it is given, so these show which commands run, in which directory, on which stack and
// backend. No QEMU: the stand-in deploys nothing, and the image step is a no-op (the image is cached).
import * as fs from "node:fs";
import * as path from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { deadline } from "../helpers/deadline";
import { ROOT } from "../provider/harness";
import { cliCommands, cliEnvironment, parseArgs } from "../../deploy/up";
import { findPulumiCli, isNpmLauncher, pulumiOnPath, type Installer } from "../../deploy/pulumi-cli";
import { makeProject, standInPulumi, tempDir, up } from "./harness";

const test = suite("npm run up");
const home = process.env.FORKVM_HOME!;
const defaultBackend = `file://${path.join(home, "pulumi")}`;
/** The environment of a user who set nothing Pulumi-related. */
const unset = { PULUMI_BACKEND_URL: undefined, PULUMI_CONFIG_PASSPHRASE: undefined, PULUMI_CONFIG_PASSPHRASE_FILE: undefined, FORKVM_NO_PULUMI_CLI: undefined };

test.before(() => {
  assert.ok(home, "FORKVM_HOME is set (test/run.ts sets it)");
});

test("with pulumi on PATH and nothing set: stack select, then up --yes, in the root project, on a file backend under the forkvm home, empty passphrase", deadline(60_000, async () => {
  const pulumi = standInPulumi();
  const r = await up([], { env: { ...unset, PATH: `${pulumi.dir}:${process.env.PATH}` } });
  assert.is(r.code, 0, r.out + r.err);
  assert.equal(pulumi.calls().map((c) => c.argv), [
    ["stack", "select", "--create", "dev", "--non-interactive"],
    ["up", "--yes", "--non-interactive", "--stack", "dev"],
  ]);
  for (const c of pulumi.calls()) {
    assert.is(c.cwd, ROOT);
    assert.is(c.backend, defaultBackend);
    assert.is(c.passphrase, "");
  }
  assert.ok(fs.statSync(path.join(home, "pulumi")).isDirectory(), "the file backend's directory exists");
  assert.match(r.out, `Pulumi CLI ${path.join(pulumi.dir, "pulumi")} (PATH); backend ${defaultBackend} (set PULUMI_BACKEND_URL for another); stack dev`);
  assert.not.match(r.out, /offline deployment/);
}));

test("--preview --stack staging: the user's PULUMI_BACKEND_URL and passphrase reach pulumi unchanged", deadline(60_000, async () => {
  const pulumi = standInPulumi();
  const backend = "s3://team-state?region=eu-west-1&profile=ops";
  const r = await up(["--preview", "--stack", "staging"], { env: { ...unset, PATH: `${pulumi.dir}:${process.env.PATH}`, PULUMI_BACKEND_URL: backend, PULUMI_CONFIG_PASSPHRASE: "correct horse battery" } });
  assert.is(r.code, 0, r.out + r.err);
  assert.equal(pulumi.calls().map((c) => c.argv), [
    ["stack", "select", "--create", "staging", "--non-interactive"],
    ["preview", "--non-interactive", "--stack", "staging"],
  ]);
  for (const c of pulumi.calls()) {
    assert.is(c.backend, backend);
    assert.is(c.passphrase, "correct horse battery");
  }
  assert.not.match(r.out, /set PULUMI_BACKEND_URL for another/);
}));

test("--destroy on a project directory runs there; a passphrase set for the default backend is kept", deadline(60_000, async () => {
  const pulumi = standInPulumi();
  const dir = makeProject("standin-destroy", `export const nothing = 1;\n`);
  const r = await up([dir, "--destroy", "-s", "ci"], { env: { ...unset, PATH: `${pulumi.dir}:${process.env.PATH}`, PULUMI_CONFIG_PASSPHRASE: "kept" } });
  assert.is(r.code, 0, r.out + r.err);
  assert.equal(pulumi.calls().map((c) => c.argv), [
    ["stack", "select", "--create", "ci", "--non-interactive"],
    ["destroy", "--yes", "--non-interactive", "--stack", "ci"],
  ]);
  for (const c of pulumi.calls()) {
    assert.is(c.cwd, fs.realpathSync(dir));
    assert.is(c.backend, defaultBackend);
    assert.is(c.passphrase, "kept");
  }
}));

test("--refresh, and arguments after a lone -- go to the pulumi command", deadline(60_000, async () => {
  const pulumi = standInPulumi();
  const r = await up(["--refresh", "--", "--diff", "--parallel", "2"], { env: { ...unset, PATH: `${pulumi.dir}:${process.env.PATH}` } });
  assert.is(r.code, 0, r.out + r.err);
  assert.equal(pulumi.calls().map((c) => c.argv)[1], ["refresh", "--yes", "--non-interactive", "--stack", "dev", "--diff", "--parallel", "2"]);
}));

test("a failing pulumi command ends the run with its exit code; nothing runs after it", deadline(60_000, async () => {
  const pulumi = standInPulumi();
  const r = await up([], { env: { ...unset, PATH: `${pulumi.dir}:${process.env.PATH}`, STANDIN_FAIL_ON: "stack" } });
  assert.is(r.code, 3);
  assert.equal(pulumi.calls().map((c) => c.argv[0]), ["stack"]);
}));

test("--help names every flag and the environment it reads; two modes at once are a usage error", deadline(60_000, async () => {
  const help = await up(["--help"]);
  assert.is(help.code, 0);
  for (const s of ["--preview", "--destroy", "--refresh", "--stack <name>", "--offline", "[project-dir]", "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "offline deployment (no Pulumi CLI)"]) assert.match(help.out, s);
  const both = await up(["--preview", "--destroy"]);
  assert.is.not(both.code, 0);
  assert.match(both.err, "option '--preview' cannot be used with option '--destroy'");
}));

test("flags parse to a mode, a stack, a project directory and pass-through arguments", () => {
  assert.equal(parseArgs([]), { projectDir: ROOT, mode: "up", stack: "dev", offline: false, passthrough: [] });
  assert.equal(parseArgs(["examples/web-fleet", "--destroy", "--stack", "s1"]), { projectDir: path.resolve("examples/web-fleet"), mode: "destroy", stack: "s1", offline: false, passthrough: [] });
  assert.equal(parseArgs(["--offline", "--refresh", "--", "--diff"]), { projectDir: ROOT, mode: "refresh", stack: "dev", offline: true, passthrough: ["--diff"] });
  assert.equal(cliCommands("preview", "x"), [["stack", "select", "--create", "x", "--non-interactive"], ["preview", "--non-interactive", "--stack", "x"]]);
});

test("an installed CLI's directory goes first on PATH; the user's backend is never replaced", () => {
  const installed = { bin: "/root/.pulumi/versions/3.270.0/bin/pulumi", source: "the Automation API's installer" };
  const env = cliEnvironment(installed, { PATH: "/usr/bin", PULUMI_BACKEND_URL: "https://api.pulumi.com", FORKVM_HOME: home });
  assert.is(env.PATH, "/root/.pulumi/versions/3.270.0/bin:/usr/bin");
  assert.is(env.PULUMI_BACKEND_URL, "https://api.pulumi.com");
  assert.is(env.PULUMI_CONFIG_PASSPHRASE, undefined, "no passphrase invented for the user's backend");
  const fileEnv = cliEnvironment({ bin: "/usr/bin/pulumi", source: "PATH" }, { PATH: "/usr/bin", PULUMI_CONFIG_PASSPHRASE_FILE: "/p", FORKVM_HOME: home });
  assert.is(fileEnv.PATH, "/usr/bin");
  assert.is(fileEnv.PULUMI_BACKEND_URL, defaultBackend);
  assert.is(fileEnv.PULUMI_CONFIG_PASSPHRASE, undefined, "a passphrase file is left to do its job");
});

test("the pulumi npm package's launcher on PATH (node_modules/.bin) is an installer, not the CLI", () => {
  const launcher = path.join(ROOT, "node_modules", ".bin", "pulumi");
  assert.ok(isNpmLauncher(launcher), `${launcher} is the npm package's run.js`);
  assert.is(pulumiOnPath(path.dirname(launcher)), undefined);
  const pulumi = standInPulumi();
  assert.is(pulumiOnPath(`${path.dirname(launcher)}:${pulumi.dir}`), path.join(pulumi.dir, "pulumi"));
  assert.not.ok(isNpmLauncher(path.join(pulumi.dir, "pulumi")));
});

test("without the CLI on PATH each installer is tried in order; the first that works gives the CLI, else one line says why", deadline(10_000, async () => {
  const tried: string[] = [];
  const failing = (name: string, message: string): Installer => ({ name, install: async () => { tried.push(name); throw new Error(message); } });
  const empty = tempDir("empty-path");
  const none = await findPulumiCli({ path: empty, installers: [failing("installer A", "fetch failed"), failing("installer B", "Failed to download\nhttps://x")] });
  assert.equal(tried, ["installer A", "installer B"]);
  assert.is(none.reason, "pulumi is not on PATH; installer A could not install it: fetch failed; installer B could not install it: Failed to download https://x");
  const works: Installer = { name: "installer C", install: async () => "/opt/pulumi/bin/pulumi" };
  const found = await findPulumiCli({ path: empty, installers: [failing("installer A", "offline"), works] });
  assert.equal(found.cli, { bin: "/opt/pulumi/bin/pulumi", source: "installer C" });
}));

test.run();
