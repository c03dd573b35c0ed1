/**
 * `node dist/test/vm/cli.js [options] -- <shell command>`: runs the command in the ublk test VM
 * from the current directory and exits with its status (3 when the VM cannot be had).
 * `--kernel 7.3` boots that leg of the kernel matrix instead of the default (KERNEL_LEGS).
 */
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_KERNEL_LEG, kernelLeg, kernelLegNames } from './kernel-legs';
import { runInVm } from './qemu';
import { VmUnavailable } from './vm-unavailable';

const USAGE =
  `usage: node dist/test/vm/cli.js [--kernel ${kernelLegNames().join('|')}] [--icount] [--timeout SECONDS]` +
  ` [--env NAME=VALUE]... [--keep-results] -- <shell command>\n(--kernel defaults to ${DEFAULT_KERNEL_LEG})`;
const DEFAULT_TIMEOUT_S = 600;
/** Exit status when the VM cannot be had on this machine (the reason is printed). */
const EXIT_VM_UNAVAILABLE = 3;
/** Exit status for a bad command line or an unexpected harness error. */
const EXIT_HARNESS = 2;

interface CliOptions {
  command: string;
  kernel: string;
  icount: boolean;
  timeoutS: number;
  env: Record<string, string>;
  keepResults: boolean;
}

function parseCli(argv: string[]): CliOptions | string {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        kernel: { type: 'string', default: DEFAULT_KERNEL_LEG },
        icount: { type: 'boolean' },
        timeout: { type: 'string' },
        env: { type: 'string', multiple: true },
        'keep-results': { type: 'boolean' },
      },
      allowPositionals: true,
    });
  } catch (err) {
    return (err as Error).message;
  }
  const { values, positionals } = parsed;
  const timeoutS = values.timeout === undefined ? DEFAULT_TIMEOUT_S : Number(values.timeout);
  if (!(timeoutS > 0)) return `--timeout wants a positive number of seconds, got ${values.timeout}`;
  if (positionals.length === 0) return 'no command given';
  try {
    kernelLeg(values.kernel);
  } catch (err) {
    return `--kernel: ${(err as Error).message}`;
  }
  const env: Record<string, string> = {};
  for (const pair of values.env ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) return `--env wants NAME=VALUE, got ${pair}`;
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return {
    command: positionals.join(' '),
    kernel: values.kernel,
    icount: values.icount ?? false,
    timeoutS,
    env,
    keepResults: values['keep-results'] ?? false,
  };
}

async function main(argv: string[]): Promise<number> {
  const options = parseCli(argv);
  if (typeof options === 'string') {
    process.stderr.write(`${options}\n${USAGE}\n`);
    return EXIT_HARNESS;
  }
  const interrupted = abortOnSignals();
  const started = Date.now();
  const log = (s: string) => process.stderr.write(`[vm +${((Date.now() - started) / 1000).toFixed(1)}s] ${s}\n`);
  try {
    const result = await runInVm({
      command: options.command,
      kernel: options.kernel,
      cwd: process.cwd(),
      timeoutMs: options.timeoutS * 1000,
      icount: options.icount,
      env: options.env,
      signal: interrupted.signal,
      onOutput: (chunk) => process.stdout.write(chunk),
      log,
    });
    if (options.keepResults) log(`results kept in ${result.resultsDir}`);
    else rmSync(result.resultsDir, { recursive: true, force: true });
    log(`exit code ${result.exitCode}${result.bootRetries > 0 ? ` after ${result.bootRetries} boot retry` : ''}`);
    return result.exitCode;
  } catch (err) {
    if (interrupted.signal.aborted) return interrupted.exitCode;
    if (!(err instanceof VmUnavailable)) throw err;
    process.stderr.write(`ublk-ts-vm: VM unavailable: ${err.reason}\n`);
    return EXIT_VM_UNAVAILABLE;
  }
}

/** SIGINT/SIGTERM stop the VM cleanly; a second signal exits at once (the harness still kills qemu). */
function abortOnSignals(): { signal: AbortSignal; exitCode: number } {
  const controller = new AbortController();
  const state = { signal: controller.signal, exitCode: 0 };
  const onSignal = (code: number) => () => {
    if (controller.signal.aborted) process.exit(code);
    state.exitCode = code;
    controller.abort();
  };
  process.on('SIGINT', onSignal(130));
  process.on('SIGTERM', onSignal(143));
  return state;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = EXIT_HARNESS;
  },
);
