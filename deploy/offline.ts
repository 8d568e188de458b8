// The offline deployment (no Pulumi CLI): deploys a program of forkvm resources where the Pulumi CLI
// cannot be had. The program runs in this process against a resource monitor of ours, which sees each
// registration with its options and dependencies; each forkvm resource goes through Pulumi's own
// dynamic-provider host as the CLI would drive it. What it cannot model, it refuses by name.
import * as fs from "node:fs";
import * as path from "node:path";
import * as lockfile from "proper-lockfile";
import { z } from "zod";
import { MockMonitor } from "@pulumi/pulumi/runtime/mocks";
import { specialResourceSig, specialSecretSig, specialSigKey, unknownValue } from "@pulumi/pulumi/runtime/rpc";
import { defaultHome } from "../engine";
import { ForkvmError, messageOf, type ForkvmErrorCode } from "../engine/errors";
import { writeFileAtomic } from "../engine/util/atomic-write";
import { typeOf } from "../sdk/common";
import { readProject, stackConfig, type Project } from "./project";
import { HostError, LogSink, ProviderHost, type LogEntry } from "./provider-host";

/** How every message of this module names it. */
export const OFFLINE = "offline deployment (no Pulumi CLI)";

/** The state file format this code writes. Bump it with every change, and migrate older ones in `loadState`. */
export const STATE_VERSION = 2;

/** A lock not renewed for this long belongs to a run that died: the next run takes it over. */
const LOCK_STALE_MS = 30_000;

/** The type prefix of forkvm's dynamic resources, as in URNs: the only resources this deploys. */
const FORKVM_TYPE_PREFIX = typeOf("");

const ROOT_STACK_TYPE = "pulumi:pulumi:Stack";

type Props = Record<string, any>;

const PropsSchema = z.record(z.string(), z.unknown());

const ResourceStateSchema = z.strictObject({
  urn: z.string().min(1),
  type: z.string().min(1),
  name: z.string().min(1),
  id: z.string(),
  /** The checked inputs (what Check returned): the olds of the next Check. */
  inputs: PropsSchema,
  outputs: PropsSchema,
  /** URNs this resource depends on (its inputs' resources, dependsOn, its parent): deleted after it. */
  dependencies: z.array(z.string()),
  /** The old half of a replacement (or a resource whose delete failed), to be deleted by the next run. */
  pendingDelete: z.boolean().optional(),
});

const StackStateSchema = z.strictObject({
  version: z.literal(STATE_VERSION),
  project: z.string(),
  stack: z.string(),
  resources: z.array(ResourceStateSchema),
  /** The stack outputs as last deployed (secrets shown as "[secret]"). */
  outputs: PropsSchema,
});

/** Version 1 (provider/local-deploy.ts): no dependencies, no pending deletes. */
const StackStateV1Schema = z.object({
  version: z.literal(1),
  project: z.string(),
  stack: z.string(),
  resources: z.array(z.object({ urn: z.string(), type: z.string(), name: z.string(), id: z.string(), inputs: PropsSchema, outputs: PropsSchema })),
  outputs: PropsSchema,
});

export type ResourceState = z.infer<typeof ResourceStateSchema> & { inputs: Props; outputs: Props };
export type StackState = z.infer<typeof StackStateSchema> & { resources: ResourceState[]; outputs: Props };

export type Mode = "up" | "preview" | "destroy" | "refresh";

export interface DeployOptions {
  /** The directory holding Pulumi.yaml. */
  projectDir: string;
  stack?: string;
  mode?: Mode;
  /** Where the state lives; default `stateFileOf(project, stack)`. */
  stateFile?: string;
  print?: (line: string) => void;
}

export interface DeployResult {
  outputs: Props;
  counts: Record<"create" | "update" | "replace" | "delete" | "same" | "read", number>;
  state: StackState;
}

/** `<forkvm home>/pulumi-local/<project>-<stack>.json`. */
export function stateFileOf(project: string, stack: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.join(defaultHome(env), "pulumi-local", `${project}-${stack}.json`);
}

