// Pure builders of the QEMU command line. A parent, a template builder and every child
// must get the same machine and the same devices in the same order: one function builds all.
import { netdevArgs, type Egress } from "../net/netdev";

export type Accel = "kvm" | "tcg";

export interface PortForward {
  /** Host port on 127.0.0.1. */
  host: number;
  /** Port inside the guest. */
  guest: number;
  proto: "tcp" | "udp";
  /** Picked by forkvm (not given by the user): launch may pick another when it is taken. */
  auto?: boolean;
}

/** What is fixed when a parent boots and must stay identical in every fork of it. */
export interface MachineShape {
  accel: Accel;
  /** Resolved, versioned machine type, e.g. pc-i440fx-7.2 (an alias could change under us). */
  machine: string;
  /** CPU model; undefined means QEMU's default for the accelerator. */
  cpu?: string;
  memoryMiB: number;
  vcpus: number;
  kernel: string;
  initrd: string;
  cmdline: string;
  /** Whether the VM has a data disk (virtio-blk) and a NIC (virtio-net). */
  disk: boolean;
  nic: boolean;
}

/** What differs per VM instance. */
export interface InstanceSpec {
  /** Unique token of this QEMU process: how we recognise it in /proc. */
  token: string;
  /** The VM's state directory: QMP socket, console socket and log, agent FIFOs, pidfile. */
  dir: string;
  memory: { path: string; share: boolean };
  diskPath?: string;
  mac?: string;
  /** Updated in place by launch when it had to pick other host ports for `auto` ones. */
  forwards?: PortForward[];
  /** The NIC's backend (engine/net/netdev.ts): `nat` (passt) or `none` (restricted user networking, the default). */
  egress?: Egress;
  /** Extra kernel parameters appended to the shape's cmdline (ignored on incoming forks). */
  kernelArgs?: string[];
  /** Start waiting for a checkpoint: on `vmPaths(dir).incoming` from the start with `runAs`, else `-incoming defer` (the caller's migrate-incoming). */
  incoming?: boolean;
  /** Keep the guest paused until `cont` (-S). */
  paused?: boolean;
  /** TCG only: the translation buffer in MiB (QEMU's default is 1 GiB, grown as code is translated). */
  tbSizeMiB?: number;
  /** Caps on what this QEMU takes from the host: CPU and memory (a cgroup, qemu/process.ts), disk I/O (here). */
  limits?: ResourceLimits;
  /** The unprivileged user QEMU switches to once its files are open (`-runas`, qemu/run-as.ts); undefined: stays as forkvm. */
  runAs?: { name: string };
}

/** The shape of engine/spec.ts `Limits` (kept free of zod here). */
export interface ResourceLimits {
  cpuPercent?: number;
  memoryMiB?: number;
  iops?: number;
  bps?: number;
}

/**
 * The file descriptor QEMU writes the serial console's log to: the spawner (qemu/process.ts)
 * gives QEMU a pipe there whose reader keeps the log's size bounded, however much a guest prints.
 */
export const CONSOLE_LOG_FD = 3;

export const AGENT_PORT_NAME = "org.forkvm.agent";

/** Paths inside a VM's directory, shared by argv, process and clients. */
export function vmPaths(dir: string) {
  return {
    qmp: `${dir}/qmp.sock`,
    console: `${dir}/console.sock`,
    consoleLog: `${dir}/console.log`,
    agent: `${dir}/agent`,
    pidfile: `${dir}/qemu.pid`,
    incoming: `${dir}/migrate.sock`,
    log: `${dir}/qemu.log`,
  };
}

/** The process name QEMU is given; `/proc/<pid>/cmdline` carries it so a pid can be verified. */
export function processName(token: string): string {
  return `forkvm-${token}`;
}

function escapeOpt(value: string): string {
  // QEMU option values escape a comma by doubling it.
  return value.replace(/,/g, ",,");
}

/**
 * QEMU's seccomp filter: no obsolete system calls, no set*uid/gid, no fork or exec (so migration
 * streams go through sockets the engine holds, never `exec:`), no scheduler or priority changes.
 * A guest that takes over QEMU keeps these limits (see engine/README.md, "Not guaranteed / limits").
 */
export const SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";
/**
 * With -runas: QEMU installs its filter before it calls setgid/initgroups/setuid, and both
 * `elevateprivileges=deny` and `=children` forbid those calls (QEMU dies of SIGSYS), so the flag
 * goes. The unprivileged QEMU holds no capabilities and spawn=deny (no exec of a setuid binary,
 * no_new_privs) keeps it from gaining any.
 */
export const SANDBOX_RUNAS = "on,obsolete=deny,spawn=deny,resourcecontrol=deny";

