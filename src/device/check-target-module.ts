/**
 * Loads a JavaScript target module in a throwaway process and says
 * whether it exports a target: the reconciler's pre-flight for js
 * targets, kept out of its own process so a module's top-level code, its
 * timers and its require cache never run inside the long-lived manager.
 * Exit status 0: it loads and exports createTarget; 1: the reason is on
 * stderr.
 */
import { loadTargetModule } from './js-target';

try {
  loadTargetModule(process.argv[2] ?? '');
  process.exit(0);
} catch (err) {
  process.stderr.write(`${(err as Error).message}\n`);
  process.exit(1);
}
