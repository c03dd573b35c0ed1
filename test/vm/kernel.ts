import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';
import { derivedSourcesFile, readMachineSources } from './apt-sources';
import { errorLine, requireTool, runTool } from './tools';
import { VmUnavailable } from './vm-unavailable';

/** A ublk-capable guest kernel unpacked in the cache: what qemu boots and what the guest insmods. */
export interface KernelImage {
  /** The kernel release (`uname -r` in the guest), e.g. `6.12.95+deb12-amd64`. */
  version: string;
  /** Path of the bzImage handed to qemu's `-kernel`. */
  vmlinuz: string;
  /** Folder of decompressed modules, flat, named `<name>.ko` (busybox insmod cannot read .ko.xz). */
  modulesDir: string;
}

/** How each wanted module ships in the kernel package: loadable, compiled in, or absent. */
export type ModuleAvailability = 'module' | 'builtin' | 'missing';

/** The JSON manifest stored beside each cached kernel. */
export interface KernelManifest {
  version: string;
  package: string;
  modules: Record<string, ModuleAvailability>;
}

/**
 * Modules the guest needs: ublk itself, null_blk (+configfs) and loop as kernel references,
 * the 9p stack and overlay to boot on the host's files, ext4 with its dependencies, and
 * device-mapper (its built-in linear and error targets, and flakey) to inject real IO errors.
 */
export const KERNEL_MODULES = [
  'ublk_drv',
  'null_blk',
  'configfs',
  'loop',
  'netfs',
  '9pnet',
  '9pnet_virtio',
  '9p',
  'overlay',
  'crc16',
  'mbcache',
  'jbd2',
  'crc32c_generic',
  'ext4',
  'dm_mod',
  'dm_flakey',
] as const;

const BASE_SUITE = 'bookworm';
const SUITE = 'bookworm-backports';
const PACKAGE_PATTERN = /^linux-image-(6\.12\.\d+)\+deb12-amd64-unsigned$/;
/** The same pattern as a POSIX regular expression, for apt-cache. */
const PACKAGE_SEARCH = '^linux-image-6\\.12\\.[0-9]+\\+deb12-amd64-unsigned$';
const MANIFEST = 'manifest.json';

/**
 * Where kernels and initramfs images are cached across runs, outside the repository so a
 * clean checkout does not download the kernel again: `$UBLK_TS_CACHE_DIR` or `~/.cache/ublk-ts`.
 */
export function vmCacheDir(): string {
  return process.env.UBLK_TS_CACHE_DIR ?? join(homedir(), '.cache', 'ublk-ts');
}

/**
 * Returns a ublk-capable kernel (Debian bookworm-backports 6.12), downloading and unpacking
 * it into the cache on first use. The host kernel has no ublk, so every end-to-end test
 * boots this one in qemu. Throws VmUnavailable when it cannot be had.
 */
export async function ensureKernel(log: (s: string) => void = () => {}): Promise<KernelImage> {
  const root = join(vmCacheDir(), 'kernels');
  const cached = newestCachedKernel(root);
  if (cached !== undefined) return cached;
  return fetchKernel(root, log);
}

/** Reads the manifest of a cached kernel, telling which modules are built in or missing. */
export function readKernelManifest(kernel: KernelImage): KernelManifest {
  return JSON.parse(readFileSync(join(kernel.modulesDir, '..', MANIFEST), 'utf8')) as KernelManifest;
}

function newestCachedKernel(root: string): KernelImage | undefined {
  const complete = listDir(root)
    .filter((name) => !name.startsWith('.'))
    .map((name) => join(root, name))
    .filter(isCompleteKernelDir)
    .sort((a, b) => compareReleases(basename(b), basename(a)));
  return complete.length === 0 ? undefined : kernelImageAt(complete[0]);
}

function isCompleteKernelDir(dir: string): boolean {
  try {
    const manifest = JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8')) as KernelManifest;
    return existsSync(join(dir, 'vmlinuz')) && KERNEL_MODULES.every((m) => m in manifest.modules);
  } catch {
    return false;
  }
}

function kernelImageAt(dir: string): KernelImage {
  return { version: basename(dir), vmlinuz: join(dir, 'vmlinuz'), modulesDir: join(dir, 'modules') };
}

