// `npm run up`: deploys a Pulumi program (default: the root program, the default fleet) with the real
// Pulumi CLI whenever it can be had (pulumi-cli.ts: on PATH or installed on first use), on the user's
// backend or else a local file backend; only where no CLI can be had, with the offline deployment.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { Argument, Command, Option } from "commander";
import { buildDefaultImage, defaultHome, loadImage } from "../engine";
import { ForkvmError, messageOf } from "../engine/errors";
import { deploy, OFFLINE, type Mode } from "./offline";
import { readProject } from "./project";
import { PACKAGE_ROOT } from "./provider-host";
import { findPulumiCli, type Found, type PulumiCli } from "./pulumi-cli";

const HELP_AFTER = `
Arguments after a lone "--" go to the pulumi command (e.g. -- --diff); the offline deployment takes none.

Environment:
  PULUMI_BACKEND_URL        the Pulumi backend, passed on unchanged; when unset, a local file backend
                            in <forkvm home>/pulumi (no Pulumi account)
  PULUMI_CONFIG_PASSPHRASE  passed on unchanged; when unset, and no PULUMI_CONFIG_PASSPHRASE_FILE, the
                            local file backend gets an empty one
  FORKVM_HOME               the forkvm state directory (also where the default backend lives)
  FORKVM_NO_PULUMI_CLI=1    the same as --offline

Without pulumi on PATH, the CLI is installed on first use (the pulumi npm package, else the
Automation API's installer, both into ~/.pulumi/versions/). Where neither can download it, the
${OFFLINE} deploys forkvm's resources through Pulumi's own
dynamic-provider host, with its state in <forkvm home>/pulumi-local/, and refuses what it cannot
model (other resources, most resource options).`;

export interface UpArgs {
  projectDir: string;
  mode: Mode;
  stack: string;
  offline: boolean;
  /** Arguments after a lone "--", for the pulumi command. */
  passthrough: string[];
}

function command(): Command {
  return new Command("npm run up --")
    .description("Deploy a Pulumi program of forkvm resources (default: the default fleet of this package)")
    .addArgument(new Argument("[project-dir]", "the Pulumi project's directory (holding Pulumi.yaml)").default(PACKAGE_ROOT, "this package's root program"))
    .addOption(new Option("--preview", "show what would change, change nothing").conflicts(["destroy", "refresh"]))
    .addOption(new Option("--destroy", "delete every resource of the stack").conflicts(["refresh"]))
    .option("--refresh", "read every resource back into the stack's state (pulumi refresh)")
    .option("-s, --stack <name>", "the stack", "dev")
    .option("--offline", `use the ${OFFLINE} even where the Pulumi CLI can be had`)
    .addHelpText("after", HELP_AFTER)
    .showHelpAfterError("(--help for usage)");
}

/** Parses `npm run up`'s arguments (argv without node and the script). Exits on --help and on a usage error. */
export function parseArgs(argv: string[]): UpArgs {
  const dd = argv.indexOf("--");
  const cmd = command().parse(dd >= 0 ? argv.slice(0, dd) : argv, { from: "user" });
  const o = cmd.opts<{ preview?: boolean; destroy?: boolean; refresh?: boolean; stack: string; offline?: boolean }>();
  return {
    projectDir: path.resolve(cmd.processedArgs[0] as string),
    mode: o.preview ? "preview" : o.destroy ? "destroy" : o.refresh ? "refresh" : "up",
    stack: o.stack,
    offline: Boolean(o.offline),
    passthrough: dd >= 0 ? argv.slice(dd + 1) : [],
  };
}

/**
 * The environment the CLI runs in: the user's PULUMI_BACKEND_URL and passphrase unchanged when set;
 * else a file backend under the forkvm home, with an empty passphrase unless one is configured.
 * An installed CLI's directory goes first on PATH, so it finds the language plugins beside it.
 */
export function cliEnvironment(cli: PulumiCli, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out = { ...env };
  if (!out.PULUMI_BACKEND_URL) {
    const dir = path.join(defaultHome(env), "pulumi");
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    out.PULUMI_BACKEND_URL = `file://${dir}`;
    if (out.PULUMI_CONFIG_PASSPHRASE === undefined && !out.PULUMI_CONFIG_PASSPHRASE_FILE) out.PULUMI_CONFIG_PASSPHRASE = "";
  }
  if (cli.source !== "PATH") out.PATH = [path.dirname(cli.bin), out.PATH].filter(Boolean).join(path.delimiter);
  return out;
}

