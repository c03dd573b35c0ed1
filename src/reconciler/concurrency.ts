/**
 * How many device actions a pass runs at once, and the runner that keeps
 * them bounded and apart.
 */
import * as os from 'node:os';

/** The most actions --concurrency accepts: ublk_drv's default device limit (ublks_max). */
export const MAX_CONCURRENCY = 64;

/**
 * Default number of device actions a pass runs at once: the CPUs, at least 4, at most 16.
 * Starting a device server is mostly CPU (a node process boots and loads
 * the addon), so running more starts than CPUs gains little; but part of
 * each start and most of each removal waits on the kernel (START_DEV until
 * every queue has fetched, DEL_DEV until the server has closed
 * /dev/ublkcN, record fsyncs), so a few more than the CPUs keeps them busy
 * on a small host. The cap bounds what a burst costs: each starting server
 * holds ~40 MB of RSS while it boots, and ublk_drv takes a global mutex
 * for ADD_DEV and DEL_DEV, so many more at once only queue there.
 */
export function defaultConcurrency(): number {
  return Math.min(16, Math.max(4, os.availableParallelism()));
}

/** One unit of work, and the keys (a device's id, its name) no two running units may share. */
export interface KeyedTask<T> {
  keys: readonly string[];
  run: () => Promise<T>;
}

/**
 * Runs the tasks with at most `limit` running at once, and never two with
 * a key in common at the same time (those run one after the other, in
 * the order given). Results come back in the tasks' order. A task that
 * rejects does not stop the others; its rejection is its result's.
 */
export async function runBounded<T>(tasks: readonly KeyedTask<T>[], limit: number): Promise<PromiseSettledResult<T>[]> {
  if (!Number.isInteger(limit) || limit < 1)
    throw new RangeError(`concurrency must be a positive integer, got ${limit}`);
  const results: PromiseSettledResult<T>[] = new Array(tasks.length);
  const busyKeys = new Set<string>();
  const waiting = tasks.map((_, i) => i);
  let running = 0;
  return new Promise((resolve) => {
    if (tasks.length === 0) {
      resolve(results);
      return;
    }
    let done = 0;
    const startMore = (): void => {
      // Keys of tasks still waiting ahead: a later task that shares one waits its turn behind them.
      const claimed = new Set(busyKeys);
      for (let w = 0; w < waiting.length && running < limit;) {
        const i = waiting[w]!;
        const task = tasks[i]!;
        if (task.keys.some((k) => claimed.has(k))) {
          for (const k of task.keys) claimed.add(k);
          w++;
          continue;
        }
        waiting.splice(w, 1);
        for (const k of task.keys) {
          busyKeys.add(k);
          claimed.add(k);
        }
        running++;
        // A task that throws synchronously is a rejection like any other.
        Promise.resolve()
          .then(task.run)
          .then(
            (value) => (results[i] = { status: 'fulfilled', value }),
            (reason: unknown) => (results[i] = { status: 'rejected', reason }),
          )
          .finally(() => {
            for (const k of task.keys) busyKeys.delete(k);
            running--;
            if (++done === tasks.length) resolve(results);
            else startMore();
          });
      }
    };
    startMore();
  });
}
