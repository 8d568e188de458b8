// Guest images: what the rest of forkvm imports (`./image` resolves here). Re-exports only:
// catalogue (cache, manifests, loading), build (the default image), and the pure parts the
// tests use alone (Debian Depends, kernel formats, module closure, cpio).
export { cacheDir, loadImage, type GuestImage } from "./catalogue";
export { BASE_CMDLINE, buildDefaultImage, MIN_MEMORY_MIB, MODULE_ROOTS, type BuildOptions } from "./build";
export { parseKernelDepends } from "./debian";
export { bzImagePayload, hasPvhEntry } from "./kernel";
export { moduleClosure, moduleName, parseModulesDep } from "./modules";
export { cpioArchive, treeEntries, type CpioEntry } from "./cpio";
