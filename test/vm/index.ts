/**
 * The qemu VM harness: end-to-end tests run inside a VM booted on a ublk-capable Debian
 * 6.12 kernel, on the host's own files, because the host kernel has no ublk.
 */
export type { AptSource } from './apt-sources';
export { derivedSourcesFile, parseDeb822Sources, parseOneLineSources, readMachineSources } from './apt-sources';
export { ConsoleText } from './console-text';
export type { CpioEntry } from './cpio';
export { newcArchive } from './cpio';
export { BOOT_MODULES, BOOTED_MARKER, EXIT_MARKER, GUEST_FILES, GUEST_MODULES, initScript } from './init-script';
export { ensureInitramfs } from './initramfs';
export type { KernelImage, KernelManifest, ModuleAvailability } from './kernel';
export { ensureKernel, KERNEL_MODULES, readKernelManifest, vmCacheDir } from './kernel';
export type { VmRunOptions, VmRunResult } from './qemu';
export { EXIT_NO_STATUS, EXIT_TIMED_OUT, KERNEL_CMDLINE, runInVm } from './qemu';
export type { ToolOutput, ToolRun } from './tools';
export { errorLine, findTool, requireTool, runTool } from './tools';
export { VmUnavailable } from './vm-unavailable';