// ---------------------------------------------------------------------------------------------
// State: versioned, validated, written durably, one run at a time

function emptyState(project: string, stack: string): StackState {
  return { version: STATE_VERSION, project, stack, resources: [], outputs: {} };
}

/**
 * Version 1 recorded no dependencies. forkvm's resources refer to each other by engine name, which
 * is each resource's id: a resource depends on every other resource whose id one of its inputs holds.
 */
function migrateV1(v1: z.infer<typeof StackStateV1Schema>): StackState {
  const ids = new Map(v1.resources.map((r) => [r.id, r.urn]));
  const strings = (v: unknown): string[] => (typeof v === "string" ? [v] : Array.isArray(v) ? v.flatMap(strings) : v && typeof v === "object" ? Object.values(v).flatMap(strings) : []);
  return {
    version: STATE_VERSION,
    project: v1.project,
    stack: v1.stack,
    outputs: v1.outputs,
    resources: v1.resources.map((r) => {
      const { __provider: _p, ...inputs } = r.inputs;
      const deps = new Set(strings(inputs).map((s) => ids.get(s)).filter((u): u is string => Boolean(u) && u !== r.urn));
      return { ...r, dependencies: [...deps] };
    }),
  };
}

/**
 * The stack's state from `file`, or an empty state when the file does not exist (a first run).
 * Throws STATE when it is unreadable, not JSON, invalid, of a newer version, or of another stack:
 * never a silent first run, which would deploy a second fleet next to the first.
 */
export function loadState(file: string, project: string, stack: string): StackState {
  const fail = (cause: string, err?: unknown) => new ForkvmError("STATE", `Cannot read the ${OFFLINE} state ${file}: ${cause}`, { cause: err, details: { file } });
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return emptyState(project, stack);
    throw fail(messageOf(err), err);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw fail(`not valid JSON (${messageOf(err)}); it may describe VMs that still exist (see \`forkvm ls\`): repair the file, or remove them and then the file`, err);
  }
  const version = (doc as { version?: unknown } | null)?.version;
  if (typeof version === "number" && version > STATE_VERSION) {
    throw fail(`its version ${version} is newer than this forkvm writes (${STATE_VERSION}); use the forkvm that wrote it`);
  }
  const parsed = version === 1 ? StackStateV1Schema.safeParse(doc) : StackStateSchema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw fail(`${issue?.path.join(".") || "the document"}: ${issue?.message ?? "invalid"}`);
  }
  const state = (parsed.data.version === 1 ? migrateV1(parsed.data) : parsed.data) as StackState;
  if (state.project !== project || state.stack !== stack) throw fail(`it holds the stack ${state.project}/${state.stack}, not ${project}/${stack}`);
  return state;
}

/**
 * Takes the lock of a state file (proper-lockfile's `<file>.lock`); returns its release. Throws
 * CONFLICT when another run holds it. A lock lost later (its directory removed, the machine
 * suspended) is reported to `onCompromised`, never thrown from a timer.
 */
export async function lockState(file: string, onCompromised: (err: Error) => void): Promise<() => Promise<void>> {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  try {
    return await lockfile.lock(file, { realpath: false, retries: 0, stale: LOCK_STALE_MS, onCompromised });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ELOCKED") {
      throw new ForkvmError("CONFLICT", `Cannot lock the ${OFFLINE} state ${file}: another run of this stack holds ${file}.lock; wait for it to end (a lock not renewed for ${LOCK_STALE_MS / 1000} s is taken over)`, { cause: err, details: { file } });
    }
    throw new ForkvmError("STATE", `Cannot lock the ${OFFLINE} state ${file}: ${messageOf(err)}`, { cause: err, details: { file } });
  }
}

/**
 * The order in which to delete `items`: dependents first. An item goes once nothing left depends on
 * its URN; among those, the one recorded last goes first. Throws STATE on a dependency cycle.
 */
