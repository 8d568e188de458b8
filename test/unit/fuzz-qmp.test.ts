// Fuzz (issue 8): the QMP client (engine/qemu/qmp.ts) against a scripted hostile monitor on a
// real unix socket. Around each command the monitor sends random bytes, JSON that is no reply,
// events good and bad, replies with wrong, repeated, numeric or missing ids, replies to earlier
// and timed-out commands, overlong lines, deep nesting, a second greeting, split at random points,
// and sometimes hangs up. Every command resolves with exactly its own reply or fails with a
// ForkvmError (QMP, TIMEOUT); it resolves whenever its reply came whole; no exception escapes a
// socket handler. Seeded: FORKVM_FUZZ_SEED repeats a run.
import { test } from "uvu";
import * as assert from "uvu/assert";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { Qmp } from "../../engine/qemu/qmp";
import { ForkvmError } from "../../engine/errors";
import { deadline } from "../helpers/deadline";
import { fuzzSeed, NASTY_STRINGS, prng, Rand, randomValue, scratch, jsonText } from "../helpers/fuzz";

const seed = fuzzSeed("fuzz-qmp");
const r = new Rand(prng(seed));
const tmp = scratch("fuzz-qmp");
const uncaught: unknown[] = [];
process.on("uncaughtException", (e) => uncaught.push(e));
process.on("unhandledRejection", (e) => uncaught.push(e));

const CAP = 4096; // the client's maxLineBytes here: small, so overlong lines are cheap
const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: "" }, capabilities: [] } };
const line = (o: unknown) => `${jsonText(o)}\r\n`;
const lines = { sent: 0 };

/**
 * One hostile line (always newline-terminated). Ids are those of earlier commands (answered or
 * timed out) or junk, never the current command's: a monitor that answers the current id first
 * with something else has answered it (the client takes the first answer: see fuzz "error" plans).
 */
function noise(earlier: string[]): string {
  lines.sent++;
  const anyId = () => r.pick([...earlier, "fvm-0", "fvm-999999", "", "x", ...NASTY_STRINGS.slice(0, 10)]);
  switch (r.int(17)) {
    case 0: return `${r.bytes(r.int(200)).toString("latin1").replace(/\n/g, "")}\n`;
    case 1: return line(randomValue(r));
    case 2: return line({ return: randomValue(r) }); // no id: answers none of ours
    case 3: return line({ return: { stale: true }, id: anyId() });
    case 4: return line({ error: { class: "GenericError", desc: "stale" }, id: anyId() });
    case 5: return line({ return: 1, id: r.pick([1, null, true, {}, ["fvm-1"]]) });
    case 6: return line({ error: r.pick([null, "x", { class: 1 }, {}]), id: anyId() });
    case 7: return line({ event: r.pick(["STOP", "RESUME", "MIGRATION", "x"]), timestamp: { seconds: r.pick([1, -1, 1e308, "1"]), microseconds: r.pick([0, NaN, null]) }, data: randomValue(r) });
    case 8: return line({ event: "FUZZ", data: { n: r.int(1000) }, timestamp: { seconds: 100, microseconds: r.int(1e6) } });
    case 9: // overlong (now and then: each one makes the test wait for it to drain)
      return r.chance(0.3) ? `${"x".repeat(CAP + 1 + r.int(CAP))}\n` : line({ event: "SHORT", timestamp: { seconds: 1, microseconds: 1 } });
    case 10: return r.chance(0.3) ? `${"[".repeat(100_000)}${"]".repeat(100_000)}\n` : `${"[".repeat(2000)}${"]".repeat(2000)}\n`; // too deep for JSON.parse
    case 11: return `${"[".repeat(1000)}1${"]".repeat(1000)}\n`;
    case 12: return line(GREETING);
    case 13: return r.pick(["\n", "\r\n", " \n", "{}\n", "null\n", "[]\n", '{"return"\n', '{"id":"fvm-1"}\n']);
    case 14: return line({ return: {}, error: { class: "X", desc: "both" }, id: anyId() });
    case 15: return line({ QMP: randomValue(r) });
    default: return line({ event: "FUZZ", timestamp: { seconds: 1, microseconds: 2 } });
  }
}

/** A fake monitor: greets (or not), answers qmp_capabilities, then hands each command to `onCommand`. */
function monitor(sock: string, opts: { greeting?: string } = {}) {
  const conns = new Set<net.Socket>();
  let onCommand: (cmd: { execute: string; id?: string }, send: (text: string) => void, hangUp: () => void) => void = () => {};
  const server = net.createServer((c) => {
    conns.add(c);
    c.on("error", () => undefined);
    c.on("close", () => conns.delete(c));
    // Writes `text` in random chunks, as a socket may deliver it.
    const send = (text: string) => {
      const buf = Buffer.from(text, "latin1");
      for (let at = 0; at < buf.length; ) {
        const n = 1 + r.int(r.chance(0.5) ? 16 : 65_536);
        if (!c.destroyed) c.write(buf.subarray(at, at + n));
        at += n;
      }
    };
    send(opts.greeting ?? line(GREETING));
    let buf = "";
    c.on("data", (d) => {
      buf += d;
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const text = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        let cmd: { execute: string; id?: string };
        try { cmd = JSON.parse(text); } catch { continue; }
        if (cmd.execute === "qmp_capabilities") send(line({ return: {}, id: cmd.id }));
        else onCommand(cmd, send, () => c.destroy());
      }
    });
  });
  return {
    listen: () => new Promise<void>((res) => server.listen(sock, () => res())),
    set onCommand(f: typeof onCommand) { onCommand = f; },
    close: () => { for (const c of conns) c.destroy(); server.close(); },
  };
}

