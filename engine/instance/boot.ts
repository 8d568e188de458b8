// Cold-booting a VM from its kernel and disk (parents; persistent children after a stop), then
// what makes a started VM what its manifest says: a parent's init commands, every VM's metadata.
import * as fs from "node:fs";
import type { Ctx } from "../context";
import { ForkvmError } from "../errors";
import type { VmManifest } from "../state/manifest";
import { isAlive, killQemu, tail } from "../qemu/process";
import { livePid } from "../qemu/find";
import { vmPaths } from "../qemu/argv";
import { grantQemu } from "../qemu/run-as";
import { fault } from "../util/fault";
import type { AgentClient } from "../guest/client";
import type { Undo } from "../undo";
import { newToken } from "./identity";
import { agentFor, qemuFailure, startInstance } from "./launch";
import { writeMetadata } from "./metadata";

/**
 * Cold-boots `vm`: its own shared memory file, a new QEMU token, waits for the guest agent, then
 * settles it (see `settle`). The manifest holds the new token before QEMU is spawned (so a crash
 * at any point leaves a QEMU gc can find), then its pid. Updates `vm` (pid, token, timings) and its
 * manifest; `vm.state` is the caller's (`creating`, `starting`). Registers the kill in `undo`.
 * Throws QEMU, HOST (memory file), TIMEOUT (with the console's last lines) or AGENT (an init
 * command failed).
 */
export async function bootVm(ctx: Ctx, vm: VmManifest, deadlineMs: number, undo: Undo, kernelArgs: string[] = []): Promise<void> {
  const dir = ctx.store.dir("vms", vm.name);
  const start = Date.now();
  ctx.progress?.({ step: "boot", message: `booting ${vm.name} (${vm.shape.accel})` });
  const token = newToken();
  const memoryPath = ctx.store.memoryPath("vms", vm.name);
  Object.assign(vm, { token, memoryPath, pid: undefined, startedBy: "boot" });
  ctx.store.writeVm(vm);
  fault("boot:recorded");
  let spawned: number | undefined;
  undo.push("kill QEMU", () => killQemu(spawned ?? livePid(undefined, token), token));
  undo.push("remove memory file", () => fs.rmSync(memoryPath, { force: true }));
  // Made here, not by QEMU: QEMU follows a link planted at mem-path (and grows and maps its target).
  ctx.store.createMemFile(memoryPath, vm.shape.memoryMiB * 1048576);
  const runAs = ctx.store.qemuUser();
  // QEMU reopens the disk read-write when it resumes after a completed migration (a capture that
  // failed after its checkpoint), by then as its own user (qemu/run-as.ts).
  if (vm.diskPath) grantQemu(runAs, vm.diskPath, "rw");
  grantQemu(runAs, dir, "dir"); // also a VM made before QEMU dropped root (its directory 0700)
  const { pid, qmp } = await startInstance(vm.shape, {
    token, dir, memory: { path: memoryPath, share: true }, diskPath: vm.diskPath,
    mac: vm.mac, forwards: vm.forwards, egress: vm.egress ?? "nat", kernelArgs: [`forkvm.hostname=${vm.hostname}`, ...kernelArgs], limits: vm.limits,
    runAs,
  });
  qmp.close();
  spawned = pid;
  vm.pid = pid;
  ctx.store.writeVm(vm);
  fault("boot:spawned");
  const agent = agentFor(dir);
  try {
    try {
      await agent.waitReady(Math.max(1000, deadlineMs - (Date.now() - start)), () => isAlive(pid, token));
    } catch (err) {
      if (isAlive(pid, token)) {
        // QEMU runs but the guest never answered: what the guest printed says why.
        const console = tail(vmPaths(dir).consoleLog, 10);
        throw new ForkvmError("TIMEOUT", `Cannot boot VM ${vm.name} to agent-ready: ${(err as Error).message}${console ? `; console ends with: ${console.split("\n").slice(-3).join(" | ")}` : ""}`, { cause: err, details: { console } });
      }
      throw qemuFailure(dir, `boot VM ${vm.name} to agent-ready`, err);
    }
    vm.timings = { ...vm.timings, bootMs: Date.now() - start };
    fault("boot:ready");
    await settle(ctx, vm, agent, Math.max(1000, deadlineMs - (Date.now() - start)));
  } finally {
    agent.close();
  }
}

/**
 * After every launch of a VM (boot, fork, reset, start), in this order: a parent's init commands
 * (so a restarted parent is warm again), then the VM's metadata into the guest. Throws AGENT.
 */
export async function settle(ctx: Ctx, vm: VmManifest, agent: AgentClient, deadlineMs: number): Promise<void> {
  if (vm.role === "parent" && vm.init?.length) {
    const t0 = Date.now();
    await runInit(ctx, vm, agent, deadlineMs);
    vm.timings = { ...vm.timings, initMs: Date.now() - t0 };
  }
  if (vm.metadata && Object.keys(vm.metadata).length) await writeMetadata(agent, vm.metadata, deadlineMs);
}

/** Runs a parent's init commands in order. Throws AGENT naming the command (by index) that failed, with its stderr. */
async function runInit(ctx: Ctx, vm: VmManifest, agent: AgentClient, deadlineMs: number): Promise<void> {
  const init = vm.init ?? [];
  const until = Date.now() + deadlineMs;
  for (const [i, cmd] of init.entries()) {
    // Commands may carry secrets: progress names them by position only.
    ctx.progress?.({ step: "init", message: `command ${i + 1} of ${init.length}`, done: i, total: init.length });
    const r = await agent.exec(["sh", "-c", cmd], { timeoutMs: Math.max(1000, until - Date.now()) });
    if (r.exitCode !== 0) {
      throw new ForkvmError("AGENT", `Cannot run init command ${i + 1} of VM ${vm.name}: exit ${r.exitCode}: ${r.stderr.toString().trim().slice(-500)}`, {
        details: { field: `init[${i}]`, exitCode: r.exitCode, stderr: r.stderr.toString() },
      });
    }
  }
}
