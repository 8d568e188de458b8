// A stand-in for the Pulumi CLI's deployment engine, for machines without the CLI: runs a Pulumi
// program (under pulumi.runtime.setMocks, which hands every resource registration to us) and
// drives each dynamic resource through Pulumi's own dynamic-provider host as the CLI would:
// Check → Create, or Check → Diff → Update / replace (create first unless deleteBeforeReplace),
// then deletes what the program no longer declares, in reverse order. State is a JSON file.
// Only what forkvm programs use: dynamic resources, stack outputs, plain config from
// Pulumi.<stack>.yaml; no secrets, no aliases, no component resources of their own.
import * as fs from "node:fs";
import * as path from "node:path";
import { defaultHome } from "../engine";
import { UNKNOWN } from "../provider/common";
import { HostError, LogSink, ProviderHost, type LogEntry } from "./provider-host";

type Props = Record<string, any>;

export interface ResourceState {
  urn: string;
  type: string;
  name: string;
  id: string;
  /** The checked inputs (what Check returned), the olds of the next Check. */
  inputs: Props;
  outputs: Props;
}

export interface StackState {
  version: 1;
  project: string;
  stack: string;
  resources: ResourceState[];
  outputs: Props;
}

export type Mode = "up" | "preview" | "destroy" | "refresh";

export interface DeployOptions {
  /** The directory holding Pulumi.yaml. */
  projectDir: string;
  stack?: string;
  mode?: Mode;
  /** Where the state lives; default <forkvm home>/pulumi-local/<project>-<stack>.json. */
  stateFile?: string;
  print?: (line: string) => void;
}

export interface DeployResult {
  outputs: Props;
  counts: Record<"create" | "update" | "replace" | "delete" | "same" | "read", number>;
  state: StackState;
}

const SECRET_SIG = "4dabf18193072939515e22adb298388d";

/** The project name and program path from Pulumi.yaml (name, main). */
export function readProject(projectDir: string): { name: string; main: string } {
  const yaml = require("js-yaml");
  const doc = yaml.load(fs.readFileSync(path.join(projectDir, "Pulumi.yaml"), "utf8")) as { name?: string; main?: string; runtime?: unknown };
  if (!doc?.name) throw new Error(`Cannot read ${projectDir}/Pulumi.yaml: no project name`);
  const runtime = typeof doc.runtime === "string" ? doc.runtime : (doc.runtime as { name?: string })?.name;
  if (runtime !== "nodejs") throw new Error(`Cannot run ${projectDir}: runtime ${runtime} is not nodejs`);
  return { name: doc.name, main: path.resolve(projectDir, doc.main ?? "index.ts") };
}

/**
 * The stack's configuration from Pulumi.<stack>.yaml, the file `pulumi config set` writes
 * (plain values; a key without a namespace belongs to the project). Secrets need the CLI.
 */
export function stackConfig(projectDir: string, project: string, stack: string): Record<string, string> {
  const file = path.join(projectDir, `Pulumi.${stack}.yaml`);
  if (!fs.existsSync(file)) return {};
  const doc = require("js-yaml").load(fs.readFileSync(file, "utf8")) as { config?: Record<string, unknown> } | undefined;
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(doc?.config ?? {})) {
    if (v && typeof v === "object" && "secure" in (v as object)) throw new Error(`Cannot read ${file}: ${k} is a secret; secrets need the Pulumi CLI`);
    out[k.includes(":") ? k : `${project}:${k}`] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return out;
}

function loadState(file: string, project: string, stack: string): StackState {
  try {
    const s = JSON.parse(fs.readFileSync(file, "utf8")) as StackState;
    if (s.version === 1) return s;
  } catch {
    /* first run */
  }
  return { version: 1, project, stack, resources: [], outputs: {} };
}

function saveState(file: string, s: StackState): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, `${JSON.stringify(s, null, 2)}\n`);
  fs.renameSync(tmp, file);
}

/** Inputs as the engine sends them to a provider: unknowns as the sentinel, secrets unwrapped. */
function toWire(v: unknown, unknownMarker: unknown): unknown {
  if (v === unknownMarker) return UNKNOWN;
  if (Array.isArray(v)) return v.map((x) => toWire(x, unknownMarker));
  if (v && typeof v === "object") {
    if ((v as Props)[SECRET_SIG]) return toWire((v as Props).value, unknownMarker);
    return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, toWire(x, unknownMarker)]));
  }
  return v;
}

function shortType(type: string): string {
  return type.replace(/^pulumi-nodejs:dynamic\/forkvm:/, "forkvm:");
}

