// The repository root, found from this compiled file (dist/server/paths.js): migrations/,
// scripts/, bin/ and dist/ are located from here, whatever the working directory.
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
