// Drives Pulumi's own dynamic-provider host (the node process the Pulumi CLI starts for dynamic
// resources, `@pulumi/pulumi/cmd/dynamic-provider`) over gRPC, as the CLI does: Check, Diff,
// Create, Read, Update, Delete, each carrying the serialised provider in `__provider`; and LogSink,
// a stand-in for the CLI's engine endpoint that receives the providers' Log calls.
// Used by the offline deployment (deploy/offline.ts) and by the tests; not part of the package's exports.
import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";

const grpc = require("@grpc/grpc-js");
const providerRpc = require("@pulumi/pulumi/proto/provider_grpc_pb");
const providerPb = require("@pulumi/pulumi/proto/provider_pb");
const engineRpc = require("@pulumi/pulumi/proto/engine_grpc_pb");
const statusPb = require("@pulumi/pulumi/proto/status_pb");
const structPb = require("google-protobuf/google/protobuf/struct_pb");
const emptyPb = require("google-protobuf/google/protobuf/empty_pb");

type Props = Record<string, any>;

export interface LogEntry {
  severity: "debug" | "info" | "warning" | "error";
  message: string;
  urn: string;
  ephemeral: boolean;
}

const SEVERITIES = ["debug", "info", "warning", "error"] as const;

/** What the CLI's engine endpoint does with a provider's Log calls: here, collect them (and pass them on). */
export class LogSink {
  readonly entries: LogEntry[] = [];
  private constructor(private readonly server: any, readonly address: string) {}

  static async start(onEntry?: (e: LogEntry) => void): Promise<LogSink> {
    const server = new grpc.Server();
    let sink: LogSink | undefined;
    const pending: LogEntry[] = [];
    server.addService(engineRpc.EngineService, {
      log(call: any, callback: any) {
        const r = call.request;
        const e: LogEntry = { severity: SEVERITIES[r.getSeverity()] ?? "info", message: r.getMessage(), urn: r.getUrn(), ephemeral: r.getEphemeral() };
        (sink ? sink.entries : pending).push(e);
        onEntry?.(e);
        callback(null, new emptyPb.Empty());
      },
    });
    const port: number = await new Promise((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err: Error | null, p: number) => (err ? reject(err) : resolve(p))),
    );
    sink = new LogSink(server, `127.0.0.1:${port}`);
    sink.entries.push(...pending);
    return sink;
  }

  stop(): Promise<void> {
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }
}

/** A failed call: the message, and for a partial failure the id and outputs the provider reported. */
export class HostError extends Error {
  constructor(message: string, readonly code: number, readonly id?: string, readonly properties?: Props, readonly reasons: string[] = []) {
    super(message);
    this.name = "HostError";
  }
}

function toStruct(v: Props): any {
  return structPb.Struct.fromJavaScript(v);
}

function errorOf(err: any): HostError {
  let id: string | undefined;
  let properties: Props | undefined;
  let reasons: string[] = [];
  const bin = err?.metadata?.get?.("grpc-status-details-bin")?.[0];
  if (bin) {
    try {
      const status = statusPb.Status.deserializeBinary(new Uint8Array(bin));
      for (const any of status.getDetailsList()) {
        if (!any.getTypeUrl().endsWith("pulumirpc.ErrorResourceInitFailed")) continue;
        const detail = providerPb.ErrorResourceInitFailed.deserializeBinary(any.getValue_asU8());
        id = detail.getId();
        properties = detail.getProperties()?.toJavaScript();
        reasons = detail.getReasonsList();
      }
    } catch {
      /* not a detailed status */
    }
  }
  return new HostError(err?.details ?? err?.message ?? String(err), err?.code ?? -1, id, properties, reasons);
}

export interface HostOptions {
  /** The project directory: the host's cwd, where `forkvm` resolves from. */
  cwd: string;
  /** The Pulumi project name (PULUMI_NODEJS_PROJECT). */
  project: string;
  /** Where the provider may send Log calls (the CLI's engine); default: nowhere that answers. */
  engineAddress?: string;
  env?: NodeJS.ProcessEnv;
  /** Called with every line the host prints after its port (what the CLI shows as info on the stack). */
  onOutput?: (line: string, stream: "stdout" | "stderr") => void;
}

/** One running dynamic-provider host and a client to it. */
export class ProviderHost {
  readonly output: string[] = [];
  private constructor(private readonly proc: ChildProcess, private readonly client: any, readonly port: number) {}

