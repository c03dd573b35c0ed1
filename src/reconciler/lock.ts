import * as fs from 'node:fs';
import * as path from 'node:path';
import { native } from '../kernel/native';

/** One reconciler at a time: an flock on a file in the state directory, held for the process's life. */
export interface ReconcileLock {
  path: string;
  release(): void;
}

/** Raised when another reconciler holds the lock (exit status 2). */
export class LockHeldError extends Error {
  constructor(
    readonly lockPath: string,
    holder: string,
  ) {
    super(`another ublk-reconcile${holder ? ` (pid ${holder})` : ''} holds the lock ${lockPath}`);
    this.name = 'LockHeldError';
  }
}

/** Takes the lock or throws LockHeldError at once; the file records the holder's pid for that message. */
export function acquireLock(stateDir: string): ReconcileLock {
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o750 });
  const lockPath = path.join(stateDir, 'reconcile.lock');
  const fd = fs.openSync(lockPath, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o640);
  if (!native().flock(fd, true, true)) {
    const holder = fs.readFileSync(lockPath, 'utf8').trim();
    fs.closeSync(fd);
    throw new LockHeldError(lockPath, holder);
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  return { path: lockPath, release: () => fs.closeSync(fd) };
}