/** The pulumi commands for `mode`, in order: select (or create) the stack, then the operation. */
export function cliCommands(mode: Mode, stack: string, passthrough: string[] = []): string[][] {
  const op = { up: ["up", "--yes"], preview: ["preview"], destroy: ["destroy", "--yes"], refresh: ["refresh", "--yes"] }[mode];
  return [
    ["stack", "select", "--create", stack, "--non-interactive"],
    [...op, "--non-interactive", "--stack", stack, ...passthrough],
  ];
}

/** A backend URL for the terminal, without a password it may carry. */
function shown(url: string): string {
  return url.replace(/^([a-z0-9+.-]+:\/\/[^:/@]+):[^@/]*@/i, "$1:***@");
}

/** Runs the CLI's commands in the project directory; returns the first non-zero exit code, or 0. */
function runCli(cli: PulumiCli, args: UpArgs): number {
  const env = cliEnvironment(cli);
  console.log(`Pulumi CLI ${cli.bin} (${cli.source}); backend ${shown(env.PULUMI_BACKEND_URL!)}${process.env.PULUMI_BACKEND_URL ? "" : " (set PULUMI_BACKEND_URL for another)"}; stack ${args.stack}`);
  for (const argv of cliCommands(args.mode, args.stack, args.passthrough)) {
    const r = spawnSync(cli.bin, argv, { cwd: args.projectDir, env, stdio: "inherit" });
    if (r.error) throw new ForkvmError("HOST", `Cannot run ${cli.bin} ${argv.join(" ")}: ${messageOf(r.error)}`, { cause: r.error });
    const code = r.status ?? 1;
    if (code !== 0) return code;
  }
  return 0;
}

async function ensureImage(): Promise<void> {
  try {
    await loadImage();
  } catch (err) {
    if ((err as { code?: string }).code !== "NOT_FOUND") throw err;
    console.log("The default guest image is not built yet: building it (once, about a minute) …");
    await buildDefaultImage();
  }
}

/**
 * An example depends on this package as "forkvm": "file:../..". Without `npm install` in its
 * directory, link it the way npm would, so the program and the provider host find `forkvm`.
 */
function linkThisPackage(projectDir: string): void {
  const pkgFile = path.join(projectDir, "package.json");
  if (projectDir === PACKAGE_ROOT || !fs.existsSync(pkgFile)) return;
  const spec = JSON.parse(fs.readFileSync(pkgFile, "utf8")).dependencies?.forkvm;
  if (typeof spec !== "string" || !spec.startsWith("file:") || path.resolve(projectDir, spec.slice(5)) !== PACKAGE_ROOT) return;
  const link = path.join(projectDir, "node_modules", "forkvm");
  if (fs.existsSync(path.join(link, "package.json"))) return;
  console.log(`linking ${path.relative(process.cwd(), link)} → ${PACKAGE_ROOT} (what npm install does for "${spec}")`);
  fs.mkdirSync(path.dirname(link), { recursive: true });
  fs.rmSync(link, { force: true });
  fs.symlinkSync(path.relative(path.dirname(link), PACKAGE_ROOT), link);
}

async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  readProject(args.projectDir);
  linkThisPackage(args.projectDir);
  const found: Found = args.offline ? { reason: "--offline was given" } : process.env.FORKVM_NO_PULUMI_CLI ? { reason: "FORKVM_NO_PULUMI_CLI is set" } : await findPulumiCli();
  // A no-op when the image is built (it reads the image's manifest); destroy needs none.
  if (args.mode !== "destroy") await ensureImage();
  if (found.cli) return runCli(found.cli, args);
  console.log(`Using the ${OFFLINE}: ${found.reason}`);
  if (args.passthrough.length) throw new ForkvmError("INVALID_ARGUMENT", `Cannot pass ${args.passthrough.join(" ")} to the ${OFFLINE}: arguments after "--" are for the Pulumi CLI`);
  const r = await deploy({ projectDir: args.projectDir, mode: args.mode, stack: args.stack });
  if (args.mode === "up" || args.mode === "refresh") console.log(`Outputs:\n${JSON.stringify(r.outputs, null, 2)}`);
  return 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(`error: ${messageOf(err)}`);
      process.exit(err instanceof ForkvmError && err.code === "INVALID_ARGUMENT" ? 2 : 1);
    },
  );
}
