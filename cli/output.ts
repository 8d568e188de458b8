// How the CLI talks to people and machines: tables, JSON, progress on stderr, errors with codes.
import Table from "cli-table3";
import { SingleBar, Presets } from "cli-progress";
import { ForkvmError } from "../engine/errors";
import { makeLogger, type Logger } from "../engine/log";
import type { Progress } from "../engine/context";

export function table(head: string[], rows: Array<Array<string | number | undefined>>): string {
  const t = new Table({ head, style: { head: [], border: [] }, chars: { mid: "", "left-mid": "", "mid-mid": "", "right-mid": "" } });
  for (const r of rows) t.push(r.map((c) => (c === undefined ? "-" : String(c))));
  return t.toString();
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + "\n");
}

/** A logger writing warnings (and everything with --verbose) to stderr. */
export function cliLogger(verbose: boolean): Logger {
  return makeLogger((level, msg, fields) => {
    if (level === "debug" && !verbose) return;
    if (level === "info" && !verbose) return;
    const extra = Object.keys(fields).length && verbose ? ` ${JSON.stringify(fields)}` : "";
    process.stderr.write(`${level === "warn" ? "warning" : level}: ${msg}${extra}\n`);
  });
}

/** Progress: a bar on a terminal, plain lines otherwise; never on stdout. */
export function progressReporter(quiet: boolean): { report: (p: Progress) => void; done: () => void } {
  if (quiet) return { report: () => {}, done: () => {} };
  let bar: SingleBar | undefined;
  return {
    report: (p) => {
      if (p.total !== undefined && p.done !== undefined && process.stderr.isTTY) {
        if (!bar) {
          bar = new SingleBar({ stream: process.stderr, format: ` ${p.step} [{bar}] {value}/{total} {message}`, hideCursor: true }, Presets.shades_classic);
          bar.start(p.total, 0, { message: "" });
        }
        bar.update(p.done, { message: p.message ?? "" });
      } else {
        const count = p.total !== undefined && p.done !== undefined ? ` ${p.done}/${p.total}` : "";
        process.stderr.write(`${p.step}${count}${p.message ? `: ${p.message}` : ""}\n`);
      }
    },
    done: () => bar?.stop(),
  };
}

/** Prints an error and returns the exit code: 2 for bad input, 1 otherwise. */
export function reportError(err: unknown, json: boolean): number {
  const e = err instanceof ForkvmError ? err : new ForkvmError("HOST", err instanceof Error ? err.message : String(err));
  if (json) process.stdout.write(JSON.stringify({ error: { code: e.code, message: e.message, details: e.details } }, null, 2) + "\n");
  else {
    process.stderr.write(`forkvm: ${e.message}\n`);
    const stderr = e.details.stderr;
    if (typeof stderr === "string" && stderr && !e.message.includes(stderr)) process.stderr.write(`${stderr.split("\n").map((l) => `  | ${l}`).join("\n")}\n`);
  }
  return e.code === "INVALID_ARGUMENT" ? 2 : 1;
}

/** Port forwards as `127.0.0.1:HOST->GUEST/PROTO`, or "-" for none. */
export function forwardsText(forwards: Array<{ host: number; guest: number; proto: string }>): string {
  return forwards.map((f) => `127.0.0.1:${f.host}->${f.guest}/${f.proto}`).join(" ") || "-";
}
