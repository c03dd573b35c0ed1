/**
 * A null device whose IO is answered by JavaScript: every request
 * completes at once. The smallest possible custom target.
 *
 *   node dist/examples/null-js.js add [SIZE]
 *   node dist/examples/null-js.js del ID
 */
import type { TargetContext, UblkIo, UblkTarget } from '../src';
import { runExample } from './run-example';

/** It stores nothing, so a new server after a crash serves the same (empty) device. */
export const recoverable = true;
/** Nothing is cached: a write is as durable as it will ever be once it completes. */
export const volatileCache = false;

export function createTarget(_ctx: TargetContext): UblkTarget {
  return { handleIo: (io: UblkIo) => (io.op === 'read' || io.op === 'write' ? io.length : 0) };
}

if (require.main === module) {
  void runExample(process.argv.slice(2), 'null-js.js add [SIZE] | del ID', ([size]) => ({
    target: { type: 'js', module: __filename },
    size: size ?? '1GiB',
    queues: 1,
    depth: 64,
  }));
}
