// Pieces every VM operation shares: identities (token, MAC, hostname), free host ports,
// starting one QEMU instance up to a connected monitor, and reaching a VM's guest agent.
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { ForkvmError } from "./errors";
import { qemuArgv, vmPaths, type InstanceSpec, type MachineShape } from "./qemu/argv";
import { isAlive, killQemu, spawnQemu, tail } from "./qemu/process";
import { Qmp } from "./qemu/qmp";
import { AgentClient, createAgentFifos } from "./guest/client";
import type { VmManifest } from "./manifest";

export function newToken(): string {
  return randomBytes(6).toString("hex");
}

export const DEFAULT_MAC_PREFIX = "52:54:00";

/** A random MAC under `prefix` (1 to 5 octets, default QEMU's 52:54:00). */
export function randomMac(prefix = DEFAULT_MAC_PREFIX): string {
  const octets = prefix.split(":").filter(Boolean);
  const rest = [...randomBytes(6 - octets.length)].map((b) => b.toString(16).padStart(2, "0"));
  return [...octets.map((o) => o.toLowerCase().padStart(2, "0")), ...rest].join(":");
}

export const MAC_PREFIX_RE = /^([0-9a-fA-F]{2})(:[0-9a-fA-F]{2}){0,4}$/;

/** A valid DNS label derived from a VM name. */
export function hostnameFor(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9-]/g, "-").replace(/^-+/, "").slice(0, 63) || "forkvm";
}

/** A port on 127.0.0.1 that is free right now (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface Started {
  pid: number;
  qmp: Qmp;
}

/**
 * Starts one QEMU instance for a VM directory and returns once its monitor answers.
 * On failure QEMU is killed and the error (QEMU) carries the last lines QEMU printed.
 */
export async function startInstance(shape: MachineShape, inst: InstanceSpec, deadlineMs = 30_000): Promise<Started> {
  const p = vmPaths(inst.dir);
  for (const f of [p.qmp, p.console, p.pidfile]) fs.rmSync(f, { force: true });
  if (!fs.existsSync(`${p.agent}.in`)) await createAgentFifos(p.agent);
  const pid = await spawnQemu(inst.dir, qemuArgv(shape, inst));
  try {
    const qmp = await Qmp.connect(p.qmp, deadlineMs, () => isAlive(pid, inst.token));
    return { pid, qmp };
  } catch (err) {
    await killQemu(pid, inst.token, 500).catch(() => undefined);
    throw qemuFailure(inst.dir, `start QEMU for ${path.basename(inst.dir)}`, err);
  }
}

/** An error for a QEMU failure that carries QEMU's last stderr lines. */
export function qemuFailure(dir: string, what: string, cause: unknown): ForkvmError {
  const stderr = tail(vmPaths(dir).log);
  const why = stderr ? stderr.split("\n").slice(-3).join(" | ") : cause instanceof Error ? cause.message : String(cause);
  return new ForkvmError("QEMU", `Cannot ${what}: ${why}`, { cause, details: { stderr } });
}

export function agentFor(dir: string): AgentClient {
  return new AgentClient(vmPaths(dir).agent, { lockFile: path.join(dir, "agent.lock") });
}

/** Throws CONFLICT unless the VM's QEMU is alive. */
export function requireAlive(vm: VmManifest): void {
  if (!isAlive(vm.pid, vm.token)) throw new ForkvmError("CONFLICT", `Cannot reach VM ${vm.name}: it is not running (state ${vm.state}${vm.state === "running" ? ", process gone: crashed" : ""})`);
}

/** Polls `query-status` until QEMU reports one of `want`; fails fast when QEMU exits. */
export async function waitStatus(qmp: Qmp, want: string[], deadlineMs: number, alive: () => boolean, what: string): Promise<string> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    if (!alive()) throw new ForkvmError("QEMU", `Cannot ${what}: QEMU exited`);
    const st = await qmp.execute<{ status: string }>("query-status", undefined, Math.max(1000, until - Date.now()));
    if (want.includes(st.status)) return st.status;
    if (st.status === "internal-error" || st.status === "guest-panicked" || st.status === "shutdown") {
      throw new ForkvmError("QEMU", `Cannot ${what}: the VM is in state ${st.status}`);
    }
    if (Date.now() > until) throw new ForkvmError("TIMEOUT", `Cannot ${what}: still ${st.status} after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Polls `query-migrate` on a source until completed; failed or cancelled fail at once. */
export async function waitMigration(qmp: Qmp, deadlineMs: number, what: string): Promise<{ downtimeMs?: number; totalMs?: number; bytes?: number }> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const st = await qmp.execute<{ status?: string; "error-desc"?: string; downtime?: number; "total-time"?: number; ram?: { transferred?: number } }>("query-migrate", undefined, Math.max(1000, until - Date.now()));
    if (st.status === "completed") return { downtimeMs: st.downtime, totalMs: st["total-time"], bytes: st.ram?.transferred };
    if (st.status === "failed" || st.status === "cancelled") {
      throw new ForkvmError("MIGRATION", `Cannot ${what}: migration ${st.status}${st["error-desc"] ? `: ${st["error-desc"]}` : ""}`);
    }
    if (Date.now() > until) throw new ForkvmError("TIMEOUT", `Cannot ${what}: migration still ${st.status} after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Asks QEMU to quit, then makes sure the process is gone. */
export async function quitInstance(qmp: Qmp | undefined, pid: number | undefined, token: string): Promise<void> {
  if (qmp && !qmp.isClosed) await qmp.execute("quit", undefined, 2000).catch(() => undefined);
  qmp?.close();
  await killQemu(pid, token, 3000);
}
