/**
 * What a root server may trust on the way to a file it opens or loads on
 * behalf of a manifest, in the spirit of sshd's StrictModes: a file that
 * others can change, or reach through a directory or a symbolic link others
 * can change, may be swapped for something else — a JS module for code run
 * as root, a loop file for a link to /dev/sda.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The sticky bit (S_ISVTX): in such a directory only an entry's owner may rename or remove it. */
const STICKY = 0o1000;

/** Symbolic links followed on one path before giving up, as the kernel does (ELOOP). */
const MAX_LINKS = 40;

function modeOctal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

/** Why others (not root, not this process's user) could change what `st` describes; undefined when they cannot. */
export function ownershipProblem(st: fs.Stats): string | undefined {
  const self = process.geteuid?.() ?? 0;
  if (st.uid !== 0 && st.uid !== self) return `owned by uid ${st.uid}`;
  if (st.mode & 0o022) return `writable by group/others (mode ${modeOctal(st.mode)})`;
  return undefined;
}

/**
 * Why others could replace `entry` in directory `dir`: the directory is
 * theirs, or they may write it — unless it is sticky (like /tmp) and the
 * entry is root's (or ours), which only its owner may rename or remove.
 */
function entryProblem(dir: string, dirStat: fs.Stats, entry: fs.Stats): string | undefined {
  const problem = ownershipProblem(dirStat);
  if (!problem) return undefined;
  const writableOnly = problem.startsWith('writable');
  if (writableOnly && dirStat.mode & STICKY && !ownershipProblem(entry)?.startsWith('owned')) {
    return undefined;
  }
  return `${dir} is ${problem}`;
}

/** One walk of a path, component by component, without trusting any link on the way. */
export interface PathWalk {
  /** The path with every link resolved: what an open of it with O_NOFOLLOW reaches. */
  resolved: string;
  /** lstat of the file at the end. */
  stat: fs.Stats;
  /** The first symbolic link that others could re-point (it lies in a directory they may change). */
  linkProblem?: string;
  /** The first directory on the way in which others could replace what the walk went through. */
  directoryProblem?: string;
  /** The file itself could be changed by others. */
  fileProblem?: string;
}

/**
 * Walks `p` from the root, lstat-ing each component and following
 * symbolic links by hand, and says what on the way others could change.
 * Throws the filesystem's error (ENOENT, ENOTDIR, ELOOP) like open would.
 */
export function walkPath(p: string): PathWalk {
  const rest = path.resolve(p).split('/').filter(Boolean).reverse();
  let dir = '/';
  let dirStat = fs.statSync(dir);
  let directoryProblem: string | undefined;
  let linkProblem: string | undefined;
  let links = 0;
  let last: { file: string; stat: fs.Stats } = { file: dir, stat: dirStat };
  while (rest.length > 0) {
    const name = rest.pop()!;
    if (name === '.') continue;
    if (name === '..') {
      dir = path.dirname(dir);
      dirStat = fs.statSync(dir);
      last = { file: dir, stat: dirStat };
      continue;
    }
    const file = path.join(dir, name);
    const st = fs.lstatSync(file);
    const problem = entryProblem(dir, dirStat, st);
    if (st.isSymbolicLink()) {
      if (++links > MAX_LINKS) {
        throw Object.assign(new Error(`ELOOP: too many symbolic links, ${p}`), { code: 'ELOOP' });
      }
      if (problem) linkProblem ??= `${file} is a symbolic link others could re-point: ${problem}`;
      const target = fs.readlinkSync(file);
      rest.push(...target.split('/').filter(Boolean).reverse());
      if (target.startsWith('/')) {
        dir = '/';
        dirStat = fs.statSync(dir);
      }
      continue;
    }
    directoryProblem ??= problem;
    last = { file, stat: st };
    if (rest.length > 0) {
      if (!st.isDirectory()) throw Object.assign(new Error(`ENOTDIR: not a directory, ${p}`), { code: 'ENOTDIR' });
      dir = file;
      dirStat = st;
    }
  }
  const fileProblem = ownershipProblem(last.stat);
  return {
    resolved: last.file,
    stat: last.stat,
    linkProblem,
    directoryProblem,
    fileProblem: fileProblem && `${last.file} is ${fileProblem}`,
  };
}

/**
 * Why root must not open a loop file as walked: reached through a link
 * others could re-point, or a hard link in a directory others can write
 * (which may name any file of the same file system). A file in a user's own
 * directory is fine otherwise: serving a user's image is what loop is for,
 * and the open checks it gets the file the walk found.
 */
export function loopFileTrustProblem(walk: PathWalk): string | undefined {
  if (walk.linkProblem) return walk.linkProblem;
  // Any non-directory: a device node hard-linked into a user's directory is as good as a file there.
  if (walk.directoryProblem && !walk.stat.isDirectory() && walk.stat.nlink > 1) {
    return `it has ${walk.stat.nlink} names and ${walk.directoryProblem} (a hard link there may name any file)`;
  }
  return undefined;
}

/**
 * Why a JavaScript module must not be loaded by root: the file, every
 * directory above it and every link on the way must be root's (or this
 * user's) and writable by no one else — else whoever can write them runs
 * code as root. Checks the path as named and the file `require` loads (a
 * directory's index.js or package main). Undefined when it is safe.
 */
export function moduleTrustProblem(modulePath: string): string | undefined {
  const files = [modulePath];
  try {
    const loaded = require.resolve(modulePath);
    if (loaded !== modulePath) files.push(loaded);
  } catch (err) {
    // Fail closed: a path that cannot be checked now may hold someone's code when require() looks again.
    return uncheckable(modulePath, err);
  }
  for (const file of files) {
    let walk: PathWalk;
    try {
      walk = walkPath(file);
    } catch (err) {
      return uncheckable(file, err);
    }
    const problem = walk.linkProblem ?? walk.directoryProblem ?? walk.fileProblem;
    if (problem) return problem;
  }
  return undefined;
}

/** The refusal for a module with a trust problem; the permission advice only where permissions are the problem. */
export function moduleRefusal(modulePath: string, problem: string): string {
  if (problem.endsWith(' does not exist')) return problem;
  return `refusing ${modulePath}: ${problem}; fix the ownership or permissions, or pass --insecure-permissions`;
}

function uncheckable(file: string, err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT' || code === 'MODULE_NOT_FOUND') return `${file} does not exist`;
  return `${file} cannot be checked (${code ?? (err as Error).message})`;
}
