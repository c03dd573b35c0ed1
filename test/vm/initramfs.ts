import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { type CpioEntry, newcArchive } from './cpio';
import { initScript } from './init-script';
import { type KernelImage, vmCacheDir } from './kernel';
import { requireTool } from './tools';
import { VmUnavailable } from './vm-unavailable';

/** Images of an older init script are removed once no run can still be about to boot them. */
const STALE_AFTER_MS = 60 * 60 * 1000;

const DIRS = ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'lib', 'lib/modules', 'etc', 'tmp'];

/**
 * Returns the path of a gzip'ed initramfs for `kernel`: static busybox, the modules /init
 * loads, and /init itself. Cached by kernel version and a hash of its contents, so it is
 * rebuilt only when the init script, the busybox binary or the kernel changes.
 */
export async function ensureInitramfs(kernel: KernelImage, log: (s: string) => void = () => {}): Promise<string> {
  const busybox = staticBusybox();
  const modules = [...kernel.bootModules, ...kernel.guestModules].filter((m) =>
    existsSync(join(kernel.modulesDir, `${m}.ko`)),
  );
  const script = initScript(kernel.bootModules, kernel.guestModules);
  const dir = join(vmCacheDir(), 'initramfs');
  const path = join(dir, `${kernel.version}-${contentKey(script, busybox, modules)}.cpio.gz`);
  if (existsSync(path)) return path;

  const started = Date.now();
  mkdirSync(dir, { recursive: true });
  const entries = [...baseEntries(busybox), ...moduleEntries(kernel.modulesDir, modules)];
  entries.push({ kind: 'file', path: 'init', data: Buffer.from(script), mode: 0o755 });
  const temp = `${path}.${process.pid}.tmp`;
  writeFileSync(temp, gzipSync(newcArchive(entries)));
  renameSync(temp, path);
  log(`built initramfs ${path} in ${Date.now() - started} ms`);
  pruneStale(dir, path);
  return path;
}

function pruneStale(dir: string, current: string): void {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const modified = statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? Date.now();
    if (path !== current && Date.now() - modified > STALE_AFTER_MS) rmSync(path, { force: true });
  }
}

/** The host's busybox, which must be static: the initramfs has no C library. */
function staticBusybox(): string {
  const path = requireTool('busybox', 'busybox-static');
  if (hasInterpreter(readFileSync(path))) {
    throw new VmUnavailable(`${path} is dynamically linked: apt-get install busybox-static`);
  }
  return path;
}

/** True when a 64-bit ELF file has a PT_INTERP program header, i.e. needs a dynamic loader. */
function hasInterpreter(elf: Buffer): boolean {
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) return true;
  const phoff = Number(elf.readBigUInt64LE(0x20));
  const phentsize = elf.readUInt16LE(0x36);
  const phnum = elf.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (elf.readUInt32LE(phoff + i * phentsize) === 3) return true;
  }
  return false;
}

function contentKey(script: string, busybox: string, modules: string[]): string {
  const { size, mtimeMs } = statSync(busybox);
  const identity = JSON.stringify({ script, busybox: [busybox, size, mtimeMs], modules });
  return createHash('sha256').update(identity).digest('hex').slice(0, 16);
}

function baseEntries(busybox: string): CpioEntry[] {
  const applets = execFileSync(busybox, ['--list-full'], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && line !== 'bin/busybox');
  return [
    ...DIRS.map((path): CpioEntry => ({ kind: 'dir', path })),
    { kind: 'chardev', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { kind: 'file', path: 'bin/busybox', data: readFileSync(busybox), mode: 0o755 },
    ...applets.map((path): CpioEntry => ({ kind: 'symlink', path, target: '/bin/busybox' })),
  ];
}

function moduleEntries(modulesDir: string, modules: string[]): CpioEntry[] {
  return modules.map((m) => ({
    kind: 'file',
    path: `lib/modules/${m}.ko`,
    data: readFileSync(join(modulesDir, `${m}.ko`)),
  }));
}
