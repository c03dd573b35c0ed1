/**
 * Runs inside the benchmark VM (icount mode): fio against kernel
 * references and ublk-ts targets in the same boot, printed as IOPS and
 * ratios. Started by run-bench.ts; not a test.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

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

function withUblkNull<T>(env: NodeJS.ProcessEnv, fn: (device: string) => T): T {
  const info = JSON.parse(
    sh(process.execPath, [UBLKCTL, 'add', '-t', 'null', '--size', '1GiB', '--queues', '1', '--depth', '64', '--json'], env),
  ) as { id: number; blockPath: string };
  try {
    return fn(info.blockPath);
  } finally {
    sh(process.execPath, [UBLKCTL, 'del', String(info.id)]);
  }
}

interface Row {
  name: string;
  iops: number;
}

function main(): void {
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
    rows.push({ name: `ublk-ts null, ring flags ${flags}`, iops: withUblkNull({ UBLK_TS_RING_FLAGS: flags }, fioRandread) });
  }
  const result = {
    runtimeSeconds: RUNTIME_S,
    nullBlkRuns: [nullBlk1, nullBlk2],
    rows: rows.map((r) => ({ ...r, ratioToNullBlk: Number((r.iops / nullBlk).toFixed(3)) })),
  };
  console.log('\nfio 4 KiB randread, io_uring, iodepth 32, 1 job, same VM boot (icount):');
  for (const r of result.rows) console.log(`  ${r.name.padEnd(40)} ${String(r.iops).padStart(8)} IOPS  ratio ${r.ratioToNullBlk.toFixed(3)}`);
  console.log(`ublk-ts null / null_blk = ${(ublk / nullBlk).toFixed(3)} (target >= 0.60)`);
  const resultsDir = process.env.UBLK_TS_RESULTS_DIR;
  if (resultsDir) fs.writeFileSync(path.join(resultsDir, 'bench.json'), JSON.stringify(result, null, 2));
}

main();
