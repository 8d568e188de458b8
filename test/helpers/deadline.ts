// Every test gets a deadline: a test that hangs fails with a clear message instead of
// blocking the suite. Errors reach uvu as plain Errors: uvu 0.5 prints an error's `details` as
// diff text and stops the whole suite on a ForkvmError, whose details is an object.
export function deadline<T>(ms: number, fn: () => Promise<T>): () => Promise<T> {
  return () =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`test deadline of ${ms} ms passed`)), ms);
      fn().then(
        (v) => { clearTimeout(timer); resolve(v); },
        (e) => { clearTimeout(timer); reject(forUvu(e)); },
      );
    });
}

/** An assertion passes through; anything else with non-text `details` becomes a plain Error with the code and details in its message. */
function forUvu(e: unknown): unknown {
  if (!(e instanceof Error) || e.name === "Assertion") return e;
  const details = (e as { details?: unknown }).details;
  if (details === undefined || typeof details === "string") return e;
  const code = (e as { code?: unknown }).code;
  const plain = new Error(`${code ? `[${String(code)}] ` : ""}${e.message}\n  details: ${JSON.stringify(details).slice(0, 2000)}`);
  plain.stack = `${plain.message}\n${(e.stack ?? "").split("\n").slice(1).join("\n")}`;
  return plain;
}
