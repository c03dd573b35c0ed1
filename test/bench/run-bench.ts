/**
 * `npm run bench [-- --kernel LEG]...`: boots one VM per kernel leg (all
 * legs by default, one after the other) in icount mode (guest time counted
 * in instructions, so figures repeat run to run), runs guest-bench there,
 * then prints every leg's ratios side by side with the goals. Not a test:
 * it fails only if it cannot run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { kernelLeg, kernelLegNames, runInVm, VmUnavailable } from '../vm';
import { QEMU_CPU_MODEL } from '../vm/qemu';
import { BenchResult, goalFor } from './goals';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const USAGE = `usage: npm run bench -- [--kernel ${kernelLegNames().join('|')}]... (default: every leg)`;

function legsFromArgs(argv: string[]): string[] {
  const { values } = parseArgs({ args: argv, options: { kernel: { type: 'string', multiple: true } } });
  const legs = (values.kernel ?? kernelLegNames()).flatMap((k) => k.split(',')).filter(Boolean);
  for (const leg of legs) kernelLeg(leg);
  return [...new Set(legs)];
}

async function benchLeg(leg: string, env: Record<string, string>): Promise<BenchResult | undefined> {
  const r = await runInVm({
    command: `${process.execPath} dist/test/bench/guest-bench.js`,
    cwd: ROOT,
    kernel: leg,
    icount: true,
    // The fio rows take about 6 minutes a leg, the reconcile section about as long again.
    timeoutMs: 40 * 60_000,
    env,
    onOutput: (chunk) => process.stdout.write(chunk),
    log: (s) => console.log(`[vm ${leg}] ${s}`),
  });
  const resultFile = path.join(r.resultsDir, 'bench.json');
  const result = fs.existsSync(resultFile)
    ? (JSON.parse(fs.readFileSync(resultFile, 'utf8')) as BenchResult)
    : undefined;
  fs.rmSync(r.resultsDir, { recursive: true, force: true });
  if (r.exitCode !== 0 || result === undefined) {
    console.error(`bench: the ${leg} leg failed (guest exit code ${r.exitCode})`);
    return undefined;
  }
  result.kernel ??= leg;
  return result;
}

/** A summary cell's width: ratio, data path and goal. */
const CELL = 38;

/** Every leg's ratio for each row, with the goal next to it. */
function printSummary(results: BenchResult[]): void {
  const keys: Array<{ key: string; section: string; name: string; id: string }> = [];
  for (const result of results) {
    for (const row of result.rows ?? []) {
      if (row.ratio === undefined) continue;
      const key = `${row.section}\u0000${row.name}`;
      if (!keys.some((k) => k.key === key)) keys.push({ key, section: row.section, name: row.name, id: row.id });
    }
  }
  console.log(`\nSummary: ratio to the kernel reference of the same boot (qemu -cpu ${QEMU_CPU_MODEL}, icount)`);
  console.log(`  ${'row'.padEnd(62)} ${results.map((r) => `${r.kernel} [data path] (goal)`.padEnd(CELL)).join('')}`);
  let section = '';
  for (const k of keys) {
    if (k.section !== section) {
      section = k.section;
      console.log(`${section}:`);
    }
    const cells = results.map((result) => {
      const row = result.rows?.find((r) => `${r.section}\u0000${r.name}` === k.key);
      if (row?.ratio === undefined) return '-'.padEnd(CELL);
      const goal = goalFor(result.kernel, row.id);
      const goalText = goal === undefined ? '' : ` (>= ${goal.toFixed(2)} ${row.ratio >= goal ? 'met' : 'MISSED'})`;
      return `${row.ratio.toFixed(3)} [${row.dataPath ?? '-'}]${goalText}`.padEnd(CELL);
    });
    const reference = results
      .flatMap((r) => r.rows ?? [])
      .find((r) => `${r.section}\u0000${r.name}` === k.key)?.reference;
    console.log(`  ${`${k.name} / ${reference}`.padEnd(62)} ${cells.join('')}`);
  }
}

async function main(): Promise<number> {
  let legs: string[];
  try {
    legs = legsFromArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`bench: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  const env: Record<string, string> = { UBLK_TS_BENCH_CPU_MODEL: QEMU_CPU_MODEL };
  // UBLK_TS_BENCH_ONLY and UBLK_TS_BENCH_DEVICES are the reconcile section's switches (reconcile-bench.ts).
  for (const name of [
    'UBLK_TS_BENCH_RUNTIME',
    'UBLK_TS_BENCH_RING_VARIANTS',
    'UBLK_TS_BENCH_ONLY',
    'UBLK_TS_BENCH_DEVICES',
  ]) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  const results: BenchResult[] = [];
  let failed = false;
  try {
    // One boot after the other: icount figures are guest time, but two
    // guests at once would share the host's cores with each other.
    for (const leg of legs) {
      const result = await benchLeg(leg, env);
      if (result) results.push(result);
      else failed = true;
    }
  } catch (err) {
    if (err instanceof VmUnavailable) {
      console.error(`bench: cannot boot the VM: ${err.message}`);
      return 2;
    }
    throw err;
  }
  if (results.length > 0) {
    printSummary(results);
    fs.mkdirSync(path.join(ROOT, 'build'), { recursive: true });
    const kernels = Object.fromEntries(results.map((r) => [r.kernel, r]));
    fs.writeFileSync(path.join(ROOT, 'build', 'bench.json'), JSON.stringify({ kernels }, null, 2));
    console.log(`results: build/bench.json`);
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(err.stack ?? err.message);
    process.exit(1);
  },
);
