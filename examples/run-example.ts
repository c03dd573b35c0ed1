/**
 * The command line every example shares, like the Rust libublk examples:
 *   add [args]   serve a device from this process until Ctrl-C/SIGTERM (then delete it)
 *   del ID       stop and delete a device served by another process
 */
import { normalizeDeviceSpec, removeDevice, UblkControl, UblkDevice } from '../src';
import type { DeviceSpecInput } from '../src';

export async function runExample(
  argv: string[],
  usage: string,
  specFor: (args: string[]) => DeviceSpecInput,
): Promise<void> {
  const [command, ...args] = argv;
  if (command === 'add') return add(specFor(args));
  if (command === 'del' && args[0] !== undefined && /^\d+$/.test(args[0])) return del(Number(args[0]));
  console.error(`usage: ${usage}`);
  process.exitCode = 2;
}

async function add(input: DeviceSpecInput): Promise<void> {
  const device = await UblkDevice.create(normalizeDeviceSpec(input));
  console.log(
    `dev ${device.id}: ${device.blockPath} is ${device.info.state}, served by pid ${process.pid}; Ctrl-C to delete`,
  );
  const stop = (): void => {
    void device.remove().then(() => console.log(`dev ${device.id}: deleted`));
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
