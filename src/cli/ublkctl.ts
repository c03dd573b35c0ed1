#!/usr/bin/env node
/**
 * ublkctl — device-level tool, like the C `ublk` utility:
 * add, del, recover, resize, list, features. Exit status: 0 done, 1 the kernel or a server
 * refused, 2 bad usage or an environment without ublk.
 */
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { EnvironmentError, ERRNO, SpecError, UblkError } from '../errors';
import { DeviceInfo, UblkControl } from '../kernel/control';
import { resizeDevice } from '../device/resize';
import { activeScheduler } from '../device/scheduler';
import { blockDeviceInUse } from '../kernel/in-use';
import { featureSupport } from '../kernel/feature-report';
import { DataPath, dataPathOf } from '../kernel/uapi';
import { listRecords, requireRecord, writeRecord } from '../server/device-records';
import { handOver } from '../server/handover';
import { DEFAULT_STATE_DIR, removeDevice, startServer } from '../server/launcher';
import { processFootprint } from '../server/processes';
import { DeviceSpecInput, DirectIoMode, normalizeDeviceSpec } from '../spec/device-spec';
import { MAX_DEVICE_ID } from '../spec/limits';
import { quote } from '../spec/show-value';
import { formatSize, parseSize } from '../spec/sizes';

const USAGE = `usage:
  ublkctl add -t null|memory --size SIZE [options]
  ublkctl add -t loop --file PATH [--size SIZE] [--create] [--direct-io auto|on|off] [options]
  ublkctl add -t js --module /abs/target.js [--options JSON] --size SIZE [options]
      options: [--id N] [--queues Q] [--depth D] [--max-io-size SIZE]
               [--logical-block-size B] [--read-only] [--lock-memory] [--no-partition-scan]
               [--zero-copy|--no-zero-copy] [--scheduler none|mq-deadline|kyber|bfq|kernel-default]
               [--threads-per-queue N] [--batch-io] [--recovery reissue|fail-inflight|fail-io|none]
               [--insecure-permissions] [--json]
  ublkctl del ID|--all [--force] [--json]
  ublkctl recover ID [--insecure-permissions] [--json]
  ublkctl resize ID SIZE [--insecure-permissions] [--json]
  ublkctl restart ID [--timeout MS] [--insecure-permissions] [--json]
  ublkctl list [--json]
  ublkctl features [--json]

SIZE is bytes or a number with KiB, MiB, GiB, TiB (e.g. 1GiB).
Options for every command: --state-dir DIR (default ${DEFAULT_STATE_DIR}).
restart hands a live device over to a new server (a new ublk-ts, a js module's new code)
without stopping it: IO waits in the kernel meanwhile, none fails. It needs a device with
recovery reissue, or fail-inflight on Linux 6.16+ (UBLK_F_QUIESCE); others are refused.
As root, add, recover and restart refuse a js module, or a link on the way to a loop file, that
users other than root could change; --insecure-permissions accepts them.
del leaves a device that is open or mounted alone (EBUSY); --force removes it all the same.`;

class UsageError extends Error {}

function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v), 2);
}

/**
 * A flag's value as a number when it is a plain integer; otherwise the
 * text as given, so normalizeDeviceSpec (which checks every value at run
 * time) can say what was given.
 */
function numeric<T>(value: string | undefined): T | undefined {
  if (value === undefined) return undefined;
  return (/^\d+$/.test(value) ? Number(value) : value) as T;
}

/** --direct-io: on/off (and true/false) as booleans; anything else as given, for normalizeDeviceSpec to check. */
function directIoFlag(value: string | undefined): DirectIoMode | undefined {
  if (value === 'on' || value === 'true') return true;
  if (value === 'off' || value === 'false') return false;
  return value as DirectIoMode | undefined;
}

