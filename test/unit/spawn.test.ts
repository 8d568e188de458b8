// Starting QEMU through the spawner shell: exact argv (quotes, spaces, $, backslashes), its own
// session, stdin closed, output appended to the log, many at once, and the fallback to Node's
// spawn for arguments a line cannot carry. A stand-in binary (sleep, sh) plays QEMU.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { shQuote, spawnQemu, which } from "../../engine/qemu/process";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "forkvm-spawn-"));
const cmdline = (pid: number) => fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").slice(0, -1);
const sessionOf = (pid: number) => Number(fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")[3]);
const waitFor = async (ok: () => boolean, ms = 3000) => {
  for (const until = Date.now() + ms; !ok(); ) {
    if (Date.now() > until) throw new Error("condition not met in time");
    await new Promise((r) => setTimeout(r, 10));
  }
};
const pids: number[] = [];

test.after(() => {
  for (const p of pids) try { process.kill(p, "SIGKILL"); } catch { /* gone */ }
  delete process.env.FORKVM_QEMU;
  fs.rmSync(dir, { recursive: true, force: true });
});

test("shQuote round-trips through sh", () => {
  const word = `a b'c"d$e\\f\`g`;
  const { execFileSync } = require("node:child_process");
  // As the spawner does: the quoted line in a variable, expanded inside eval's argument.
  assert.is(execFileSync("/bin/sh", ["-c", 'line=$1; eval "set -- $line"; printf %s "$1"', "sh", `${shQuote(word)} x`], { encoding: "utf8" }), word);
});

test("which finds executables on PATH and rejects what is not one", () => {
  assert.ok(which("sh")?.endsWith("/sh"));
  assert.is(which("/bin/sh"), "/bin/sh");
  assert.is(which("no-such-binary-forkvm"), undefined);
  const plain = path.join(dir, "plain.txt");
  fs.writeFileSync(plain, "x", { mode: 0o644 });
  assert.is(which(plain), undefined);
});

test("the argv arrives exactly, in a new session, with the log as stdout and stderr", async () => {
  process.env.FORKVM_QEMU = "sh";
  const args = ["-c", `printf '%s|' "$@"; echo; echo err >&2; exec sleep 30`, "sh", "a b", "it's", "$HOME", "back\\slash", ""];
  const pid = await spawnQemu(dir, args);
  pids.push(pid);
  await waitFor(() => cmdline(pid)[0] === "sleep");
  assert.is(sessionOf(pid), pid, "session leader of its own session");
  // stderr and stdout reach qemu.log through the log capper, a moment after QEMU wrote them.
  const file = path.join(dir, "qemu.log");
  const want = "a b|it's|$HOME|back\\slash||\nerr\n";
  await waitFor(() => fs.existsSync(file) && fs.readFileSync(file, "utf8") === want).catch(() => undefined);
  assert.is(fs.readFileSync(file, "utf8"), want);
});

test("many spawns at once each get their own pid", async () => {
  process.env.FORKVM_QEMU = "sleep";
  const got = await Promise.all(Array.from({ length: 20 }, (_, i) => spawnQemu(dir, [String(30 + i)])));
  pids.push(...got);
  assert.is(new Set(got).size, 20);
  await waitFor(() => got.every((p, i) => cmdline(p)[1] === String(30 + i)));
});

test("an argument with a newline still starts (Node's spawn)", async () => {
  process.env.FORKVM_QEMU = "sh";
  const pid2 = await spawnQemu(dir, ["-c", "exec sleep 30", "line\nbreak"]);
  pids.push(pid2);
  await waitFor(() => cmdline(pid2)[0] === "sleep");
  assert.is(sessionOf(pid2), pid2);
});

test("a missing binary is HOST, naming it", async () => {
  process.env.FORKVM_QEMU = "no-such-qemu-forkvm";
  try {
    await spawnQemu(dir, []);
    assert.unreachable();
  } catch (err) {
    assert.is((err as { code?: string }).code, "HOST");
    assert.match((err as Error).message, /no-such-qemu-forkvm/);
  }
});

test.run();