export async function deploy(opts: DeployOptions): Promise<DeployResult> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const mode = opts.mode ?? "up";
  const stackName = opts.stack ?? "dev";
  const project = readProject(opts.projectDir);
  const stateFile = opts.stateFile ?? path.join(defaultHome(), "pulumi-local", `${project.name}-${stackName}.json`);
  const state = loadState(stateFile, project.name, stackName);
  const counts: DeployResult["counts"] = { create: 0, update: 0, replace: 0, delete: 0, same: 0, read: 0 };
  const nameOf = new Map<string, string>(state.resources.map((r) => [r.urn, `${shortType(r.type)} ${r.name}`]));
  const onLog = (e: LogEntry) => {
    const who = nameOf.get(e.urn) ?? "";
    print(`    ${who ? `${who}: ` : ""}${e.ephemeral ? "… " : e.severity === "warning" ? "warning: " : ""}${e.message}`);
  };
  const sink = await LogSink.start(onLog);
  const host = await ProviderHost.start({
    cwd: opts.projectDir, project: project.name, engineAddress: sink.address,
    onOutput: (line) => print(`    ${line}`),
  });
  const t0 = Date.now();
  const save = () => saveState(stateFile, state);
  const replace = (urn: string, r: ResourceState | undefined) => {
    const i = state.resources.findIndex((x) => x.urn === urn);
    if (r && i >= 0) state.resources[i] = r;
    else if (r) state.resources.push(r);
    else if (i >= 0) state.resources.splice(i, 1);
    save();
  };
  const timed = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
    const s = Date.now();
    print(` ${label} …`);
    const v = await fn();
    print(` ${label} done (${((Date.now() - s) / 1000).toFixed(1)} s)`);
    return v;
  };
  try {
    print(`${mode === "preview" ? "Previewing update" : mode === "destroy" ? "Destroying" : mode === "refresh" ? "Refreshing" : "Updating"} (${project.name}/${stackName}) with Pulumi's dynamic-provider host; state in ${stateFile}`);
    if (mode === "destroy") {
      for (const r of [...state.resources].reverse()) {
        await timed(`-  ${shortType(r.type)} ${r.name} delete`, () => host.delete(r.urn, r.id, r.outputs));
        replace(r.urn, undefined);
        counts.delete++;
      }
      state.outputs = {};
      save();
      return { outputs: {}, counts, state };
    }
    if (mode === "refresh") {
      for (const r of [...state.resources]) {
        const read = await host.read(r.urn, r.id, r.outputs);
        counts.read++;
        if (!read.id) {
          print(` -  ${shortType(r.type)} ${r.name} is gone: removed from the state`);
          replace(r.urn, undefined);
        } else {
          replace(r.urn, { ...r, outputs: read.props });
          print(` ~  ${shortType(r.type)} ${r.name} read`);
        }
      }
      return { outputs: state.outputs, counts, state };
    }

    const pulumi = require("@pulumi/pulumi");
    const unknownMarker = require("@pulumi/pulumi/output").unknown;
    const preview = mode === "preview";
    const registered = new Set<string>();
    const toDelete: ResourceState[] = [];
    const failures: string[] = [];

    const newResource = async (args: { type: string; name: string; inputs: Props; custom?: boolean }): Promise<{ id: string | undefined; state: Props }> => {
      if (!args.custom || !args.type.startsWith("pulumi-nodejs:dynamic")) return { id: undefined, state: args.inputs };
      const news = toWire(args.inputs, unknownMarker) as Props;
      const urn = typeof news.__urn === "string" && news.__urn !== UNKNOWN ? news.__urn : `urn:pulumi:${stackName}::${project.name}::${args.type}::${args.name}`;
      const label = `${shortType(args.type)} ${args.name}`;
      nameOf.set(urn, label);
      registered.add(urn);
      const old = state.resources.find((r) => r.urn === urn);
      const checked = async (olds: Props) => {
        const c = await host.check(urn, olds, news);
        if (c.failures.length) {
          const msg = `${label}: ${c.failures.map((f) => `property ${f.property}: ${f.reason}`).join("; ")}`;
          failures.push(msg);
          throw new Error(msg);
        }
        return c.inputs;
      };
      const created = async (inputs: Props): Promise<ResourceState> => {
        try {
          const { id, outs } = await timed(`+  ${label} create`, () => host.create(urn, inputs));
          counts.create++;
          return { urn, type: args.type, name: args.name, id, inputs, outputs: outs };
        } catch (err) {
          if (err instanceof HostError && err.id) replace(urn, { urn, type: args.type, name: args.name, id: err.id, inputs, outputs: err.properties ?? {} });
          failures.push(`${label}: ${(err as Error).message}`);
          throw err;
        }
      };
      let inputs = await checked(old?.inputs ?? {});
      if (!old) {
        if (preview) {
          print(` +  ${label} create`);
          counts.create++;
          return { id: undefined, state: inputs };
        }
        const r = await created(inputs);
        replace(urn, r);
        return { id: r.id, state: r.outputs };
      }
      const diff = await host.diff(urn, old.id, old.outputs, inputs);
      if (diff.changes === "none") {
        counts.same++;
        return { id: old.id, state: old.outputs };
      }
      if (!diff.replaces.length) {
        if (preview) {
          print(` ~  ${label} update`);
          counts.update++;
          return { id: old.id, state: inputs };
        }
        try {
          const outs = await timed(`~  ${label} update`, () => host.update(urn, old.id, old.outputs, inputs));
          counts.update++;
          replace(urn, { ...old, inputs, outputs: outs });
          return { id: old.id, state: outs };
        } catch (err) {
          if (err instanceof HostError && err.properties) replace(urn, { ...old, inputs, outputs: err.properties });
          failures.push(`${label}: ${(err as Error).message}`);
          throw err;
        }
      }
      // Replace: check again without olds (a generated name is generated afresh), as the CLI does.
      inputs = await checked({});
      print(` +- ${label} replace [diff: ${diff.replaces.join(", ")}]${diff.deleteBeforeReplace ? " (delete first)" : ""}`);
      counts.replace++;
      if (preview) return { id: undefined, state: inputs };
      if (diff.deleteBeforeReplace) {
        await timed(`-  ${label} delete (replaced)`, () => host.delete(urn, old.id, old.outputs));
        replace(urn, undefined);
      } else {
        toDelete.push(old);
      }
      const r = await created(inputs);
      replace(urn, r);
      return { id: r.id, state: r.outputs };
    };

    await pulumi.runtime.setMocks({ newResource, call: () => ({}) }, project.name, stackName, preview);
    require("@pulumi/pulumi/runtime/config").setAllConfig(stackConfig(opts.projectDir, project.name, stackName), []);
    if (/\.ts$/.test(project.main)) {
      require("ts-node").register({ transpileOnly: true, project: fs.existsSync(path.join(opts.projectDir, "tsconfig.json")) ? path.join(opts.projectDir, "tsconfig.json") : undefined });
    }
    let outputs: Props = {};
    try {
      outputs = (await pulumi.runtime.runInPulumiStack(async () => require(project.main))) ?? {};
      await require("@pulumi/pulumi/runtime/settings").waitForRPCs();
    } catch (err) {
      if (!failures.length) failures.push((err as Error).message);
    }
    if (failures.length) throw new Error(`update failed: ${failures.join("\n")}`);
    if (!preview) {
      // Old halves of replacements, then what the program no longer declares: dependents first.
      for (const r of toDelete.reverse()) {
        await timed(`-  ${shortType(r.type)} ${r.name} delete (replaced)`, () => host.delete(r.urn, r.id, r.outputs));
        counts.delete++;
      }
      for (const r of [...state.resources].reverse().filter((x) => !registered.has(x.urn))) {
        await timed(`-  ${shortType(r.type)} ${r.name} delete`, () => host.delete(r.urn, r.id, r.outputs));
        replace(r.urn, undefined);
        counts.delete++;
      }
      state.outputs = toWire(outputs, unknownMarker) as Props;
      save();
    } else {
      for (const r of state.resources.filter((x) => !registered.has(x.urn))) {
        print(` -  ${shortType(r.type)} ${r.name} delete`);
        counts.delete++;
      }
    }
    return { outputs: state.outputs, counts, state };
  } finally {
    const summary = Object.entries(counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ") || "no changes";
    print(`Resources: ${summary}; ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await host.stop();
    await sink.stop();
  }
}

/** `node local-deploy.js <projectDir> [up|preview|destroy|refresh] [--stack <name>]`: prints the stack outputs as JSON at the end. */
async function main(argv: string[]): Promise<void> {
  const stackAt = argv.indexOf("--stack");
  const args = argv.filter((a, i) => !a.startsWith("--") && !(stackAt >= 0 && i === stackAt + 1));
  const projectDir = path.resolve(args[0] ?? ".");
  const mode = (args[1] ?? "up") as Mode;
  const r = await deploy({ projectDir, mode, stack: stackAt >= 0 ? argv[stackAt + 1] : undefined });
  if (mode === "up" || mode === "refresh") console.log(`Outputs:\n${JSON.stringify(r.outputs, null, 2)}`);
  process.exit(0);
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(`error: ${(err as Error).message}`);
    process.exit(1);
  });
}
