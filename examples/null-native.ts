/**
 * A null ublk device served by this very process with the native null
 * target (no JavaScript per IO), like the Rust libublk's `null` example:
 *
 *   node dist/examples/null-native.js add [SIZE]   serve until Ctrl-C or SIGTERM, then delete
 *   node dist/examples/null-native.js del ID       stop and delete a device from another shell
 */
import { runExample } from './run-example';

void runExample(process.argv.slice(2), 'null-native.js add [SIZE] | del ID', ([size]) => ({
  target: 'null',
  size: size ?? '1GiB',
  queues: 1,
  depth: 64,
}));
