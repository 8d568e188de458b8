// The short round of the soak (scripts/soak.sh runs 5 x 100): 2 rounds of 10 children, each with a
// forwarded port, forked and removed from one 128 MiB TCG template. Afterwards nothing of ours is
// left: no process, file, socket, memory-directory byte or held port, no duplicate port, no growth
// of this process's fds or children; MemAvailable is back within a tolerance (the memory of killed
// processes returns over seconds) when no one else's QEMU started or ended meanwhile.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { Engine } from "../../engine/engine";
import { buildDefaultImage } from "../../engine/image";
import { soak, type SoakResult } from "../soak/soak";
import { deadline } from "../helpers/deadline";

const engine = new Engine();
const TOLERANCE_MIB = 256;
let result: SoakResult | undefined;

test("2 rounds of 10 children: every child forked and answered, and nothing is left behind", deadline(420_000, async () => {
  await buildDefaultImage({});
  result = await soak(engine, { rounds: 2, size: 10, concurrency: 4, deadlineMs: 300_000, forwards: true, memToleranceMiB: TOLERANCE_MIB, log: (l) => console.log(`  ${l}`) });
  assert.is(result.timedOut, false);
  assert.equal(result.rounds.map((r) => r.children), [10, 10]);
  assert.equal(result.leaks, []);
  assert.equal(result.final.processes, []);
  assert.is(result.final.memDirFiles, 0);
  assert.equal(result.final.sockets, []);
  for (const r of result.rounds) {
    assert.equal(r.after.processes, [], `round ${r.round}: no process left`);
    assert.is(r.after.memDirMiB <= r.peak.memDirMiB, true);
    assert.ok(r.peak.processes.length >= 10, `round ${r.round}: the children ran (${r.peak.processes.length} processes at the peak)`);
  }
}));

test("host memory is back to its baseline (within 256 MiB, within 30 s) when no other QEMU came or went", () => {
  assert.ok(result, "the soak ran");
  const { baseline, final } = result!;
  const drop = baseline.memAvailableMiB - final.memAvailableMiB;
  if (final.allQemus !== baseline.allQemus) {
    console.log(`  (not judged: ${baseline.allQemus} QEMUs on the host before, ${final.allQemus} after; MemAvailable moved by ${-drop} MiB)`);
    return;
  }
  assert.ok(drop < TOLERANCE_MIB, `MemAvailable ${baseline.memAvailableMiB} -> ${final.memAvailableMiB} MiB`);
});

test.after(async () => {
  const names = [...engine.listVms().map((v) => v.name), ...engine.listTemplates().map((t) => t.name)];
  if (names.length) await engine.remove(names, { force: true }).catch((e) => console.error("cleanup:", e));
});

test.run();
