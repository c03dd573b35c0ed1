import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { ConsoleText } from './console-text';
import { BOOTED_MARKER, EXIT_MARKER, GUEST_FILES } from './init-script';
import { ensureInitramfs } from './initramfs';
import { ensureKernel, type KernelImage } from './kernel';
import { DEFAULT_KERNEL_LEG } from './kernel-legs';
import { requireTool } from './tools';

/** What to run in the VM and how to boot it. */
export interface VmRunOptions {
  /** Shell text run with /bin/bash inside the guest root (the host's files, writable through an overlay). */
  command: string;
  /** Absolute working directory of the command; the host's path, seen at the same path in the guest. */
  cwd: string;
  /** Hard wall-clock limit for the whole run, boot retry included; qemu is killed when it passes. */
  timeoutMs: number;
  /** The kernel matrix leg to boot (`6.12`, `7.3`: KERNEL_LEGS), default DEFAULT_KERNEL_LEG. */
  kernel?: string;
  /** Deterministic guest time (`-icount shift=0,sleep=off`, one vCPU thread): for benchmarks. */
  icount?: boolean;
  /** Guest memory, default 3072 MiB. */
  memoryMiB?: number;
  /** Guest vCPUs, default 2. */
  cpus?: number;
  /**
   * Environment for the command, over the defaults (PATH, HOME=/root, TERM=dumb, LANG=C.UTF-8).
   * UBLK_TS_IN_VM=1, UBLK_TS_KERNEL (the leg), UBLK_TS_MODULES_DIR, UBLK_TS_RESULTS_DIR and
   * SYSTEMD_IGNORE_CHROOT=1 are always set.
   */
  env?: Record<string, string>;
  /** Receives the guest console as plain text while it runs. */
  onOutput?: (chunk: string) => void;
  /** Receives the harness's own progress and diagnostics. */
  log?: (s: string) => void;
  /** Aborting kills qemu, removes the results folder and rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** How a VM run ended. */
export interface VmRunResult {
  /** The command's exit status; 124 when the run timed out, 125 when the guest reported none. */
  exitCode: number;
  /** The whole guest console as plain text, with the harness's notes (`ublk-ts-vm: ...` lines) where they happened. */
  output: string;
  /** Host folder shared read-write with the guest at the same path (`$UBLK_TS_RESULTS_DIR`); the caller removes it. */
  resultsDir: string;
  /** The timeout passed and qemu was killed; exitCode is then 124. */
  timedOut: boolean;
  /** How many times the VM was booted again because it never reached the booted marker. */
  bootRetries: number;
  /** The kernel that ran: its leg and release (`uname -r`). */
  kernel: { leg: string; version: string };
  /** Milliseconds from qemu's start to the booted marker on the last boot; undefined when it never came. */
  bootMs?: number;
}

/** Kernel command line: serial console, and a panic ends qemu (with -no-reboot) instead of hanging. */
export const KERNEL_CMDLINE = 'console=ttyS0 panic=-1 quiet';

/** Exit code reported when the run passed its timeout, as timeout(1) does. */
export const EXIT_TIMED_OUT = 124;

/** Exit code reported when the guest wrote no exit status (panic, crash, failed boot). */
export const EXIT_NO_STATUS = 125;

/** A boot that has not printed the booted marker by then is treated as hung and retried. */
const BOOT_TIMEOUT_MS = 120_000;

/**
 * Once the guest has printed its exit status, powering off takes a moment; a guest still up
 * after this is stuck in shutdown and is killed, so the host never waits on it.
 */
const POWEROFF_GRACE_MS = 15_000;

const DEFAULT_PATH = '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin';

/**
 * Boots the ublk-capable kernel in qemu (TCG) on the host's own root filesystem and runs
 * `command` there, because the host kernel has no ublk. The host's files are shared read-only
 * (the guest writes to a tmpfs overlay); only `resultsDir` is shared writable. Resolves when the
 * guest powers off or the timeout passes; throws VmUnavailable when the VM cannot be had.
 */
export async function runInVm(opts: VmRunOptions): Promise<VmRunResult> {
  checkOptions(opts);
  opts.signal?.throwIfAborted();
  const log = opts.log ?? (() => {});
  const qemu = requireTool('qemu-system-x86_64', 'qemu-system-x86');
  const kernel = await ensureKernel(opts.kernel ?? DEFAULT_KERNEL_LEG, log);
  const initrd = await ensureInitramfs(kernel, log);
  opts.signal?.throwIfAborted();
  const resultsDir = mkdtempSync(join(tmpdir(), 'ublk-ts-vm-'));
  writeGuestFiles(resultsDir, opts, kernel);
  const plan: BootPlan = {
    qemu,
    args: qemuArgs(opts, kernel, initrd, resultsDir),
    deadline: Date.now() + opts.timeoutMs,
    signal: opts.signal,
    onOutput: opts.onOutput,
    onBooted: (ms) => log(`guest booted on Linux ${kernel.version} in ${ms} ms`),
  };

  let output = '';
  const note = (s: string) => {
    log(s);
    output += `ublk-ts-vm: ${s}\n`;
  };
  for (let attempt = 0; ; attempt++) {
    rmSync(join(resultsDir, GUEST_FILES.exitCode), { force: true });
    const boot = await bootOnce(plan);
    output += boot.output;
    const ran = { kernel: { leg: kernel.leg, version: kernel.version }, bootMs: boot.bootMs };
    if (boot.end === 'aborted') {
      rmSync(resultsDir, { recursive: true, force: true });
      throw opts.signal?.reason ?? new Error('VM run aborted');
    }
    if (boot.end === 'timed-out') {
      note(`timed out after ${opts.timeoutMs} ms: qemu killed`);
      return { ...ran, exitCode: EXIT_TIMED_OUT, output, resultsDir, timedOut: true, bootRetries: attempt };
    }
    if (boot.bootMs === undefined) {
      note(bootFailure(boot, attempt === 0));
      if (attempt === 0) continue;
    }
    const exitCode = readExitCode(resultsDir);
    if (exitCode === undefined && boot.bootMs !== undefined) {
      note(
        `the guest wrote no ${GUEST_FILES.exitCode} (kernel panic or crash? see the console): exit code ${EXIT_NO_STATUS}`,
      );
    }
    return { ...ran, exitCode: exitCode ?? EXIT_NO_STATUS, output, resultsDir, timedOut: false, bootRetries: attempt };
  }
}

function checkOptions(opts: VmRunOptions): void {
  if (typeof opts.command !== 'string') throw new TypeError('command must be a string');
  if (!isAbsolute(opts.cwd) || !statSync(opts.cwd, { throwIfNoEntry: false })?.isDirectory()) {
    throw new TypeError(`cwd must be the absolute path of a directory, got ${opts.cwd}`);
  }
  if (!(opts.timeoutMs > 0)) throw new RangeError(`timeoutMs must be positive, got ${opts.timeoutMs}`);
  for (const name of Object.keys(opts.env ?? {})) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new TypeError(`invalid environment variable name: ${name}`);
  }
}

