// The ParentVm provider: boots a parent through the engine, reads its live status, restarts a
// crashed parent in place (the engine re-runs its init commands), removes it, always in the forkvm
// home the parent lives in. It holds no state between calls: everything comes from the inputs,
// the outputs and that home.
import * as fs from "node:fs";
import { loadImage, type Engine, type VmInfo } from "../engine";
import { ParentVmInputs, PARENT_REPLACE_KEYS, PARENT_UPDATE_KEYS, type ParentVmOutputs } from "../schema/parent-vm";
import type { Shape } from "../schema/common";
import { autoName, changedKeys, codeOf, engineFor, homeChange, homeForCheck, isUnknown, nameSeed, parseInputs, providerCall, redactFailures, type CheckFailure } from "./common";
import type { Reporter } from "./report";
import { clean, nameTaken } from "./util";

type Props = Record<string, any>;

/**
 * Validates and completes the inputs: defaults, the home the parent lives in (`__home`), a
 * generated name, the image's minimum memory. Neither failure reasons nor a thrown error quote a secret.
 */
export async function check(olds: Props = {}, news: Props = {}): Promise<{ inputs: Props; failures: CheckFailure[] }> {
  return providerCall([olds, news], "parent", (report) => checkInputs(olds, news, report));
}

async function checkInputs(olds: Props, news: Props, report: Reporter): Promise<{ inputs: Props; failures: CheckFailure[] }> {
  const { inputs, failures } = parseInputs(ParentVmInputs, news);
  if (!inputs) return { inputs: news, failures: redactFailures(failures, news) };
  const home = homeForCheck(olds, news);
  inputs.__home = home;
  if (inputs.name === undefined) {
    // Keep a generated name unless the parent is replaced (Pulumi then re-checks the replacement without olds).
    const replaced = changedKeys(olds, inputs, PARENT_REPLACE_KEYS.filter((k) => k !== "name")).length > 0 || homeChange(olds, inputs).length > 0;
    const keep = olds.__autoNamed && typeof olds.name === "string" && !replaced;
    if (keep) inputs.name = olds.name;
    else {
      const engine = engineFor(news, report, { home, progress: false });
      inputs.name = autoName({ seed: nameSeed(news), base: news.__logicalName, fallback: "parent", taken: (n) => n === olds.name || nameTaken(engine, n) });
    }
    inputs.__autoNamed = true;
  } else {
    delete inputs.__autoNamed;
  }
  failures.push(...(await checkFiles(inputs)));
  inputs.shape = shapeOf(inputs);
  return { inputs: clean(inputs), failures: redactFailures(failures, news) };
}

async function checkFiles(inputs: Props): Promise<CheckFailure[]> {
  const failures: CheckFailure[] = [];
  if (Boolean(inputs.kernel) !== Boolean(inputs.initrd) && !isUnknown(inputs.kernel) && !isUnknown(inputs.initrd)) {
    failures.push({ property: inputs.kernel ? "initrd" : "kernel", reason: "kernel and initrd go together: give both or neither" });
  }
  for (const field of ["kernel", "initrd", "diskImage"]) {
    const file = inputs[field];
    if (typeof file === "string" && !isUnknown(file) && !fs.existsSync(file)) failures.push({ property: field, reason: `${file} does not exist` });
  }
  if (!inputs.kernel && typeof inputs.image === "string" && !isUnknown(inputs.image)) {
    try {
      const image = await loadImage(inputs.image);
      if (typeof inputs.memoryMiB === "number" && inputs.memoryMiB < image.minMemoryMiB) {
        failures.push({ property: "memoryMiB", reason: `must be at least ${image.minMemoryMiB}: image ${image.name} needs ${image.minMemoryMiB} MiB to boot (got ${inputs.memoryMiB})` });
      }
    } catch (err) {
      const why = codeOf(err) === "NOT_FOUND" ? `image ${inputs.image} is not built: run \`forkvm image build\` first` : (err as Error).message;
      failures.push({ property: "image", reason: why });
    }
  }
  return failures;
}

function shapeOf(inputs: Props, vm?: VmInfo): Shape {
  return {
    memoryMiB: vm?.shape.memoryMiB ?? inputs.memoryMiB,
    vcpus: vm?.shape.vcpus ?? inputs.vcpus,
    diskMiB: inputs.diskImage ? 0 : inputs.diskMiB,
    accel: vm?.shape.accel ?? inputs.accel,
  };
}