export function deletionOrder<T extends { urn: string; dependencies: readonly string[] }>(items: readonly T[]): T[] {
  const left = [...items];
  const out: T[] = [];
  while (left.length) {
    const ready = left.filter((x) => !left.some((y) => y !== x && y.urn !== x.urn && y.dependencies.includes(x.urn)));
    if (!ready.length) throw new ForkvmError("STATE", `Cannot order the deletion of ${left.map((x) => x.urn).join(", ")}: their dependencies form a cycle`);
    const next = ready[ready.length - 1];
    out.push(next);
    left.splice(left.indexOf(next), 1);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// What the offline deployment refuses

/** A registration as the resource monitor receives it: the parts that decide whether it can be modelled. */
export interface RegistrationView {
  type: string;
  name: string;
  custom: boolean;
  remote: boolean;
  /** Set when the resource is the root stack (no parent). */
  root: boolean;
  importId: string;
  provider: string;
  /** How many entries the `providers` option has. */
  providers: number;
  protect: boolean;
  retainOnDelete: boolean;
  ignoreChanges: string[];
  replaceOnChanges: string[];
  aliases: number;
  customTimeouts: string[];
  deleteBeforeReplace: boolean;
  deletedWith: string;
  replaceWith: string[];
  replacementTrigger: boolean;
  hooks: boolean;
  additionalSecretOutputs: string[];
  hideDiffs: string[];
  transforms: number;
  version: string;
  pluginDownloadUrl: string;
}

/** The view of a pulumirpc.RegisterResourceRequest. */
function viewOf(req: any): RegistrationView {
  const timeouts = req.getCustomtimeouts?.();
  const trigger = req.getReplacementTrigger?.();
  return {
    type: req.getType(),
    name: req.getName(),
    custom: req.getCustom(),
    remote: Boolean(req.getRemote?.()),
    root: req.getType() === ROOT_STACK_TYPE && !req.getParent(),
    importId: req.getImportid() ?? "",
    provider: req.getProvider() ?? "",
    providers: req.getProvidersMap()?.getLength() ?? 0,
    protect: Boolean(req.getProtect?.()),
    retainOnDelete: Boolean(req.getRetainondelete?.()),
    ignoreChanges: req.getIgnorechangesList() ?? [],
    replaceOnChanges: req.getReplaceonchangesList() ?? [],
    aliases: (req.getAliasesList()?.length ?? 0) + (req.getAliasurnsList()?.length ?? 0),
    customTimeouts: timeouts
      ? Object.entries({ create: timeouts.getCreate(), update: timeouts.getUpdate(), delete: timeouts.getDelete(), read: timeouts.getRead() }).filter(([, v]) => v).map(([k]) => k)
      : [],
    deleteBeforeReplace: Boolean(req.getDeletebeforereplacedefined?.() && req.getDeletebeforereplace()),
    deletedWith: req.getDeletedwith?.() ?? "",
    replaceWith: req.getReplaceWithList?.() ?? [],
    replacementTrigger: trigger !== undefined && trigger !== null,
    hooks: Boolean(req.getHooks?.()),
    additionalSecretOutputs: req.getAdditionalsecretoutputsList?.() ?? [],
    hideDiffs: req.getHidediffsList?.() ?? [],
    transforms: req.getTransformsList?.()?.length ?? 0,
    version: req.getVersion?.() ?? "",
    pluginDownloadUrl: req.getPlugindownloadurl?.() ?? "",
  };
}

/**
 * Why the offline deployment cannot deploy this registration ("<type> <name>: <why>"), or undefined
 * when it can: it models forkvm's dynamic resources with their inputs and dependencies (the
 * resources their inputs come from, `dependsOn`, `parent`), and nothing else.
 */
export function refusalOf(r: RegistrationView): string | undefined {
  if (r.root) return undefined;
  const what = `${shortType(r.type)} ${r.name}`;
  if (!r.custom || r.remote || !r.type.startsWith(FORKVM_TYPE_PREFIX)) {
    return `${what}: ${r.custom ? "a resource of another provider" : "a component resource"}, not one of forkvm's (ParentVm, Template, InstantClonePool), the only ones it deploys; use the Pulumi CLI for this program`;
  }
  const options: string[] = [];
  const list = (xs: string[]) => (xs.length ? ` (${xs.join(", ")})` : "");
  if (r.importId) options.push(`import (id ${r.importId})`);
  if (r.provider || r.providers) options.push("provider/providers");
  if (r.protect) options.push("protect");
  if (r.retainOnDelete) options.push("retainOnDelete");
  if (r.ignoreChanges.length) options.push(`ignoreChanges${list(r.ignoreChanges)}`);
  if (r.replaceOnChanges.length) options.push(`replaceOnChanges${list(r.replaceOnChanges)}`);
  if (r.aliases) options.push("aliases");
  if (r.customTimeouts.length) options.push(`customTimeouts${list(r.customTimeouts)}`);
  if (r.deleteBeforeReplace) options.push("deleteBeforeReplace");
  if (r.deletedWith) options.push("deletedWith");
  if (r.replaceWith.length) options.push("replaceWith");
  if (r.replacementTrigger) options.push("replacementTrigger");
  if (r.hooks) options.push("hooks");
  if (r.additionalSecretOutputs.length) options.push(`additionalSecretOutputs${list(r.additionalSecretOutputs)}`);
  if (r.hideDiffs.length) options.push("hideDiffs");
  if (r.transforms) options.push("transforms");
  if (r.version) options.push(`version (${r.version})`);
  if (r.pluginDownloadUrl) options.push("pluginDownloadURL");
  if (!options.length) return undefined;
  return `${what}: it does not honour the resource option${options.length > 1 ? "s" : ""} ${options.join(", ")}; remove ${options.length > 1 ? "them" : "it"} or use the Pulumi CLI`;
}

// ---------------------------------------------------------------------------------------------
// Values between the program, the state and the providers

/**
 * Inputs as the CLI's engine hands them to a provider that takes neither secrets nor resource
 * references: secrets unwrapped, a resource reference replaced by its id (or URN), unknowns kept
 * as the sentinel, undefined fields dropped.
 */
export function providerValue(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(providerValue);
  if (v && typeof v === "object") {
    const o = v as Props;
    if (o[specialSigKey] === specialSecretSig) return providerValue(o.value);
    if (o[specialSigKey] === specialResourceSig) return o.id || o.urn;
    return Object.fromEntries(Object.entries(o).filter(([, x]) => x !== undefined).map(([k, x]) => [k, providerValue(x)]));
  }
  return v;
}

/** Stack outputs for the state file and the terminal: secrets as "[secret]", unknowns as "[unknown]". */
export function displayValue(v: unknown): unknown {
  if (v === unknownValue) return "[unknown]";
  if (Array.isArray(v)) return v.map(displayValue);
  if (v && typeof v === "object") {
    const o = v as Props;
    if (o[specialSigKey] === specialSecretSig) return "[secret]";
    if (o[specialSigKey] === specialResourceSig) return o.urn;
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, displayValue(x)]));
  }
  return v;
}

