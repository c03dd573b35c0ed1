/**
 * The manifest directory as files: which entries are manifests, and each
 * one's text read the way root must read a file others may have placed —
 * without blocking on a FIFO, checked through the descriptor it was read
 * from, and no further than the size limit.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { clip } from '../spec/show-value';
import { formatSize } from '../spec/sizes';
import { MAX_FILE_BYTES } from './file-limits';
import { fileError, ManifestError } from './manifest-error';

/** Manifest files are *.yaml and *.yml; hidden files, editor swap and backup files are not. */
export function isManifestFile(name: string): boolean {
  return !name.startsWith('.') && /\.ya?ml$/.test(name);
}

/** What a file holds besides regular data, for the message about it. */
function kindOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/**
 * What every manifest file is read into (one more byte than a file may
 * have, to tell one that is too large): allocated once, not per file, as
 * a pass reads every file; only the bytes read are decoded, and reads are
 * synchronous, so no two use it at once.
 */
let readBuffer: Buffer | undefined;

/**
 * The text of one manifest file, or why it cannot be read. Opened without
 * blocking (a FIFO swapped in must not hang the pass), checked to be a
 * regular file through the descriptor (no race with a rename), and read no
 * further than the size limit.
 */
export function readManifestText(full: string, file: string): string | ManifestError {
  let fd: number;
  try {
    fd = fs.openSync(full, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    return fileError(file, `cannot read: ${(err as NodeJS.ErrnoException).code ?? clip((err as Error).message)}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) return fileError(file, `cannot read: it is ${kindOf(st)}, not a regular file`);
    const buf = (readBuffer ??= Buffer.allocUnsafe(MAX_FILE_BYTES + 1));
    let got = 0;
    for (let n = 1; n > 0 && got < buf.length; got += n) n = fs.readSync(fd, buf, got, buf.length - got, null);
    if (got > MAX_FILE_BYTES) {
      return fileError(
        file,
        `too large: a manifest file may hold at most ${formatSize(MAX_FILE_BYTES)}, this one has ${Math.max(st.size, got)} bytes`,
      );
    }
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(buf.subarray(0, got));
    } catch {
      return fileError(file, 'cannot read: not UTF-8 text');
    }
  } catch (err) {
    return fileError(file, `cannot read: ${(err as NodeJS.ErrnoException).code ?? clip((err as Error).message)}`);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Entries named like manifests, except directories (a `conf.yaml/` folder
 * is not a manifest). Anything else is read, or reported when it cannot
 * be: a FIFO, a device node or a dangling link is not a manifest, but it is
 * not a removed one either.
 */
export function listManifestFiles(dir: string): string[] {
  return fs
    .readdirSync(dir)
    .filter((name) => isManifestFile(name) && !isDirectory(path.join(dir, name)))
    .sort();
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

export function assertDirectory(dir: string): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new Error(`manifest directory ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new Error(`manifest directory ${dir} is not a directory`);
}