async function fetchKernel(root: string, log: (s: string) => void): Promise<KernelImage> {
  const tools = {
    aptGet: requireTool('apt-get', 'apt'),
    aptCache: requireTool('apt-cache', 'apt'),
    dpkgDeb: requireTool('dpkg-deb', 'dpkg'),
    xz: requireTool('xz', 'xz-utils'),
  };
  mkdirSync(root, { recursive: true });
  const work = mkdtempSync(join(root, '.fetch-'));
  try {
    const aptOptions = privateAptConfig(work);
    log(`apt-get update for ${SUITE} (private apt state in ${work})`);
    const update = await runTool(tools.aptGet, [...aptOptions, '-q', 'update'], {
      what: `cannot update apt lists for ${SUITE}`,
    });
    const pkg = await newestKernelPackage(tools.aptCache, aptOptions, errorLine(update.stderr));
    log(`downloading ${pkg} (about 106 MB)`);
    const downloads = mkdirIn(work, 'download');
    await runTool(tools.aptGet, [...aptOptions, '-q', 'download', pkg], {
      what: 'cannot download kernel',
      cwd: downloads,
    });
    const unpacked = mkdirIn(work, 'unpacked');
    await runTool(tools.dpkgDeb, ['-x', join(downloads, onlyDeb(downloads)), unpacked], {
      what: 'cannot unpack kernel',
    });
    const staged = await stageKernel(unpacked, join(work, 'kernel'), pkg, tools.xz, log);
    return publish(staged, root);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** apt options that read our own sources file and keep every list and archive under `work`. */
function privateAptConfig(work: string): string[] {
  const architecture = 'amd64';
  const sources = derivedSourcesFile(readMachineSources(), BASE_SUITE, SUITE, ['main'], architecture);
  if (sources === undefined) {
    throw new VmUnavailable(
      `no apt source for the ${BASE_SUITE} suite in /etc/apt/sources.list(.d): cannot locate a Debian mirror for ${SUITE}`,
    );
  }
  const partsDir = mkdirIn(work, 'sources.list.d');
  writeFileSync(join(partsDir, `ublk-ts-${SUITE}.sources`), sources);
  const emptyDir = mkdirIn(work, 'empty');
  mkdirSync(join(work, 'lists', 'partial'), { recursive: true });
  mkdirSync(join(work, 'archives', 'partial'), { recursive: true });
  mkdirIn(work, 'cache');
  const options: Record<string, string> = {
    'Dir::Etc::SourceList': '/dev/null',
    'Dir::Etc::SourceParts': partsDir,
    'Dir::Etc::Preferences': '/dev/null',
    'Dir::Etc::PreferencesParts': emptyDir,
    'Dir::State::Lists': join(work, 'lists'),
    'Dir::Cache': join(work, 'cache'),
    'Dir::Cache::Archives': join(work, 'archives'),
    'APT::Architecture': architecture,
    'APT::Architectures': architecture,
    'APT::Sandbox::User': 'root',
    'Acquire::Languages': 'none',
  };
  return Object.entries(options).flatMap(([key, value]) => ['-o', `${key}=${value}`]);
}

/** Picks the newest 6.12 kernel package; `updateProblem` is apt-get update's complaint, if any. */
async function newestKernelPackage(aptCache: string, aptOptions: string[], updateProblem?: string): Promise<string> {
  const { stdout } = await runTool(aptCache, [...aptOptions, '--names-only', 'search', PACKAGE_SEARCH], {
    what: 'cannot list kernel packages',
  });
  const names = stdout
    .split('\n')
    .map((line) => line.split(' - ')[0].trim())
    .filter((name) => PACKAGE_PATTERN.test(name));
  if (names.length === 0) {
    const why = updateProblem === undefined ? '' : ` (apt-get update: ${updateProblem})`;
    throw new VmUnavailable(`cannot download kernel: no linux-image-6.12.*+deb12-amd64-unsigned in ${SUITE}${why}`);
  }
  const release = (name: string) => PACKAGE_PATTERN.exec(name)?.[1] ?? '';
  return names.sort((a, b) => compareReleases(release(b), release(a)))[0];
}

/** Copies vmlinuz and the wanted modules out of the unpacked package into `dest`. */
async function stageKernel(
  unpacked: string,
  dest: string,
  pkg: string,
  xz: string,
  log: (s: string) => void,
): Promise<string> {
  const releases = listDir(join(unpacked, 'lib', 'modules'));
  if (releases.length !== 1)
    throw new VmUnavailable(`cannot unpack kernel: expected one lib/modules/<release> in ${pkg}`);
  const version = releases[0];
  const modulesRoot = join(unpacked, 'lib', 'modules', version);
  const modulesDir = join(dest, 'modules');
  mkdirSync(modulesDir, { recursive: true });
  copyFileSync(join(unpacked, 'boot', `vmlinuz-${version}`), join(dest, 'vmlinuz'));
  const modules = await extractModules(modulesRoot, modulesDir, xz);
  const manifest: KernelManifest = { version, package: pkg, modules };
  writeFileSync(join(dest, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  logAvailability(modules, log);
  return dest;
}

async function extractModules(
  modulesRoot: string,
  outDir: string,
  xz: string,
): Promise<Record<string, ModuleAvailability>> {
  const files = indexModuleFiles(join(modulesRoot, 'kernel'));
  const builtin = builtinModuleNames(modulesRoot);
  const availability: Record<string, ModuleAvailability> = {};
  for (const name of KERNEL_MODULES) {
    const source = files.get(name);
    const target = join(outDir, `${name}.ko`);
    if (source === undefined) {
      availability[name] = builtin.has(name) ? 'builtin' : 'missing';
    } else if (source.endsWith('.xz')) {
      await runTool(xz, ['-dc', source], { what: `cannot decompress ${basename(source)}`, stdoutFile: target });
      availability[name] = 'module';
    } else {
      copyFileSync(source, target);
      availability[name] = 'module';
    }
  }
  return availability;
}

/** Maps module name (dashes as underscores, as the kernel does) to its file under kernel/. */
function indexModuleFiles(dir: string, index = new Map<string, string>()): Map<string, string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) indexModuleFiles(path, index);
    const match = /^(.+)\.ko(\.xz)?$/.exec(entry.name);
    if (entry.isFile() && match !== null) index.set(match[1].replace(/-/g, '_'), path);
  }
  return index;
}

function builtinModuleNames(modulesRoot: string): Set<string> {
  const text = existsSync(join(modulesRoot, 'modules.builtin'))
    ? readFileSync(join(modulesRoot, 'modules.builtin'), 'utf8')
    : '';
  return new Set(
    text
      .split('\n')
      .filter(Boolean)
      .map((line) => basename(line).replace(/\.ko$/, '').replace(/-/g, '_')),
  );
}

function logAvailability(modules: Record<string, ModuleAvailability>, log: (s: string) => void): void {
  for (const kind of ['builtin', 'missing'] as const) {
    const names = Object.keys(modules).filter((name) => modules[name] === kind);
    if (names.length > 0)
      log(`kernel modules ${kind === 'builtin' ? 'built in' : 'not in the package'}: ${names.join(', ')}`);
  }
}

/** Moves a staged kernel into place; a concurrent run that finished first wins. */
function publish(staged: string, root: string): KernelImage {
  const manifest = JSON.parse(readFileSync(join(staged, MANIFEST), 'utf8')) as KernelManifest;
  const dest = join(root, manifest.version);
  if (existsSync(dest) && !isCompleteKernelDir(dest)) rmSync(dest, { recursive: true, force: true });
  try {
    renameSync(staged, dest);
  } catch (err) {
    if (!isCompleteKernelDir(dest)) throw err;
  }
  return kernelImageAt(dest);
}

function onlyDeb(dir: string): string {
  const debs = listDir(dir).filter((name) => name.endsWith('.deb'));
  if (debs.length !== 1)
    throw new VmUnavailable(`cannot download kernel: apt-get download left ${debs.length} .deb files`);
  return debs[0];
}

/** Orders kernel releases like `6.12.9+deb12-amd64` < `6.12.95+deb12-amd64` by their numbers. */
function compareReleases(a: string, b: string): number {
  const numbers = (s: string) => (s.match(/\d+/g) ?? []).map(Number);
  const [x, y] = [numbers(a), numbers(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? -1) - (y[i] ?? -1);
    if (d !== 0) return d;
  }
  return a.localeCompare(b);
}

function mkdirIn(parent: string, name: string): string {
  const dir = join(parent, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function listDir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
