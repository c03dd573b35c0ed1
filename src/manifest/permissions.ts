/**
 * What a root-run reconciler checks before trusting a manifest, like sshd's
 * StrictModes: owned by root and not writable by group or others.
 */
import * as fs from 'node:fs';

function modeOctal(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, '0');
}

/**
 * Why a root-run reconciler must not trust `p`: anyone who can write it
 * could have root create devices over any file. A path that cannot be
 * stat'ed (a dangling link) is left to the read, which reports it.
 */
export function permissionProblem(p: string, what: 'directory' | 'file'): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return undefined;
  }
  if (st.uid !== 0)
    return `refusing ${what} owned by uid ${st.uid}, not root; fix with chown root, or pass --insecure-permissions`;
  if (st.mode & 0o022) {
    return `refusing ${what} writable by group/others (mode ${modeOctal(st.mode)}); fix with chmod go-w, or pass --insecure-permissions`;
  }
  return undefined;
}
