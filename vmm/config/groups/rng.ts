// -rng random_file=PATH[,bytes_per_sec=N]  (virtio-rng, one per VM); JSON "rng": {"random_file", "bytes_per_sec"}.
import { ConfigError, KeyTable, path, uint, type Values } from '../options.js';
import { defineGroup } from '../group.js';
import type { RngConfig } from '../types.js';

export const MIN_RNG_BYTES_PER_SEC = 64;
export const MAX_RNG_BYTES_PER_SEC = 1e9 - 1;

export const RNG_KEYS = new KeyTable({
  file: path({ cli: 'random_file', metavar: 'PATH', required: true }),
  bytesPerSec: uint({ cli: 'bytes_per_sec', min: MIN_RNG_BYTES_PER_SEC, max: MAX_RNG_BYTES_PER_SEC }),
});

const toRng = (v: Values<typeof RNG_KEYS.keys>): RngConfig => ({ file: v.file, bytesPerSec: v.bytesPerSec });

export const rngGroup = defineGroup({
  options: [{ name: '-rng', syntax: RNG_KEYS.syntax(), help: 'virtio-rng fed from a host file such as /dev/urandom (one per VM)', takes: 'value' }],
  json: { rng: RNG_KEYS.jsonObject() },
  fromCli(option, value, s) {
    if (s.rng) throw new ConfigError(`${option.name}: only one rng device per VM`);
    s.rng = toRng(RNG_KEYS.parseKv(option.name, value ?? ''));
  },
  fromJson(j, s) {
    if (j.rng) s.rng = toRng(RNG_KEYS.fromJson(j.rng));
  },
});
