// How a pool gets from the fleet that runs to the fleet that is declared, as a pure plan:
// remove extra children, heal dead ones, add missing ones, then roll outdated ones in batches.
import type { VmStatus } from "../state/transitions";

export interface LiveChild {
  name: string;
  index: number;
  status: VmStatus;
  template: string;
  generation: string;
  persistent: boolean;
  mac: string;
  /** The forwards' guest ports and protocols, and host ports. */
  forwards: Array<{ guest: number; host: number; proto: string }>;
  /** Its metadata differs from what the pool now declares for it. */
  metadataStale?: boolean;
}

export interface DesiredPool {
  namePrefix: string;
  size: number;
  template: string;
  /** The template's current generation; undefined when unknown (preview of a new template). */
  generation?: string;
  persistent: boolean;
  macPrefix?: string;
  forwards: Array<{ guest: number; hostBase?: number; proto: string }>;
  maxUnavailable: number | string;
}

export interface Heal {
  name: string;
  index: number;
  /** start: restart in place (same name, MAC, and for persistent children the same disk); refork: a new child under the same name. */
  how: "start" | "refork";
  reason: string;
}

export interface PoolPlan {
  /** Children beyond `size`, highest index first. */
  remove: string[];
  heal: Heal[];
  /** Indexes with no child at all. */
  add: number[];
  /** Running children on an outdated template generation or spec, in batches. */
  batches: string[][];
  /** Why each rolled child is outdated. */
  outdated: Record<string, string>;
}

export function childName(prefix: string, index: number): string {
  return `${prefix}-${index}`;
}

/** The index of a child from its name, or undefined if the name is not `<prefix>-<n>`. */
export function indexOf(prefix: string, name: string): number | undefined {
  if (!name.startsWith(`${prefix}-`)) return undefined;
  const rest = name.slice(prefix.length + 1);
  return /^[1-9][0-9]*$/.test(rest) ? Number(rest) : undefined;
}

/** maxUnavailable as a count for a pool of `size`: a percentage rounds down, never below 1. */
export function batchSize(maxUnavailable: number | string, size: number): number {
  if (typeof maxUnavailable === "number") return Math.max(1, maxUnavailable);
  const pct = Number(maxUnavailable.replace("%", ""));
  return Math.max(1, Math.floor((size * pct) / 100));
}

/** Why `c` does not match what is declared, or undefined when it does. */
export function outdatedBecause(c: LiveChild, d: DesiredPool): string | undefined {
  if (c.template !== d.template) return `template ${c.template} → ${d.template}`;
  if (d.generation && c.generation !== d.generation) return `generation ${c.generation} → ${d.generation}`;
  if (c.persistent !== d.persistent) return `persistent ${c.persistent} → ${d.persistent}`;
  if (d.macPrefix && !c.mac.toLowerCase().startsWith(d.macPrefix.toLowerCase())) return `MAC ${c.mac} outside ${d.macPrefix}`;
  const key = (f: { proto: string; guest: number }) => `${f.proto}:${f.guest}`;
  if (d.forwards.map(key).sort().join() !== c.forwards.map(key).sort().join()) return "port forwards changed";
  for (const f of d.forwards) {
    const host = c.forwards.find((g) => key(g) === key(f))?.host;
    if (f.hostBase !== undefined && host !== f.hostBase + c.index - 1) return "port forwards changed";
  }
  return undefined;
}

export function planPool(d: DesiredPool, live: LiveChild[]): PoolPlan {
  const byIndex = new Map(live.map((c) => [c.index, c]));
  const remove = live.filter((c) => c.index > d.size).sort((a, b) => b.index - a.index).map((c) => c.name);
  const heal: Heal[] = [];
  const add: number[] = [];
  const roll: string[] = [];
  const outdated: Record<string, string> = {};
  for (let i = 1; i <= d.size; i++) {
    const c = byIndex.get(i);
    if (!c) {
      add.push(i);
      continue;
    }
    const why = outdatedBecause(c, d);
    if (c.status === "running") {
      if (why) {
        roll.push(c.name);
        outdated[c.name] = why;
      }
      continue;
    }
    const canStart = !why && (c.status === "crashed" || c.status === "stopped");
    heal.push({ name: c.name, index: i, how: canStart ? "start" : "refork", reason: why ? `${c.status}, ${why}` : c.status });
  }
  const n = batchSize(d.maxUnavailable, d.size);
  const batches: string[][] = [];
  for (let i = 0; i < roll.length; i += n) batches.push(roll.slice(i, i + n));
  return { remove, heal, add, batches, outdated };
}

/** Running children the plan leaves alone (they only get rewritten metadata, if it changed). */
export function untouched(p: PoolPlan, live: LiveChild[], d: DesiredPool): LiveChild[] {
  const moved = new Set([...p.remove, ...p.heal.map((h) => h.name), ...p.batches.flat()]);
  return live.filter((c) => c.status === "running" && c.index <= d.size && !moved.has(c.name));
}

/** The plan in lines a user reads in a preview; empty when nothing is to be done. */
export function describePlan(p: PoolPlan, d: DesiredPool, live: LiveChild[] = []): string[] {
  const lines: string[] = [];
  const list = (names: string[]) => (names.length > 6 ? `${names.slice(0, 6).join(", ")}, …` : names.join(", "));
  if (p.remove.length) lines.push(`remove ${p.remove.length} (${list(p.remove)})`);
  if (p.heal.length) lines.push(`heal ${p.heal.length}: ${p.heal.slice(0, 6).map((h) => `${h.name} ${h.reason} → ${h.how}`).join("; ")}${p.heal.length > 6 ? "; …" : ""}`);
  if (p.add.length) lines.push(`add ${p.add.length} (${list(p.add.map((i) => childName(d.namePrefix, i)))})`);
  const rolled = p.batches.flat();
  if (rolled.length) {
    const first = p.outdated[rolled[0]];
    lines.push(`roll ${rolled.length} (${first}) in ${p.batches.length} batch${p.batches.length > 1 ? "es" : ""} of at most ${p.batches[0].length}`);
  }
  const rewrite = untouched(p, live, d).filter((c) => c.metadataStale).length;
  if (rewrite) lines.push(`rewrite /etc/forkvm/metadata in ${rewrite} running ${rewrite === 1 ? "child" : "children"}`);
  return lines;
}
