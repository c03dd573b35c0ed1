/**
 * A block device whose blocks are objects in an HTTP object store — the
 * kind of target that is a few lines in Node (fetch, async/await) and a
 * project in C. Each 4 KiB block is one object, PUT on write and GET on
 * read (a missing object reads as zeroes); with a 4 KiB logical block size
 * every request covers whole objects, so no read-modify-write is needed.
 *
 *   node dist/examples/http-store.js add URL [SIZE]     e.g. http://127.0.0.1:8080/disk1
 *   node dist/examples/http-store.js del ID
 *
 * A slow store makes the device slow, never wrong: each queue keeps at most
 * MAX_REQUESTS HTTP requests open (a 512 KiB write is 128 objects; sending them
 * all at once is a connection storm that a busy host answers with refused or
 * reset connections), and a request that fails in transit or with a 5xx, 408 or 429 is
 * retried with backoff — GET and PUT of a whole object are idempotent — for up
 * to RETRY_FOR_MS. Only then does the IO fail, with EIO, and the store being
 * unreachable for longer is what the application sees. A write completes only
 * after the store has acknowledged every object in it.
 *
 * examples/object-store-server.ts is a tiny store to try it with.
 */
import type { TargetContext, UblkIo, UblkTarget } from '../src';
import { runExample } from './run-example';

const BLOCK = 4096;
/** HTTP requests a queue keeps open at once. */
const MAX_REQUESTS = 16;
/** How long a block's GET or PUT is retried before the IO fails with EIO. */
const RETRY_FOR_MS = 60_000;
/** One attempt that has not answered by then is abandoned and retried. */
const ATTEMPT_TIMEOUT_MS = 30_000;

/**
 * Answers from the store that retrying cannot change (a 4xx other than 408 and 429): the IO
 * fails at once. 408 is a server closing a connection it thought idle just as a request arrived
 * on it (Node's http server sends it from its headers/request timeouts), and 429 asks to come
 * back later: both are retried like a reset connection.
 */
class StoreRefused extends Error {}

/** A counting semaphore: at most `limit` callers inside `run` at once, the rest queue in order. */
class Limiter {
  private active = 0;
  private readonly queue: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async run<T>(job: () => Promise<T>): Promise<T> {
    // A finishing job hands its slot straight to the next in line, so a newcomer cannot slip in between.
    if (this.active < this.limit) this.active++;
    else await new Promise<void>((r) => this.queue.push(r));
    try {
      return await job();
    } finally {
      const next = this.queue.shift();
      if (next) next();
      else this.active--;
    }
  }
}

async function withRetries(what: string, attempt: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + RETRY_FOR_MS;
  for (let delay = 100; ; delay = Math.min(delay * 2, 5_000)) {
    try {
      return await attempt();
    } catch (err) {
      if (err instanceof StoreRefused || Date.now() + delay > deadline) {
        const cause = (err as Error & { cause?: Error }).cause?.message;
        throw new Error(`${what}: ${(err as Error).message}${cause ? ` (${cause})` : ''}`, { cause: err });
      }
    }
    await new Promise((r) => setTimeout(r, delay));
  }
}

function checkStatus(res: Response, what: string): void {
  if (res.ok) return;
  const retryable = res.status === 408 || res.status === 429 || res.status >= 500;
  if (!retryable) throw new StoreRefused(`${what}: HTTP ${res.status}`);
  throw new Error(`HTTP ${res.status}`);
}

/** The data is in the store: a new server after a crash serves the same disk. */
export const recoverable = true;
/** A write completes only once the store has acknowledged every block in it: no cache to flush. */
export const volatileCache = false;

export function createTarget(ctx: TargetContext): UblkTarget {
  const base = String(ctx.options.url).replace(/\/$/, '');
  const url = (block: number): string => `${base}/${block}`;
  const limiter = new Limiter(MAX_REQUESTS);

  const getBlock = (block: number, into: Buffer): Promise<void> =>
    limiter.run(() =>
      withRetries(`GET ${url(block)}`, async () => {
        const res = await fetch(url(block), { signal: AbortSignal.timeout(ATTEMPT_TIMEOUT_MS) });
        if (res.status === 404) return void into.fill(0);
        checkStatus(res, `GET ${url(block)}`);
        const body = Buffer.from(await res.arrayBuffer());
        if (body.length !== BLOCK) throw new StoreRefused(`GET ${url(block)}: ${body.length} bytes, expected ${BLOCK}`);
        body.copy(into);
      }),
    );

  const putBlock = (block: number, body: Buffer): Promise<void> =>
    limiter.run(() =>
      withRetries(`PUT ${url(block)}`, async () => {
        const res = await fetch(url(block), { method: 'PUT', body, signal: AbortSignal.timeout(ATTEMPT_TIMEOUT_MS) });
        checkStatus(res, `PUT ${url(block)}`);
        await res.arrayBuffer(); // drain, so the connection can be reused
      }),
    );

  const eachBlock = (io: UblkIo, fn: (block: number, data: Buffer) => Promise<void>): Promise<void[]> =>
    Promise.all(
      Array.from({ length: io.length / BLOCK }, (_, i) =>
        fn(io.offset / BLOCK + i, io.buffer.subarray(i * BLOCK, (i + 1) * BLOCK)),
      ),
    );

  return {
    async handleIo(io: UblkIo): Promise<number> {
      switch (io.op) {
        case 'read':
          await eachBlock(io, getBlock);
          return io.length;
        case 'write':
          // A copy per block: an abandoned (timed-out) attempt may still be sending its body after the IO completed.
          await eachBlock(io, (block, data) => putBlock(block, Buffer.from(data)));
          return io.length;
        case 'flush':
          return 0; // every PUT is acknowledged by the store before its write completes
        default:
          return -95; // EOPNOTSUPP
      }
    },
  };
}

if (require.main === module) {
  void runExample(process.argv.slice(2), 'http-store.js add URL [SIZE] | del ID', ([url, size]) => {
    if (!url) throw new Error('usage: http-store.js add URL [SIZE]');
    return {
      target: { type: 'js', module: __filename, options: { url } },
      size: size ?? '64MiB',
      logicalBlockSize: BLOCK,
      queues: 1,
      depth: 32,
    };
  });
}