function shortType(type: string): string {
  return type.startsWith(FORKVM_TYPE_PREFIX) ? `forkvm:${type.slice(FORKVM_TYPE_PREFIX.length)}` : type;
}

// ---------------------------------------------------------------------------------------------
// The resource monitor the program talks to

interface Registration {
  view: RegistrationView;
  urn: string;
  /** The inputs in the provider's form (see providerValue). */
  inputs: Props;
  dependencies: string[];
}

/** What a registration that comes after a failure is told: it is not reported as a failure of its own. */
const SKIPPED = "skipped after an earlier failure";

type Handler = (reg: Registration) => Promise<{ id?: string; state: Props }>;

const resourcePb = require("@pulumi/pulumi/proto/resource_pb");
const structPb = require("google-protobuf/google/protobuf/struct_pb");
const rpc = require("@pulumi/pulumi/runtime/rpc");

/**
 * Pulumi's mock monitor (what `pulumi.runtime.setMocks` installs), with registration, reads and
 * invokes of our own: each registration reaches `handler` with all its options and dependencies,
 * URNs are shaped as the CLI's engine shapes them, errors are recorded in `failures`.
 */
class OfflineMonitor extends MockMonitor {
  stackUrn = "";
  stackOutputs: Props = {};
  readonly failures: Array<{ message: string; code: ForkvmErrorCode }> = [];
  private readonly qualifiedTypes = new Map<string, string>();

