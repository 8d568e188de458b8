// The QEMU end of a VM's agent FIFOs, for tests that play the guest: each request line the host
// writes (engine/guest/PROTOCOL.md "Requests") comes out as { id, op, args }; `write` sends bytes
// as the guest would. Both ends are opened read-write, as QEMU holds them.
import * as fs from "node:fs";
import * as net from "node:net";

export interface GuestRequest {
  id: string;
  op: string;
  args: string[];
}

export interface FakeGuestChannel {
  write: (data: string | Buffer) => void;
  close: () => void;
}

/** Opens `<base>.in` / `<base>.out` (made by createAgentFifos) and calls `onRequest` for every non-empty request line. */
export function fakeGuestChannel(base: string, onRequest: (req: GuestRequest) => void): FakeGuestChannel {
  const { O_RDWR, O_NONBLOCK } = fs.constants;
  const rx = new net.Socket({ fd: fs.openSync(`${base}.in`, O_RDWR | O_NONBLOCK), readable: true, writable: false });
  const tx = new net.Socket({ fd: fs.openSync(`${base}.out`, O_RDWR | O_NONBLOCK), readable: false, writable: true });
  tx.on("error", () => undefined);
  let buf = "";
  rx.on("data", (d: Buffer) => {
    buf += d.toString("latin1");
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const [id, op, ...args] = line.split(" ");
      onRequest({ id: id!, op: op!, args });
    }
  });
  return { write: (data) => { tx.write(data); }, close: () => { rx.destroy(); tx.destroy(); } };
}
