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
import { readMachineSources } from './apt-sources';
import {
  compareReleases,
  DEFAULT_KERNEL_LEG,
  type KernelLeg,
  kernelLeg,
  legModules,
  legSourcesFile,
  newestRelease,
} from './kernel-legs';
import {
  type ModuleAvailability,
  moduleDependencies,
  type ModuleInfo,
  moduleName,
  resolveModules,
} from './kernel-modules';
import { errorLine, requireTool, runTool } from './tools';
import { VmUnavailable } from './vm-unavailable';

/** A ublk-capable guest kernel unpacked in the cache: what qemu boots and what the guest insmods. */
export interface KernelImage {
  /** The matrix leg it belongs to, e.g. `7.3`. */
  leg: string;
  /** The kernel release (`uname -r` in the guest), e.g. `7.3.4+deb13-amd64`. */
  version: string;
  /** Path of the bzImage handed to qemu's `-kernel`. */
  vmlinuz: string;
  /** Folder of decompressed modules, flat, named `<name>.ko` (busybox insmod cannot read .ko.xz). */
  modulesDir: string;
  /** Modules /init loads before it mounts the host's files, in dependency order. */
  bootModules: string[];
  /** Modules /init loads before the command runs, in dependency order. */
  guestModules: string[];
}

/** The JSON manifest stored beside each cached kernel. */
export interface KernelManifest {
  leg: string;
  version: string;
  /** The Debian packages it was unpacked from. */
  packages: string[];
  /** How each module the leg names ships (dependencies not included). */
  modules: Record<string, ModuleAvailability>;
  bootModules: string[];
  guestModules: string[];
  /** Every `.ko` in the modules folder. */
  shipped: string[];
}

export type { ModuleAvailability } from './kernel-modules';

const MANIFEST = 'manifest.json';

/**
 * Where kernels and initramfs images are cached across runs, outside the repository so a
 * clean checkout does not download the kernel again: `$UBLK_TS_CACHE_DIR` or `~/.cache/ublk-ts`.
 */
export function vmCacheDir(): string {
  return process.env.UBLK_TS_CACHE_DIR ?? join(homedir(), '.cache', 'ublk-ts');
}

/**
 * Returns the ublk-capable kernel of a matrix leg (`6.12`, `7.3`; see KERNEL_LEGS),
 * downloading and unpacking it into `<cache>/kernels/<leg>/<version>` on first use. The host
 * kernel has no ublk, so every end-to-end test boots one of these in qemu. Throws
 * VmUnavailable when it cannot be had.
 */
export async function ensureKernel(
  legName: string = DEFAULT_KERNEL_LEG,
  log: (s: string) => void = () => {},
): Promise<KernelImage> {
  const leg = kernelLeg(legName);
  const root = join(vmCacheDir(), 'kernels', leg.name);
  const cached = newestCachedKernel(root, leg);
  if (cached !== undefined) return cached;
  return fetchKernel(root, leg, log);
}

/** Reads the manifest of a cached kernel, telling which modules are built in. */
export function readKernelManifest(kernel: KernelImage): KernelManifest {
  return readManifest(join(kernel.modulesDir, '..'));
}

function readManifest(dir: string): KernelManifest {
  return JSON.parse(readFileSync(join(dir, MANIFEST), 'utf8')) as KernelManifest;
}

function newestCachedKernel(root: string, leg: KernelLeg): KernelImage | undefined {
  const complete = listDir(root)
    .filter((name) => !name.startsWith('.'))
    .map((name) => join(root, name))
    .filter((dir) => isCompleteKernelDir(dir, leg))
    .sort((a, b) => compareReleases(basename(b), basename(a)));
  return complete.length === 0 ? undefined : kernelImageAt(complete[0]);
}

/** A cached kernel is usable when it was unpacked for the leg's current module lists, and nothing is gone. */
function isCompleteKernelDir(dir: string, leg: KernelLeg): boolean {
  try {
    const manifest = readManifest(dir);
    const wanted = Object.values(legModules(leg)).flat().map(moduleName);
    return (
      manifest.leg === leg.name &&
      existsSync(join(dir, 'vmlinuz')) &&
      wanted.every((m) => m in manifest.modules) &&
      [manifest.bootModules, manifest.guestModules].every(Array.isArray) &&
      manifest.shipped.every((m) => existsSync(join(dir, 'modules', `${m}.ko`)))
    );
  } catch {
    return false;
  }
}