  constructor(private readonly project: string, private readonly stack: string, private readonly handler: Handler) {
    const unreachable = () => {
      throw new Error("unreachable: OfflineMonitor handles registrations and invokes itself");
    };
    super({ newResource: unreachable, call: unreachable });
  }

  /** Records a failure once (the SDK may report the same one again, wrapped) and returns it. */
  fail(err: unknown): unknown {
    const message = messageOf(err);
    if (!message.includes(SKIPPED) && !this.failures.some((f) => message.includes(f.message))) {
      this.failures.push({ message, code: err instanceof ForkvmError ? err.code : "HOST" });
    }
    return err;
  }

  /** The URN the CLI's engine gives: children of the root stack are not qualified by its type. */
  private urnOf(parent: string, type: string, name: string): string {
    const parentType = parent && parent !== this.stackUrn ? this.qualifiedTypes.get(parent) ?? parent.split("::")[2] : undefined;
    const qualified = parentType ? `${parentType}$${type}` : type;
    const urn = `urn:pulumi:${this.stack}::${this.project}::${qualified}::${name}`;
    this.qualifiedTypes.set(urn, qualified);
    return urn;
  }

  override async registerResource(req: any, callback: (err: any, res: any) => void): Promise<void> {
    try {
      const view = viewOf(req);
      const urn = this.urnOf(req.getParent(), view.type, view.name);
      let result: { id?: string; state: Props };
      if (view.root) {
        this.stackUrn = urn;
        result = { state: {} };
      } else {
        const refusal = refusalOf(view);
        if (refusal) throw new ForkvmError("INVALID_ARGUMENT", refusal);
        const deps = new Set<string>(req.getDependenciesList());
        req.getPropertydependenciesMap().forEach((d: any) => d.getUrnsList().forEach((u: string) => deps.add(u)));
        if (req.getParent() && req.getParent() !== this.stackUrn) deps.add(req.getParent());
        deps.delete(urn);
        const inputs = providerValue(req.getObject()?.toJavaScript() ?? {}) as Props;
        result = await this.handler({ view, urn, inputs, dependencies: [...deps] });
      }
      const state = await rpc.serializeProperties("", result.state);
      this.resources.set(urn, { urn, id: result.id ?? null, state });
      const res = new resourcePb.RegisterResourceResponse();
      res.setUrn(urn);
      res.setId(result.id ?? "");
      res.setObject(structPb.Struct.fromJavaScript(state));
      callback(null, res);
    } catch (err) {
      callback(this.fail(err), undefined);
    }
  }

  override registerResourceOutputs(req: any, callback: (err: any, res: any) => void): void {
    if (req.getUrn() === this.stackUrn) this.stackOutputs = req.getOutputs()?.toJavaScript() ?? {};
    super.registerResourceOutputs(req, callback);
  }

  override async invoke(req: any, callback: (err: any, res: any) => void): Promise<void> {
    if (req.getTok() === "pulumi:pulumi:getResource") return super.invoke(req, callback);
    callback(this.fail(new ForkvmError("INVALID_ARGUMENT", `function ${req.getTok()}: it runs no provider functions; use the Pulumi CLI for this program`)), undefined);
  }

  override async readResource(req: any, callback: (err: any, res: any) => void): Promise<void> {
    const what = `${shortType(req.getType())} ${req.getName()}`;
    const err = new ForkvmError("INVALID_ARGUMENT", `${what}: it does not read existing resources (Resource.get or the id option); use the Pulumi CLI for this program`);
    callback(this.fail(err), undefined);
  }
}

