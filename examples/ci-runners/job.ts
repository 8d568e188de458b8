// Runs one CI job in a runner, then resets the runner to the template's state:
//   npm run job -- <runner> <command> [args...]
// The reset forks the runner afresh in place (same name and MAC): nothing of the job is left.
import { Engine } from "forkvm/engine";

async function main([runner, ...argv]: string[]): Promise<number> {
  if (!runner || !argv.length) throw new Error("usage: npm run job -- <runner> <command> [args...]");
  const engine = new Engine();
  const t0 = Date.now();
  const r = await engine.exec(runner, ["run-job", ...argv], { timeoutMs: 600_000 });
  process.stdout.write(r.stdout);
  process.stderr.write(r.stderr);
  const ran = Date.now() - t0;
  const t1 = Date.now();
  // The reset gives the fresh guest its own metadata again (/etc/forkvm/metadata).
  await engine.reset(runner);
  const left = await engine.exec(runner, ["sh", "-c", "test -e /var/log/jobs && echo dirty || echo clean"]);
  console.error(`job exited ${r.exitCode} in ${ran} ms; ${runner} reset to the template in ${Date.now() - t1} ms (${left.stdout.toString().trim()})`);
  return r.exitCode;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${(err as Error).message}`);
    process.exit(1);
  },
);
