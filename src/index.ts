/**
 * ublk-ts: Linux userspace block devices from TypeScript.
 * The control API (UblkControl), devices served by this process
 * (UblkDevice), detached device servers (startServer/removeDevice), and
 * the shared spec, size and error types.
 */
export { UblkControl, listDeviceIds, CONTROL_PATH } from './control';
export type { DeviceInfo, DeviceParams, DeviceParamsReadback, AddDeviceOptions } from './control';
export { UblkDevice } from './device';
export type { QueueExit } from './device';
export { normalizeDeviceSpec, maxQueues, DEFAULTS, TARGET_TYPES } from './device-spec';
export type { DeviceSpec, DeviceSpecInput, TargetType } from './device-spec';
export { startServer, removeDevice, DEFAULT_STATE_DIR, serverLogPath } from './launcher';
export type { StartedServer, LaunchOptions } from './launcher';
export { UblkError, SpecError, EnvironmentError, errnoName } from './errors';
export type { UblkIo, UblkTarget, TargetContext, SetupContext, TargetModule, IoOp } from './js-target';
export { parseSize, formatSize } from './sizes';
export { featureNames, deviceStateName } from './uapi';
export type { DeviceState } from './uapi';
