/**
 * A loop device in JavaScript whose reads and writes are submitted on the
 * queue's own io_uring (io.readFile / io.writeFile): the data never passes
 * through JS, which only decides where it goes.
 *
 *   node dist/examples/loop.js add BACKING_FILE
 *   node dist/examples/loop.js del ID
 */
import * as fs from 'node:fs';
import { promisify } from 'node:util';
import type { TargetContext, UblkIo, UblkTarget } from '../src';
import { runExample } from './run-example';

const fdatasync = promisify(fs.fdatasync);

/** The data is in the backing file: a new server after a crash serves the same disk. */
export const recoverable = true;
// volatileCache is left at its default (true): writes land in the file's page cache, and the
// kernel's flushes and FUA writes reach handleIo, which makes them durable with fdatasync.

export function createTarget(ctx: TargetContext): UblkTarget {
  const fd = fs.openSync(String(ctx.options.file), 'r+');
  return {
    async handleIo(io: UblkIo): Promise<number> {
      switch (io.op) {
        case 'read':
          return io.readFile(fd, io.offset);
        case 'write': {
          const written = await io.writeFile(fd, io.offset);
          if (io.fua && written > 0) await fdatasync(fd);
          return written;
        }
        case 'flush':
          await fdatasync(fd);
          return 0;
        default:
          return -95; // EOPNOTSUPP
      }
    },
    close: () => fs.closeSync(fd),
  };
}

if (require.main === module) {
  void runExample(process.argv.slice(2), 'loop.js add BACKING_FILE | del ID', ([file]) => {
    if (!file) throw new Error('usage: loop.js add BACKING_FILE');
    const path = fs.realpathSync(file);
    return {
      target: { type: 'js', module: __filename, options: { file: path } },
      size: fs.statSync(path).size,
      depth: 64,
    };
  });
}
