/** Server processes seen from outside: alive or gone, by pid. */
import * as fs from 'node:fs';

/**
 * True while a process with this pid runs. A zombie (exited, not yet reaped
 * by its parent) counts as gone: it holds no files and serves nothing.
 */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  const fields = statFields(pid);
  return fields !== undefined && fields[0] !== 'Z';
}

/**
 * When process `pid` started, in clock ticks since boot (field 22 of
 * /proc/PID/stat), or undefined when there is no such process. A pid and
 * its start time name one process for good: a reused pid starts later.
 */
export function processStartTime(pid: number): string | undefined {
  return statFields(pid)?.[22 - 3];
}

/** Fields 3 on of /proc/PID/stat (state first), or undefined when there is no such process. */
function statFields(pid: number): string[] | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name before them may hold spaces and parentheses: they start after the last ')'.
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

/** Whether the process that was `pid` when it started at `startTime` still runs. */
export function isSameProcessAlive(pid: number, startTime: string): boolean {
  return isAlive(pid) && processStartTime(pid) === startTime;
}

/** Polls until `pid` is gone; false on timeout. */
export async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 25));
  }
  return true;
}

export function withTimeout<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** What a server process costs the host right now. */
export interface ProcessFootprint {
  /**
   * Proportional set size in KiB (smaps_rollup's Pss): its private pages
   * plus its share of pages it shares. The RSS of a node process counts
   * node's own code and the addon in full for every server, so it says
   * ~40 MiB where a server costs the host a fraction of that; the PSS of
   * all servers adds up to what they take together.
   */
  pssKiB: number;
  /** Its threads (/proc/PID/task): main, libuv's pool, V8's helpers, one per queue. */
  threads: number;
}

/** The footprint of process `pid`, or undefined when it is gone or not ours to read (smaps needs ptrace rights). */
export function processFootprint(pid: number): ProcessFootprint | undefined {
  try {
    const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const pss = /^Pss:\s+(\d+) kB$/m.exec(rollup);
    if (!pss) return undefined;
    return { pssKiB: Number(pss[1]), threads: fs.readdirSync(`/proc/${pid}/task`).length };
  } catch {
    return undefined;
  }
}
