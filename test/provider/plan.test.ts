// The pure parts of the pool: the plan from a live fleet to the declared one (remove, heal,
// add, roll in batches), and the cost estimate.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { batchSize, describePlan, indexOf, outdatedBecause, planPool, type DesiredPool, type LiveChild } from "../../engine/ops/pool-plan";
import { DELTA_DISK_MIB, estimate, QEMU_OVERHEAD_MIB } from "../../engine/ops/pool-estimate";

const desired: DesiredPool = { namePrefix: "web", size: 5, template: "t2", generation: "g2", persistent: false, forwards: [], maxUnavailable: 2 };

function child(index: number, over: Partial<LiveChild> = {}): LiveChild {
  return { name: `web-${index}`, index, status: "running", template: "t2", generation: "g2", persistent: false, mac: "52:54:00:aa:bb:cc", forwards: [], ...over };
}

const plan = suite("planPool");

plan("a fleet as declared needs nothing", () => {
  const p = planPool(desired, [1, 2, 3, 4, 5].map((i) => child(i)));
  assert.equal(p, { remove: [], heal: [], add: [], batches: [], outdated: {} });
  assert.equal(describePlan(p, desired), []);
});

plan("extra children go highest first, missing ones are added, dead ones healed", () => {
  const live = [child(1), child(2, { status: "crashed" }), child(3, { status: "creating" }), child(5), child(6), child(7)];
  const p = planPool(desired, live);
  assert.equal(p.remove, ["web-7", "web-6"]);
  assert.equal(p.add, [4]);
  assert.equal(p.heal.map((h) => [h.name, h.how]), [["web-2", "start"], ["web-3", "refork"]]);
  assert.equal(describePlan(p, desired), ["remove 2 (web-7, web-6)", "heal 2: web-2 crashed → start; web-3 creating → refork", "add 1 (web-4)"]);
});

plan("children of an older generation roll in batches of maxUnavailable; a dead outdated one is reforked, not rolled", () => {
  const live = [1, 2, 3, 4].map((i) => child(i, { generation: "g1" })).concat(child(5, { generation: "g1", status: "crashed" }));
  const p = planPool(desired, live);
  assert.equal(p.batches, [["web-1", "web-2"], ["web-3", "web-4"]]);
  assert.equal(p.heal.map((h) => h.how), ["refork"]);
  assert.match(describePlan(p, desired).join("\n"), /roll 4 \(generation g1 → g2\) in 2 batches of at most 2/);
});

plan("a percentage rounds down and never below one", () => {
  assert.is(batchSize("25%", 20), 5);
  assert.is(batchSize("25%", 3), 1);
  assert.is(batchSize(3, 20), 3);
});

plan("persistent, MAC prefix and port forwards make a child outdated", () => {
  assert.match(outdatedBecause(child(1, { persistent: true }), desired)!, /persistent/);
  assert.match(outdatedBecause(child(1), { ...desired, macPrefix: "02:00" })!, /MAC/);
  assert.is(outdatedBecause(child(1, { mac: "02:00:00:01:02:03" }), { ...desired, macPrefix: "02:00" }), undefined);
  const fwd = { ...desired, forwards: [{ guest: 80, hostBase: 8080, proto: "tcp" }] };
  assert.is(outdatedBecause(child(3, { forwards: [{ guest: 80, host: 8082, proto: "tcp" }] }), fwd), undefined);
  assert.match(outdatedBecause(child(3, { forwards: [{ guest: 80, host: 9000, proto: "tcp" }] }), fwd)!, /forwards/);
  assert.is(outdatedBecause(child(3, { forwards: [{ guest: 80, host: 40000, proto: "tcp" }] }), { ...desired, forwards: [{ guest: 80, proto: "tcp" }] }), undefined);
});

plan("indexOf only accepts <prefix>-<n>", () => {
  assert.is(indexOf("web", "web-12"), 12);
  assert.is(indexOf("web", "web-pool-1"), undefined);
  assert.is(indexOf("web", "web-01"), undefined);
});

plan.run();

const est = suite("estimate");

est("memory is the template once plus a private share per child; delta disks on tmpfs count as memory", () => {
  const e = estimate({ size: 20, persistent: false, shape: { memoryMiB: 256, vcpus: 1, diskMiB: 256, accel: "tcg" } });
  const per = QEMU_OVERHEAD_MIB.tcg + 3;
  assert.is(e.basis, "model");
  assert.is(e.memory.sharedMiB, 256);
  assert.is(e.memory.privatePerChildMiB, per);
  assert.is(e.memory.totalMiB, 256 + 20 * per + 20 * DELTA_DISK_MIB);
  assert.is(e.memory.asFullVmsMiB, 20 * (256 + QEMU_OVERHEAD_MIB.tcg));
  assert.is(e.disk.location, "tmpfs");
  assert.match(e.summary, /^20 × 256 MiB children: 256 MiB shared copy-on-write \+ 20 × ~49 MiB private ≈ 1240 MiB \(as full VMs ≈ 6040 MiB\)/);
});

est("measured figures win over the model; a fleet larger than the host's free memory warns", () => {
  const e = estimate({ size: 100, persistent: true, shape: { memoryMiB: 1024, vcpus: 1, diskMiB: 0, accel: "kvm" }, measuredPrivateMiB: 30, hostFreeMiB: 2000 });
  assert.is(e.basis, "measured");
  assert.is(e.memory.privateMiB, 3000);
  assert.is(e.disk.location, "state-dir");
  assert.match(e.warnings[0], /needs ~4024 MiB more memory but the host has 2000 MiB available/);
});

est("without the template's shape the estimate says what it cannot know", () => {
  const e = estimate({ size: 4, persistent: false });
  assert.is(e.basis, "unknown");
  assert.match(e.summary, /memory unknown until the template exists/);
});

est.run();