/** --zero-copy / --no-zero-copy: spec.zeroCopy true / false; neither: the target's default. */
function zeroCopyFlag(on: boolean | undefined, off: boolean | undefined): boolean | undefined {
  if (on && off) throw new UsageError('add: --zero-copy and --no-zero-copy contradict each other');
  return on ? true : off ? false : undefined;
}

/** Root refuses a js module, or a link to a loop file, that others could change, unless told otherwise. */
function checkPermissions(insecure: boolean | undefined): boolean {
  return process.geteuid?.() === 0 && !insecure;
}

async function withControl<T>(fn: (control: UblkControl) => Promise<T>): Promise<T> {
  const control = await UblkControl.open();
  try {
    return await fn(control);
  } finally {
    control.close();
  }
}

async function cmdAdd(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      type: { type: 'string', short: 't' },
      size: { type: 'string', short: 's' },
      id: { type: 'string', short: 'n' },
      queues: { type: 'string', short: 'q' },
      depth: { type: 'string', short: 'd' },
      'max-io-size': { type: 'string' },
      'logical-block-size': { type: 'string' },
      'read-only': { type: 'boolean' },
      'lock-memory': { type: 'boolean' },
      'no-partition-scan': { type: 'boolean' },
      'no-zero-copy': { type: 'boolean' },
      'zero-copy': { type: 'boolean' },
      scheduler: { type: 'string' },
      'threads-per-queue': { type: 'string' },
      'batch-io': { type: 'boolean' },
      file: { type: 'string', short: 'f' },
      create: { type: 'boolean' },
      'direct-io': { type: 'string' },
      module: { type: 'string', short: 'm' },
      options: { type: 'string' },
      recovery: { type: 'string' },
      json: { type: 'boolean' },
      'state-dir': { type: 'string' },
      'insecure-permissions': { type: 'boolean' },
    },
  });
  if (values.type === undefined) throw new UsageError('add: -t/--type is required (null, memory, loop or js)');
  let options: Record<string, unknown> | undefined;
  if (values.options !== undefined) {
    try {
      options = JSON.parse(values.options) as Record<string, unknown>;
    } catch (err) {
      throw new SpecError('target.options', `must be a JSON object: ${(err as Error).message}`);
    }
  }
  // Flags arrive as text; the input type is the manifest's, and normalizeDeviceSpec checks every value.
  const input: DeviceSpecInput = {
    target: {
      type: values.type,
      file: values.file,
      create: values.create,
      directIo: directIoFlag(values['direct-io']),
      module: values.module,
      options,
    } as DeviceSpecInput['target'],
    size: numeric(values.size),
    id: numeric(values.id),
    queues: numeric(values.queues),
    depth: numeric(values.depth),
    maxIoSize: numeric(values['max-io-size']),
    logicalBlockSize: numeric(values['logical-block-size']),
    readOnly: values['read-only'],
    lockMemory: values['lock-memory'],
    partitionScan: values['no-partition-scan'] ? false : undefined,
    zeroCopy: zeroCopyFlag(values['zero-copy'], values['no-zero-copy']),
    scheduler: values.scheduler as DeviceSpecInput['scheduler'],
    threadsPerQueue: numeric(values['threads-per-queue']),
    batchIo: values['batch-io'],
    recovery: values.recovery as DeviceSpecInput['recovery'],
  };
  const spec = normalizeDeviceSpec(input);
  // Open the control device first so a host without ublk fails before a server is spawned.
  await withControl(async () => undefined);
  const server = await startServer(spec, {
    stateDir: values['state-dir'],
    checkPermissions: checkPermissions(values['insecure-permissions']),
  });
  if (values.json) {
    console.log(toJson({ ...server.info, sizeBytes: spec.sizeBytes, logPath: server.logPath }));
  } else {
    console.log(
      `dev ${server.info.id}: ${server.info.blockPath} ${formatSize(spec.sizeBytes)} ${spec.target.type}, ` +
        `${server.info.queues} queue(s) x depth ${server.info.depth}, server pid ${server.pid}, log ${server.logPath}`,
    );
  }
}

