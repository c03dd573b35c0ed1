/**
 * ublk-ts: Linux userspace block devices from TypeScript — the public API
 * (the package's `exports` map lets library users import only this).
 * The control API (UblkControl), devices served by this process
 * (UblkDevice), detached device servers (startServer/removeDevice), the
 * API for targets written in JavaScript, and the shared spec, size and
 * error types.
 */
export { UblkControl, listDeviceIds, CONTROL_PATH } from './kernel/control';
export type {
  ControlCommands,
  DeviceInfo,
  DeviceParams,
  DeviceParamsReadback,
  AddDeviceOptions,
} from './kernel/control';
export { featureNames, deviceStateName } from './kernel/uapi';
export type { DeviceState, IoOp } from './kernel/uapi';
export { UblkDevice } from './device/device';
export type { QueueExit, CreateProgress, DeviceOptions } from './device/device';
export type { UblkIo, UblkTarget, TargetContext, SetupContext, TargetModule, TargetTraits } from './device/js-target';
export { normalizeDeviceSpec, maxQueues, DEFAULTS, TARGET_TYPES, RECOVERY_MODES } from './spec/device-spec';
export type {
  DeviceSpec,
  DeviceSpecInput,
  TargetInput,
  TargetSpec,
  TargetType,
  RecoveryMode,
  DirectIoMode,
} from './spec/device-spec';
export { supportedRecoveryModes } from './spec/recovery-mode';
export { parseSize, formatSize } from './spec/sizes';
export { startServer, removeDevice, DEFAULT_STATE_DIR, serverLogPath } from './server/launcher';
export type { StartedServer, LaunchOptions, RemoveOptions, RemovedDevice } from './server/launcher';
export { UblkError, SpecError, EnvironmentError, errnoName, ERRNO } from './errors';
