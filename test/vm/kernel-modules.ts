/**
 * Which kernel modules the guest needs, and in what order busybox `insmod` (which knows
 * nothing of dependencies) must load them. Only the modules a test names are listed; their
 * dependencies are read from each module's own `.modinfo`, because Debian's 7.x packages
 * ship no modules.dep and move modules between kernels (crc16 went to `kernel/lib/crc/`).
 * Adding a module for every kernel is one line here; for one kernel, one line in its leg.
 */

/** Loaded by /init before it can reach the host's files: the 9p transport and filesystem, then overlayfs. */
export const BOOT_MODULES: readonly string[] = ['9pnet_virtio', '9p', 'overlay'];

/** Loaded by /init for the tests: ublk, the kernel loop device, ext4, device-mapper (linear, error, flakey: real IO errors; delay: a slow disk). */
export const GUEST_MODULES: readonly string[] = ['ublk_drv', 'loop', 'ext4', 'dm_mod', 'dm_flakey', 'dm_delay'];

/**
 * Shipped in `$UBLK_TS_MODULES_DIR` but not loaded: tests and the benchmark insmod them with
 * their own parameters (null_blk, after configfs).
 */
export const ON_DEMAND_MODULES: readonly string[] = ['configfs', 'null_blk'];

/** How a module ships in a kernel's packages. */
export type ModuleAvailability = 'module' | 'builtin' | 'missing';

/** What a kernel's packages say about one module. */
export type ModuleInfo = { kind: 'module'; depends: string[] } | { kind: 'builtin' } | { kind: 'missing' };

/** Module names as the kernel compares them: dashes and underscores are the same. */
export function moduleName(name: string): string {
  return name.replace(/-/g, '_');
}

/**
 * Returns the loadable modules among `wanted` and everything they depend on, each after its
 * dependencies, leaving out those in `loaded` (already loaded by an earlier list) and those
 * built into the kernel. Throws naming the module, and what needs it, when one is missing.
 */
export function loadOrder(
  wanted: readonly string[],
  info: (name: string) => ModuleInfo,
  loaded: ReadonlySet<string> = new Set(),
): string[] {
  const order: string[] = [];
  const visiting = new Set<string>();
  const visit = (name: string, neededBy: string[]) => {
    if (loaded.has(name) || order.includes(name)) return;
    if (visiting.has(name))
      throw new Error(`module dependency cycle: ${[...neededBy].reverse().concat(name).join(' -> ')}`);
    const found = info(name);
    if (found.kind === 'missing') {
      const why = neededBy.length === 0 ? '' : ` (needed by ${neededBy.join(' <- ')})`;
      throw new Error(`module ${name} is neither in the kernel's packages nor built in${why}`);
    }
    if (found.kind === 'builtin') return;
    visiting.add(name);
    for (const dep of found.depends) visit(moduleName(dep), [name, ...neededBy]);
    visiting.delete(name);
    order.push(name);
  };
  for (const name of wanted) visit(moduleName(name), []);
  return order;
}

/** The modules a kernel's guest loads and ships, by role. */
export interface GuestModules {
  /** Loaded by /init before the host's files are reachable. */
  boot: readonly string[];
  /** Loaded by /init before the command runs. */
  guest: readonly string[];
  /** Shipped for the tests to load. */
  onDemand: readonly string[];
}

/** Where each wanted module is and in what order /init loads them, for one kernel. */
export interface ResolvedModules {
  /** The boot modules and their dependencies, in load order (built-in ones left out). */
  bootOrder: string[];
  /** The guest modules and the dependencies not loaded at boot, in load order. */
  guestOrder: string[];
  /** Every loadable module to ship: both orders, and the on-demand modules with their dependencies. */
  ship: string[];
  /** How each named module (not the dependencies) ships, for the cache's manifest. */
  availability: Record<string, ModuleAvailability>;
}

/** Resolves a kernel's module lists against what its packages hold; throws when one is missing. */
export function resolveModules(wanted: GuestModules, info: (name: string) => ModuleInfo): ResolvedModules {
  const bootOrder = loadOrder(wanted.boot, info);
  const guestOrder = loadOrder(wanted.guest, info, new Set(bootOrder));
  const onDemand = loadOrder(wanted.onDemand, info, new Set([...bootOrder, ...guestOrder]));
  const availability: Record<string, ModuleAvailability> = {};
  for (const name of [...wanted.boot, ...wanted.guest, ...wanted.onDemand].map(moduleName)) {
    availability[name] = info(name).kind;
  }
  return { bootOrder, guestOrder, ship: [...bootOrder, ...guestOrder, ...onDemand], availability };
}

/**
 * Reads one key of a kernel module's `.modinfo` section (`depends=jbd2,mbcache,crc16`), from
 * the decompressed `.ko` (an ELF64 little-endian relocatable): every value the key has.
 */
export function modinfoValues(ko: Buffer, key: string): string[] {
  if (ko.length < 64 || ko.readUInt32BE(0) !== 0x7f454c46 || ko[4] !== 2 || ko[5] !== 1) {
    throw new Error('not a 64-bit little-endian ELF file');
  }
  const sectionHeaders = Number(ko.readBigUInt64LE(0x28));
  const entrySize = ko.readUInt16LE(0x3a);
  const count = ko.readUInt16LE(0x3c);
  const section = (i: number) => {
    const at = sectionHeaders + i * entrySize;
    return {
      nameAt: ko.readUInt32LE(at),
      offset: Number(ko.readBigUInt64LE(at + 0x18)),
      size: Number(ko.readBigUInt64LE(at + 0x20)),
    };
  };
  const names = section(ko.readUInt16LE(0x3e));
  for (let i = 0; i < count; i++) {
    const s = section(i);
    const start = names.offset + s.nameAt;
    if (ko.toString('latin1', start, ko.indexOf(0, start)) !== '.modinfo') continue;
    return ko
      .toString('latin1', s.offset, s.offset + s.size)
      .split('\0')
      .filter((entry) => entry.startsWith(`${key}=`))
      .map((entry) => entry.slice(key.length + 1));
  }
  throw new Error('no .modinfo section: not a kernel module');
}

/** The modules a `.ko` says it needs (its `depends=` entry, which modpost writes for every module). */
export function moduleDependencies(ko: Buffer): string[] {
  return modinfoValues(ko, 'depends')
    .flatMap((value) => value.split(','))
    .filter(Boolean)
    .map(moduleName);
}