async function cmdDel(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      all: { type: 'boolean', short: 'a' },
      force: { type: 'boolean' },
      json: { type: 'boolean' },
      'state-dir': { type: 'string' },
    },
  });
  if (!values.all && positionals.length !== 1) throw new UsageError('del: give one device ID, or --all');
  if (values.all && positionals.length > 0) throw new UsageError('del: give either a device ID or --all, not both');
  // The id is checked before the control device is opened: a bad argument is reported as such, even without ublk.
  const given = values.all ? undefined : parseId(positionals[0]!);
  const results = await withControl(async (control) => {
    const ids = given === undefined ? (await control.listDevices()).map((d) => d.id) : [given];
    const done: Array<{ id: number; serverPid: number; serverExited: boolean }> = [];
    for (const id of ids) {
      done.push({ id, ...(await removeDevice(control, id, { stateDir: values['state-dir'], force: values.force })) });
    }
    return done;
  });
  if (values.json) console.log(toJson(results));
  else
    for (const r of results)
      console.log(`dev ${r.id}: deleted${r.serverExited ? '' : ` (server pid ${r.serverPid} still running)`}`);
}

async function cmdRecover(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      'state-dir': { type: 'string' },
      'insecure-permissions': { type: 'boolean' },
    },
  });
  if (positionals.length !== 1) throw new UsageError('recover: give one device ID');
  const id = parseId(positionals[0]!);
  const stateDir = values['state-dir'] ?? DEFAULT_STATE_DIR;
  const record = requireRecord(stateDir, id, 'START_USER_RECOVERY', 'recovered');
  const server = await startServer(record.spec, {
    stateDir,
    recoverDevId: id,
    checkPermissions: checkPermissions(values['insecure-permissions']),
    owner: record.owner,
    manifest: record.manifest,
    manifestFile: record.manifestFile,
    specHash: record.specHash,
    createdFile: record.createdFile,
    deviceHash: record.deviceHash,
  });
  if (values.json) console.log(toJson({ ...server.info, logPath: server.logPath }));
  else console.log(`dev ${id}: recovered, ${server.info.state}, server pid ${server.pid}`);
}

async function cmdRestart(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      timeout: { type: 'string' },
      json: { type: 'boolean' },
      'state-dir': { type: 'string' },
      'insecure-permissions': { type: 'boolean' },
    },
  });
  if (positionals.length !== 1) throw new UsageError('restart: give one device ID');
  const id = parseId(positionals[0]!);
  let timeoutMs: number | undefined;
  if (values.timeout !== undefined) {
    timeoutMs = /^\d{1,9}$/.test(values.timeout) ? Number(values.timeout) : NaN;
    if (!(timeoutMs! >= 1))
      throw new UsageError(`restart: --timeout must be milliseconds (1 or more), got ${quote(values.timeout)}`);
  }
  const result = await withControl((control) =>
    handOver(control, id, {
      stateDir: values['state-dir'],
      timeoutMs,
      checkPermissions: checkPermissions(values['insecure-permissions']),
      log: values.json ? undefined : (line) => console.error(line),
    }),
  );
  const { server } = result;
  if (values.json) {
    console.log(toJson({ ...server.info, method: result.method, oldPid: result.oldPid, logPath: server.logPath }));
  } else if (result.method === 'recover') {
    console.log(`dev ${id}: had no server; recovered, ${server.info.state}, server pid ${server.pid}`);
  } else {
    console.log(
      `dev ${id}: handed over (${result.method === 'quiesce' ? 'QUIESCE_DEV' : 'queues closed'}) from server pid ` +
        `${result.oldPid} to pid ${server.pid}, ${server.info.state}`,
    );
  }
}

/**
 * resize ID SIZE: changes a LIVE device's size in place (UPDATE_SIZE,
 * Linux 6.16+), as the reconciler does when a manifest's size changes:
 * the store grows first, then the kernel. A device in use is never shrunk.
 * A manifest's device follows its manifest again at the next reconcile.
 */
