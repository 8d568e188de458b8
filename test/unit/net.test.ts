// The network backends' pure parts (engine/net): QEMU's -netdev per egress, passt's argv, the port
// conflicts read from passt's and QEMU's messages, /proc/net parsing, port leases and re-picks.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { netdevArgs, passtArgv, portConflicts, repickConflicts, pickPort, releasePorts } from "../../engine/net";
import { boundLoopbackPorts } from "../../engine/net/passt";
import { leasedCount } from "../../engine/net/ports";
import { qemuArgv } from "../../engine/qemu/argv";

const test = suite("network backends");

test("egress nat: a stream socket in the VM's directory for passt, and one restricted user network that only takes checkpoint state", () => {
  const a = netdevArgs("/s/vm,x", "nat", [{ host: 8080, guest: 80, proto: "tcp" }]);
  assert.equal(a, ["-netdev", "stream,id=net0,server=on,addr.type=unix,addr.path=/s/vm,,x/net.sock", "-netdev", "user,id=slirp0,restrict=on,ipv6=off"]);
  assert.not.ok(a.join(" ").includes("hostfwd"), "forwards are passt's under nat");
});

test("egress none: restricted user networking with the forwards bound on 127.0.0.1", () => {
  assert.equal(netdevArgs("/s", "none", [{ host: 8080, guest: 80, proto: "tcp" }, { host: 5353, guest: 53, proto: "udp" }]), ["-netdev", "user,id=net0,restrict=on,ipv6=off,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5353-:53"]);
});

test("a VM without egress given (a template builder) is isolated: restricted user networking", () => {
  const argv = qemuArgv({ accel: "tcg", machine: "pc-i440fx-7.2", memoryMiB: 256, vcpus: 1, kernel: "/k", initrd: "/i", cmdline: "", disk: false, nic: true }, { token: "a", dir: "/b", memory: { path: "/m", share: true } });
  assert.ok(argv.includes("user,id=net0,restrict=on,ipv6=off"));
});

test("passt: one-off (ends with QEMU), no gateway mapping, QEMU's addresses, the VM's directory in its command line, forwards on loopback", () => {
  const a = passtArgv("/h/vms/c-1", 3, [{ host: 40001, guest: 80, proto: "tcp" }, { host: 40002, guest: 53, proto: "udp" }]);
  for (const flag of ["--one-off", "--no-map-gw", "--foreground", "--ipv4-only"]) assert.ok(a.includes(flag), flag);
  assert.is(a[a.indexOf("--fd") + 1], "3");
  assert.is(a[a.indexOf("--address") + 1], "10.0.2.15");
  assert.is(a[a.indexOf("--gateway") + 1], "10.0.2.2");
  assert.is(a[a.indexOf("--log-file") + 1], "/h/vms/c-1/passt.log");
  assert.equal(a.slice(-4), ["-t", "127.0.0.1/40001:80", "-u", "127.0.0.1/40002:53"]);
});

test("port conflicts are read from passt's and QEMU's messages, nothing else", () => {
  assert.equal(portConflicts("0.8836: ERROR:   Failed to bind any port for '-t 127.0.0.1/45003:80', exiting"), [{ proto: "tcp", host: 45003 }]);
  assert.equal(portConflicts("qemu-system-x86_64: Could not set up host forwarding rule 'udp:127.0.0.1:5000-:53'"), [{ proto: "udp", host: 5000 }]);
  assert.equal(portConflicts("qemu-system-x86_64: -netdev user: Invalid argument"), []);
});

test("/proc/net/tcp: listening sockets on 127.0.0.1 only, by port, with their inode", () => {
  const text = [
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode",
    "   0: 0100007F:9C41 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 4242 1 0000000000000000 100 0 0 10 0",
    "   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0",
    "   2: 0100007F:9C42 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0",
  ].join("\n");
  assert.equal([...boundLoopbackPorts(text, "tcp")], [[40001, "4242"]]);
  assert.equal([...boundLoopbackPorts(text, "udp")].length, 2, "UDP has no listening state: every bound socket counts");
});

test("a port is never leased twice by one process; a taken auto port is re-picked, a user's own is not", async () => {
  const ports = await Promise.all(Array.from({ length: 200 }, () => pickPort()));
  assert.is(new Set(ports).size, 200);
  const before = leasedCount();
  const fwd = [{ host: ports[0], guest: 80, proto: "tcp" as const, auto: true }, { host: ports[1], guest: 81, proto: "tcp" as const }];
  assert.ok(await repickConflicts(fwd, [{ proto: "tcp", host: ports[0] }]));
  assert.is.not(fwd[0].host, ports[0]);
  assert.not.ok(await repickConflicts(fwd, [{ proto: "tcp", host: ports[1] }]), "the user's port cannot move");
  releasePorts([...ports, fwd[0].host]);
  assert.ok(leasedCount() <= before - 200 + 1);
});

test.run();
