/**
 * The block layer's IO scheduler of a ublk disk (spec.scheduler), set
 * through sysfs each time a server starts serving the device. Not the
 * kernel's business to choose for ublk: it gives a one-queue disk
 * mq-deadline, which on Linux 7.x dispatches every request through a
 * kblockd worker — a context switch per batch that halves IOPS — while
 * the target's storage gains nothing from the ordering (the kernel's own
 * loop driver opts out the same way). A scheduler that cannot be set is a
 * slower device, not a broken one: the outcome says why, the device serves on.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IoScheduler } from '../spec/limits';

/** What applying spec.scheduler to a device came to. */
export interface SchedulerOutcome {
  wanted: IoScheduler;
  /** The scheduler the disk has now, as sysfs names it; absent if it could not be read. */
  active?: string;
  /** Why the wanted scheduler is not the active one. */
  error?: string;
}

/** The file a ublk disk's scheduler is read and written through. */
export function schedulerFile(devId: number, sysBlock = '/sys/block'): string {
  return path.join(sysBlock, `ublkb${devId}`, 'queue', 'scheduler');
}

/** The active scheduler in sysfs's listing ("none [mq-deadline] kyber"), and every one offered. */
export function parseSchedulerList(text: string): { active?: string; offered: string[] } {
  const offered: string[] = [];
  let active: string | undefined;
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const bracketed = /^\[(.+)\]$/.exec(word);
    if (bracketed) active = bracketed[1];
    offered.push(bracketed ? bracketed[1]! : word);
  }
  return { active, offered };
}

/** The scheduler device `devId`'s disk has, or undefined where it cannot be read (no disk, no sysfs). */
export function activeScheduler(devId: number, sysBlock = '/sys/block'): string | undefined {
  try {
    return parseSchedulerList(fs.readFileSync(schedulerFile(devId, sysBlock), 'utf8')).active;
  } catch {
    return undefined;
  }
}

/**
 * Sets `wanted` on device `devId`'s disk unless it has it already
 * (kernel-default: leaves it alone), then reads back what the disk has.
 * Never throws: an error is in the outcome.
 */
export function applyScheduler(devId: number, wanted: IoScheduler, sysBlock = '/sys/block'): SchedulerOutcome {
  const file = schedulerFile(devId, sysBlock);
  let before: string;
  try {
    before = fs.readFileSync(file, 'utf8');
  } catch (err) {
    return { wanted, error: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` };
  }
  const { active } = parseSchedulerList(before);
  if (wanted === 'kernel-default' || active === wanted) return { wanted, active };
  try {
    fs.writeFileSync(file, wanted);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'EINVAL' || code === 'ENOENT'
        ? `the kernel has no ${wanted} scheduler (not built in, and no module for it could be loaded)`
        : code === 'EACCES' || code === 'EPERM' || code === 'EROFS'
          ? `${file} is not writable here (${code}): a server without CAP_SYS_ADMIN, or a read-only /sys`
          : `writing ${file}: ${code ?? (err as Error).message}`;
    // A refused write changes nothing: the disk still has what was read before it.
    return { wanted, active, error: why };
  }
  const now = activeScheduler(devId, sysBlock);
  if (now !== wanted) return { wanted, active: now, error: `the disk kept ${now ?? 'an unreadable scheduler'}` };
  return { wanted, active: now };
}