async function cmdResize(args: string[]): Promise<void> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      'state-dir': { type: 'string' },
      'insecure-permissions': { type: 'boolean' },
    },
  });
  if (positionals.length !== 2) throw new UsageError('resize: give one device ID and the new SIZE');
  const id = parseId(positionals[0]!);
  const parsed = parseSize(numeric(positionals[1]));
  if ('error' in parsed) throw new SpecError('size', parsed.error);
  const stateDir = values['state-dir'] ?? DEFAULT_STATE_DIR;
  const record = requireRecord(stateDir, id, 'UPDATE_SIZE', 'resized');
  const sizeBytes = parsed.bytes;
  const result = await withControl(async (control) => {
    const info = await control.getDeviceInfo(id);
    const shrinking = info.state === 'LIVE' && sizeBytes < (await control.getParams(id)).sizeBytes;
    if (shrinking && blockDeviceInUse(info.blockPath)) {
      throw new UblkError(
        'UPDATE_SIZE',
        id,
        ERRNO.EBUSY,
        `${info.blockPath} is in use: shrinking it would take data from under its user`,
      );
    }
    return resizeDevice(control, {
      devId: id,
      spec: record.spec,
      sizeBytes,
      createdFile: record.createdFile,
      checkPermissions: checkPermissions(values['insecure-permissions']),
    });
  });
  writeRecord(stateDir, { ...record, spec: { ...record.spec, sizeBytes } });
  if (values.json) console.log(toJson({ id, fromBytes: result.fromBytes, sizeBytes }));
  else console.log(`dev ${id}: resized from ${formatSize(result.fromBytes)} to ${formatSize(sizeBytes)}`);
}

/**
 * A device id as the kernel numbers them: 0 to MAX_DEVICE_ID (its
 * minor-number space, UBLK_MAX_UBLKS). Checked here, before any kernel
 * call: the control command's id field is 32 bits, and a larger number
 * must never wrap onto another device.
 */
function parseId(text: string): number {
  const id = /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!(id >= 0 && id <= MAX_DEVICE_ID)) {
    throw new UsageError(`not a device id: ${quote(text)} (device ids are 0 to ${MAX_DEVICE_ID})`);
  }
  return id;
}

interface ListedDevice extends DeviceInfo {
  sizeBytes?: number;
  /** From ublk-ts's state record, when it started the device. */
  owner?: string;
  manifest?: string;
  lastError?: string;
  /** How its requests reach the server's target, from the device's flags: 'copy' or 'zero-copy' (AUTO_BUF_REG). */
  dataPath: DataPath;
  /** The server's proportional set size in KiB (see processFootprint), when it runs and can be read. */
  serverPssKiB?: number;
  /** The server's thread count, likewise. */
  serverThreads?: number;
  /** The disk's IO scheduler (queue/scheduler), when it has a disk that can be read. */
  scheduler?: string;
}

