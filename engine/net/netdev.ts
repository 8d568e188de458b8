// The network backend of a VM's NIC, chosen by its egress, as pure command-line builders:
//   nat  — passt (one process per VM, `--no-map-gw`: the gateway is not the host's loopback), joined
//          to QEMU over a stream socket QEMU serves in the VM's directory;
//   none — QEMU's user-mode networking with `restrict=on`: no packet leaves, declared forwards work.
// Both give the guest the same addresses (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3), so a
// child may use another backend than its template's parent without any change inside the guest.

export type Egress = "nat" | "none";

/** The guest's network, identical under every backend (it is QEMU user networking's default). */
export const GUEST_NET = { address: "10.0.2.15", prefix: 24, gateway: "10.0.2.2", dns: "10.0.2.3" } as const;

export interface NetForward {
  /** Host port on 127.0.0.1. */
  host: number;
  guest: number;
  proto: "tcp" | "udp";
}

/** The stream socket QEMU serves for passt (nat only), in the VM's directory. */
export function netSocketPath(dir: string): string {
  return `${dir}/net.sock`;
}

/** passt's log; its path in passt's command line is also how a VM's passt is found (gc, tests). */
export function passtLogPath(dir: string): string {
  return `${dir}/passt.log`;
}

function escapeOpt(value: string): string {
  return value.replace(/,/g, ",,");
}

/**
 * The `-netdev` arguments of the NIC `net0` (the device itself is argv.ts's). Every VM has exactly
 * one user-networking instance, because QEMU saves its state into every checkpoint (section
 * "slirp" 0) and refuses to load a checkpoint with a section it has no instance for: under `nat`
 * it is `slirp0`, attached to nothing (restricted, no forwards: it only takes that section), so
 * children of either egress load templates of parents of either egress, and those made before.
 */
export function netdevArgs(dir: string, egress: Egress, forwards: NetForward[]): string[] {
  if (egress === "nat") {
    return [
      "-netdev", `stream,id=net0,server=on,addr.type=unix,addr.path=${escapeOpt(netSocketPath(dir))}`,
      "-netdev", "user,id=slirp0,restrict=on,ipv6=off",
    ];
  }
  const fwd = forwards.map((f) => `,hostfwd=${f.proto}:127.0.0.1:${f.host}-:${f.guest}`).join("");
  return ["-netdev", `user,id=net0,restrict=on,ipv6=off${fwd}`];
}

/**
 * passt's argv (without the binary) for a VM whose QEMU stream socket is already connected on
 * `fd`. `-1`: passt quits when QEMU closes the socket (QEMU ends: stop, rm, crash, SIGKILL), so it
 * never outlives its VM. `-4`: IPv4 only (the guest's DHCP client is IPv4; 10 MiB less per VM).
 * DNS sent to 10.0.2.3 goes to the host's resolver, as with user networking.
 */
export function passtArgv(dir: string, fd: number, forwards: NetForward[]): string[] {
  const args = [
    "--foreground", "--quiet", "--one-off", "--ipv4-only", "--fd", String(fd),
    "--no-map-gw",
    "--address", GUEST_NET.address, "--netmask", String(GUEST_NET.prefix), "--gateway", GUEST_NET.gateway,
    "--dns", GUEST_NET.dns, "--dns-forward", GUEST_NET.dns, "--no-dhcp-search",
    "--log-file", passtLogPath(dir), "--log-size", String(256 * 1024),
  ];
  for (const f of forwards) args.push(f.proto === "tcp" ? "-t" : "-u", `127.0.0.1/${f.host}:${f.guest}`);
  return args;
}

/**
 * The host ports a failed start could not bind: from passt ("Failed to bind any port for '-t
 * 127.0.0.1/H:G'") or QEMU's user networking ("Could not set up host forwarding rule
 * 'tcp:127.0.0.1:H-:G'"). Empty when the failure was something else.
 */
export function portConflicts(log: string): Array<{ proto: "tcp" | "udp"; host: number }> {
  const out: Array<{ proto: "tcp" | "udp"; host: number }> = [];
  for (const m of log.matchAll(/Failed to bind any port for '-([tu]) 127\.0\.0\.1\/(\d+):\d+'/g)) out.push({ proto: m[1] === "t" ? "tcp" : "udp", host: Number(m[2]) });
  for (const m of log.matchAll(/Could not set up host forwarding rule '(tcp|udp):127\.0\.0\.1:(\d+)-/g)) out.push({ proto: m[1] as "tcp" | "udp", host: Number(m[2]) });
  return out;
}
