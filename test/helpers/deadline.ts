// Every test gets a deadline: a test that hangs fails with a clear message instead of
// blocking the suite.
export function deadline<T>(ms: number, fn: () => Promise<T>): () => Promise<T> {
  return () =>
    new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`test deadline of ${ms} ms passed`)), ms);
      fn().then(
        (v) => { clearTimeout(timer); resolve(v); },
        (e) => { clearTimeout(timer); reject(e); },
      );
    });
}
