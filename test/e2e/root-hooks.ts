/**
 * Root hooks of the end-to-end suite (loaded with mocha --require). After the
 * last test, anything a test left behind is a failure: child processes still
 * running (they would keep mocha alive and the VM up) are killed, and ublk
 * devices created during the run are deleted with a bounded wait — in the VM
 * only, where every device is the suite's; on a real host they are reported,
 * never touched, since another tool may own them.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { UBLKCTL } from './helpers';

const DELETE_TIMEOUT_MS = 60_000;
let devicesBefore = new Set<number>();

function deviceIds(): number[] {
  try {
    return fs
      .readdirSync('/sys/class/ublk-char')
      .map((n) => /^ublkc(\d+)$/.exec(n)?.[1])
      .filter((s): s is string => s !== undefined)
      .map(Number);
  } catch {
    return [];
  }
}

function parentOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

function commandOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim().slice(0, 160);
  } catch {
    return '?';
  }
}

/** Every live process below `root`, children before their parents' siblings. */
export function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const ppid = parentOf(Number(entry));
    if (ppid === undefined) continue;
    children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
  }
  const out: number[] = [];
  const walk = (pid: number): void => {
    for (const c of children.get(pid) ?? []) {
      out.push(c);
      walk(c);
    }
  };
  walk(root);
  return out;
}

export const mochaHooks = {
  beforeAll(): void {
    devicesBefore = new Set(deviceIds());
  },

  afterAll(): void {
    const leaks: string[] = [];
    for (const pid of descendants(process.pid)) {
      const cmd = commandOf(pid);
      if (cmd === '?') continue; // exited while we looked
      leaks.push(`process ${pid} (${cmd})`);
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    const leftover = deviceIds().filter((id) => !devicesBefore.has(id));
    for (const id of leftover) {
      if (process.env.UBLK_TS_IN_VM !== '1') {
        leaks.push(`device ${id} (left in place: not in the test VM)`);
        continue;
      }
      const r = spawnSync(process.execPath, [UBLKCTL, 'del', String(id), '--force'], {
        encoding: 'utf8',
        timeout: DELETE_TIMEOUT_MS,
        killSignal: 'SIGKILL',
      });
      const how = r.status === 0 ? 'deleted' : `could not be deleted: ${r.error?.message ?? r.stderr.trim()}`;
      leaks.push(`device ${id} (${how})`);
    }
    if (leaks.length > 0) throw new Error(`the suite left behind: ${leaks.join('; ')}`);
  },
};
