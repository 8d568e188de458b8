// Host ports for forwards, picked so that one process never hands the same port out twice: a
// picked port stays leased until the VM's network helper has bound it (or given up), and the one
// that binds it (QEMU or passt) reports a conflict, after which launch picks again.
import * as net from "node:net";

const leased = new Set<number>();

function bindZero(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * A port on 127.0.0.1 that is free right now and not leased by this process; it stays leased until
 * `releasePorts`. (The kernel may give out a port it just gave, once it is closed again: leasing is
 * what keeps 300 children forked at once from sharing one.)
 */
export async function pickPort(): Promise<number> {
  for (let i = 0; i < 1000; i++) {
    const port = await bindZero();
    if (!leased.has(port)) {
      leased.add(port);
      return port;
    }
  }
  throw new Error("no free port on 127.0.0.1 after 1000 tries");
}

/** Ends the lease of ports (bound by their helper now, or no longer wanted). */
export function releasePorts(ports: Iterable<number>): void {
  for (const p of ports) leased.delete(p);
}

/** How many ports this process holds leased (for tests). */
export function leasedCount(): number {
  return leased.size;
}
