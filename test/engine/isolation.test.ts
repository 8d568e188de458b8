// Network isolation on real QEMU (issue 8, items 3 and 10), with positive controls in the same
// child: a server on the host's 127.0.0.1 and a sibling's forward are unreachable from a child,
// while its own forward answers and egress `nat` reaches a server in a network namespace this
// suite made (egress `none` does not); 12 children forked 4 at a time get 12 distinct working
// ports; a child's passt ends with its QEMU. One parent boot; `after` removes every VM, the
// namespace, its veth and its server, even when a test fails.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as http from "node:http";
import * as os from "node:os";
import * as path from "node:path";
import { spawn, type ChildProcess } from "node:child_process";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { netHelperPids } from "../../engine/net";
import { pollUntil } from "../../engine/util/poll";
import { run } from "../../engine/util/run";
import { deadline } from "../helpers/deadline";

const engine = new Engine();
const test = suite("network isolation");

// The namespace of this run: names and a /30 of its own (interface names fit in 15 characters).
const tag = `fkvi${process.pid % 100000}`;
const ns = tag;
const vethHost = `${tag}h`;
const vethNs = `${tag}n`;
const octet = 20 + (process.pid % 200);
const hostSide = `10.254.${octet}.1`;
const nsSide = `10.254.${octet}.2`;
const NS_PORT = 8080;

let hostServer: http.Server | undefined;
let hostPort = 0;
let nsServer: ChildProcess | undefined;
let wwwDir = "";

const sh = async (vm: string, cmd: string, timeoutMs = 60_000) => {
  const r = await engine.exec(vm, ["sh", "-c", cmd], { timeoutMs });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
};

/** Which of `targets` (host:port) answer an HTTP request from inside `vm`: all probed at once, 4 s each. */
async function reachable(vm: string, targets: string[]): Promise<Record<string, boolean>> {
  const probes = targets.map((t, i) => {
    const [host, port] = t.split(":");
    // busybox nc under `timeout` (busybox wget crashes on remote addresses in this guest, and
    // `nc -w` with a closed stdin ends the whole exec: see engine/README.md, Network).
    return `( printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 4 nc ${host} ${port} 2>/dev/null | grep -q forkvm-marker && echo "ok ${i}" || echo "no ${i}" ) &`;
  });
  const r = await sh(vm, `${probes.join("\n")}\nwait`);
  const out: Record<string, boolean> = {};
  targets.forEach((t, i) => { out[t] = new RegExp(`^ok ${i}$`, "m").test(r.out); });
  return out;
}

async function get(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(10_000) });
  return res.text();
}

/** The host's own IPv4 addresses (a guest must not reach loopback services through them either). */
function hostAddresses(): string[] {
  return Object.values(os.networkInterfaces()).flat().filter((a) => a && a.family === "IPv4" && !a.internal).map((a) => a!.address);
}

test.before(deadline(600_000, async () => {
  await buildDefaultImage({});
  // A host service on loopback only.
  hostServer = http.createServer((_req, res) => res.end("forkvm-marker host-loopback\n"));
  await new Promise<void>((r) => hostServer!.listen(0, "127.0.0.1", () => r()));
  hostPort = (hostServer.address() as { port: number }).port;
  // "The outside": a server in a namespace of our own, reached from the host only through our veth.
  await run("ip", ["netns", "add", ns]);
  await run("ip", ["link", "add", vethHost, "type", "veth", "peer", "name", vethNs]);
  await run("ip", ["link", "set", vethNs, "netns", ns]);
  await run("ip", ["addr", "add", `${hostSide}/30`, "dev", vethHost]);
  await run("ip", ["link", "set", vethHost, "up"]);
  await run("ip", ["-n", ns, "addr", "add", `${nsSide}/30`, "dev", vethNs]);
  await run("ip", ["-n", ns, "link", "set", vethNs, "up"]);
  await run("ip", ["-n", ns, "link", "set", "lo", "up"]);
  wwwDir = fs.mkdtempSync(path.join(os.tmpdir(), `${tag}-www-`));
  fs.writeFileSync(path.join(wwwDir, "index.html"), "forkvm-marker outside\n");
  nsServer = spawn("ip", ["netns", "exec", ns, "busybox", "httpd", "-f", "-p", `${nsSide}:${NS_PORT}`, "-h", wwwDir], { stdio: "ignore" });
  await pollUntil(async () => (await fetch(`http://${nsSide}:${NS_PORT}/`, { signal: AbortSignal.timeout(1000) }).then((r) => r.text()).catch(() => "")).includes("outside") || undefined, { what: "reach the namespace's server from the host", deadlineMs: 10_000, intervalMs: 100 });

  // One parent (nat), a web server in it that every child inherits, frozen into a template.
  await engine.createParent({
    name: "iso-p", memoryMiB: 192, accel: "tcg",
    init: ["mkdir -p /www && echo forkvm-marker child-web > /www/index.html && httpd -p 8000 -h /www"],
  });
  await engine.createTemplate({ name: "iso-t", parent: "iso-p", source: "frozen" });
  const nat = await engine.fork({ template: "iso-t", names: ["iso-a", "iso-b"], forwards: [{ guest: 8000 }], concurrency: 2 });
  assert.is(nat.failed.length, 0, nat.failed.map((f) => f.error.message).join("; "));
  const none = await engine.fork({ template: "iso-t", names: ["iso-none"], forwards: [{ guest: 8000 }], egress: "none" });
  assert.is(none.failed.length, 0, none.failed.map((f) => f.error.message).join("; "));
}));