/** Writes what /init reads from the results share: its configuration, the environment and the command. */
function writeGuestFiles(resultsDir: string, opts: VmRunOptions, kernel: KernelImage): void {
  const config = { RESULTS_DIR: resultsDir, WORK_DIR: opts.cwd, MODULES_DIR: kernel.modulesDir };
  writeFileSync(join(resultsDir, GUEST_FILES.config), shellAssignments(config, ''));
  writeFileSync(join(resultsDir, GUEST_FILES.env), shellAssignments(guestEnv(opts, kernel, resultsDir), 'export '));
  writeFileSync(join(resultsDir, GUEST_FILES.command), `${opts.command}\n`);
}

function guestEnv(opts: VmRunOptions, kernel: KernelImage, resultsDir: string): Record<string, string> {
  return {
    PATH: DEFAULT_PATH,
    HOME: '/root',
    TERM: 'dumb',
    LANG: 'C.UTF-8',
    ...opts.env,
    UBLK_TS_IN_VM: '1',
    UBLK_TS_KERNEL: kernel.leg,
    UBLK_TS_MODULES_DIR: kernel.modulesDir,
    UBLK_TS_RESULTS_DIR: resultsDir,
    SYSTEMD_IGNORE_CHROOT: '1',
  };
}

function shellAssignments(vars: Record<string, string>, prefix: string): string {
  const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  return Object.entries(vars)
    .map(([name, value]) => `${prefix}${name}=${quote(value)}\n`)
    .join('');
}

/** The CPU qemu emulates: benchmark ratios depend on it (-cpu max moves them), so it stays fixed and is printed. */
export const QEMU_CPU_MODEL = 'qemu64,+rdrand';

function qemuArgs(opts: VmRunOptions, kernel: KernelImage, initrd: string, resultsDir: string): string[] {
  const accel = opts.icount
    ? ['-accel', 'tcg,thread=single', '-icount', 'shift=0,sleep=off']
    : ['-accel', 'tcg,thread=multi'];
  // Unprivileged qemu cannot chown what the guest's root creates; "none" ignores that instead of failing.
  const model = process.getuid?.() === 0 ? 'passthrough' : 'none';
  return [
    // RDRAND lets the guest's RNG initialise at boot; without it the first getrandom() (node) waits seconds.
    ...['-machine', 'q35', '-cpu', QEMU_CPU_MODEL, ...accel],
    ...['-smp', String(opts.cpus ?? 2), '-m', String(opts.memoryMiB ?? 3072)],
    // -display none rather than -nographic: the firmware then stays off the serial console.
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-nic', 'none'],
    ...['-serial', 'stdio', '-monitor', 'none'],
    ...['-kernel', kernel.vmlinuz, '-initrd', initrd, '-append', KERNEL_CMDLINE],
    ...['-virtfs', virtfs('/', 'hostroot', model, true)],
    ...['-virtfs', virtfs(resultsDir, 'results', model, false)],
  ];
}