function kernelImageAt(dir: string): KernelImage {
  const manifest = readManifest(dir);
  return {
    leg: manifest.leg,
    version: basename(dir),
    vmlinuz: join(dir, 'vmlinuz'),
    modulesDir: join(dir, 'modules'),
    bootModules: manifest.bootModules,
    guestModules: manifest.guestModules,
  };
}

async function fetchKernel(root: string, leg: KernelLeg, log: (s: string) => void): Promise<KernelImage> {
  const tools = {
    aptGet: requireTool('apt-get', 'apt'),
    aptCache: requireTool('apt-cache', 'apt'),
    dpkgDeb: requireTool('dpkg-deb', 'dpkg'),
    xz: requireTool('xz', 'xz-utils'),
  };
  mkdirSync(root, { recursive: true });
  const work = mkdtempSync(join(root, '.fetch-'));
  try {
    const aptOptions = privateAptConfig(work, leg);
    const suites = leg.suites.map((s) => s.suite).join(', ');
    log(`apt-get update for ${suites} (private apt state in ${work})`);
    const update = await runTool(tools.aptGet, [...aptOptions, '-q', 'update'], {
      what: `cannot update apt lists for ${suites}`,
    });
    const { stdout } = await runTool(tools.aptCache, [...aptOptions, 'pkgnames', leg.packagePrefix], {
      what: 'cannot list kernel packages',
    });
    const release = newestRelease(leg, stdout.split('\n'));
    if (release === undefined) {
      const problem = errorLine(update.stderr);
      const why = problem === undefined ? '' : ` (apt-get update: ${problem})`;
      throw new VmUnavailable(
        `cannot download the ${leg.name} kernel: no package matching ${leg.packagePattern.source} in ${suites}${why}`,
      );
    }
    const packages = leg.packagesFor(release);
    log(`downloading ${packages.join(', ')} (about ${leg.downloadMB} MB)`);
    const downloads = mkdirIn(work, 'download');
    await runTool(tools.aptGet, [...aptOptions, '-q', 'download', ...packages], {
      what: `cannot download the ${leg.name} kernel`,
      cwd: downloads,
    });
    const unpacked = mkdirIn(work, 'unpacked');
    for (const deb of debs(downloads, packages.length)) {
      await runTool(tools.dpkgDeb, ['-x', join(downloads, deb), unpacked], { what: `cannot unpack ${deb}` });
    }
    const staged = join(work, 'kernel');
    await stageKernel(unpacked, staged, { leg, version: leg.kernelVersion(release), packages }, tools.xz, log);
    return publish(staged, root, leg);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** apt options that read our own sources file and keep every list and archive under `work`. */
function privateAptConfig(work: string, leg: KernelLeg): string[] {
  const architecture = 'amd64';
  let sources: string;
  try {
    sources = legSourcesFile(leg, readMachineSources(), architecture);
  } catch (err) {
    throw new VmUnavailable((err as Error).message, { cause: err });
  }
  const partsDir = mkdirIn(work, 'sources.list.d');
  writeFileSync(join(partsDir, `ublk-ts-kernel-${leg.name}.sources`), sources);
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

/** What was unpacked, and from where. */
interface Unpacked {
  leg: KernelLeg;
  version: string;
  packages: string[];
}

/**
 * Copies the kernel and the leg's modules, with what they depend on, out of the unpacked
 * packages into `dest`. 6.12 puts the kernel in /boot and modules under lib/modules; 7.x
 * puts both under usr/lib/modules/VERSION.
 */
async function stageKernel(
  unpacked: string,
  dest: string,
  what: Unpacked,
  xz: string,
  log: (s: string) => void,
): Promise<void> {
  const { leg, version, packages } = what;
  const modulesRoot = ['usr/lib/modules', 'lib/modules']
    .map((dir) => join(unpacked, dir, version))
    .find((dir) => existsSync(join(dir, 'kernel')));
  if (modulesRoot === undefined) {
    throw new VmUnavailable(`cannot unpack kernel: no lib/modules/${version}/kernel in ${packages.join(', ')}`);
  }
  const vmlinuz = [join(modulesRoot, 'vmlinuz'), join(unpacked, 'boot', `vmlinuz-${version}`)].find((p) =>
    existsSync(p),
  );
  if (vmlinuz === undefined) {
    throw new VmUnavailable(`cannot unpack kernel: no vmlinuz for ${version} in ${packages.join(', ')}`);
  }
  const modulesDir = join(dest, 'modules');
  mkdirSync(modulesDir, { recursive: true });
  copyFileSync(vmlinuz, join(dest, 'vmlinuz'));

  const wanted = legModules(leg);
  const infos = await extractModules(modulesRoot, Object.values(wanted).flat(), modulesDir, xz);
  let resolved;
  try {
    resolved = resolveModules(wanted, (name) => infos.get(name) ?? { kind: 'missing' });
  } catch (err) {
    throw new Error(`kernel ${version} (${packages.join(', ')}): ${(err as Error).message}`, { cause: err });
  }
  for (const file of readdirSync(modulesDir)) {
    if (!resolved.ship.includes(file.replace(/\.ko$/, ''))) rmSync(join(modulesDir, file));
  }
  const manifest: KernelManifest = {
    leg: leg.name,
    version,
    packages,
    modules: resolved.availability,
    bootModules: resolved.bootOrder,
    guestModules: resolved.guestOrder,
    shipped: resolved.ship,
  };
  writeFileSync(join(dest, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
  const builtin = Object.keys(resolved.availability).filter((m) => resolved.availability[m] === 'builtin');
  if (builtin.length > 0) log(`kernel ${version}: built in: ${builtin.join(', ')}`);
  log(`kernel ${version}: /init loads ${[...resolved.bootOrder, ...resolved.guestOrder].join(' ')}`);
}

/**
 * Decompresses `names` and every module they depend on into `outDir` as `<name>.ko`, and
 * says how each of them ships.
 */
async function extractModules(
  modulesRoot: string,
  names: string[],
  outDir: string,
  xz: string,
): Promise<Map<string, ModuleInfo>> {
  const files = indexModuleFiles(join(modulesRoot, 'kernel'));
  const builtin = builtinModuleNames(modulesRoot);
  const infos = new Map<string, ModuleInfo>();
  const queue = names.map(moduleName);
  for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
    if (infos.has(name)) continue;
    const source = files.get(name);
    if (source === undefined) {
      infos.set(name, { kind: builtin.has(name) ? 'builtin' : 'missing' });
      continue;
    }
    const target = join(outDir, `${name}.ko`);
    if (source.endsWith('.xz')) {
      await runTool(xz, ['-dc', source], { what: `cannot decompress ${basename(source)}`, stdoutFile: target });
    } else {
      copyFileSync(source, target);
    }
    let depends: string[];
    try {
      depends = moduleDependencies(readFileSync(target));
    } catch (err) {
      throw new Error(`${source}: ${(err as Error).message}`, { cause: err });
    }
    infos.set(name, { kind: 'module', depends });
    queue.push(...depends);
  }
  return infos;
}

/** Maps module name (dashes as underscores, as the kernel does) to its file under kernel/. */
function indexModuleFiles(dir: string, index = new Map<string, string>()): Map<string, string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) indexModuleFiles(path, index);
    const match = /^(.+)\.ko(\.xz)?$/.exec(entry.name);
    if (entry.isFile() && match !== null) index.set(moduleName(match[1]), path);
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
      .map((line) => moduleName(basename(line).replace(/\.ko$/, ''))),
  );
}

/** Moves a staged kernel into place; a concurrent run that finished first wins. */
function publish(staged: string, root: string, leg: KernelLeg): KernelImage {
  const dest = join(root, readManifest(staged).version);
  if (existsSync(dest) && !isCompleteKernelDir(dest, leg)) rmSync(dest, { recursive: true, force: true });
  try {
    renameSync(staged, dest);
  } catch (err) {
    if (!isCompleteKernelDir(dest, leg)) throw err;
  }
  return kernelImageAt(dest);
}

/** The .deb files apt-get download left, which must be one per package asked for. */
function debs(dir: string, expected: number): string[] {
  const found = listDir(dir).filter((name) => name.endsWith('.deb'));
  if (found.length !== expected) {
    throw new VmUnavailable(
      `cannot download kernel: apt-get download left ${found.length} .deb files, not ${expected}`,
    );
  }
  return found;
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
