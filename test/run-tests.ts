/**
 * `npm test [-- --kernel LEG]... [--serial]`: the unit suite on the host, then the end-to-end
 * suite against a real ublk kernel — on the host when /dev/ublk-control is usable, otherwise in
 * a qemu VM on each leg of the kernel matrix (KERNEL_LEGS: 6.12 and 7.3; `--kernel` picks some).
 * The legs' VMs run at the same time: a TCG guest running one test at a time keeps about one
 * host core busy, so two legs on two cores take little longer than one (`--serial` runs them
 * in turn, each line of output then unprefixed). Prints a summary line per leg and a closing
 * "N passed, N failed, N skipped" line; a leg that could not run is counted as skipped with
 * its reason, and fails the run on CI.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { ublkUnavailableReason } from './e2e/helpers';
import { E2E_PATTERN, mochaArgs, mochaShellCommand, ROOT, UNIT_PATTERN } from './mocha-command';
import { countsFrom, type LegResult, prefixedLines, summarize } from './test-summary';
import { kernelLeg, kernelLegNames, runInVm, VmUnavailable } from './vm';

const USAGE = `usage: npm test [-- --kernel ${kernelLegNames().join('|')}]... [--serial]`;
/** Per leg: a guest still running after this is killed and the leg counts as failed. */
const E2E_TIMEOUT_MS = Number(process.env.UBLK_TS_E2E_TIMEOUT_MS ?? 60 * 60_000);

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

async function runE2eOnHost(): Promise<LegResult> {
  const label = `this host (Linux ${os.release()})`;
  console.log(`\n== end-to-end tests on ${label}: /dev/ublk-control is usable ==`);
  const started = Date.now();
  const r = await runMochaOnHost(E2E_PATTERN);
  return { label, code: r.code, counts: countsFrom(r.output), wallMs: Date.now() - started };
}

async function runE2eInVm(leg: string, hostReason: string, prefix: string): Promise<LegResult> {
  let label = `Linux ${leg} in a qemu VM`;
  console.log(`\n${prefix}== end-to-end tests on ${label} (${hostReason} on this host) ==`);
  const out = prefixedLines(prefix, (text) => process.stdout.write(text));
  const started = Date.now();
  try {
    const r = await runInVm({
      command: mochaShellCommand({ pattern: E2E_PATTERN }),
      cwd: ROOT,
      kernel: leg,
      timeoutMs: E2E_TIMEOUT_MS,
      onOutput: (chunk) => out.write(chunk),
      log: (s) => console.log(`[vm ${leg}] ${s}`),
    });
    out.end();
    fs.rmSync(r.resultsDir, { recursive: true, force: true });
    label = `Linux ${leg} (${r.kernel.version}) in a qemu VM`;
    const result: LegResult = { label, code: r.exitCode, counts: countsFrom(r.output), wallMs: Date.now() - started };
    if (r.timedOut) {
      result.harnessFailure = `the guest did not finish within ${E2E_TIMEOUT_MS / 60_000} min`;
    } else if (r.exitCode !== 0 && result.counts.failed === 0) {
      result.harnessFailure = `the guest command exited ${r.exitCode} without a mocha failure`;
    }
    if (result.harnessFailure !== undefined) result.counts.failed += 1;
    return result;
  } catch (err) {
    out.end();
    const wallMs = Date.now() - started;
    if (err instanceof VmUnavailable) {
      return { label, code: 0, counts: { passed: 0, failed: 0, skipped: 1 }, skippedReason: err.reason, wallMs };
    }
    // A harness error on one leg (a module the leg lists is gone, say) must not hide the other legs.
    const harnessFailure = `harness error: ${err instanceof Error ? err.message : String(err)}`;
    console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
    return { label, code: 1, counts: { passed: 0, failed: 1, skipped: 0 }, harnessFailure, wallMs };
  }
}

function parseLegs(argv: string[]): { legs: string[]; serial: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: { kernel: { type: 'string', multiple: true }, serial: { type: 'boolean', default: false } },
  });
  const legs = values.kernel ?? kernelLegNames();
  for (const leg of legs) kernelLeg(leg);
  return { legs, serial: values.serial === true };
}

async function main(): Promise<number> {
  let legs: string[];
  let serial: boolean;
  try {
    ({ legs, serial } = parseLegs(process.argv.slice(2)));
  } catch (err) {
    console.error(`npm test: ${(err as Error).message}\n${USAGE}`);
    return 2;
  }
  console.log('== unit tests ==');
  const unit = await runMochaOnHost(UNIT_PATTERN);
  const unitCounts = countsFrom(unit.output);

  const hostReason = ublkUnavailableReason();
  const e2e: LegResult[] = [];
  if (hostReason === undefined) e2e.push(await runE2eOnHost());
  else if (serial || legs.length === 1) for (const leg of legs) e2e.push(await runE2eInVm(leg, hostReason, ''));
  else e2e.push(...(await Promise.all(legs.map((leg) => runE2eInVm(leg, hostReason, `[${leg}] `)))));

  const summary = summarize({ counts: unitCounts, code: unit.code }, e2e, Boolean(process.env.CI));
  console.log('\n== summary ==');
  for (const line of summary.lines) console.log(line);
  return summary.failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(err.stack ?? err.message);
    process.exit(1);
  },
);
