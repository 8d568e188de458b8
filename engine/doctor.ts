// `forkvm doctor`: what this host offers forkvm, each line with a verdict.
import * as fs from "node:fs";
import * as path from "node:path";
import { availableMemoryMiB, chooseAccel, fsInfo, qemuVersion, resolveMachine, type AccelProbe } from "./host";
import { messageOf } from "./errors";
import { cacheDir, loadImage } from "./image";
import type { Store } from "./state/store";
import { QEMU_USER, qemuUser } from "./qemu/run-as";

export interface DoctorReport {
  qemu: { version?: string; machine?: string; error?: string };
  accel: AccelProbe | { error: string };
  memory: { availableMiB: number };
  memDir: { path: string; type?: string; freeMiB?: number; warning?: string };
  home: string;
  image: { name: string; kernelVersion?: string; minMemoryMiB?: number; error?: string };
  /** The user QEMU runs as, and why (engine/qemu/run-as.ts decides). */
  qemuUser: { name: string; uid?: number; reason: string; warning?: string };
  ok: boolean;
}

function qemuUserLine(store: Store): DoctorReport["qemuUser"] {
  try {
    const u = qemuUser(store.home, store.memDir);
    if (u) return { name: u.name, uid: u.uid, reason: `QEMU drops root (uid ${u.uid}) under its seccomp sandbox` };
    if (process.getuid?.() !== 0) return { name: "yourself", reason: "forkvm does not run as root, so neither does QEMU" };
    if (process.env.FORKVM_QEMU_USER?.trim() === "root") return { name: "root", reason: "FORKVM_QEMU_USER=root" };
    return {
      name: "root",
      reason: `the ${QEMU_USER} account is missing (npm run setup creates it) or cannot reach ${store.home} and ${store.memDir}`,
      warning: `a guest that escapes QEMU would hold root: run npm run setup, and put FORKVM_HOME where ${QEMU_USER} can search (e.g. /var/lib/forkvm), not under a 0700 home directory`,
    };
  } catch (err) {
    return { name: "root", reason: messageOf(err) };
  }
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
    qemuUser: qemuUserLine(store),
    ok: !("error" in qemu) && !("error" in accel),
  };
}
