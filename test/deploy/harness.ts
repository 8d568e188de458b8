// Shared by the deploy suites: throwaway Pulumi projects that depend on this package the way the
// examples do (node_modules/forkvm → the package), `npm run up`'s entry run from the sources in a
// child process, and a stand-in `pulumi` executable that records how it was called.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { ROOT } from "../provider/harness";
import { linkForkvm, run } from "../examples/harness";

/** A fresh directory under this suite's test home (or the system's temp dir). */
export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(process.env.FORKVM_TEST_HOME ?? os.tmpdir(), `${prefix}-`));
}

/**
 * A Pulumi project (TypeScript) named `name` whose index.ts is `program`, depending on forkvm as
 * "file:<package>", with node_modules/forkvm linked as `npm install` would and @pulumi/pulumi
 * taken from this package (one SDK instance, as in a user's project).
 */
export function makeProject(name: string, program: string): string {
  const dir = tempDir(`project-${name}`);
  fs.writeFileSync(path.join(dir, "Pulumi.yaml"), `name: ${name}\nruntime:\n  name: nodejs\n  options:\n    typescript: true\nmain: index.ts\n`);
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name, private: true, dependencies: { "@pulumi/pulumi": "*", forkvm: `file:${ROOT}` } }, null, 2));
  fs.writeFileSync(path.join(dir, "index.ts"), program);
  linkForkvm(dir);
  fs.mkdirSync(path.join(dir, "node_modules", "@pulumi"), { recursive: true });
  fs.symlinkSync(path.join(ROOT, "node_modules", "@pulumi", "pulumi"), path.join(dir, "node_modules", "@pulumi", "pulumi"));
  return dir;
}

export interface Run {
  code: number | null;
  out: string;
  err: string;
}

/**
 * Runs `npm run up`'s entry (deploy/up.ts through ts-node, so no build is needed) with `args`, in
 * `cwd`, with exactly `env` on top of this process's environment; a key set to undefined is removed.
 */
export function up(args: string[], opts: { env?: Record<string, string | undefined>; cwd?: string; timeoutMs?: number } = {}): Promise<Run> {
  return run(process.execPath, ["-r", "ts-node/register/transpile-only", path.join(ROOT, "deploy", "up.ts"), ...args], { cwd: opts.cwd ?? ROOT, env: opts.env, timeoutMs: opts.timeoutMs ?? 60_000 });
}

export interface Call {
  argv: string[];
  cwd: string;
  backend: string | null;
  passphrase: string | null;
  firstOnPath: string;
}

/**
 * A stand-in `pulumi` in a fresh directory: it appends its argv, cwd and the Pulumi environment
 * it got to a log, and exits 0 (or 3 when its first argument is STANDIN_FAIL_ON). It deploys nothing.
 */
export function standInPulumi(): { dir: string; calls: () => Call[] } {
  const dir = tempDir("stand-in-pulumi");
  const log = path.join(dir, "calls.jsonl");
  const script = `#!${process.execPath}
const fs = require("node:fs");
fs.appendFileSync(${JSON.stringify(log)}, JSON.stringify({
  argv: process.argv.slice(2), cwd: process.cwd(),
  backend: process.env.PULUMI_BACKEND_URL ?? null, passphrase: process.env.PULUMI_CONFIG_PASSPHRASE ?? null,
  firstOnPath: (process.env.PATH || "").split(":")[0],
}) + "\\n");
process.exit(process.argv[2] === process.env.STANDIN_FAIL_ON ? 3 : 0);
`;
  fs.writeFileSync(path.join(dir, "pulumi"), script, { mode: 0o755 });
  return {
    dir,
    calls: () => (fs.existsSync(log) ? fs.readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Call) : []),
  };
}