test.after(async () => {
  const names = [...engine.listTemplates().map((t) => t.name), ...engine.listVms().map((v) => v.name)];
  await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
  hostServer?.close();
  if (nsServer?.pid) { try { process.kill(nsServer.pid, "SIGKILL"); } catch { /* gone */ } }
  await run("ip", ["link", "del", vethHost]).catch(() => undefined);
  await run("ip", ["netns", "del", ns]).catch(() => undefined);
  if (wwwDir) fs.rmSync(wwwDir, { recursive: true, force: true });
});

test("children inherit the template's parent's egress unless the fork says otherwise", () => {
  assert.is(engine.vm("iso-p").egress, "nat");
  assert.is(engine.vm("iso-a").egress, "nat");
  assert.is(engine.vm("iso-none").egress, "none");
});

test("egress nat: the host's loopback and a sibling's forward are unreachable; its own forward and the outside answer", deadline(120_000, async () => {
  const a = engine.vm("iso-a");
  const b = engine.vm("iso-b");
  const sibling = b.forwards[0].host;
  const own = a.forwards[0].host;
  const loopbackTargets = ["10.0.2.2", ...hostAddresses()].flatMap((h) => [`${h}:${hostPort}`, `${h}:${sibling}`]);
  const seen = await reachable("iso-a", [`${nsSide}:${NS_PORT}`, ...loopbackTargets]);
  console.log(`  iso-a (nat) from inside: ${JSON.stringify(seen)}`);
  assert.ok(seen[`${nsSide}:${NS_PORT}`], "positive control: egress nat reaches the namespace's server");
  for (const t of loopbackTargets) assert.not.ok(seen[t], `${t} (a host-loopback service or a sibling's forward) must be unreachable`);
  assert.match(await get(own), /child-web/, "positive control: its own forward answers from the host");
  assert.match(await get(sibling), /child-web/, "the sibling's forward answers from the host");
}));

test("egress none: nothing outside is reached, not even the namespace's server; its own forward answers", deadline(120_000, async () => {
  const c = engine.vm("iso-none");
  const sibling = engine.vm("iso-a").forwards[0].host;
  const targets = [`${nsSide}:${NS_PORT}`, `10.0.2.2:${hostPort}`, `10.0.2.2:${sibling}`, ...hostAddresses().map((h) => `${h}:${hostPort}`)];
  const seen = await reachable("iso-none", ["127.0.0.1:8000", ...targets]);
  console.log(`  iso-none from inside: ${JSON.stringify(seen)}`);
  assert.ok(seen["127.0.0.1:8000"], "positive control: the probe works inside this child (its own server)");
  for (const t of targets) assert.not.ok(seen[t], `${t} must be unreachable with egress none`);
  assert.match(await get(c.forwards[0].host), /child-web/, "positive control: its own forward answers from the host");
}));

test("a child's passt ends with its QEMU (SIGKILL) and carries the VM's directory in its command line", deadline(60_000, async () => {
  const dir = engine.store.dir("vms", "iso-b");
  const helpers = netHelperPids(dir);
  assert.is(helpers.length, 1, "one passt for the nat child");
  assert.ok(fs.readFileSync(`/proc/${helpers[0]}/cmdline`, "utf8").includes(dir));
  assert.is(netHelperPids(engine.store.dir("vms", "iso-none")).length, 0, "no helper process for egress none");
  process.kill(engine.vm("iso-b").pid!, "SIGKILL");
  await pollUntil(() => (netHelperPids(dir).length === 0 ? true : undefined), { what: "wait for passt to end with its QEMU", deadlineMs: 10_000, intervalMs: 50 });
  assert.is(engine.vm("iso-b").status, "crashed");
  await engine.remove(["iso-b"], { force: true });
}));

test("12 children forked 4 at a time get 12 distinct host ports, each answering, and keep none after rm", deadline(240_000, async () => {
  const r = await engine.fork({ template: "iso-t", count: 12, prefix: "iso-port", concurrency: 4, forwards: [{ guest: 8000 }] });
  assert.is(r.failed.length, 0, r.failed.map((f) => f.error.message).join("; "));
  const ports = r.children.map((c) => c.forwards[0].host);
  assert.is(new Set(ports).size, 12, `distinct ports: ${ports.join(" ")}`);
  for (const [i, port] of ports.entries()) assert.match(await get(port), /child-web/, `${r.children[i].name} answers on ${port}`);
  const dirs = r.children.map((c) => engine.store.dir("vms", c.name));
  await engine.remove(r.children.map((c) => c.name), { force: true });
  await pollUntil(() => (dirs.every((d) => netHelperPids(d).length === 0) ? true : undefined), { what: "wait for every passt to end", deadlineMs: 10_000, intervalMs: 50 });
}));

test.run();
