// Finding or obtaining the real Pulumi CLI for `npm run up`: on PATH, else installed on first use by
// the official `pulumi` npm package, else by the Automation API's installer (PulumiCommand.install).
// Both download the CLI from Pulumi's site; where that cannot be reached, findPulumiCli says why.
import * as fs from "node:fs";
import * as path from "node:path";
import { messageOf } from "../engine/errors";

export interface PulumiCli {
  /** The CLI binary, absolute. */
  bin: string;
  /** Where it came from: "PATH" or the installer's name. */
  source: string;
}

/** A way to obtain the CLI: resolves with the binary's path (a cached install, or a fresh one). */
export interface Installer {
  name: string;
  install(): Promise<string>;
}

export type Found = { cli: PulumiCli; reason?: undefined } | { cli?: undefined; reason: string };

/**
 * True for the `pulumi` npm package's launcher (node_modules/.bin/pulumi → pulumi/run.js): on PATH
 * in every npm script, it is an installer, not the CLI; `npmPackage` below uses it as one.
 */
export function isNpmLauncher(file: string): boolean {
  try {
    const real = fs.realpathSync(file);
    if (path.basename(real) !== "run.js") return false;
    const pkg = JSON.parse(fs.readFileSync(path.join(path.dirname(real), "package.json"), "utf8")) as { name?: string };
    return pkg.name === "pulumi";
  } catch {
    return false;
  }
}

/** The first executable `pulumi` on `searchPath` that is the CLI itself (not the npm launcher). */
export function pulumiOnPath(searchPath = process.env.PATH ?? ""): string | undefined {
  for (const dir of searchPath.split(path.delimiter).filter(Boolean)) {
    const file = path.resolve(dir, "pulumi");
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (!fs.statSync(file).isFile()) continue;
    } catch {
      continue;
    }
    if (!isNpmLauncher(file)) return file;
  }
  return undefined;
}

/** An error as one line: its message, and the system error under it (fetch hides it in `cause`). */
function oneLine(err: unknown): string {
  const cause = (err as { cause?: { code?: string; hostname?: string; message?: string } } | undefined)?.cause;
  const under = cause?.code ? `${cause.code}${cause.hostname ? ` ${cause.hostname}` : ""}` : cause?.message;
  return `${messageOf(err)}${under ? ` (${under})` : ""}`.replace(/\s*\n\s*/g, " ");
}

/** The official `pulumi` npm package: its CLI version, from ~/.pulumi/versions/ or downloaded there. */
export const npmPackage: Installer = {
  name: "the pulumi npm package",
  async install() {
    let resolve: () => Promise<string>;
    try {
      resolve = require("pulumi/lib/resolve").resolve;
    } catch (err) {
      throw new Error(`it is not installed (${messageOf(err).split("\n")[0]})`);
    }
    return resolve();
  },
};

/** The Automation API's installer: the SDK's CLI version, from ~/.pulumi/versions/ or downloaded there. */
export const automationApi: Installer = {
  name: "the Automation API's installer",
  async install() {
    const { PulumiCommand } = require("@pulumi/pulumi/automation") as typeof import("@pulumi/pulumi/automation");
    return (await PulumiCommand.install()).command;
  },
};

/**
 * The Pulumi CLI: on PATH, else from the first installer that succeeds. Never throws: without a
 * CLI it resolves with the reason, in one line, naming each way it tried.
 */
export async function findPulumiCli(opts: { path?: string; installers?: Installer[] } = {}): Promise<Found> {
  const onPath = pulumiOnPath(opts.path ?? process.env.PATH ?? "");
  if (onPath) return { cli: { bin: onPath, source: "PATH" } };
  const reasons = ["pulumi is not on PATH"];
  for (const installer of opts.installers ?? [npmPackage, automationApi]) {
    try {
      const bin = await installer.install();
      return { cli: { bin: path.resolve(bin), source: installer.name } };
    } catch (err) {
      reasons.push(`${installer.name} could not install it: ${oneLine(err)}`);
    }
  }
  return { reason: reasons.join("; ") };
}
