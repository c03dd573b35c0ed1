/**
 * The qemu VM harness: end-to-end tests run inside a VM booted on a ublk-capable Debian
 * kernel (one per leg of the kernel matrix: KERNEL_LEGS), on the host's own files, because
 * the host kernel has no ublk.
 */
export type { AptSource } from './apt-sources';
export { derivedSourcesFile, parseDeb822Sources, parseOneLineSources, readMachineSources } from './apt-sources';
export { ConsoleText } from './console-text';
export type { CpioEntry } from './cpio';
export { newcArchive } from './cpio';
export { BOOTED_MARKER, EXIT_MARKER, GUEST_FILES, initScript } from './init-script';
export { ensureInitramfs } from './initramfs';
export type { KernelImage, KernelManifest, ModuleAvailability } from './kernel';
export { ensureKernel, readKernelManifest, vmCacheDir } from './kernel';
export type { KernelLeg, KernelSuite } from './kernel-legs';
export {
  compareReleases,
  DEFAULT_KERNEL_LEG,
  KERNEL_LEGS,
  kernelLeg,
  kernelLegNames,
  legModules,
  legSourcesFile,
  newestRelease,
} from './kernel-legs';
export type { GuestModules, ModuleInfo, ResolvedModules } from './kernel-modules';
export {
  BOOT_MODULES,
  GUEST_MODULES,
  loadOrder,
  moduleDependencies,
  modinfoValues,
  ON_DEMAND_MODULES,
  resolveModules,
} from './kernel-modules';
export type { VmRunOptions, VmRunResult } from './qemu';
export { EXIT_NO_STATUS, EXIT_TIMED_OUT, KERNEL_CMDLINE, runInVm } from './qemu';
export type { ToolOutput, ToolRun } from './tools';
export { errorLine, findTool, requireTool, runTool } from './tools';
export { VmUnavailable } from './vm-unavailable';
