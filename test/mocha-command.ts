/**
 * The one mocha command line of the end-to-end suite, shared by `npm test`
 * and `npm run test:stress` so both run the suite the same way.
 */
import * as path from 'node:path';

export const ROOT = path.resolve(__dirname, '..', '..');
export const MOCHA = path.join('node_modules', 'mocha', 'bin', 'mocha.js');
export const E2E_PATTERN = 'dist/test/e2e/**/*.test.js';
export const UNIT_PATTERN = 'dist/test/unit/**/*.test.js';

/**
 * A test that takes longer than this has hung: it fails, its afterEach cleans up,
 * and the run goes on. Generous, because a loaded 2-core host under TCG is slow.
 */
export const E2E_TEST_TIMEOUT_MS = 300_000;

export interface MochaRun {
  pattern: string;
  /** Writes one JSON record per test to this file (the stress runner reads it). */
  reportFile?: string;
  grep?: string;
}

/**
 * Arguments after `node`. `--exit` is the last line of defence against a leaked
 * handle keeping the guest up; the root hooks (e2e/root-hooks.js) report and
 * remove leaks first, so a leak is a failure, never a silent hang.
 */
export function mochaArgs(run: MochaRun): string[] {
  const e2e = run.pattern === E2E_PATTERN;
  const args = [MOCHA, '--timeout', String(e2e ? E2E_TEST_TIMEOUT_MS : 60_000), '--slow', '60000'];
  if (e2e) args.push('--exit', '--require', 'dist/test/e2e/root-hooks.js');
  if (run.reportFile) args.push('--reporter', 'dist/test/e2e/record-reporter.js');
  if (run.grep) args.push('--grep', run.grep);
  args.push(run.pattern);
  return args;
}

export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The mocha command as shell text, for the guest. */
export function mochaShellCommand(run: MochaRun): string {
  const env = run.reportFile ? `UBLK_TS_REPORT_FILE=${shellQuote(run.reportFile)} ` : '';
  return `${env}${shellQuote(process.execPath)} ${mochaArgs(run).map(shellQuote).join(' ')}`;
}
