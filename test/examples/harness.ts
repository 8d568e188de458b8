// Running the example programs: under pulumi.runtime.setMocks (wiring, outputs, the serialised
// providers they produce), those providers in a fresh dynamic-provider host started in the
// example's directory (the way a user's project resolves `forkvm`), and for real through
// `npm run up`'s local engine in a child process.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { ProviderHost } from "../../deploy/provider-host";
import { ROOT } from "../provider/harness";

type Props = Record<string, any>;

export interface Registration {
  type: string;
  name: string;
  inputs: Props;
}

/** What `npm install` does for the examples' "forkvm": "file:../.." dependency: a symlink. */
export function linkForkvm(projectDir: string): void {
  const link = path.join(projectDir, "node_modules", "forkvm");
  if (fs.existsSync(path.join(link, "package.json"))) return;
  fs.mkdirSync(path.dirname(link), { recursive: true });
  fs.rmSync(link, { force: true });
  fs.symlinkSync(path.relative(path.dirname(link), ROOT), link);
}

const kind = (type: string) => type.split(":").pop()!;

/** Plausible outputs for each resource, so the program's exports can be computed under mocks. */
function mockOutputs(type: string, name: string, inputs: Props): Props {
  switch (kind(type)) {
    case "ParentVm":
      return { ...inputs, name: `${name}-mock`, shape: { memoryMiB: inputs.memoryMiB ?? 256, vcpus: 1, diskMiB: 256, accel: "tcg" }, status: "running" };
    case "Template":
      return { ...inputs, name: `${name}-mock`, shape: inputs.__shape, generation: "g-mock", status: "ready", problems: [], children: [] };
    case "InstantClonePool": {
      const prefix = `${name}-mock`;
      const children = Array.from({ length: inputs.size }, (_, i) => ({
        name: `${prefix}-${i + 1}`, vmId: `vm${i}`, index: i + 1, mac: "52:54:00:00:00:01", hostname: `${prefix}-${i + 1}`, template: inputs.template,
        generation: "g-mock", persistent: inputs.persistent ?? false, status: "running", createdAt: "2026-01-01T00:00:00Z",
        forwards: (inputs.forwards ?? []).map((f: Props) => ({ guest: f.guest, proto: f.proto ?? "tcp", host: f.hostBase ? f.hostBase + i : 40000 + i })),
      }));
      return { ...inputs, namePrefix: prefix, estimate: { summary: "mock estimate", warnings: [] }, plan: [], children, generation: "g-mock", ready: inputs.size };
    }
    default:
      return inputs;
  }
}

/**
 * Runs a program under setMocks in this process (once per process: the Pulumi runtime is global).
 * Returns every registration with its inputs (including `__provider`), the stack outputs, and
 * what the program logged.
 */
export async function runUnderMocks(projectDir: string, config: Record<string, string> = {}): Promise<{ registrations: Registration[]; outputs: Props; logs: string[] }> {
  const pulumi = require("@pulumi/pulumi");
  const { readProject } = require("../../deploy/project");
  const project = readProject(projectDir);
  const registrations: Registration[] = [];
  const logs: string[] = [];
  await pulumi.runtime.setMocks(
    {
      newResource: (args: { type: string; name: string; inputs: Props; custom?: boolean }) => {
        if (!args.custom) return { id: undefined, state: args.inputs };
        registrations.push({ type: args.type, name: args.name, inputs: args.inputs });
        const outs = mockOutputs(args.type, args.name, args.inputs);
        return { id: outs.name ?? outs.namePrefix ?? args.name, state: outs };
      },
      call: () => ({}),
    },
    project.name,
    "test",
    false,
  );
  require("@pulumi/pulumi/runtime/config").setAllConfig(Object.fromEntries(Object.entries(config).map(([k, v]) => [`${project.name}:${k}`, v])), []);
  const log = console.log;
  console.log = (...a: unknown[]) => {
    logs.push(a.join(" "));
  };
  try {
    const outputs = (await pulumi.runtime.runInPulumiStack(async () => require(project.main))) ?? {};
    await require("@pulumi/pulumi/runtime/settings").waitForRPCs();
    return { registrations, outputs, logs };
  } finally {
    console.log = log;
  }
}

/** Check of every registration in a fresh dynamic-provider host whose cwd is the project. */
export async function checkInFreshHost(projectDir: string, project: string, registrations: Registration[]): Promise<Array<{ name: string; inputs: Props; failures: unknown[] }>> {
  const host = await ProviderHost.start({ cwd: projectDir, project });
  try {
    const out = [];
    for (const r of registrations) {
      const c = await host.check(r.inputs.__urn, {}, r.inputs);
      out.push({ name: r.name, inputs: c.inputs, failures: c.failures });
    }
    return out;
  } finally {
    await host.stop();
  }
}

/** Runs a command to its end; resolves with its exit code and output. `env` goes on top of this process's; a key set to undefined is removed. */
export function run(cmd: string, args: string[], opts: { cwd: string; env?: Record<string, string | undefined>; timeoutMs?: number }): Promise<{ code: number | null; out: string; err: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { cwd: opts.cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => {
      p.kill("SIGKILL");
      reject(new Error(`${cmd} ${args.join(" ")} took longer than ${opts.timeoutMs} ms:\n${out}\n${err}`));
    }, opts.timeoutMs ?? 180_000);
    p.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
}

/** `npm run up` without the Pulumi CLI, for the project in `projectDir`. */
export function up(projectDir: string, ...args: string[]) {
  return run(process.execPath, [path.join(ROOT, "dist", "deploy", "up.js"), projectDir, ...args], { cwd: projectDir, env: { FORKVM_NO_PULUMI_CLI: "1" } });
}

/** The stack outputs `up` printed last. */
export function outputsOf(out: string): Props {
  const at = out.lastIndexOf("Outputs:\n");
  if (at < 0) throw new Error(`no outputs in:\n${out}`);
  return JSON.parse(out.slice(at + "Outputs:\n".length));
}

/** The "Resources: ..." summary line. */
export function summaryOf(out: string): string {
  return out.match(/^Resources: (.*);/m)?.[1] ?? `(no summary in: ${out.slice(-2000)})`;
}
