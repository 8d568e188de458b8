// Starting and ending one QEMU instance of a VM directory, and reaching its guest agent:
// what every verb (parent, template, fork, lifecycle) composes.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError, messageOf } from "../errors";
import { qemuArgv, vmPaths, type InstanceSpec, type MachineShape, type PortForward } from "../qemu/argv";
import { isAlive, killQemu, spawnQemu, tail } from "../qemu/process";
import { Qmp } from "../qemu/qmp";
import { AgentClient, createAgentFifos } from "../guest/client";
import type { VmManifest } from "../state/manifest";
import { attachNetwork, PORT_ATTEMPTS, PortConflict, portConflicts, releasePorts, repickConflicts } from "../net";
import { netSocketPath } from "../net/netdev";

export interface Started {
  pid: number;
  qmp: Qmp;
  /** The forwards as bound (an `auto` one may have moved to another host port; see InstanceSpec.forwards). */
  forwards: PortForward[];
  /** The VM's passt, when its egress is `nat` (it ends by itself when QEMU does). */
  netPid?: number;
}

/** The part of QEMU's log written since `from` bytes (what this attempt printed). */
function logSince(file: string, from: number): string {
  try {
    const fd = fs.openSync(file, "r");
    try {
      const size = fs.fstatSync(fd).size;
      const buf = Buffer.alloc(Math.max(0, Math.min(size - from, 64 * 1024)));
      fs.readSync(fd, buf, 0, buf.length, Math.max(from, size - buf.length));
      return buf.toString("utf8");
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return "";
  }
}

function sizeOf(file: string): number {
  try { return fs.statSync(file).size; } catch { return 0; }
}

/**
 * Starts one QEMU instance for a VM directory, with its NIC's backend (engine/net: passt for
 * egress `nat`), and returns once its monitor answers and every forward is bound. A host port of
 * an `auto` forward that turns out to be taken (by anyone: QEMU or passt binds it and says so) is
 * replaced by a new one and the start tried again, up to PORT_ATTEMPTS times; the ports bound
 * are written into `inst.forwards` in place. On failure QEMU is killed and the error (QEMU, or
 * CONFLICT naming a port of the user's that is taken) carries the last lines QEMU printed.
 */
export async function startInstance(shape: MachineShape, inst: InstanceSpec, deadlineMs = 30_000): Promise<Started> {
  const p = vmPaths(inst.dir);
  const forwards = inst.forwards ?? [];
  try {
    for (let attempt = 1; ; attempt++) {
      for (const f of [p.qmp, p.console, p.pidfile, netSocketPath(inst.dir)]) fs.rmSync(f, { force: true });
      if (!fs.existsSync(`${p.agent}.in`)) await createAgentFifos(p.agent);
      const logFrom = sizeOf(p.log);
      const pid = await spawnQemu(inst.dir, qemuArgv(shape, inst), inst.limits);
      let qmp: Qmp | undefined;
      let stage: "qemu" | "network" = "qemu";
      try {
        qmp = await Qmp.connect(p.qmp, deadlineMs, () => isAlive(pid, inst.token));
        stage = "network";
        const netPid = shape.nic ? await attachNetwork(inst.dir, inst.egress ?? "none", forwards) : undefined;
        return { pid, qmp, forwards, netPid };
      } catch (err) {
        qmp?.close();
        await killQemu(pid, inst.token, 500).catch(() => undefined);
        const conflicts = err instanceof PortConflict ? err.conflicts : portConflicts(logSince(p.log, logFrom));
        if (conflicts.length && attempt < PORT_ATTEMPTS && (await repickConflicts(forwards, conflicts))) continue;
        if (conflicts.length) {
          const ports = conflicts.map((c) => `${c.proto} 127.0.0.1:${c.host}`).join(", ");
          throw new ForkvmError("CONFLICT", `Cannot start QEMU for ${path.basename(inst.dir)}: host port ${ports} is in use${attempt > 1 ? ` (after ${attempt} tries)` : ""}`, { cause: err, details: { conflicts, field: "forwards" } });
        }
        if (err instanceof ForkvmError && err.code === "HOST") throw err;
        // QEMU was up and its network backend failed: that failure is the cause (QEMU's own last
        // log line would only say it was terminated, by us, just now).
        if (stage === "network") throw new ForkvmError(err instanceof ForkvmError ? err.code : "QEMU", `Cannot start the network of ${path.basename(inst.dir)}: ${messageOf(err)}`, { cause: err, details: err instanceof ForkvmError ? err.details : {} });
        throw qemuFailure(inst.dir, `start QEMU for ${path.basename(inst.dir)}`, err);
      }
    }
  } finally {
    releasePorts(forwards.map((f) => f.host));
  }
}

/** An error for a QEMU failure that carries QEMU's last stderr lines. */
export function qemuFailure(dir: string, what: string, cause: unknown): ForkvmError {
  const stderr = tail(vmPaths(dir).log);
  const why = stderr ? stderr.split("\n").slice(-3).join(" | ") : cause instanceof Error ? cause.message : String(cause);
  return new ForkvmError("QEMU", `Cannot ${what}: ${why}`, { cause, details: { stderr } });
}

/** The guest agent of the VM in `dir` (calls serialised across processes by the VM's agent lock). */
export function agentFor(dir: string): AgentClient {
  return new AgentClient(vmPaths(dir).agent, { lockFile: path.join(dir, "agent.lock") });
}

/** Runs `fn` with the VM's agent and closes it afterwards. */
export async function withAgent<T>(dir: string, fn: (agent: AgentClient) => Promise<T>): Promise<T> {
  const agent = agentFor(dir);
  try {
    return await fn(agent);
  } finally {
    agent.close();
  }
}

/** Throws CONFLICT unless the VM's QEMU is alive. */
export function requireAlive(vm: VmManifest): void {
  if (!isAlive(vm.pid, vm.token)) throw new ForkvmError("CONFLICT", `Cannot reach VM ${vm.name}: it is not running (state ${vm.state}${vm.state === "running" ? ", process gone: crashed" : ""})`);
}

/** Asks QEMU to quit, then makes sure the process is gone. */
export async function quitInstance(qmp: Qmp | undefined, pid: number | undefined, token: string): Promise<void> {
  if (qmp && !qmp.isClosed) await qmp.execute("quit", undefined, 2000).catch(() => undefined);
  qmp?.close();
  await killQemu(pid, token, 3000);
}
