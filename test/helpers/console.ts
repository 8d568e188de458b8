// Whether a VM's serial console (console.sock) answers with a shell: the text it printed.
import * as net from "node:net";

/** Types `echo console-ok-$((40+2))` into the console until the guest prints console-ok-42 (at most 50 tries, 300 ms apart); returns what it saw. */
export async function consoleEcho(sockPath: string): Promise<string> {
  const sock = net.createConnection(sockPath);
  let seen = "";
  sock.on("data", (d: Buffer) => (seen += d));
  await new Promise((r) => sock.once("connect", r));
  for (let i = 0; i < 50 && !seen.includes("console-ok-42"); i++) {
    sock.write("echo console-ok-$((40+2))\n");
    await new Promise((r) => setTimeout(r, 300));
  }
  sock.destroy();
  return seen;
}