/** Modules a program loaded, so that it can run again in the same process. */
function forgetModulesSince(before: Set<string>): void {
  for (const k of Object.keys(require.cache)) if (!before.has(k) && !k.includes(`${path.sep}node_modules${path.sep}`)) delete require.cache[k];
}

let tsNodeRegistered = false;

/**
 * Runs the program once against `monitor`, to its end and the end of every registration it made.
 * Failures are in `monitor.failures` (the SDK reports a failed registration as an unhandled
 * rejection, which is caught here too).
 */
async function runProgram(project: Project, stack: string, preview: boolean, monitor: OfflineMonitor): Promise<void> {
  const pulumi = require("@pulumi/pulumi");
  const settings = require("@pulumi/pulumi/runtime/settings");
  await pulumi.runtime.setMocks(monitor.mocks, project.name, stack, preview);
  settings.setMockOptions(monitor, project.name, stack, preview);
  require("@pulumi/pulumi/runtime/config").setAllConfig(stackConfig(project.dir, project.name, stack), []);
  if (/\.ts$/.test(project.main) && !tsNodeRegistered) {
    const tsconfig = path.join(project.dir, "tsconfig.json");
    require("ts-node").register({ transpileOnly: true, project: fs.existsSync(tsconfig) ? tsconfig : undefined });
    tsNodeRegistered = true;
  }
  const onRejection = (err: unknown) => void monitor.fail(err);
  process.on("unhandledRejection", onRejection);
  const before = new Set(Object.keys(require.cache));
  try {
    await pulumi.runtime.runInPulumiStack(async () => require(project.main));
    await settings.waitForRPCs();
  } catch (err) {
    monitor.fail(err);
  } finally {
    // Let late rejections of this run arrive while the handler is still installed.
    await new Promise((resolve) => setImmediate(resolve));
    process.off("unhandledRejection", onRejection);
    forgetModulesSince(before);
  }
}

// ---------------------------------------------------------------------------------------------
// The deployment

/**
 * Deploys (`up`), previews, refreshes or destroys the stack `stack` of the program in
 * `projectDir`, holding the lock of its state file throughout.
 * Throws CONFLICT when another run holds the lock, STATE when the state file is unreadable or
 * newer, INVALID_ARGUMENT naming the first resource, option or call the offline deployment cannot
 * model (before anything is deployed, as far as a preview of the program shows), and the
 * provider's error when an operation fails (the state then records what was done).
 */
