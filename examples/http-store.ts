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
 * examples/object-store-server.ts is a tiny store to try it with.
 */
import type { TargetContext, UblkIo, UblkTarget } from '../src';
import { runExample } from './run-example';

const BLOCK = 4096;

export function createTarget(ctx: TargetContext): UblkTarget {
  const base = String(ctx.options.url).replace(/\/$/, '');
  const url = (block: number): string => `${base}/${block}`;

  async function read(io: UblkIo): Promise<number> {
    const first = io.offset / BLOCK;
    await Promise.all(
      Array.from({ length: io.length / BLOCK }, async (_, i) => {
        const res = await fetch(url(first + i));
        const target = io.buffer.subarray(i * BLOCK, (i + 1) * BLOCK);
        if (res.status === 404) return void target.fill(0);
        if (!res.ok) throw new Error(`GET ${url(first + i)}: HTTP ${res.status}`);
        Buffer.from(await res.arrayBuffer()).copy(target);
      }),
    );
    return io.length;
  }

  async function write(io: UblkIo): Promise<number> {
    const first = io.offset / BLOCK;
    await Promise.all(
      Array.from({ length: io.length / BLOCK }, async (_, i) => {
        const body = Buffer.from(io.buffer.subarray(i * BLOCK, (i + 1) * BLOCK));
        const res = await fetch(url(first + i), { method: 'PUT', body });
        if (!res.ok) throw new Error(`PUT ${url(first + i)}: HTTP ${res.status}`);
      }),
    );
    return io.length;
  }

  return {
    handleIo(io: UblkIo): Promise<number> | number {
      if (io.op === 'read') return read(io);
      if (io.op === 'write') return write(io);
      if (io.op === 'flush') return 0; // every PUT is acknowledged by the store before completing
      return -95; // EOPNOTSUPP
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
