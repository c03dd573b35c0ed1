/**
 * A device server's log file, kept to a bounded size: the state directory
 * is on /run, a tmpfs, so a log that grows without end eats memory. The
 * server's stdout and stderr are that file (opened by the launcher, O_APPEND);
 * when it passes the cap, its text moves to `<log>.1` (replacing the one
 * before) and the file starts again from empty. Readers take only its tail.
 */
import * as fs from 'node:fs';

/** Bytes a server's log may hold before it is rotated; with `<log>.1`, at most about twice this. */
export const LOG_CAP_BYTES = 4 * 1024 * 1024;

/** How often a server looks at its log's size. */
export const LOG_CHECK_INTERVAL_MS = 5_000;

/**
 * Rotates the log open as `fd` if it holds more than `capBytes`: copies it
 * to `<path>.1` and empties it. The file's name is read from /proc, so it
 * is right after the launcher renamed it; an unlinked log is only emptied.
 * With O_APPEND, later writes (of any thread or fd sharing the file) go on
 * at the new end. Returns whether it rotated.
 */
export function rotateIfLarger(fd: number, capBytes: number = LOG_CAP_BYTES): boolean {
  if (fs.fstatSync(fd).size <= capBytes) return false;
  const file = fs.readlinkSync(`/proc/self/fd/${fd}`);
  if (!file.endsWith(' (deleted)')) copyFile(file, `${file}.1`);
  fs.ftruncateSync(fd, 0);
  return true;
}

/** Copies `from` to `to` without following a link at either end. */
function copyFile(from: string, to: string): void {
  const src = fs.openSync(from, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const mode = fs.fstatSync(src).mode & 0o666;
    const dst = fs.openSync(
      to,
      fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_NOFOLLOW,
      mode,
    );
    try {
      // The rotated text is as private as the log it came from, whatever an older rotation had.
      fs.fchmodSync(dst, mode);
      const buf = Buffer.alloc(1024 * 1024);
      for (let n; (n = fs.readSync(src, buf, 0, buf.length, null)) > 0;) fs.writeSync(dst, buf, 0, n);
    } finally {
      fs.closeSync(dst);
    }
  } finally {
    fs.closeSync(src);
  }
}

/** Checks the log open as `fd` every `intervalMs` and rotates it when it passes the cap; never keeps the process alive. */
export function keepLogBounded(
  fd: number,
  capBytes: number = LOG_CAP_BYTES,
  intervalMs: number = LOG_CHECK_INTERVAL_MS,
): NodeJS.Timeout {
  const timer = setInterval(() => {
    try {
      rotateIfLarger(fd, capBytes);
    } catch (err) {
      process.stderr.write(`cannot rotate the log: ${(err as Error).message}\n`);
    }
  }, intervalMs);
  timer.unref();
  return timer;
}

/**
 * The last `lines` lines of a log, reading no more than its last
 * `maxBytes` (a log may be megabytes; an error message needs a few lines).
 * Empty when the file cannot be read.
 */
export function readTail(file: string, lines = 20, maxBytes = 64 * 1024): string {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch {
    return '';
  }
  try {
    const size = fs.fstatSync(fd).size;
    const start = Math.max(0, size - maxBytes);
    const buf = Buffer.alloc(Math.min(size, maxBytes));
    let got = 0;
    for (let n = 1; n > 0 && got < buf.length; got += n) n = fs.readSync(fd, buf, got, buf.length - got, start + got);
    let text = buf.subarray(0, got).toString('utf8');
    // Started mid-file: the first line is only the end of one.
    if (start > 0) text = text.slice(text.indexOf('\n') + 1);
    return text.trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '';
  } finally {
    fs.closeSync(fd);
  }
}
