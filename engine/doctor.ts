// `forkvm doctor`: what this host offers forkvm, each line with a verdict.
import * as fs from "node:fs";
import * as path from "node:path";
import { availableMemoryMiB, chooseAccel, fsInfo, qemuVersion, resolveMachine, type AccelProbe } from "./host";
import { messageOf } from "./errors";
import { cacheDir, loadImage } from "./image";
import type { Store } from "./state/store";

export interface DoctorReport {
  qemu: { version?: string; machine?: string; error?: string };
  accel: AccelProbe | { error: string };
  memory: { availableMiB: number };
  memDir: { path: string; type?: string; freeMiB?: number; warning?: string };
  home: string;
  image: { name: string; kernelVersion?: string; minMemoryMiB?: number; error?: string };
  ok: boolean;
}

export async function doctor(store: Store, opts: { reprobe?: boolean } = {}): Promise<DoctorReport> {
  store.init();
  const qemu = await qemuVersion().then(async (version) => ({ version, machine: await resolveMachine("pc") }), (err) => ({ error: messageOf(err) }));
  const probeFile = path.join(store.home, "host-probe.json");
  if (opts.reprobe) fs.rmSync(probeFile, { force: true });
  const accel = "error" in qemu ? { error: "QEMU is missing" } : await chooseAccel("auto", probeFile).catch((err) => ({ error: messageOf(err) }));
  const mem = fsInfo(store.memDir);
  const image = await loadImage("default").then(
    (img) => ({ name: img.name, kernelVersion: img.kernelVersion, minMemoryMiB: img.minMemoryMiB }),
    (err) => ({ name: "default", error: `${messageOf(err)} (cache ${cacheDir()})` }),
  );
  return {
    qemu,
    accel,
    memory: { availableMiB: availableMemoryMiB() },
    memDir: { path: store.memDir, ...mem, ...(mem.type !== "tmpfs" ? { warning: "not a tmpfs: memory images will be written to disk; set FORKVM_MEMDIR to a tmpfs" } : {}) },
    home: store.home,
    image,
    ok: !("error" in qemu) && !("error" in accel),
  };
}
