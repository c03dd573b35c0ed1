import { spawn } from 'node:child_process';
import { accessSync, constants, openSync, closeSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { VmUnavailable } from './vm-unavailable';

const SYSTEM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Looks a program up on PATH and in the system directories; undefined when absent. */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(delimiter).filter(Boolean), ...SYSTEM_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      continue;
    }
  }
  return undefined;
}

/**
 * Returns the path of a host program the VM harness needs, or throws VmUnavailable naming
 * the Debian package that provides it.
 */
export function requireTool(name: string, debianPackage: string): string {
  const found = findTool(name);
  if (found === undefined) {
    throw new VmUnavailable(`${name} not found: apt-get install ${debianPackage}`);
  }
  return found;
}

/** What to run, where, and how to describe its failure. */
export interface ToolRun {
  /** Prefix of the VmUnavailable message when the program fails, e.g. "cannot download kernel". */
  what: string;
  cwd?: string;
  /** Write the program's stdout into this file instead of collecting it. */
  stdoutFile?: string;
}

/** What a successful program printed. */
export interface ToolOutput {
  stdout: string;
  stderr: string;
}

/**
 * Runs a host program to completion. Any failure becomes a VmUnavailable whose reason carries
 * the program's most telling error line, so a skipped test says why (e.g. apt's "E: ..." line).
 */
export function runTool(file: string, args: string[], run: ToolRun): Promise<ToolOutput> {
  return new Promise((resolve, reject) => {
    const outFd = run.stdoutFile === undefined ? 'pipe' : openSync(run.stdoutFile, 'w');
    const child = spawn(file, args, { cwd: run.cwd, stdio: ['ignore', outFd, 'pipe'] });
    if (typeof outFd === 'number') closeSync(outFd);
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => stdout.push(b));
    child.stderr?.on('data', (b: Buffer) => stderr.push(b));
    child.on('error', (err) => reject(new VmUnavailable(`${run.what}: ${err.message}`, { cause: err })));
    child.on('close', (code, signal) => {
      const output = { stdout: Buffer.concat(stdout).toString('utf8'), stderr: Buffer.concat(stderr).toString('utf8') };
      if (code === 0) {
        resolve(output);
        return;
      }
      const detail = errorLine(output.stderr) ?? `${file} exited with ${code ?? signal}`;
      reject(new VmUnavailable(`${run.what}: ${detail}`));
    });
  });
}

/** Picks apt's first "E:" line, else its first "W:" line, else the last non-empty line. */
export function errorLine(stderr: string): string | undefined {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  return lines.find((l) => l.startsWith('E:')) ?? lines.find((l) => l.startsWith('W:')) ?? lines.at(-1);
}
