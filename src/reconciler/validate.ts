/**
 * `ublk-reconcile --validate`: the checks a pass makes before it touches
 * anything, with no kernel and no root — for a GitOps repository's CI.
 * Schema, semantics and duplicates always; unless the manifests are for
 * another host (`offline`), also each one's pre-flight: backing files and
 * js modules as this host sees them.
 */
import { formatManifestError, loadManifestDirAsync } from '../manifest';
import { KERNEL_MAX_QUEUES } from '../spec/limits';
import { preflight } from './preflight';

/** What validation found: the manifests that passed, and one line per problem. */
export interface ValidateResult {
  manifests: Array<{ name: string; file: string; line: number }>;
  errors: string[];
  /** 0: every manifest is valid; 1: some is not. */
  exitCode: 0 | 1;
}

export interface ValidateOptions {
  /**
   * The manifests are for another host: its files, modules and CPUs are
   * not this machine's, so only what the manifests say is checked (queues
   * against the kernel's limit, not this host's CPUs).
   */
  offline?: boolean;
  /** Refuse modules and loop-file links others could change before a module is loaded to check it (it runs as us). */
  checkPermissions?: boolean;
}

/** Validates every manifest in `dir`; throws only when `dir` is missing or not a directory. */
export async function validateManifests(dir: string, opts: ValidateOptions = {}): Promise<ValidateResult> {
  const loaded = await loadManifestDirAsync(dir, opts.offline ? { maxQueues: KERNEL_MAX_QUEUES } : {});
  const errors = loaded.errors.map(formatManifestError);
  const manifests: ValidateResult['manifests'] = [];
  for (const m of loaded.manifests) {
    if (!opts.offline) {
      try {
        await preflight(m, { checkPermissions: opts.checkPermissions });
      } catch (err) {
        errors.push((err as Error).message);
        continue;
      }
    }
    manifests.push({ name: m.name, file: m.file, line: m.line });
  }
  return { manifests, errors, exitCode: errors.length > 0 ? 1 : 0 };
}