export function machineArgs(shape: MachineShape, inst: InstanceSpec): string[] {
  const mem = inst.memory;
  const args = [
    "-name", `${processName(inst.token)},debug-threads=off`,
    "-nodefaults", "-no-user-config", "-display", "none",
    "-sandbox", inst.runAs ? SANDBOX_RUNAS : SANDBOX,
    ...(inst.runAs ? ["-runas", inst.runAs.name] : []),
    "-accel", shape.accel === "tcg" && inst.tbSizeMiB ? `tcg,tb-size=${inst.tbSizeMiB}` : shape.accel,
    "-machine", `${shape.machine},memory-backend=mem`,
  ];
  if (shape.cpu) args.push("-cpu", shape.cpu);
  args.push(
    "-smp", String(shape.vcpus),
    "-m", `${shape.memoryMiB}M`,
    "-object", `memory-backend-file,id=mem,size=${shape.memoryMiB}M,mem-path=${escapeOpt(mem.path)},share=${mem.share ? "on" : "off"}`,
  );
  return args;
}

export function bootArgs(shape: MachineShape, inst: InstanceSpec): string[] {
  const cmdline = [shape.cmdline, ...(inst.incoming ? [] : inst.kernelArgs ?? [])].join(" ").trim();
  return ["-kernel", shape.kernel, "-initrd", shape.initrd, "-append", cmdline];
}

export function controlArgs(inst: InstanceSpec): string[] {
  const p = vmPaths(inst.dir);
  return [
    "-chardev", `socket,id=qmp,path=${escapeOpt(p.qmp)},server=on,wait=off`,
    "-mon", "chardev=qmp,mode=control",
    // The console's log goes to CONSOLE_LOG_FD, never straight to a file: a guest that prints
    // without pause would fill the disk (the spawner caps it; a plain file would grow forever).
    "-chardev", `socket,id=con,path=${escapeOpt(p.console)},server=on,wait=off,logfile=/dev/fd/${CONSOLE_LOG_FD},logappend=on`,
    "-serial", "chardev:con",
    "-pidfile", p.pidfile,
    // A guest reboot or panic ends the process: a forked child must never silently cold-boot.
    "-no-reboot",
  ];
}

/** -drive throttling options for a VM's limits (one throttle group per drive), or "". */
export function throttleOpts(limits: ResourceLimits | undefined): string {
  let out = "";
  if (limits?.iops) out += `,throttling.iops-total=${limits.iops}`;
  if (limits?.bps) out += `,throttling.bps-total=${limits.bps}`;
  return out;
}

export function deviceArgs(shape: MachineShape, inst: InstanceSpec): string[] {
  const p = vmPaths(inst.dir);
  const args = [
    "-device", "virtio-serial-pci,id=vser0",
    "-chardev", `pipe,id=agent,path=${escapeOpt(p.agent)}`,
    "-device", `virtserialport,bus=vser0.0,chardev=agent,name=${AGENT_PORT_NAME}`,
  ];
  if (shape.disk) {
    if (!inst.diskPath) throw new Error("the machine has a disk but no disk path was given");
    args.push(
      // A qcow2 delta disk never grows past its virtual size (the template's disk) plus its
      // metadata (L2 and refcount tables, ~0.02 %): a guest that fills it gets ENOSPC from its own
      // filesystem. iops/bps limits throttle it here (QEMU's throttling.*).
      "-drive", `file=${escapeOpt(inst.diskPath)},if=none,id=disk0,format=qcow2,cache=writeback,discard=unmap${throttleOpts(inst.limits)}`,
      "-device", "virtio-blk-pci,drive=disk0,id=blk0",
    );
  }
  if (shape.nic) {
    // Isolated by default: no backend maps the host's loopback into the guest (engine/net/netdev.ts).
    args.push(...netdevArgs(inst.dir, inst.egress ?? "none", inst.forwards ?? []), "-device", `virtio-net-pci,netdev=net0,id=nic0${inst.mac ? `,mac=${inst.mac}` : ""}`);
  }
  // A new VM generation id in every QEMU process: Linux >= 5.18 reseeds its RNG when it changes.
  args.push("-device", "vmgenid,guid=auto");
  return args;
}

/** The whole argv (without the binary) for one VM instance. */
export function qemuArgv(shape: MachineShape, inst: InstanceSpec): string[] {
  const args = [...machineArgs(shape, inst), ...bootArgs(shape, inst), ...controlArgs(inst), ...deviceArgs(shape, inst)];
  // With -runas the socket is bound at startup, while QEMU is still root (an unprivileged QEMU
  // could only bind it in a directory it may write); otherwise the caller sends migrate-incoming.
  if (inst.incoming) args.push("-incoming", inst.runAs ? `unix:${vmPaths(inst.dir).incoming}` : "defer"); // a URI: no option escaping
  if (inst.paused) args.push("-S");
  return args;
}
