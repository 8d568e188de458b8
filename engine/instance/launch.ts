// Starting and ending one QEMU instance of a VM directory, and reaching its guest agent:
// what every verb (parent, template, fork, lifecycle) composes.
import * as fs from "node:fs";
import * as path from "node:path";
import { ForkvmError } from "../errors";
import { qemuArgv, vmPaths, type InstanceSpec, type MachineShape } from "../qemu/argv";
import { isAlive, killQemu, spawnQemu, tail } from "../qemu/process";
import { Qmp } from "../qemu/qmp";
import { AgentClient, createAgentFifos } from "../guest/client";
import type { VmManifest } from "../state/manifest";

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
