/**
 * `npm run bench`: boots the VM in icount mode (guest time counted in
 * instructions, so figures repeat run to run) and runs guest-bench there.
 * Not a test: it prints figures and ratios, and fails only if it cannot run.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { runInVm, VmUnavailable } from '../vm';

const ROOT = path.resolve(__dirname, '..', '..', '..');

async function main(): Promise<number> {
  const env: Record<string, string> = {};
  for (const name of ['UBLK_TS_BENCH_RUNTIME', 'UBLK_TS_BENCH_RING_VARIANTS']) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  // The reconcile section's switches (reconcile-bench.ts): run it alone, with another device count.
  for (const name of ['UBLK_TS_BENCH_ONLY', 'UBLK_TS_BENCH_DEVICES']) {
    if (process.env[name] !== undefined) env[name] = process.env[name];
  }
  try {
    const r = await runInVm({
      command: `${process.execPath} dist/test/bench/guest-bench.js`,
      cwd: ROOT,
      icount: true,
      timeoutMs: 20 * 60_000,
      env,
      onOutput: (chunk) => process.stdout.write(chunk),
      log: (s) => console.log(`[vm] ${s}`),
    });
    const resultFile = path.join(r.resultsDir, 'bench.json');
    if (fs.existsSync(resultFile)) {
      fs.mkdirSync(path.join(ROOT, 'build'), { recursive: true });
      fs.copyFileSync(resultFile, path.join(ROOT, 'build', 'bench.json'));
      console.log(`results: build/bench.json`);
    }
    fs.rmSync(r.resultsDir, { recursive: true, force: true });
    return r.exitCode;
  } catch (err) {
    if (err instanceof VmUnavailable) {
      console.error(`bench: cannot boot the VM: ${err.message}`);
      return 2;
    }
    throw err;
  }
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(err.stack ?? err.message);
    process.exit(1);
  },
);