function virtfs(path: string, tag: string, model: string, readonly: boolean): string {
  const escaped = path.replace(/,/g, ',,');
  return `local,path=${escaped},mount_tag=${tag},security_model=${model},multidevs=remap${readonly ? ',readonly=on' : ''}`;
}

/** One qemu invocation: what to run and what to tell whom while it runs. */
interface BootPlan {
  qemu: string;
  args: string[];
  /** Date.now() value at which qemu is killed and the run counts as timed out. */
  deadline: number;
  signal?: AbortSignal;
  onOutput?: (chunk: string) => void;
  onBooted: (ms: number) => void;
}

interface Boot {
  output: string;
  /** Milliseconds from qemu's start to the booted marker; undefined when it never came. */
  bootMs?: number;
  /** Why qemu ended: it exited by itself, or it was killed. */
  end: 'exited' | 'timed-out' | 'hung-boot' | 'aborted';
}

/** Runs qemu once, streaming its console, until it exits or is killed (deadline, hung boot, abort). */
function bootOnce(plan: BootPlan): Promise<Boot> {
  return new Promise((resolve) => {
    const started = Date.now();
    const boot: Boot = { output: '', end: 'exited' };
    const child = spawn(plan.qemu, plan.args, { stdio: ['pipe', 'pipe', 'pipe'] });
    track(child);
    const stop = (end: Boot['end']) => {
      if (boot.end === 'exited') boot.end = end;
      child.kill('SIGKILL');
    };
    const timeout = setTimeout(() => stop('timed-out'), Math.max(0, plan.deadline - started));
    const hungBoot = setTimeout(() => stop('hung-boot'), BOOT_TIMEOUT_MS);
    const onAbort = () => stop('aborted');
    plan.signal?.addEventListener('abort', onAbort, { once: true });
    if (plan.signal?.aborted) onAbort();

    let poweroff: NodeJS.Timeout | undefined;
    const emit = (text: string) => {
      if (text === '') return;
      const scanFrom = Math.max(0, boot.output.length - Math.max(BOOTED_MARKER.length, EXIT_MARKER.length));
      boot.output += text;
      plan.onOutput?.(text);
      if (boot.bootMs === undefined && boot.output.includes(BOOTED_MARKER, scanFrom)) {
        boot.bootMs = Date.now() - started;
        clearTimeout(hungBoot);
        plan.onBooted(boot.bootMs);
      }
      if (poweroff === undefined && boot.bootMs !== undefined && boot.output.includes(EXIT_MARKER, scanFrom)) {
        poweroff = setTimeout(() => child.kill('SIGKILL'), POWEROFF_GRACE_MS);
      }
    };
    for (const stream of [child.stdout, child.stderr]) {
      const text = new ConsoleText();
      stream.on('data', (chunk: Buffer) => emit(text.push(chunk)));
      stream.on('end', () => emit(text.end()));
    }

    let settled = false;
    const settle = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timeout);
      clearTimeout(hungBoot);
      clearTimeout(poweroff);
      plan.signal?.removeEventListener('abort', onAbort);
      resolve(boot);
    };
    child.on('error', (err) => {
      emit(`ublk-ts-vm: cannot run ${plan.qemu}: ${err.message}\n`);
      settle();
    });
    child.on('close', settle);
  });
}

function bootFailure(boot: Boot, willRetry: boolean): string {
  const what =
    boot.end === 'hung-boot'
      ? `the guest did not print ${BOOTED_MARKER} within ${BOOT_TIMEOUT_MS / 1000} s`
      : `the guest never printed ${BOOTED_MARKER} (an early-boot failure under TCG?)`;
  return willRetry ? `${what}: booting it again` : `${what}, twice in a row: exit code ${EXIT_NO_STATUS}`;
}

const liveQemus = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Makes sure no qemu outlives this process, even when it exits in the middle of a run. */
function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    process.on('exit', () => liveQemus.forEach((c) => c.kill('SIGKILL')));
    exitHookInstalled = true;
  }
  liveQemus.add(child);
  child.once('close', () => liveQemus.delete(child));
}

function readExitCode(resultsDir: string): number | undefined {
  try {
    const text = readFileSync(join(resultsDir, GUEST_FILES.exitCode), 'utf8').trim();
    return /^\d+$/.test(text) ? Number(text) : undefined;
  } catch {
    return undefined;
  }
}