async function cmdList(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' }, 'state-dir': { type: 'string' } } });
  const records = new Map(listRecords(values['state-dir'] ?? DEFAULT_STATE_DIR).map((r) => [r.devId, r]));
  const devices = await withControl(async (control) => {
    const infos = await control.listDevices();
    return Promise.all(
      infos.map(async (info): Promise<ListedDevice> => {
        const params = await control.getParams(info.id).catch(() => undefined);
        const record = records.get(info.id);
        const footprint = info.serverPid > 0 ? processFootprint(info.serverPid) : undefined;
        return {
          ...info,
          serverPssKiB: footprint?.pssKiB,
          serverThreads: footprint?.threads,
          sizeBytes: params?.sizeBytes,
          owner: record?.owner,
          manifest: record?.manifest,
          lastError: record?.lastError,
          dataPath: dataPathOf(info.flags),
          scheduler: activeScheduler(info.id),
        };
      }),
    );
  });
  if (values.json) {
    console.log(toJson(devices));
    return;
  }
  if (devices.length === 0) {
    console.log('no ublk devices');
    return;
  }
  const rows = [
    [
      'ID',
      'STATE',
      'SIZE',
      'QUEUES',
      'DEPTH',
      'MAX-IO',
      'DATA-PATH',
      'SCHED',
      'PID',
      'PSS',
      'THREADS',
      'BLOCK',
      'MANIFEST',
      'LAST-ERROR',
    ],
  ];
  for (const d of devices) {
    rows.push([
      String(d.id),
      d.state,
      d.sizeBytes !== undefined ? formatSize(d.sizeBytes) : '-',
      String(d.queues),
      String(d.depth),
      formatSize(d.maxIoSize),
      d.dataPath,
      d.scheduler ?? '-',
      d.serverPid > 0 ? String(d.serverPid) : '-',
      d.serverPssKiB !== undefined ? `${(d.serverPssKiB / 1024).toFixed(1)}MiB` : '-',
      d.serverThreads !== undefined ? String(d.serverThreads) : '-',
      d.blockPath,
      d.manifest ?? (d.owner ? `(${d.owner})` : '-'),
      d.lastError ?? '',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows)
    console.log(
      r
        .map((c, i) => c.padEnd(widths[i]!))
        .join('  ')
        .trimEnd(),
    );
}

async function cmdFeatures(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
  const control = await UblkControl.open();
  control.close();
  const support = featureSupport(control.features);
  if (values.json) {
    console.log(
      toJson({
        features: control.features,
        names: control.featureNames,
        legacyOpcodes: control.legacyOpcodes,
        kernel: os.release(),
        support,
      }),
    );
  } else {
    console.log(`features 0x${control.features.toString(16)}: ${control.featureNames.join(' ') || '(none)'}`);
    if (control.legacyOpcodes) console.log('kernel uses legacy command opcodes (before 6.4)');
    console.log(`kernel ${os.release()}:`);
    for (const f of support) {
      const how = f.detectedBy === 'kernel version' ? ', by kernel version' : '';
      console.log(`  ${f.name} (${f.uapi}, Linux ${f.since}+): ${f.present ? 'yes' : 'no'}${how}`);
      console.log(`    ${f.behaviour}`);
    }
  }
}

const commands: Record<string, (args: string[]) => Promise<void>> = {
  add: cmdAdd,
  del: cmdDel,
  list: cmdList,
  recover: cmdRecover,
  resize: cmdResize,
  restart: cmdRestart,
  features: cmdFeatures,
};

/**
 * Prints an error on stderr and returns its exit status; with --json
 * anywhere in the arguments, also as `{"error", "exitCode"}` on stdout, so
 * a consumer of --json always reads JSON.
 */
function fail(argv: string[], message: string, exitCode: number, hint?: string): number {
  console.error(message);
  if (hint) console.error(hint);
  if (argv.includes('--json')) console.log(toJson({ error: message.split('\nusage:')[0], exitCode }));
  return exitCode;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    console.log(USAGE);
    return name === undefined ? 2 : 0;
  }
  const command = commands[name];
  if (!command) return fail(argv, `ublkctl: unknown command ${quote(name)}\n${USAGE}`, 2);
  try {
    await command(rest);
    return 0;
  } catch (err) {
    const message = (err as Error).message;
    if (err instanceof UsageError || (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS')) {
      return fail(argv, `ublkctl: ${message}\n${USAGE}`, 2);
    }
    if (err instanceof SpecError) return fail(argv, `ublkctl ${name}: invalid ${message}`, 2);
    if (err instanceof EnvironmentError) {
      return fail(
        argv,
        `ublkctl: ${message}`,
        2,
        'ublkctl: to see ublk-ts work on a host without ublk, run it in the bundled VM from a checkout: npm run vm -- npm start',
      );
    }
    return fail(argv, `ublkctl ${name}: ${message}`, 1);
  }
}

void main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
