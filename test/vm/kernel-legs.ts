import { type AptSource, derivedSourcesFile } from './apt-sources';
import { BOOT_MODULES, GUEST_MODULES, type GuestModules, ON_DEMAND_MODULES } from './kernel-modules';

/** Suites whose mirror serves Debian's main archive on this machine, whichever release it runs. */
const DEBIAN_MAIN = ['bookworm', 'trixie'];
/** Suites whose mirror serves Debian's security archive on this machine. */
const DEBIAN_SECURITY = ['bookworm-security', 'trixie-security'];

/** A Debian suite to search for a leg's kernel, reached through the mirror this machine uses for another. */
export interface KernelSuite {
  suite: string;
  /** The machine's apt sources for the first of these suites give the mirror (URIs and Signed-By). */
  mirrorOf: string[];
  /** When the machine has no mirror for it, search the other suites without it. */
  optional?: boolean;
}

/** One kernel of the test matrix: where Debian ships it and what the guest needs beyond the shared modules. */
export interface KernelLeg {
  /** What `--kernel` takes and summaries print, and the leg's folder in the kernel cache. */
  name: string;
  /** Why this kernel is in the matrix, for `--help` and logs. */
  purpose: string;
  suites: KernelSuite[];
  /** `apt-cache pkgnames` prefix that lists every candidate of the leg's kernel package. */
  packagePrefix: string;
  /** Matches the package whose newest version is the leg's kernel; group 1 is the release, e.g. `7.3.4+deb13`. */
  packagePattern: RegExp;
  /** The packages that hold the kernel, its modules and modules.builtin for one release. */
  packagesFor(release: string): string[];
  /** `uname -r` of a release: what its packages' `lib/modules/` folder is named. */
  kernelVersion(release: string): string;
  /** Modules /init loads on this leg besides GUEST_MODULES, e.g. one that ext4 reaches only through the crypto API. */
  extraGuestModules: string[];
  /** Roughly how much apt downloads, for the log. */
  downloadMB: number;
}

/**
 * The kernels the end-to-end suite runs on, in the order `npm test` runs them; the first is
 * the default of `npm run vm`, `npm run test:stress` and `npm run bench`. The only place legs
 * are listed.
 */
export const KERNEL_LEGS: readonly KernelLeg[] = [
  {
    name: '6.12',
    purpose: 'the LTS most hosts run',
    // trixie's 6.12 carries the 6.12 stable ublk fixes that bookworm-backports' 6.12.95 lacks;
    // trixie-security, where reachable, has the newest of them.
    suites: [
      { suite: 'trixie', mirrorOf: DEBIAN_MAIN },
      { suite: 'trixie-security', mirrorOf: DEBIAN_SECURITY, optional: true },
    ],
    packagePrefix: 'linux-image-6.12.',
    packagePattern: /^linux-image-(6\.12\.\d+\+deb13(?:\.\d+)?)-amd64-unsigned$/,
    packagesFor: (release) => [`linux-image-${release}-amd64-unsigned`],
    kernelVersion: (release) => `${release}-amd64`,
    // ext4 and jbd2 ask the crypto API for "crc32c" on 6.12: no module dependency names the driver.
    extraGuestModules: ['crc32c_generic'],
    downloadMB: 110,
  },
  {
    name: '7.3',
    purpose: 'every ublk feature to date',
    suites: [{ suite: 'trixie-backports', mirrorOf: DEBIAN_MAIN }],
    packagePrefix: 'linux-binary-7.3.',
    // The plain flavour only: -rt-amd64 and -cloud-amd64 are other kernels. 7.x has no -unsigned package.
    packagePattern: /^linux-binary-(7\.3\.\d+\+deb13(?:\.\d+)?)-amd64$/,
    packagesFor: (release) => [
      `linux-binary-${release}-amd64`,
      `linux-modules-${release}-amd64`,
      `linux-base-${release}-amd64`,
    ],
    kernelVersion: (release) => `${release}-amd64`,
    extraGuestModules: [],
    downloadMB: 125,
  },
];

/** The leg `npm run vm`, `npm run test:stress` and `npm run bench` boot unless told otherwise. */
export const DEFAULT_KERNEL_LEG = KERNEL_LEGS[0].name;

/** Looks a leg up by name; the error lists the names there are. */
export function kernelLeg(name: string): KernelLeg {
  const leg = KERNEL_LEGS.find((l) => l.name === name);
  if (leg === undefined) {
    throw new RangeError(`unknown kernel ${JSON.stringify(name)}: expected one of ${kernelLegNames().join(', ')}`);
  }
  return leg;
}

/** The legs' names, in matrix order. */
export function kernelLegNames(): string[] {
  return KERNEL_LEGS.map((l) => l.name);
}

/** The modules a leg's guest loads and ships: the shared lists plus the leg's own. */
export function legModules(leg: KernelLeg): GuestModules {
  return { boot: BOOT_MODULES, guest: [...leg.extraGuestModules, ...GUEST_MODULES], onDemand: ON_DEMAND_MODULES };
}

/**
 * Picks the newest release among package names (as `apt-cache pkgnames` lists them) that
 * match the leg's pattern; undefined when none does. Other flavours and debug packages never match.
 */
export function newestRelease(leg: KernelLeg, packageNames: string[]): string | undefined {
  const releases = packageNames
    .map((name) => leg.packagePattern.exec(name.trim())?.[1])
    .filter((release): release is string => release !== undefined);
  return releases.sort((a, b) => compareReleases(b, a))[0];
}

/**
 * Orders kernel releases or versions by their numbers: `6.12.9+deb13` < `6.12.95+deb13` <
 * `6.12.115+deb13` < `6.12.115+deb13.1`. A flavour suffix (`-amd64`) is ignored, so a
 * version orders like its release.
 */
export function compareReleases(a: string, b: string): number {
  const numbers = (s: string) => (s.replace(/-[a-z][a-z0-9-]*$/, '').match(/\d+/g) ?? []).map(Number);
  const [x, y] = [numbers(a), numbers(b)];
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    const d = (x[i] ?? -1) - (y[i] ?? -1);
    if (d !== 0) return d;
  }
  return a.localeCompare(b);
}

/**
 * The deb822 sources file apt searches for a leg: each suite on the mirror this machine uses
 * for one of its `mirrorOf` suites. Throws naming the suite when a required one has no mirror
 * here, so no mirror host is ever guessed.
 */
export function legSourcesFile(leg: KernelLeg, machineSources: AptSource[], architecture: string): string {
  const parts: string[] = [];
  for (const { suite, mirrorOf, optional } of leg.suites) {
    const found = mirrorOf
      .map((base) => derivedSourcesFile(machineSources, base, suite, ['main'], architecture))
      .find((text) => text !== undefined);
    if (found !== undefined) parts.push(found);
    else if (!optional) {
      throw new Error(
        `no apt source for ${mirrorOf.join(' or ')} in /etc/apt/sources.list(.d): cannot locate a Debian mirror for ${suite}`,
      );
    }
  }
  return parts.join('\n');
}
