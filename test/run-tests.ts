/**
 * `npm test`: the unit suite on the host, then the end-to-end suite against
 * a real ublk kernel — on the host when /dev/ublk-control is usable,
 * otherwise inside the qemu VM. Prints a closing
 * "N passed, N failed, N skipped" line; an end-to-end suite that could not
 * run is counted as skipped with its reason, and fails the run on CI.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { ublkUnavailableReason } from './e2e/helpers';
import { E2E_PATTERN, mochaArgs, mochaShellCommand, ROOT, UNIT_PATTERN } from './mocha-command';
import { runInVm, VmUnavailable } from './vm';

const E2E_TIMEOUT_MS = Number(process.env.UBLK_TS_E2E_TIMEOUT_MS ?? 30 * 60_000);

interface Counts {
  passed: number;
  failed: number;
  skipped: number;
}

/** Reads mocha's closing "N passing / N failing / N pending" lines. */
function countsFrom(output: string): Counts {
  const grab = (word: string): number => {
    const matches = [...output.matchAll(new RegExp(`^\\s*(\\d+) ${word}`, 'gm'))];
    return matches.length ? Number(matches[matches.length - 1]![1]) : 0;
  };
  return { passed: grab('passing'), failed: grab('failing'), skipped: grab('pending') };
}

function runMochaOnHost(pattern: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, mochaArgs({ pattern }), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    const tee = (chunk: Buffer, stream: NodeJS.WriteStream): void => {
      output += chunk.toString();
      stream.write(chunk);
    };
    child.stdout.on('data', (c: Buffer) => tee(c, process.stdout));
    child.stderr.on('data', (c: Buffer) => tee(c, process.stderr));
    child.on('close', (code) => resolve({ code: code ?? 1, output }));
  });
}

async function runE2e(): Promise<{ code: number; counts: Counts; skippedReason?: string }> {
  const pattern = E2E_PATTERN;
  const hostReason = ublkUnavailableReason();
  if (hostReason === undefined) {
    console.log('\n== end-to-end tests on this host (/dev/ublk-control is usable) ==');
    const r = await runMochaOnHost(pattern);
    return { code: r.code, counts: countsFrom(r.output) };
  }
  console.log(`\n== end-to-end tests in a qemu VM (${hostReason} on this host) ==`);
  try {
    const r = await runInVm({
      command: mochaShellCommand({ pattern }),
      cwd: ROOT,
      timeoutMs: E2E_TIMEOUT_MS,
      onOutput: (chunk) => process.stdout.write(chunk),
      log: (s) => console.log(`[vm] ${s}`),
    });
    fs.rmSync(r.resultsDir, { recursive: true, force: true });
    const counts = countsFrom(r.output);
    if (r.timedOut) {
      console.log(`[vm] the guest did not finish within ${E2E_TIMEOUT_MS} ms: counted as a failure`);
      counts.failed += 1;
    } else if (r.exitCode !== 0 && counts.failed === 0) {
      console.log(`[vm] the guest command exited ${r.exitCode} without a mocha failure: counted as a failure`);
      counts.failed += 1;
    }
    return { code: r.exitCode, counts };
  } catch (err) {
    if (err instanceof VmUnavailable) {
      return { code: 0, counts: { passed: 0, failed: 0, skipped: 1 }, skippedReason: err.message };
    }
    throw err;
  }
}

async function main(): Promise<number> {
  console.log('== unit tests ==');
  const unit = await runMochaOnHost(UNIT_PATTERN);
  const unitCounts = countsFrom(unit.output);
  const e2e = await runE2e();

  const total: Counts = {
    passed: unitCounts.passed + e2e.counts.passed,
    failed: unitCounts.failed + e2e.counts.failed + (unit.code !== 0 && unitCounts.failed === 0 ? 1 : 0),
    skipped: unitCounts.skipped + e2e.counts.skipped,
  };
  console.log('\n== summary ==');
  console.log(`unit: ${unitCounts.passed} passed, ${unitCounts.failed} failed, ${unitCounts.skipped} skipped`);
  if (e2e.skippedReason) {
    console.log(`end-to-end: SKIPPED: ${e2e.skippedReason}`);
  } else {
    console.log(`end-to-end: ${e2e.counts.passed} passed, ${e2e.counts.failed} failed, ${e2e.counts.skipped} skipped`);
  }
  let failed = total.failed > 0 || unit.code !== 0 || e2e.code !== 0;
  if (e2e.skippedReason && process.env.CI) {
    console.log('end-to-end suite could not run on CI, where it must: failing the run');
    failed = true;
  }
  console.log(`${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(err.stack ?? err.message);
    process.exit(1);
  },
);
