/**
 * A null ublk device served by this very process, like the Rust libublk's
 * `null` example:
 *
 *   node dist/examples/null-device.js add [SIZE]   serve until Ctrl-C or SIGTERM, then delete
 *   node dist/examples/null-device.js del ID       stop and delete a device from another shell
 */
import { normalizeDeviceSpec, removeDevice, UblkControl, UblkDevice } from '../src';

async function add(size: string): Promise<void> {
  const device = await UblkDevice.create(normalizeDeviceSpec({ target: 'null', size, queues: 1, depth: 64 }));
  console.log(`dev ${device.id}: ${device.blockPath} is ${device.info.state}, served by pid ${process.pid}; Ctrl-C to delete`);
  const stop = (): void => {
    device.delete().then(() => console.log(`dev ${device.id}: deleted`));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const exits = await device.exited;
  for (const q of exits) console.log(`queue ${q.qid}: ${q.ios} requests${q.error ? `, ${q.error.message}` : ''}`);
  process.removeListener('SIGINT', stop);
  process.removeListener('SIGTERM', stop);
}

async function del(id: number): Promise<void> {
  const control = await UblkControl.open();
  try {
    await removeDevice(control, id);
    console.log(`dev ${id}: deleted`);
  } finally {
    control.close();
  }
}

async function main(argv: string[]): Promise<void> {
  const [command, arg] = argv;
  if (command === 'add') return add(arg ?? '1GiB');
  if (command === 'del' && arg !== undefined && /^\d+$/.test(arg)) return del(Number(arg));
  console.error('usage: null-device.js add [SIZE] | del ID');
  process.exitCode = 2;
}

main(process.argv.slice(2)).catch((err: Error) => {
  console.error(err.message);
  process.exitCode = 1;
});
