// `npm run up`: deploys a Pulumi program (default: the root program, the default fleet) with the
// Pulumi CLI on a local file backend and an empty passphrase, so no Pulumi account is needed.
// Without the CLI it says how to install it, then runs the same program through Pulumi's own
// dynamic-provider host (offline.ts), so the fleet really comes up on this machine.
//   npm run up [-- <projectDir>] [-- --preview | --destroy | --refresh] [--stack dev]
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { buildDefaultImage, defaultHome, loadImage } from "../engine";
import { deploy, readProject, type Mode } from "./offline";
import { PACKAGE_ROOT } from "./provider-host";

export const INSTALL_HINT = [
  "The Pulumi CLI is not installed. To use the real thing:",
  "  curl -fsSL https://get.pulumi.com | sh      # installs into ~/.pulumi/bin (see https://www.pulumi.com/docs/install/)",
  "  export PATH=$HOME/.pulumi/bin:$PATH && npm run up",
  "Meanwhile: running the same program through Pulumi's own dynamic-provider host, with local state.",
].join("\n");

function onPath(cmd: string): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* not here */
    }
  }
  return undefined;
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

/** Runs the Pulumi CLI on a file backend under the forkvm home. Returns its exit code. */
function withCli(pulumi: string, projectDir: string, mode: Mode, stack: string, extra: string[]): number {
  const backend = path.join(defaultHome(), "pulumi");
  fs.mkdirSync(backend, { recursive: true });
  const env = { ...process.env, PULUMI_BACKEND_URL: `file://${backend}`, PULUMI_CONFIG_PASSPHRASE: process.env.PULUMI_CONFIG_PASSPHRASE ?? "" };
  const run = (args: string[]) => spawnSync(pulumi, args, { cwd: projectDir, env, stdio: "inherit" }).status ?? 1;
  const select = run(["stack", "select", "--create", stack, "--non-interactive"]);
  if (select !== 0) return select;
  const cmd = mode === "preview" ? ["preview"] : mode === "destroy" ? ["destroy", "--yes"] : mode === "refresh" ? ["refresh", "--yes"] : ["up", "--yes"];
  return run([...cmd, "--non-interactive", "--stack", stack, ...extra]);
}

async function main(argv: string[]): Promise<number> {
  const stackAt = argv.indexOf("--stack");
  const stack = stackAt >= 0 ? argv[stackAt + 1] : "dev";
  const rest = argv.filter((_a, i) => !(stackAt >= 0 && (i === stackAt || i === stackAt + 1)));
  const mode: Mode = rest.includes("--preview") ? "preview" : rest.includes("--destroy") ? "destroy" : rest.includes("--refresh") ? "refresh" : "up";
  const projectDir = path.resolve(rest.find((a) => !a.startsWith("--")) ?? PACKAGE_ROOT);
  readProject(projectDir);
  linkThisPackage(projectDir);
  if (mode !== "destroy") await ensureImage();
  const pulumi = process.env.FORKVM_NO_PULUMI_CLI ? undefined : onPath("pulumi");
  if (pulumi) return withCli(pulumi, projectDir, mode, stack, rest.filter((a) => a.startsWith("--") && !["--preview", "--destroy", "--refresh"].includes(a)));
  console.log(INSTALL_HINT);
  const r = await deploy({ projectDir, mode, stack });
  if (mode === "up" || mode === "refresh") console.log(`Outputs:\n${JSON.stringify(r.outputs, null, 2)}`);
  return 0;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      console.error(`error: ${(err as Error).message}`);
      process.exit(1);
    },
  );
}
