/**
 * The manifests a `--once` pass checked, kept in the state directory for
 * the next one: each process starts cold, and parsing and validating the
 * YAML was most of what a device that is fine cost such a pass. Every
 * pass still lists the directory, checks permissions and reads every file
 * whole; a file whose text is byte for byte what was checked before (against
 * the same host limit, by the same code) takes the result of that check
 * instead of parsing it again, as the watcher's in-memory cache does.
 *
 * It is a cache: one that is missing, cut short, of another ublk-ts
 * (version or code) or not in its shape is not used, and the pass checks
 * every file afresh and writes a new one.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ManifestCache } from '../manifest';
import { schemaDocument } from '../spec/schema-document';
import { SERVER_VERSION } from '../server/launcher';

const FORMAT = 1;

export function manifestCachePath(stateDir: string): string {
  return path.join(stateDir, 'manifest-cache.json');
}

let digest: string | undefined;

/**
 * What a saved check depends on besides the text and the host limit: the
 * ublk-ts version, the schema, and the code that checks and hashes a
 * manifest (the loader and the spec's checks and hashes: each file's
 * name, size and modification time, which every build of a change moves),
 * so a rebuilt checkout never takes another build's results. Statted, not
 * read: the modules are loaded already, and this is on every pass's path.
 */
export function checkerDigest(): string {
  if (digest !== undefined) return digest;
  const hash = crypto.createHash('sha256').update(`${SERVER_VERSION}\0${JSON.stringify(schemaDocument)}\0`);
  for (const dir of [path.join(__dirname, '..', 'manifest'), path.join(__dirname, '..', 'spec')]) {
    for (const name of fs
      .readdirSync(dir)
      .filter((n) => n.endsWith('.js'))
      .sort()) {
      const st = fs.statSync(path.join(dir, name));
      hash.update(`${name}\0${st.size}\0${st.mtimeMs}\0`);
    }
  }
  digest = hash.digest('hex');
  return digest;
}

/** The cache a previous pass saved, or an empty one when there is none it may use. */
export function readManifestCache(stateDir: string): ManifestCache {
  let saved: unknown;
  try {
    saved = JSON.parse(fs.readFileSync(manifestCachePath(stateDir), 'utf8'));
  } catch {
    // None yet, unreadable or cut short: every file is checked afresh, and the pass writes a new one.
    return new ManifestCache();
  }
  const file = (typeof saved === 'object' && saved !== null ? saved : {}) as Record<string, unknown>;
  if (file.format !== FORMAT || file.checker !== checkerDigest()) return new ManifestCache();
  return ManifestCache.fromSaved(file.cache) ?? new ManifestCache();
}

/** Saves what the pass checked, atomically (a temporary file renamed over the old one); only when it changed. */
export function saveManifestCache(stateDir: string, cache: ManifestCache): void {
  if (!cache.changed) return;
  const target = manifestCachePath(stateDir);
  const temp = `${target}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`;
  const text = JSON.stringify({ format: FORMAT, checker: checkerDigest(), cache: cache.toSaved() });
  try {
    fs.writeFileSync(temp, text, { mode: 0o600, flag: 'wx' });
    fs.renameSync(temp, target);
  } catch (err) {
    fs.rmSync(temp, { force: true });
    throw err;
  }
  cache.changed = false;
}
