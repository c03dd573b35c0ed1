/**
 * Runs inside the benchmark VM (icount mode): fio against kernel
 * references and ublk-ts targets in the same boot, printed as IOPS (or
 * MiB/s) and ratios to the reference of the same fio job. Started by
 * run-bench.ts once per kernel leg; not a test.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { BenchResult, BenchRow, formatRow, RowId } from './goals';
import { runReconcileBench } from './reconcile-bench';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const UBLKCTL = path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js');
const RUNTIME_S = Number(process.env.UBLK_TS_BENCH_RUNTIME ?? 2);
const LEG = process.env.UBLK_TS_KERNEL ?? 'unknown';
const GiB = 1024 * 1024 * 1024;
const MiB = 1024 * 1024;
/** The memory devices' size: every byte is written before it is read, so it is kept small enough to fill quickly. */
const MEMORY_BYTES = 512 * MiB;

function sh(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** One fio job shape; every row of a section runs the same one. */
interface FioJob {
  /** The section title. */
  title: string;
  rw: 'randread' | 'read';
  bs: string;
  iodepth: number;
  /** fio jobs, one per vCPU (cpus_allowed_policy=split), each with `iodepth`. */
  numjobs: number;
  unit: 'IOPS' | 'MiB/s';
}

const RANDREAD: FioJob = {
  title: '4 KiB randread, QD32, 1 job',
  rw: 'randread',
  bs: '4k',
  iodepth: 32,
  numjobs: 1,
  unit: 'IOPS',
};
const QD1: FioJob = {
  title: '4 KiB randread, QD1 (latency)',
  rw: 'randread',
  bs: '4k',
  iodepth: 1,
  numjobs: 1,
  unit: 'IOPS',
};
const TWO_QUEUES: FioJob = {
  title: '4 KiB randread, 2 jobs x QD16 on 2 vCPUs, ublk devices with 2 queues, null_blk with 2 submit queues',
  rw: 'randread',
  bs: '4k',
  iodepth: 16,
  numjobs: 2,
  unit: 'IOPS',
};
const BANDWIDTH: FioJob = {
  title: '512 KiB sequential read, QD8, 1 job (bandwidth)',
  rw: 'read',
  bs: '512k',
  iodepth: 8,
  numjobs: 1,
  unit: 'MiB/s',
};

/** fio with io_uring and O_DIRECT over the first `sizeBytes` of `device`: IOPS, or MiB/s for the unit MiB/s. */
function fio(job: FioJob, device: string, sizeBytes: number): number {
  const out = sh('fio', [
    '--name=bench',
    `--filename=${device}`,
    '--ioengine=io_uring',
    '--direct=1',
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    `--numjobs=${job.numjobs}`,
    ...(job.numjobs > 1 ? ['--group_reporting', '--cpus_allowed=0-1', '--cpus_allowed_policy=split'] : []),
    '--time_based',
    `--runtime=${RUNTIME_S}`,
    `--size=${sizeBytes}`,
    '--output-format=json',
  ]);
  const report = JSON.parse(out.slice(out.indexOf('{'))) as {
    jobs: Array<{ read: { iops: number; bw_bytes: number }; error: number }>;
  };
  const result = report.jobs[0]!;
  if (result.error !== 0) throw new Error(`fio error ${result.error} on ${device}`);
  const value = job.unit === 'IOPS' ? Math.round(result.read.iops) : Math.round(result.read.bw_bytes / MiB);
  // Progress: a leg takes minutes, and the table comes only at its end.
  console.log(`  ${device}: ${job.title}: ${value} ${job.unit}`);
  return value;
}

/** Writes every byte of `device` once, so reads find data rather than holes. */
function fill(device: string, sizeBytes: number): void {
  sh('fio', [
    '--name=fill',
    `--filename=${device}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=write',
    '--bs=1m',
    '--iodepth=8',
    `--size=${sizeBytes}`,
    '--output-format=json',
  ]);
}

function insmod(modules: string, mod: string, args: string[]): void {
  const r = spawnSync('busybox', ['insmod', path.join(modules, `${mod}.ko`), ...args], { encoding: 'utf8' });
  if (r.status !== 0 && !/exists/.test(r.stderr)) throw new Error(`insmod ${mod}: ${r.stderr}`);
}

/**
 * null_blk's devices: nullb0 with one submit queue (module parameters),
 * nullb1 with two, and nullb2 keeping its data in memory (configfs): a
 * block device to back loop targets with, whose reads io_uring issues
 * without blocking (a tmpfs file's it hands to a worker thread).
 */
function loadNullBlk(): { oneQueue: string; twoQueues: string; memoryBacked: string } {
  const modules = process.env.UBLK_TS_MODULES_DIR;
  if (!modules) throw new Error('UBLK_TS_MODULES_DIR is not set: run through npm run bench');
  insmod(modules, 'configfs', []);
  insmod(modules, 'null_blk', ['queue_mode=2', 'nr_devices=1', 'submit_queues=1', 'hw_queue_depth=64', 'gb=1']);
  const config = '/sys/kernel/config';
  if (!fs.existsSync(path.join(config, 'nullb'))) sh('mount', ['-t', 'configfs', 'configfs', config]);
  const configure = (name: string, attrs: Array<[string, string]>): void => {
    const dir = path.join(config, 'nullb', name);
    fs.mkdirSync(dir);
    for (const [attr, value] of [...attrs, ['power', '1']]) fs.writeFileSync(path.join(dir, attr!), value!);
  };
  const common: Array<[string, string]> = [
    ['queue_mode', '2'],
    ['hw_queue_depth', '64'],
    ['size', '1024'],
  ];
  configure('nullb1', [...common, ['submit_queues', '2']]);
  configure('nullb2', [...common, ['submit_queues', '1'], ['memory_backed', '1']]);
  return { oneQueue: '/dev/nullb0', twoQueues: '/dev/nullb1', memoryBacked: '/dev/nullb2' };
}

/** The data path `ublkctl list --json` reports for device `id`: "copy" where the field is absent. */
function dataPathOf(id: number): string {
  const devices = JSON.parse(sh(process.execPath, [UBLKCTL, 'list', '--json'])) as Array<{
    id: number;
    dataPath?: string;
  }>;
  return devices.find((d) => d.id === id)?.dataPath ?? 'copy';
}

/** Adds a ublk-ts device with `queues` queues of depth 64, runs `fn` on it with its data path, deletes it. */
function withUblk<T>(
  target: string[],
  queues: number,
  env: NodeJS.ProcessEnv,
  fn: (device: string, dataPath: string) => T,
): T {
  const info = JSON.parse(
    sh(process.execPath, [UBLKCTL, 'add', ...target, '--queues', String(queues), '--depth', '64', '--json'], env),
  ) as { id: number; blockPath: string };
  try {
    return fn(info.blockPath, dataPathOf(info.id));
  } finally {
    sh(process.execPath, [UBLKCTL, 'del', String(info.id)]);
  }
}

/** A kernel loop device on `file`, with or without direct IO. */
function withKernelLoop<T>(file: string, directIo: boolean, fn: (device: string) => T): T {
  const device = sh('losetup', ['--find', '--show', `--direct-io=${directIo ? 'on' : 'off'}`, file]).trim();
  try {
    return fn(device);
  } finally {
    sh('losetup', ['-d', device]);
  }
}

function backingFile(): string {
  // The guest's /tmp is a tmpfs: the backing file lives in RAM, so both loop
  // implementations are measured on the same medium with no disk noise.
  const file = '/tmp/ublk-ts-bench.img';
  sh('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', 'count=1024', 'status=none']);
  return file;
}

/** Collects rows section by section, each ratio against its section's reference. */
class Table {
  readonly rows: BenchRow[] = [];

  reference(job: FioJob, name: string, value: number): void {
    this.rows.push({ id: 'reference', section: job.title, name, value, unit: job.unit });
  }

  subject(job: FioJob, id: RowId, name: string, value: number, reference: string, dataPath?: string): void {
    const ref = this.rows.find((r) => r.section === job.title && r.id === 'reference' && r.name === reference);
    if (!ref) throw new Error(`no reference row ${reference} in ${job.title}`);
    const ratio = Number((value / ref.value).toFixed(3));
    this.rows.push({ id, section: job.title, name, value, unit: job.unit, reference, ratio, dataPath });
  }
}

function writeResult(result: object): void {
  const resultsDir = process.env.UBLK_TS_RESULTS_DIR;
  if (resultsDir) fs.writeFileSync(path.join(resultsDir, 'bench.json'), JSON.stringify(result, null, 2));
}

function main(): void {
  // UBLK_TS_BENCH_ONLY=reconcile: the manager's section alone (about 3 minutes instead of the whole bench).
  if (process.env.UBLK_TS_BENCH_ONLY === 'reconcile') {
    void runReconcileBench().then((reconcile) => writeResult({ reconcile }));
    return;
  }
  const table = new Table();
  const NULL_BLK = 'null_blk';
  const KERNEL_LOOP = 'kernel loop, direct IO';
  const cpuModel = process.env.UBLK_TS_BENCH_CPU_MODEL ?? 'unknown';
  const nullb = loadNullBlk();

  // Alternate reference and subjects so slow drift cannot favour either side.
  const nullBlk1 = fio(RANDREAD, nullb.oneQueue, GiB);
  const nullBlkQd1 = fio(QD1, nullb.oneQueue, GiB);
  const nullBlkBw = fio(BANDWIDTH, nullb.oneQueue, GiB);
  const nullBlkTwo = fio(TWO_QUEUES, nullb.twoQueues, GiB);
  const ublkNull = withUblk(['-t', 'null', '--size', '1GiB'], 1, {}, (dev, dataPath) => ({
    dataPath,
    qd32: fio(RANDREAD, dev, GiB),
    qd1: fio(QD1, dev, GiB),
  }));
  const ublkNullTwo = withUblk(['-t', 'null', '--size', '1GiB'], 2, {}, (dev, dataPath) => ({
    dataPath,
    iops: fio(TWO_QUEUES, dev, GiB),
  }));
  // The kernel's own choice for a one-queue disk, which ublk-ts replaces with none (spec.scheduler).
  const ublkNullDeadline = withUblk(['-t', 'null', '--size', '1GiB', '--scheduler', 'mq-deadline'], 1, {}, (dev) =>
    fio(RANDREAD, dev, GiB),
  );
  // Batched commands and two threads per queue (7.0+ and 6.16+): on other kernels ublkctl refuses them and the row is left out.
  const where = (args: string[]): { dataPath: string; iops: number } | undefined => {
    try {
      return withUblk(args, 1, {}, (dev, dataPath) => ({ dataPath, iops: fio(RANDREAD, dev, GiB) }));
    } catch (err) {
      console.log(`  left out, ublkctl add ${args.join(' ')}: ${(err as Error).message.split('\n')[0]}`);
      return undefined;
    }
  };
  const nullBatch = where(['-t', 'null', '--size', '1GiB', '--batch-io']);
  const nullThreads = where(['-t', 'null', '--size', '1GiB', '--threads-per-queue', '2']);
  const variants = (process.env.UBLK_TS_BENCH_RING_VARIANTS ?? '').split(',').filter(Boolean);
  const variantRows = variants.map((flags) => ({
    flags,
    ...withUblk(['-t', 'null', '--size', '1GiB'], 1, { UBLK_TS_RING_FLAGS: flags }, (dev, dataPath) => ({
      dataPath,
      iops: fio(RANDREAD, dev, GiB),
    })),
  }));
  // The memory target as it is used: every byte written before it is read.
  const memorySize = ['-t', 'memory', '--size', String(MEMORY_BYTES)];
  const memory = withUblk(memorySize, 1, {}, (dev, dataPath) => {
    fill(dev, MEMORY_BYTES);
    return {
      dataPath,
      qd32: fio(RANDREAD, dev, MEMORY_BYTES),
      qd1: fio(QD1, dev, MEMORY_BYTES),
      bw: fio(BANDWIDTH, dev, MEMORY_BYTES),
    };
  });
  // The other data path than memory's default, in the same boot: zero copy where the kernel has it.
  const memoryZeroCopy = withUblk([...memorySize, '--zero-copy'], 1, {}, (dev, dataPath) => {
    fill(dev, MEMORY_BYTES);
    return { dataPath, qd32: fio(RANDREAD, dev, MEMORY_BYTES), bw: fio(BANDWIDTH, dev, MEMORY_BYTES) };
  });
  const memoryTwo = withUblk(memorySize, 2, {}, (dev, dataPath) => {
    fill(dev, MEMORY_BYTES);
    return { dataPath, iops: fio(TWO_QUEUES, dev, MEMORY_BYTES) };
  });
  const jsNull = withUblk(
    ['-t', 'js', '--module', path.join(ROOT, 'dist', 'examples', 'null-js.js'), '--size', '1GiB'],
    1,
    {},
    (dev, dataPath) => ({ dataPath, iops: fio(RANDREAD, dev, GiB) }),
  );
  const nullBlk2 = fio(RANDREAD, nullb.oneQueue, GiB);
  const nullBlk = Math.round((nullBlk1 + nullBlk2) / 2);

  table.reference(RANDREAD, NULL_BLK, nullBlk);
  table.subject(RANDREAD, 'null', 'ublk-ts null', ublkNull.qd32, NULL_BLK, ublkNull.dataPath);
  if (nullBatch) {
    table.subject(RANDREAD, 'null-batch-io', 'ublk-ts null, --batch-io', nullBatch.iops, NULL_BLK, nullBatch.dataPath);
  }
  if (nullThreads) {
    table.subject(
      RANDREAD,
      'null-threads-2',
      'ublk-ts null, --threads-per-queue 2',
      nullThreads.iops,
      NULL_BLK,
      nullThreads.dataPath,
    );
  }
  table.subject(
    RANDREAD,
    'null-mq-deadline',
    'ublk-ts null, scheduler mq-deadline',
    ublkNullDeadline,
    NULL_BLK,
    'copy',
  );
  for (const v of variantRows) {
    table.rows.push({
      id: 'null',
      section: RANDREAD.title,
      name: `ublk-ts null, ring flags ${v.flags}`,
      value: v.iops,
      unit: 'IOPS',
      reference: NULL_BLK,
      ratio: Number((v.iops / nullBlk).toFixed(3)),
      dataPath: v.dataPath,
    });
  }
  table.subject(RANDREAD, 'memory', 'ublk-ts memory, written data', memory.qd32, NULL_BLK, memory.dataPath);
  table.subject(
    RANDREAD,
    'memory-zero-copy',
    'ublk-ts memory, written data, --zero-copy',
    memoryZeroCopy.qd32,
    NULL_BLK,
    memoryZeroCopy.dataPath,
  );
  table.subject(RANDREAD, 'js-null', 'ublk-ts JS null', jsNull.iops, NULL_BLK, jsNull.dataPath);

  const file = backingFile();
  const loopDirect = withKernelLoop(file, true, (dev) => ({
    qd32: fio(RANDREAD, dev, GiB),
    qd1: fio(QD1, dev, GiB),
    two: fio(TWO_QUEUES, dev, GiB),
    bw: fio(BANDWIDTH, dev, GiB),
  }));
  const ublkLoopArgs = (directIo: string): string[] => ['-t', 'loop', '--file', file, '--direct-io', directIo];
  const ublkLoop = withUblk(ublkLoopArgs('on'), 1, {}, (dev, dataPath) => ({
    dataPath,
    qd32: fio(RANDREAD, dev, GiB),
    qd1: fio(QD1, dev, GiB),
    bw: fio(BANDWIDTH, dev, GiB),
  }));
  // The other data path than the default's for a file on tmpfs (copy): zero copy, asked for.
  const ublkLoopOther = withUblk([...ublkLoopArgs('on'), '--zero-copy'], 1, {}, (dev, dataPath) => ({
    dataPath,
    qd32: fio(RANDREAD, dev, GiB),
    bw: fio(BANDWIDTH, dev, GiB),
  }));
  const loopBatch = where([...ublkLoopArgs('on'), '--batch-io']);
  const ublkLoopTwo = withUblk(ublkLoopArgs('on'), 2, {}, (dev, dataPath) => ({
    dataPath,
    iops: fio(TWO_QUEUES, dev, GiB),
  }));
  const loopBuffered = withKernelLoop(file, false, (dev) => fio(RANDREAD, dev, GiB));
  const ublkLoopBuffered = withUblk(ublkLoopArgs('off'), 1, {}, (dev, dataPath) => ({
    dataPath,
    iops: fio(RANDREAD, dev, GiB),
  }));
  fs.rmSync(file);
  // Loop on a block device, where zero copy is the default: against the copy path on the same device.
  fill(nullb.memoryBacked, GiB);
  const blockdevLoop = withKernelLoop(nullb.memoryBacked, true, (dev) => ({
    qd32: fio(RANDREAD, dev, GiB),
    bw: fio(BANDWIDTH, dev, GiB),
  }));
  const onBlockdev = (extra: string[]): { dataPath: string; qd32: number; bw: number } =>
    withUblk(['-t', 'loop', '--file', nullb.memoryBacked, '--direct-io', 'on', ...extra], 1, {}, (dev, dataPath) => ({
      dataPath,
      qd32: fio(RANDREAD, dev, GiB),
      bw: fio(BANDWIDTH, dev, GiB),
    }));
  const ublkBlockdevLoop = onBlockdev([]);
  const ublkBlockdevLoopCopy = onBlockdev(['--no-zero-copy']);

  table.reference(RANDREAD, KERNEL_LOOP, loopDirect.qd32);
  table.subject(RANDREAD, 'loop-direct', 'ublk-ts loop, direct IO', ublkLoop.qd32, KERNEL_LOOP, ublkLoop.dataPath);
  table.subject(
    RANDREAD,
    'loop-direct-zero-copy',
    'ublk-ts loop, direct IO, --zero-copy',
    ublkLoopOther.qd32,
    KERNEL_LOOP,
    ublkLoopOther.dataPath,
  );
  const KERNEL_LOOP_BLOCKDEV = 'kernel loop on null_blk (memory-backed), direct IO';
  table.reference(RANDREAD, KERNEL_LOOP_BLOCKDEV, blockdevLoop.qd32);
  table.subject(
    RANDREAD,
    'blockdev-loop',
    'ublk-ts loop on null_blk (memory-backed)',
    ublkBlockdevLoop.qd32,
    KERNEL_LOOP_BLOCKDEV,
    ublkBlockdevLoop.dataPath,
  );
  table.subject(
    RANDREAD,
    'blockdev-loop-copy',
    'ublk-ts loop on null_blk (memory-backed), --no-zero-copy',
    ublkBlockdevLoopCopy.qd32,
    KERNEL_LOOP_BLOCKDEV,
    ublkBlockdevLoopCopy.dataPath,
  );
  if (loopBatch) {
    table.subject(
      RANDREAD,
      'loop-batch-io',
      'ublk-ts loop, direct IO, --batch-io',
      loopBatch.iops,
      KERNEL_LOOP,
      loopBatch.dataPath,
    );
  }
  table.reference(RANDREAD, 'kernel loop, buffered', loopBuffered);
  table.subject(
    RANDREAD,
    'loop-buffered',
    'ublk-ts loop, buffered',
    ublkLoopBuffered.iops,
    'kernel loop, buffered',
    ublkLoopBuffered.dataPath,
  );

  table.reference(QD1, NULL_BLK, nullBlkQd1);
  table.subject(QD1, 'qd1-null', 'ublk-ts null', ublkNull.qd1, NULL_BLK, ublkNull.dataPath);
  table.subject(QD1, 'qd1-memory', 'ublk-ts memory, written data', memory.qd1, NULL_BLK, memory.dataPath);
  table.reference(QD1, KERNEL_LOOP, loopDirect.qd1);
  table.subject(QD1, 'qd1-loop', 'ublk-ts loop, direct IO', ublkLoop.qd1, KERNEL_LOOP, ublkLoop.dataPath);

  table.reference(TWO_QUEUES, NULL_BLK, nullBlkTwo);
  table.subject(TWO_QUEUES, 'q2-null', 'ublk-ts null, 2 queues', ublkNullTwo.iops, NULL_BLK, ublkNullTwo.dataPath);
  table.subject(TWO_QUEUES, 'q2-memory', 'ublk-ts memory, 2 queues', memoryTwo.iops, NULL_BLK, memoryTwo.dataPath);
  table.reference(TWO_QUEUES, KERNEL_LOOP, loopDirect.two);
  table.subject(TWO_QUEUES, 'q2-loop', 'ublk-ts loop, 2 queues', ublkLoopTwo.iops, KERNEL_LOOP, ublkLoopTwo.dataPath);

  table.reference(BANDWIDTH, NULL_BLK, nullBlkBw);
  table.subject(BANDWIDTH, 'bw-memory', 'ublk-ts memory, written data', memory.bw, NULL_BLK, memory.dataPath);
  table.subject(
    BANDWIDTH,
    'bw-memory-zero-copy',
    'ublk-ts memory, written data, --zero-copy',
    memoryZeroCopy.bw,
    NULL_BLK,
    memoryZeroCopy.dataPath,
  );
  table.reference(BANDWIDTH, KERNEL_LOOP, loopDirect.bw);
  table.subject(BANDWIDTH, 'bw-loop', 'ublk-ts loop, direct IO', ublkLoop.bw, KERNEL_LOOP, ublkLoop.dataPath);
  table.subject(
    BANDWIDTH,
    'bw-loop-zero-copy',
    'ublk-ts loop, direct IO, --zero-copy',
    ublkLoopOther.bw,
    KERNEL_LOOP,
    ublkLoopOther.dataPath,
  );
  table.reference(BANDWIDTH, KERNEL_LOOP_BLOCKDEV, blockdevLoop.bw);
  table.subject(
    BANDWIDTH,
    'bw-blockdev-loop',
    'ublk-ts loop on null_blk (memory-backed)',
    ublkBlockdevLoop.bw,
    KERNEL_LOOP_BLOCKDEV,
    ublkBlockdevLoop.dataPath,
  );
  table.subject(
    BANDWIDTH,
    'bw-blockdev-loop-copy',
    'ublk-ts loop on null_blk (memory-backed), --no-zero-copy',
    ublkBlockdevLoopCopy.bw,
    KERNEL_LOOP_BLOCKDEV,
    ublkBlockdevLoopCopy.dataPath,
  );

  const result: BenchResult = {
    kernel: LEG,
    kernelRelease: os.release(),
    cpuModel,
    runtimeSeconds: RUNTIME_S,
    nullBlkRuns: [nullBlk1, nullBlk2],
    rows: table.rows,
  };
  console.log(
    `\nLinux ${result.kernelRelease} (leg ${LEG}), qemu -cpu ${cpuModel}, icount; fio io_uring O_DIRECT, ${RUNTIME_S} s per run;` +
      ` ublk-ts devices depth 64, IO scheduler none (spec default) unless said; [data path]; null_blk runs ${nullBlk1} / ${nullBlk2}`,
  );
  let section = '';
  for (const row of table.rows) {
    if (row.section !== section) {
      section = row.section;
      console.log(`${section}:`);
    }
    console.log(formatRow(row, LEG));
  }
  void runReconcileBench().then((reconcile) => writeResult({ ...result, reconcile }));
}

main();
