/**
 * A RAM disk written entirely in JavaScript with async handlers. The bytes
 * live in a SharedArrayBuffer made once by setup(), so every queue's worker
 * sees the same disk.
 *
 *   node dist/examples/ramdisk.js add [SIZE] [QUEUES]
 *   node dist/examples/ramdisk.js del ID
 */
import type { SetupContext, TargetContext, UblkIo, UblkTarget } from '../src';
import { runExample } from './run-example';

// No `recoverable` export: the disk lives only in this server's memory, so if the server dies the
// device dies with it (and the reconciler re-creates it, reporting the data as lost) instead of
// coming back blank. Flushes reach handleIo (volatileCache defaults to true) and cost nothing here.

export function setup(ctx: SetupContext): SharedArrayBuffer {
  return new SharedArrayBuffer(ctx.sizeBytes);
}

export function createTarget(ctx: TargetContext): UblkTarget {
  const disk = Buffer.from(ctx.shared as SharedArrayBuffer);
  return {
    async handleIo(io: UblkIo): Promise<number> {
      switch (io.op) {
        case 'read':
          disk.copy(io.buffer, 0, io.offset, io.offset + io.length);
          return io.length;
        case 'write':
          io.buffer.copy(disk, io.offset);
          return io.length;
        case 'discard':
        case 'write-zeroes':
          disk.fill(0, io.offset, io.offset + io.length);
          return 0;
        case 'flush':
          return 0;
        default:
          return -95; // EOPNOTSUPP
      }
    },
  };
}

if (require.main === module) {
  void runExample(process.argv.slice(2), 'ramdisk.js add [SIZE] [QUEUES] | del ID', ([size, queues]) => ({
    target: { type: 'js', module: __filename },
    size: size ?? '256MiB',
    queues: queues ? Number(queues) : 1,
    depth: 64,
  }));
}