export async function deploy(opts: DeployOptions): Promise<DeployResult> {
  const print = opts.print ?? ((l: string) => console.log(l));
  const mode = opts.mode ?? "up";
  const stack = opts.stack ?? "dev";
  const project = readProject(opts.projectDir);
  const stateFile = opts.stateFile ?? stateFileOf(project.name, stack);
  let lost: Error | undefined;
  const release = await lockState(stateFile, (err) => {
    lost = err;
    print(`warning: the ${OFFLINE} lost the lock of ${stateFile} (${err.message}); this run stops at its next state write`);
  });
  const counts: DeployResult["counts"] = { create: 0, update: 0, replace: 0, delete: 0, same: 0, read: 0 };
  const t0 = Date.now();
  let started = false;
  let host: ProviderHost | undefined;
  let sink: LogSink | undefined;
  try {
    const state = loadState(stateFile, project.name, stack);
    const save = () => {
      if (lost) throw new ForkvmError("CONFLICT", `Cannot write the ${OFFLINE} state ${stateFile}: its lock was lost (${lost.message}); another run may be changing it`);
      writeFileAtomic(stateFile, `${JSON.stringify(state, null, 2)}\n`, 0o600);
    };
    const verb = { up: "Updating", preview: "Previewing update", destroy: "Destroying", refresh: "Refreshing" }[mode];
    print(`${verb} (${project.name}/${stack}) with the ${OFFLINE}: Pulumi's dynamic-provider host, state in ${stateFile}`);
    started = true;

    // Everything the program declares must be deployable before anything is done.
    if (mode === "up") {
      const check = new OfflineMonitor(project.name, stack, async () => ({ state: {} }));
      const log = console.log;
      console.log = () => undefined;
      try {
        await runProgram(project, stack, true, check);
      } finally {
        console.log = log;
      }
      if (check.failures.length) throw programError(project, stack, mode, check.failures);
    }

    const nameOf = new Map<string, string>(state.resources.map((r) => [r.urn, `${shortType(r.type)} ${r.name}`]));
    const onLog = (e: LogEntry) => {
      const who = nameOf.get(e.urn) ?? "";
      print(`    ${who ? `${who}: ` : ""}${e.ephemeral ? "… " : e.severity === "warning" ? "warning: " : ""}${e.message}`);
    };
    sink = await LogSink.start(onLog);
    host = await ProviderHost.start({ cwd: project.dir, project: project.name, engineAddress: sink.address, onOutput: (line) => print(`    ${line}`) });
    const h = host;
    const timed = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
      const s = Date.now();
      print(` ${label} …`);
      const v = await fn();
      print(` ${label} done (${((Date.now() - s) / 1000).toFixed(1)} s)`);
      return v;
    };
    const label = (r: { type: string; name: string }) => `${shortType(r.type)} ${r.name}`;
    const live = (urn: string) => state.resources.find((r) => r.urn === urn && !r.pendingDelete);
    const remove = (r: ResourceState) => {
      const i = state.resources.indexOf(r);
      if (i >= 0) state.resources.splice(i, 1);
      save();
    };
    const deleteAll = async (items: ResourceState[], why = "") => {
      for (const r of deletionOrder(items)) {
        await timed(`-  ${label(r)} delete${r.pendingDelete ? " (replaced)" : why}`, () => h.delete(r.urn, r.id, r.outputs));
        remove(r);
        counts.delete++;
      }
    };

    if (mode === "destroy") {
      await deleteAll(state.resources);
      state.outputs = {};
      save();
      return { outputs: {}, counts, state };
    }

    if (mode === "refresh") {
      for (const r of [...state.resources]) {
        const read = await h.read(r.urn, r.id, r.outputs);
        counts.read++;
        if (!read.id) {
          print(` -  ${label(r)} is gone: removed from the state`);
          remove(r);
        } else {
          r.outputs = read.props;
          save();
          print(` ~  ${label(r)} read`);
        }
      }
      return { outputs: state.outputs, counts, state };
    }

    const preview = mode === "preview";
    const registered = new Set<string>();
    let monitor: OfflineMonitor | undefined;
    const handler: Handler = async ({ view, urn, inputs: news, dependencies }) => {
      if (monitor!.failures.length) throw new Error(`${view.type} ${view.name}: ${SKIPPED}`);
      if (registered.has(urn)) throw new ForkvmError("INVALID_ARGUMENT", `${view.type} ${view.name}: the program declares ${urn} twice`);
      registered.add(urn);
      const what = label(view);
      nameOf.set(urn, what);
      const old = live(urn);
      const record = (r: Omit<ResourceState, "urn" | "type" | "name" | "dependencies">): ResourceState => ({ urn, type: view.type, name: view.name, dependencies, ...r });
      const checked = async (olds: Props) => {
        const c = await h.check(urn, olds, news);
        if (c.failures.length) throw new ForkvmError("INVALID_ARGUMENT", `${what}: ${c.failures.map((f) => `property ${f.property}: ${f.reason}`).join("; ")}`);
        return c.inputs;
      };
      /** Creates the resource; the state records it (a partial create too) together with `alsoSave`. */
      const created = async (inputs: Props, before: () => void = () => undefined): Promise<ResourceState> => {
        try {
          const { id, outs } = await timed(`+  ${what} create`, () => h.create(urn, inputs));
          counts.create++;
          const r = record({ id, inputs, outputs: outs });
          before();
          state.resources.push(r);
          save();
          return r;
        } catch (err) {
          if (err instanceof HostError && err.id) {
            before();
            state.resources.push(record({ id: err.id, inputs, outputs: err.properties ?? {} }));
            save();
          }
          throw new Error(`${what}: ${messageOf(err)}`);
        }
      };
      let inputs = await checked(old?.inputs ?? {});
      if (!old) {
        if (preview) {
          print(` +  ${what} create`);
          counts.create++;
          return { state: inputs };
        }
        const r = await created(inputs);
        return { id: r.id, state: r.outputs };
      }
      const diff = await h.diff(urn, old.id, old.outputs, inputs);
      if (diff.changes === "none") {
        counts.same++;
        if (!preview && old.dependencies.join() !== dependencies.join()) {
          old.dependencies = dependencies;
          save();
        }
        return { id: old.id, state: old.outputs };
      }
      if (!diff.replaces.length) {
        if (preview) {
          print(` ~  ${what} update`);
          counts.update++;
          return { id: old.id, state: inputs };
        }
        try {
          const outs = await timed(`~  ${what} update`, () => h.update(urn, old.id, old.outputs, inputs));
          counts.update++;
          Object.assign(old, { inputs, outputs: outs, dependencies });
          save();
          return { id: old.id, state: outs };
        } catch (err) {
          if (err instanceof HostError && err.properties) {
            Object.assign(old, { inputs, outputs: err.properties, dependencies });
            save();
          }
          throw new Error(`${what}: ${messageOf(err)}`);
        }
      }
      // Replace: check again without olds (a generated name is generated afresh), as the CLI does.
      inputs = await checked({});
      print(` +- ${what} replace [diff: ${diff.replaces.join(", ")}]${diff.deleteBeforeReplace ? " (delete first)" : ""}`);
      counts.replace++;
      if (preview) return { state: inputs };
      if (diff.deleteBeforeReplace) {
        await timed(`-  ${what} delete (replaced)`, () => h.delete(urn, old.id, old.outputs));
        remove(old);
        const r = await created(inputs);
        return { id: r.id, state: r.outputs };
      }
      // Create first; the old half stays in the state, marked, until it is deleted below.
      const r = await created(inputs, () => (old.pendingDelete = true));
      return { id: r.id, state: r.outputs };
    };
    monitor = new OfflineMonitor(project.name, stack, handler);
    await runProgram(project, stack, preview, monitor);
    if (monitor.failures.length) throw programError(project, stack, mode, monitor.failures);

    const gone = state.resources.filter((r) => r.pendingDelete || !registered.has(r.urn));
    if (preview) {
      for (const r of deletionOrder(gone)) {
        print(` -  ${label(r)} delete${r.pendingDelete ? " (replaced)" : ""}`);
        counts.delete++;
      }
      return { outputs: displayValue(monitor.stackOutputs) as Props, counts, state };
    }
    // Old halves of replacements, then what the program no longer declares: dependents first.
    await deleteAll(gone);
    state.outputs = displayValue(monitor.stackOutputs) as Props;
    save();
    return { outputs: state.outputs, counts, state };
  } finally {
    const summary = Object.entries(counts).filter(([, n]) => n).map(([k, n]) => `${n} ${k}`).join(", ") || "no changes";
    if (started) print(`Resources: ${summary}; ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await host?.stop();
    await sink?.stop();
    await release().catch(() => undefined);
  }
}

function programError(project: Project, stack: string, mode: Mode, failures: OfflineMonitor["failures"]): ForkvmError {
  const verb = mode === "preview" ? "preview" : "update";
  const messages = failures.map((f) => f.message);
  const list = messages.length === 1 ? ` ${messages[0]}` : messages.map((m) => `\n  ${m}`).join("");
  return new ForkvmError(failures[0].code, `Cannot ${verb} the stack ${project.name}/${stack} with the ${OFFLINE}:${list}`, { details: { failures: messages } });
}