test("hostile monitors around 700 commands: each gets its own reply or a ForkvmError; nothing escapes a handler", deadline(60_000, async () => {
  const t0 = Date.now();
  const COMMANDS = Number(process.env.FUZZ_QMP_N ?? 700);
  const seen = { ok: 0, qmp: 0, timeout: 0, sessions: 0, late: 0 };
  let done = 0;
  while (done < COMMANDS) {
    const sock = path.join(tmp, `m${seen.sessions++}.sock`);
    const m = monitor(sock);
    await m.listen();
    const q = await Qmp.connect(sock, 5000, () => true, { maxLineBytes: CAP });
    const ids: string[] = [];
    let hungUp = false;
    // An overlong line still streaming when the next command goes out is taken as that command's
    // reply (qmp.ts: the oldest unanswered command's), so after a command with overlong lines the
    // test lets them drain before the next one.
    let prevOverlong = false;
    try {
    for (let k = 0; k < 60 && done < COMMANDS && !q.isClosed; k++, done++) {
      // What the monitor will do about this command, decided up front.
      const before = Array.from({ length: r.int(6) }, () => "");
      const plan = r.pick(["reply", "reply", "reply", "reply", "error", "late", "never", "glued", "hangup", "overlong"] as const);
      let sentWhole = false;
      let overlong = plan === "overlong";
      const long = (l: string) => Buffer.byteLength(l, "latin1") - 1 > CAP;
      const expected = { n: k, session: seen.sessions };
      m.onCommand = (cmd, send, hangUp) => {
        const noiseLines = before.map(() => noise(ids));
        if (cmd.id) ids.push(cmd.id);
        const pre = noiseLines.join("");
        const after = noise(ids);
        overlong ||= noiseLines.some(long) || long(after);
        const reply = line({ return: expected, id: cmd.id });
        // Whole: no line before it over the cap (an overlong line is taken as the oldest unanswered command's reply).
        if (plan === "reply") { send(pre + reply + after); sentWhole = !noiseLines.some(long); }
        else if (plan === "error") send(pre + line({ error: { class: "GenericError", desc: `no ${k}` }, id: cmd.id }));
        else if (plan === "late") { send(pre); setTimeout(() => send(reply), 70); seen.late++; }
        else if (plan === "glued") send(pre + r.bytes(5).toString("latin1").replace(/\n/g, "") + reply); // noise glued onto the reply's line
        else if (plan === "hangup") { send(pre); hungUp = true; hangUp(); }
        else if (plan === "overlong") send(`${"y".repeat(CAP * 2)}\n${reply}`);
        else send(pre); // never
      };
      if (prevOverlong) await new Promise((res) => setTimeout(res, 30));
      // A reply that comes is never late (2 s); the others time out fast.
      const got = await q.execute<typeof expected>("query-fuzz", { k }, plan === "reply" || plan === "error" ? 2000 : 40).then(
        (v) => ({ v }),
        (e) => ({ e }),
      );
      if ("v" in got) {
        assert.equal(got.v, expected, `command ${k} of session ${seen.sessions} got another command's reply (plan ${plan}; seed ${seed})`);
        seen.ok++;
      } else {
        const e = got.e;
        assert.instance(e, ForkvmError, `command ${k}: ${e} (plan ${plan}; seed ${seed})`);
        assert.ok(["QMP", "TIMEOUT"].includes((e as ForkvmError).code), (e as ForkvmError).code);
        assert.ok(!sentWhole, `command ${k} (plan ${plan}) failed although its reply came whole: ${(e as Error).message}; seed ${seed}`);
        if ((e as ForkvmError).code === "QMP") seen.qmp++;
        else seen.timeout++;
      }
      prevOverlong = overlong;
      if (hungUp) break;
    }
    } finally {
      q.close();
      m.close();
    }
  }
  await new Promise((res) => setTimeout(res, 150)); // late replies still in flight land on closed sockets
  console.log(`  ${done} commands in ${seen.sessions} sessions, ${lines.sent} hostile lines: ${seen.ok} answered, ${seen.qmp} QMP errors, ${seen.timeout} timeouts, ${Date.now() - t0} ms; seed ${seed}`);
  assert.ok(seen.ok > 150 && seen.qmp > 20 && seen.timeout > 20, JSON.stringify(seen));
  assert.equal(uncaught, []);
}));

test("hostile greetings: connect fails with a ForkvmError at its deadline, never hangs or throws anything else", deadline(30_000, async () => {
  const greetings = [
    "", "garbage\n", line({ QMP: 1 }), line({ QMP: { version: "7.2" } }), line([GREETING]), `${"z".repeat(CAP * 4)}\n`,
    line({ return: {} }), `${jsonText(GREETING)}`, /* no newline */ r.bytes(3000).toString("latin1"),
  ];
  const results = await Promise.all(greetings.map(async (g, i) => {
    const sock = path.join(tmp, `g${i}.sock`);
    const m = monitor(sock, { greeting: g });
    await m.listen();
    const t0 = Date.now();
    const err = await Qmp.connect(sock, 1500, () => true, { maxLineBytes: CAP }).then((q) => { q.close(); return undefined; }, (e) => e);
    m.close();
    lines.sent++;
    return { g: g.slice(0, 30), err, ms: Date.now() - t0 };
  }));
  for (const { g, err, ms } of results) {
    assert.instance(err, ForkvmError, `greeting ${JSON.stringify(g)}: ${err}`);
    assert.ok(ms < 5000, `greeting ${JSON.stringify(g)}: took ${ms} ms`);
  }
  assert.equal(uncaught, []);
}));

test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test.run();
