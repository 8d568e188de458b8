// The engine's front door: one object holding the store, a logger and a progress callback,
// with one method per operation. The CLI and the Pulumi providers use only this.
import type { Ctx, Progress } from "./context";
import { makeLogger, silentLogger, type Logger } from "./log";
import { Store, defaultHome, defaultMemDir } from "./state/store";
import { createParent, type ParentArgs } from "./ops/parent";
import { createTemplate, type TemplateArgs } from "./ops/template";
import { forkChildren, type ForkArgs, type ForkResult } from "./ops/fork";
import { childrenOf, collect, execVm, gc, info, problems, remove, resetVm, setMetadata, startVm, stopVm, type GcReport, type Problem, type RemoveResult, type VmInfo } from "./ops/lifecycle";
import { applyPool, findPool, listPools, planPoolChange, poolInfo, removePool, type ApplyResult, type PlanHints, type PoolArgs, type PoolChange, type PoolInfo } from "./ops/pool";
import { memoryStats, type MemoryStats } from "./stats";
import type { TemplateManifest, VmManifest } from "./state/manifest";
import { ForkvmError } from "./errors";
import { checkName } from "./spec";

export interface EngineOptions {
  home?: string;
  memDir?: string;
  log?: Logger;
  progress?: (p: Progress) => void;
}

export interface TemplateInfo extends TemplateManifest {
  children: string[];
}

export class Engine {
  readonly store: Store;
  readonly ctx: Ctx;

  constructor(opts: EngineOptions = {}) {
    const home = opts.home ?? defaultHome();
    this.store = new Store(home, opts.memDir ?? defaultMemDir(home));
    this.ctx = { store: this.store, log: opts.log ?? silentLogger, progress: opts.progress };
  }

  /** A copy of this engine reporting progress to `progress` (per operation). */
  withProgress(progress: (p: Progress) => void): Engine {
    return new Engine({ home: this.store.home, memDir: this.store.memDir, log: this.ctx.log, progress });
  }

  createParent(args: ParentArgs): Promise<VmInfo> {
    return createParent(this.ctx, args).then(info);
  }

  createTemplate(args: TemplateArgs): Promise<TemplateInfo> {
    return createTemplate(this.ctx, args).then((t) => ({ ...t, children: [] }));
  }

  fork(args: ForkArgs): Promise<ForkResult> {
    return forkChildren(this.ctx, args);
  }

  listVms(): VmInfo[] {
    return this.store.listVms().map(info);
  }

  listTemplates(): TemplateInfo[] {
    const vms = this.store.listVms();
    return this.store.listTemplates().map((t) => this.withChildren(t, vms));
  }

  /** A VM, template or pool by name (one namespace). Throws INVALID_ARGUMENT, NOT_FOUND. */
  inspect(name: string): { kind: "vm"; vm: VmInfo } | { kind: "template"; template: TemplateInfo } | { kind: "pool"; pool: PoolInfo } {
    checkName(name, "name", "inspect");
    const vm = this.findVm(name);
    if (vm) return { kind: "vm", vm };
    const template = this.findTemplate(name);
    if (template) return { kind: "template", template };
    const pool = this.findPool(name);
    if (pool) return { kind: "pool", pool };
    throw new ForkvmError("NOT_FOUND", `Cannot inspect ${name}: no VM, template or pool of that name in ${this.store.home}`);
  }

  /** What applying `args` would do and cost; changes nothing. */
  planPool(args: PoolArgs, hints?: PlanHints): PoolChange {
    return planPoolChange(this.ctx, args, hints);
  }

  /** Creates or updates a pool: resize, heal, roll. Per-child failures are in `errors`. */
  applyPool(args: PoolArgs): Promise<ApplyResult> {
    return applyPool(this.ctx, args);
  }

  /** Throws NOT_FOUND when there is no such pool. */
  pool(name: string): PoolInfo {
    return poolInfo(this.ctx, name);
  }

  findPool(name: string): PoolInfo | undefined {
    return findPool(this.ctx, name);
  }

  listPools(): PoolInfo[] {
    return listPools(this.ctx);
  }

  /** Removes a pool and the children it owns; safe to repeat. */
  removePool(name: string): Promise<string[]> {
    return removePool(this.ctx, checkName(name, "name", "remove pool"));
  }

  /** Throws NOT_FOUND when there is no such VM. */
  vm(name: string): VmInfo {
    return info(this.store.getVm(name));
  }

  /** The VM, or undefined when there is none. */
  findVm(name: string): VmInfo | undefined {
    const vm = this.store.findVm(name);
    return vm && info(vm);
  }

  /** Throws NOT_FOUND when there is no such template. */
  template(name: string): TemplateInfo {
    return this.withChildren(this.store.getTemplate(name));
  }

  /** The template, or undefined when there is none. */
  findTemplate(name: string): TemplateInfo | undefined {
    const t = this.store.findTemplate(name);
    return t && this.withChildren(t);
  }

  /** A template with the names of the children that depend on it (from `vms`, read once by lists). */
  private withChildren(t: TemplateManifest, vms?: VmManifest[]): TemplateInfo {
    return { ...t, children: childrenOf(this.ctx, t.name, vms).map((c) => c.name) };
  }

  exec(name: string, argv: string[], opts?: { stdin?: Buffer | string; timeoutMs?: number }) {
    return execVm(this.ctx, name, argv, opts);
  }

  /** Replaces a VM's metadata (manifest and, when running, /etc/forkvm/metadata{,.json} in the guest). */
  setMetadata(name: string, metadata: Record<string, string>): Promise<VmInfo> {
    return setMetadata(this.ctx, name, metadata);
  }

  stop(name: string): Promise<VmInfo> {
    return stopVm(this.ctx, name);
  }

  start(name: string): Promise<VmInfo> {
    return startVm(this.ctx, name);
  }

  reset(name: string): Promise<VmInfo> {
    return resetVm(this.ctx, name);
  }

  /** Removes VMs, templates and pools by name (see lifecycle.remove); a pool takes the children it owns with it. */
  async remove(names: string[], opts?: { force?: boolean }): Promise<RemoveResult[]> {
    for (const n of names) checkName(n, "name", "remove");
    const out: RemoveResult[] = [];
    for (const n of names) {
      if (this.store.exists("pools", n)) out.push({ name: n, kind: "pool", removed: await removePool(this.ctx, n) });
      else out.push(...(await remove(this.ctx, [n], opts)));
    }
    return out;
  }

  /** Removes and finishes what interrupted operations left (see lifecycle.collect): the lines of what it did. */
  gc(minAgeMs?: number): Promise<string[]> {
    return gc(this.ctx, minAgeMs);
  }

  /** What gc did, what it left alone and why, and what was busy. */
  collect(minAgeMs?: number): Promise<GcReport> {
    return collect(this.ctx, minAgeMs);
  }

  /** Objects `listVms`/`listTemplates`/`listPools` cannot list: creates in flight or abandoned, damaged or newer manifests. */
  problems(): Problem[] {
    return problems(this.ctx);
  }

  /** Memory figures of running VMs (all, or those named). */
  stats(names?: string[]): MemoryStats[] {
    const vms = names ? names.map((n) => this.store.getVm(n)) : this.store.listVms();
    return vms.flatMap((v) => memoryStats(v) ?? []);
  }
}

export { makeLogger };
