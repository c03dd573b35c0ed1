/**
 * Runs inside the benchmark VM (icount mode): fio against kernel
 * references and ublk-ts targets in the same boot, printed as IOPS and
 * ratios. Started by run-bench.ts; not a test.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runReconcileBench } from './reconcile-bench';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const UBLKCTL = path.join(ROOT, 'dist', 'src', 'cli', 'ublkctl.js');
const RUNTIME_S = Number(process.env.UBLK_TS_BENCH_RUNTIME ?? 3);

function sh(cmd: string, args: string[], env?: NodeJS.ProcessEnv): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, ...env } });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** fio 4 KiB random reads, io_uring, iodepth 32, one job; returns IOPS. */
function fioRandread(device: string): number {
  const out = sh('fio', [
    '--name=bench',
    `--filename=${device}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=randread',
    '--bs=4k',
    '--iodepth=32',
    '--numjobs=1',
    '--time_based',
    `--runtime=${RUNTIME_S}`,
    '--size=1g',
    '--output-format=json',
  ]);
  const job = (JSON.parse(out.slice(out.indexOf('{'))) as { jobs: Array<{ read: { iops: number }; error: number }> })
    .jobs[0]!;
  if (job.error !== 0) throw new Error(`fio error ${job.error} on ${device}`);
  return Math.round(job.read.iops);
}

function loadNullBlk(): string {
  const modules = process.env.UBLK_TS_MODULES_DIR;
  if (!modules) throw new Error('UBLK_TS_MODULES_DIR is not set: run through npm run bench');
  for (const [mod, args] of [
    ['configfs', []],
    ['null_blk', ['queue_mode=2', 'nr_devices=1', 'submit_queues=1', 'hw_queue_depth=64', 'gb=1']],
  ] as Array<[string, string[]]>) {
    const r = spawnSync('busybox', ['insmod', path.join(modules, `${mod}.ko`), ...args], { encoding: 'utf8' });
    if (r.status !== 0 && !/exists/.test(r.stderr)) throw new Error(`insmod ${mod}: ${r.stderr}`);
  }
  return '/dev/nullb0';
}

function withUblk<T>(target: string[], env: NodeJS.ProcessEnv, fn: (device: string) => T): T {
  const info = JSON.parse(
    sh(process.execPath, [UBLKCTL, 'add', ...target, '--queues', '1', '--depth', '64', '--json'], env),
  ) as { id: number; blockPath: string };
  try {
    return fn(info.blockPath);
  } finally {
    sh(process.execPath, [UBLKCTL, 'del', String(info.id)]);
  }
}

const withUblkNull = <T>(env: NodeJS.ProcessEnv, fn: (device: string) => T): T =>
  withUblk(['-t', 'null', '--size', '1GiB'], env, fn);

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

interface Row {
  name: string;
  iops: number;
}

function main(): void {
  // UBLK_TS_BENCH_ONLY=reconcile: the manager's section alone (about 3 minutes instead of the whole bench).
  if (process.env.UBLK_TS_BENCH_ONLY === 'reconcile') {
    void runReconcileBench().then((reconcile) => writeResult({ reconcile }));
    return;
  }
  const rows: Row[] = [];
  const nullb = loadNullBlk();
  // Alternate reference and subject so slow drift cannot favour either side.
  const nullBlk1 = fioRandread(nullb);
  const ublk = withUblkNull({}, fioRandread);
  const nullBlk2 = fioRandread(nullb);
  const nullBlk = Math.round((nullBlk1 + nullBlk2) / 2);
  rows.push({ name: 'kernel null_blk (queue_mode=2)', iops: nullBlk });
  rows.push({ name: 'ublk-ts null (1 queue, depth 64)', iops: ublk });
  const variants = (process.env.UBLK_TS_BENCH_RING_VARIANTS ?? '').split(',').filter(Boolean);
  for (const flags of variants) {
    rows.push({
      name: `ublk-ts null, ring flags ${flags}`,
      iops: withUblkNull({ UBLK_TS_RING_FLAGS: flags }, fioRandread),
    });
  }
  const memory = withUblk(['-t', 'memory', '--size', '1GiB'], {}, fioRandread);
  rows.push({ name: 'ublk-ts memory (1 queue, depth 64)', iops: memory });
  const jsNull = withUblk(
    ['-t', 'js', '--module', path.join(ROOT, 'dist', 'examples', 'null-js.js'), '--size', '1GiB'],
    {},
    fioRandread,
  );
  rows.push({ name: 'ublk-ts JS null (1 queue, depth 64)', iops: jsNull });

  const file = backingFile();
  const kernelLoopDirect = withKernelLoop(file, true, fioRandread);
  const ublkLoopDirect = withUblk(['-t', 'loop', '--file', file, '--direct-io', 'on'], {}, fioRandread);
  const kernelLoopBuffered = withKernelLoop(file, false, fioRandread);
  const ublkLoopBuffered = withUblk(['-t', 'loop', '--file', file, '--direct-io', 'off'], {}, fioRandread);
  fs.rmSync(file);
  const loopRows: Array<Row & { reference: number }> = [
    { name: 'kernel loop, direct IO', iops: kernelLoopDirect, reference: kernelLoopDirect },
    { name: 'ublk-ts loop, direct IO', iops: ublkLoopDirect, reference: kernelLoopDirect },
    { name: 'kernel loop, buffered', iops: kernelLoopBuffered, reference: kernelLoopBuffered },
    { name: 'ublk-ts loop, buffered', iops: ublkLoopBuffered, reference: kernelLoopBuffered },
  ];

  const result = {
    runtimeSeconds: RUNTIME_S,
    nullBlkRuns: [nullBlk1, nullBlk2],
    rows: rows.map((r) => ({ ...r, ratioToNullBlk: Number((r.iops / nullBlk).toFixed(3)) })),
    loop: loopRows.map((r) => ({
      name: r.name,
      iops: r.iops,
      ratioToKernelLoop: Number((r.iops / r.reference).toFixed(3)),
    })),
    ratios: {
      nullToNullBlk: Number((ublk / nullBlk).toFixed(3)),
      memoryToNullBlk: Number((memory / nullBlk).toFixed(3)),
      jsNullToNullBlk: Number((jsNull / nullBlk).toFixed(3)),
      loopDirectToKernelLoop: Number((ublkLoopDirect / kernelLoopDirect).toFixed(3)),
      loopBufferedToKernelLoop: Number((ublkLoopBuffered / kernelLoopBuffered).toFixed(3)),
    },
  };
  console.log('\nfio 4 KiB randread, io_uring, iodepth 32, 1 job, same VM boot (icount):');
  for (const r of result.rows)
    console.log(
      `  ${r.name.padEnd(40)} ${String(r.iops).padStart(8)} IOPS  ratio to null_blk ${r.ratioToNullBlk.toFixed(3)}`,
    );
  for (const r of result.loop)
    console.log(
      `  ${r.name.padEnd(40)} ${String(r.iops).padStart(8)} IOPS  ratio to kernel loop ${r.ratioToKernelLoop.toFixed(3)}`,
    );
  console.log(`ublk-ts null / null_blk            = ${result.ratios.nullToNullBlk.toFixed(3)} (target >= 0.60)`);
  console.log(`ublk-ts memory / null_blk          = ${result.ratios.memoryToNullBlk.toFixed(3)} (target >= 0.55)`);
  console.log(`ublk-ts JS null / null_blk         = ${result.ratios.jsNullToNullBlk.toFixed(3)} (target >= 0.35)`);
  console.log(
    `ublk-ts loop / kernel loop, direct = ${result.ratios.loopDirectToKernelLoop.toFixed(3)} (target >= 0.57)`,
  );
  console.log(`ublk-ts loop / kernel loop, buffered = ${result.ratios.loopBufferedToKernelLoop.toFixed(3)}`);
  void runReconcileBench().then((reconcile) => writeResult({ ...result, reconcile }));
}

function writeResult(result: object): void {
  const resultsDir = process.env.UBLK_TS_RESULTS_DIR;
  if (resultsDir) fs.writeFileSync(path.join(resultsDir, 'bench.json'), JSON.stringify(result, null, 2));
}

main();
