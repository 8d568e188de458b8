// Progress and warnings where the user sees them. Inside the Pulumi CLI the dynamic-provider host
// gets the engine's address as its argument; the engine's Log RPC with the resource's URN puts a
// message on that resource's row (ephemeral: the status column; otherwise also under
// "Diagnostics"). Without an engine (tests, `npm run up` without the CLI) messages go to stderr,
// which the CLI shows as info on the stack's row.
import * as path from "node:path";

export interface Reporter {
  /** A transient progress line (rate-limited). */
  status(msg: string): void;
  /** A lasting message. */
  info(msg: string): void;
  warn(msg: string): void;
  /** Waits until every message was delivered. */
  flush(): Promise<void>;
}

const SEVERITY = { info: 1, warn: 2 } as const;
const STATUS_EVERY_MS = 500;

interface EngineLink {
  client: any;
  proto: any;
  broken: boolean;
}

let link: EngineLink | undefined | null;

/** The engine address the dynamic-provider host was started with, if this process is one. */
export function engineAddress(argv = process.argv, env = process.env): string | undefined {
  if (env.FORKVM_PULUMI_ENGINE) return env.FORKVM_PULUMI_ENGINE;
  const i = argv.findIndex((a) => /[\\/]cmd[\\/]dynamic-provider([\\/]index(\.js)?)?$/.test(a));
  // The CLI may put flags (-v=9, --logtostderr, --tracing ...) before the address.
  return i >= 0 ? argv.slice(i + 1).find((a) => /^[\w.-]+:\d+$/.test(a)) : undefined;
}

function engineLink(): EngineLink | undefined {
  if (link !== undefined) return link ?? undefined;
  const addr = engineAddress();
  if (!addr) {
    link = null;
    return undefined;
  }
  try {
    const grpc = require("@grpc/grpc-js");
    const services = require("@pulumi/pulumi/proto/engine_grpc_pb");
    const proto = require("@pulumi/pulumi/proto/engine_pb");
    link = { client: new services.EngineClient(addr, grpc.credentials.createInsecure()), proto, broken: false };
  } catch {
    link = null;
  }
  return link ?? undefined;
}

/** A reporter for one resource; `label` prefixes stderr lines. */
export function reporter(urn: string | undefined, label: string, stderr: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Reporter {
  let chain: Promise<void> = Promise.resolve();
  let lastStatus = 0;
  let pendingStatus: string | undefined;
  let timer: NodeJS.Timeout | undefined;

  const toStderr = (sev: "info" | "warn" | "status", msg: string) => stderr(`forkvm ${label}: ${sev === "warn" ? "warning: " : ""}${msg}`);

  const send = (sev: "info" | "warn", msg: string, ephemeral: boolean) => {
    const l = urn ? engineLink() : undefined;
    if (!l || l.broken) {
      toStderr(ephemeral ? "status" : sev, msg);
      return;
    }
    chain = chain.then(
      () =>
        new Promise<void>((resolve) => {
          const req = new l.proto.LogRequest();
          req.setSeverity(SEVERITY[sev]);
          req.setMessage(msg);
          req.setUrn(urn);
          req.setEphemeral(ephemeral);
          l.client.log(req, { deadline: Date.now() + 2000 }, (err: Error | null) => {
            if (err) {
              l.broken = true;
              toStderr(ephemeral ? "status" : sev, msg);
            }
            resolve();
          });
        }),
    );
  };

  const flushStatus = () => {
    timer = undefined;
    if (pendingStatus === undefined) return;
    const msg = pendingStatus;
    pendingStatus = undefined;
    lastStatus = Date.now();
    send("info", msg, true);
  };

  return {
    status(msg) {
      pendingStatus = msg;
      const wait = lastStatus + STATUS_EVERY_MS - Date.now();
      if (wait <= 0) flushStatus();
      else if (!timer) timer = setTimeout(flushStatus, wait);
    },
    // A lasting message goes after the progress line that preceded it, never before.
    info(msg) {
      if (timer) clearTimeout(timer);
      flushStatus();
      send("info", msg, false);
    },
    warn(msg) {
      if (timer) clearTimeout(timer);
      flushStatus();
      send("warn", msg, false);
    },
    async flush() {
      if (timer) clearTimeout(timer);
      flushStatus();
      await chain;
    },
  };
}

/** The short label of a resource for stderr lines: its type and name from the URN. */
export function labelOf(urn: string | undefined, fallback: string): string {
  if (!urn) return fallback;
  const parts = urn.split("::");
  const type = path.basename((parts[2] ?? "").split("$").pop() ?? "").split(":").pop();
  return `${type ?? "resource"} ${parts[3] ?? fallback}`;
}
