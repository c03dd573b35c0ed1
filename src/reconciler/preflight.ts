/**
 * Pre-flight of a manifest's spec: everything that can be known about
 * whether its device will start, checked without touching the kernel.
 * A re-create runs it before STOP_DEV, so a spec that cannot start never
 * costs the device it would replace; `--plan` and `--validate` run the
 * same checks, so they fail where `--once` would.
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { SpecError } from '../errors';
import type { LoadedManifest } from '../manifest';
import { DeviceSpec, normalizeDeviceSpec } from '../spec/device-spec';
import { clip } from '../spec/show-value';
import { loopFileTrustProblem, moduleRefusal, moduleTrustProblem, walkPath } from '../device/trusted-path';

/** What the pre-flight knows of the host besides files. */
export interface PreflightOptions {
  /** Whether a fixed device id is taken by a device other than the one being replaced; omitted, ids are not checked. */
  idTaken?: (id: number) => boolean;
  /** How long a js module may take to load (default 10 s). */
  moduleTimeoutMs?: number;
  /**
   * Refuse a js module, or a link to a loop file, that others could change
   * (see trusted-path.ts) — before the module is loaded even in its
   * throwaway process, which runs as root too.
   */
  checkPermissions?: boolean;
}

/** The throwaway process that loads a js target module (this file is dist/src/reconciler/preflight.js). */
const CHECK_MODULE = path.join(__dirname, '..', 'device', 'check-target-module.js');

/** Raised when a spec would not start; names the manifest's file, line and field. */
export class PreflightError extends SpecError {}

function located(manifest: LoadedManifest, field: string, detail: string): PreflightError {
  return new PreflightError(`${manifest.file}:${manifest.line}: spec.${field}`, detail);
}

/** The loop file opens with the access the device needs (read-only or read-write), or could be created. */
function checkLoopFile(manifest: LoadedManifest, spec: DeviceSpec): void {
  if (spec.target.type !== 'loop') return;
  const { file, create } = spec.target;
  if (create && !fs.existsSync(file)) {
    try {
      fs.accessSync(path.dirname(file), fs.constants.W_OK | fs.constants.X_OK);
    } catch {
      throw located(manifest, 'target.file', `cannot create ${clip(file)}: its directory is not writable`);
    }
    return;
  }
  const access = spec.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
  try {
    fs.closeSync(fs.openSync(file, access | fs.constants.O_NONBLOCK));
  } catch (err) {
    const mode = spec.readOnly ? 'read-only' : 'read-write';
    throw located(
      manifest,
      'target.file',
      `${clip(file)} does not open ${mode}: ${(err as NodeJS.ErrnoException).code ?? clip((err as Error).message)}`,
    );
  }
}

/** Nothing on the way to the js module or the loop file could be changed by others. */
function checkTrust(manifest: LoadedManifest, spec: DeviceSpec): void {
  const fix = 'fix the ownership or permissions, or pass --insecure-permissions';
  if (spec.target.type === 'js') {
    const problem = moduleTrustProblem(spec.target.module);
    if (problem) throw located(manifest, 'target.module', moduleRefusal(clip(spec.target.module), problem));
  }
  if (spec.target.type === 'loop' && fs.existsSync(spec.target.file)) {
    let problem: string | undefined;
    try {
      problem = loopFileTrustProblem(walkPath(spec.target.file));
    } catch {
      return; // the open below reports a path that cannot be walked
    }
    if (problem) throw located(manifest, 'target.file', `refusing ${clip(spec.target.file)}: ${problem}; ${fix}`);
  }
}

/** The js module loads, in a process of its own, and exports createTarget. */
async function checkModule(manifest: LoadedManifest, spec: DeviceSpec, timeoutMs: number): Promise<void> {
  if (spec.target.type !== 'js') return;
  const modulePath = spec.target.module;
  await new Promise<void>((resolve, reject) => {
    execFile(
      process.execPath,
      [CHECK_MODULE, modulePath],
      { timeout: timeoutMs, encoding: 'utf8', maxBuffer: 64 * 1024 },
      (err, _stdout, stderr) => {
        if (!err) return resolve();
        const why = err.killed
          ? `${clip(modulePath)} did not load within ${timeoutMs} ms`
          : (stderr.trim().split('\n')[0] || err.message).split(modulePath).join(clip(modulePath));
        reject(located(manifest, 'target.module', why.slice(0, 300)));
      },
    );
  });
}

/**
 * Checks that `manifest`'s device can start: the spec with its files
 * (normalizeDeviceSpec), the loop file opened with the requested mode, the
 * js module loaded, the fixed id free. Resolves with the spec to start;
 * rejects with a located SpecError.
 */
export async function preflight(manifest: LoadedManifest, opts: PreflightOptions = {}): Promise<DeviceSpec> {
  let spec: DeviceSpec;
  try {
    spec = normalizeDeviceSpec(manifest.spec);
  } catch (err) {
    if (err instanceof SpecError) throw located(manifest, err.field, err.detail);
    throw err;
  }
  if (opts.checkPermissions) checkTrust(manifest, spec);
  checkLoopFile(manifest, spec);
  await checkModule(manifest, spec, opts.moduleTimeoutMs ?? 10_000);
  if (spec.id !== undefined && opts.idTaken?.(spec.id)) {
    throw located(manifest, 'id', `device id ${spec.id} is in use by another device`);
  }
  return spec;
}