  static async start(opts: HostOptions): Promise<ProviderHost> {
    const script = require.resolve("@pulumi/pulumi/cmd/dynamic-provider", { paths: [opts.cwd] });
    const proc = spawn(process.execPath, [script, opts.engineAddress ?? "127.0.0.1:1"], {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env, PULUMI_NODEJS_PROJECT: opts.project, PULUMI_PROJECT: opts.project },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const lines: string[] = [];
    const port: number = await new Promise((resolve, reject) => {
      let buf = "";
      let err = "";
      const timer = setTimeout(() => reject(new Error(`Cannot start the dynamic-provider host: no port after 30 s; stderr: ${err.slice(-500)}`)), 30_000);
      proc.stderr!.on("data", (d) => (err += d));
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`Cannot start the dynamic-provider host: it exited with ${code}; stderr: ${err.slice(-500)}`));
      });
      const onData = (d: Buffer) => {
        buf += d;
        const nl = buf.indexOf("\n");
        if (nl < 0) return;
        clearTimeout(timer);
        proc.stdout!.off("data", onData);
        const rest = buf.slice(nl + 1);
        if (rest.trim()) lines.push(rest);
        resolve(Number(buf.slice(0, nl).trim()));
      };
      proc.stdout!.on("data", onData);
    });
    proc.removeAllListeners("exit");
    const client = new providerRpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const host = new ProviderHost(proc, client, port);
    host.output.push(...lines);
    const forward = (stream: "stdout" | "stderr") => (d: Buffer) => {
      for (const line of d.toString().split("\n").filter((l) => l.trim())) {
        host.output.push(line);
        opts.onOutput?.(line, stream);
      }
    };
    proc.stdout!.on("data", forward("stdout"));
    proc.stderr!.removeAllListeners("data");
    proc.stderr!.on("data", forward("stderr"));
    return host;
  }

  get pid(): number {
    return this.proc.pid!;
  }

  private call<T>(method: string, req: any): Promise<T> {
    return new Promise((resolve, reject) => this.client[method](req, (err: any, res: T) => (err ? reject(errorOf(err)) : resolve(res))));
  }

  async check(urn: string, olds: Props, news: Props): Promise<{ inputs: Props; failures: Array<{ property: string; reason: string }> }> {
    const req = new providerPb.CheckRequest();
    req.setUrn(urn);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const res: any = await this.call("check", req);
    return {
      inputs: res.getInputs()?.toJavaScript() ?? {},
      failures: res.getFailuresList().map((f: any) => ({ property: f.getProperty(), reason: f.getReason() })),
    };
  }

  async diff(urn: string, id: string, olds: Props, news: Props): Promise<{ changes: "none" | "some" | "unknown"; replaces: string[]; deleteBeforeReplace: boolean }> {
    const req = new providerPb.DiffRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const res: any = await this.call("diff", req);
    const C = providerPb.DiffResponse.DiffChanges;
    const c = res.getChanges();
    return { changes: c === C.DIFF_SOME ? "some" : c === C.DIFF_NONE ? "none" : "unknown", replaces: res.getReplacesList(), deleteBeforeReplace: res.getDeletebeforereplace() };
  }

  async create(urn: string, props: Props): Promise<{ id: string; outs: Props }> {
    const req = new providerPb.CreateRequest();
    req.setUrn(urn);
    req.setProperties(toStruct(props));
    const res: any = await this.call("create", req);
    return { id: res.getId(), outs: res.getProperties()?.toJavaScript() ?? {} };
  }

  async read(urn: string, id: string, props: Props): Promise<{ id: string; props: Props }> {
    const req = new providerPb.ReadRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setProperties(toStruct(props));
    const res: any = await this.call("read", req);
    return { id: res.getId(), props: res.getProperties()?.toJavaScript() ?? {} };
  }

  async update(urn: string, id: string, olds: Props, news: Props): Promise<Props> {
    const req = new providerPb.UpdateRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setOlds(toStruct(olds));
    req.setNews(toStruct(news));
    const res: any = await this.call("update", req);
    return res.getProperties()?.toJavaScript() ?? {};
  }

  async delete(urn: string, id: string, props: Props): Promise<void> {
    const req = new providerPb.DeleteRequest();
    req.setUrn(urn);
    req.setId(id);
    req.setProperties(toStruct(props));
    await this.call("delete", req);
  }

  /** Ends the host and its process group (as the CLI does with its plugins). */
  async stop(): Promise<void> {
    this.client.close();
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => this.proc.once("exit", () => resolve()));
    try {
      process.kill(-this.proc.pid!, "SIGTERM");
    } catch {
      return;
    }
    const timer = setTimeout(() => {
      try {
        process.kill(-this.proc.pid!, "SIGKILL");
      } catch {
        /* gone */
      }
    }, 3000);
    await gone;
    clearTimeout(timer);
  }
}

/** The project root of this package (for the host's cwd in tests and `npm run up`). */
export const PACKAGE_ROOT = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? "../.." : "..");