/** The outputs: the checked inputs plus what the engine made of the VM, and the home it lives in. */
export function outputsOf(inputs: Props, vm: VmInfo, home: string): ParentVmOutputs {
  return clean({
    ...inputs,
    home,
    name: vm.name,
    shape: shapeOf(inputs, vm),
    status: vm.status,
    pid: vm.status === "running" ? vm.pid : undefined,
    mac: vm.mac,
    hostname: vm.hostname,
    ports: vm.forwards,
    machine: vm.shape.machine,
    accelUsed: vm.shape.accel,
    createdAt: vm.createdAt,
    bootMs: vm.timings?.bootMs,
    initMs: vm.timings?.initMs,
    templates: vm.templates ?? [],
  }) as unknown as ParentVmOutputs;
}

function argsOf(inputs: Props) {
  return {
    name: inputs.name, image: inputs.image, kernel: inputs.kernel, initrd: inputs.initrd, cmdline: inputs.cmdline,
    memoryMiB: inputs.memoryMiB, vcpus: inputs.vcpus, diskMiB: inputs.diskMiB, diskImage: inputs.diskImage, init: inputs.init,
    forwards: inputs.forwards, nic: inputs.nic, macPrefix: inputs.macPrefix, accel: inputs.accel, bootTimeoutS: inputs.bootTimeoutS,
  };
}

async function boot(engine: Engine, inputs: Props, report: Reporter): Promise<VmInfo> {
  report.status(`booting ${inputs.name} (${inputs.memoryMiB} MiB, ${inputs.init?.length ?? 0} init commands)`);
  const t0 = Date.now();
  const vm = await engine.createParent(argsOf(inputs));
  report.info(`parent ${vm.name} ready in ${((Date.now() - t0) / 1000).toFixed(1)} s on ${vm.shape.accel} (boot ${vm.timings?.bootMs} ms, init ${vm.timings?.initMs} ms)`);
  return vm;
}

export async function create(inputs: Props): Promise<{ id: string; outs: Props }> {
  return providerCall(inputs, inputs.name, async (report) => {
    const engine = engineFor(inputs, report);
    const vm = await boot(engine, inputs, report);
    return { id: vm.name, outs: outputsOf(inputs, vm, engine.store.home) };
  });
}

/** The parent as it is now, in the home it was created in; gone from the engine: no resource. */
export async function read(id: string, props: Props = {}): Promise<{ id: string; props: Props }> {
  return providerCall(props, id, async (report) => {
    const engine = engineFor(props, report);
    const vm = engine.findVm(id);
    if (!vm) return { id: "", props: {} };
    return { id, props: outputsOf(props, vm, engine.store.home) };
  });
}

/** Whether the live parent needs healing: it crashed or was stopped (a consumed parent is fine). */
function needsHeal(vm: VmInfo | undefined): boolean {
  return !vm || vm.status === "crashed" || vm.status === "stopped" || vm.status === "interrupted";
}

export async function diff(id: string, olds: Props = {}, news: Props = {}) {
  return providerCall([olds, news], id, async (report) => {
    const replaces = [...changedKeys(olds, news, PARENT_REPLACE_KEYS), ...homeChange(olds, news)];
    const updates = changedKeys(olds, news, PARENT_UPDATE_KEYS);
    const heal = replaces.length === 0 && needsHeal(engineFor(olds, report).findVm(id));
    return {
      changes: replaces.length > 0 || updates.length > 0 || heal,
      replaces,
      // A pinned name cannot exist twice: the old parent goes first.
      deleteBeforeReplace: replaces.length > 0 && !news.__autoNamed,
    };
  });
}

/**
 * Heals in place, in the home the parent lives in: a missing parent is booted again, a crashed
 * or stopped one started (the engine re-runs its init commands, so it is warm again).
 */
export async function update(id: string, olds: Props, news: Props): Promise<{ outs: Props }> {
  return providerCall([olds, news], id, async (report) => {
    const engine = engineFor(olds, report);
    let vm = engine.findVm(id);
    if (!vm) {
      report.warn(`parent ${id} is gone from the engine: booting it again`);
      vm = await boot(engine, { ...news, name: id }, report);
    } else if (needsHeal(vm)) {
      report.warn(`parent ${id} is ${vm.status}: restarting it and re-running its init commands`);
      vm = await engine.start(id);
    }
    return { outs: outputsOf(news, vm, engine.store.home) };
  });
}

/** Removes the VM from the home it lives in; a VM that is already gone is fine. */
export async function remove(id: string, props: Props = {}): Promise<void> {
  return providerCall(props, id, async (report) => {
    const engine = engineFor(props, report);
    if (!engine.findVm(id)) return;
    if (engine.listTemplates().some((t) => t.name === id)) {
      throw new Error(`Cannot delete parent ${id}: a template has the same name and the engine's rm would take the template; run \`forkvm rm ${id}\` after removing the template`);
    }
    await engine.remove([id]);
  });
}
