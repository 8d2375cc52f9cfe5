// The -config FILE.json schema, assembled from the groups' JSON keys (unknown keys are errors),
// and the file → Settings. Errors say where in the file: `-config F: drive.0.iops: must be ...`.
import * as z from 'zod';
import { ConfigError } from './options.js';
import type { Group, JsonShape } from './group.js';
import type { Settings } from './settings.js';

/** One strict object of every group's keys; objects under the same key (machine-config) are merged. */
export function jsonSchema(groups: readonly Group[]): z.ZodType<Record<string, unknown>> {
  const shape: JsonShape = {};
  for (const g of groups) {
    for (const [key, schema] of Object.entries(g.json)) {
      const prev = shape[key];
      if (prev === undefined) shape[key] = schema;
      else if (prev instanceof z.ZodObject && schema instanceof z.ZodObject) shape[key] = z.strictObject({ ...prev.shape, ...schema.shape });
      else throw new Error(`config groups: JSON key '${key}' declared twice`);
    }
  }
  const optional = Object.fromEntries(Object.entries(shape).map(([k, s]) => [k, s.optional()]));
  return z.strictObject(optional) as unknown as z.ZodType<Record<string, unknown>>;
}

/** zod's messages, reworded where they would not say what is allowed. */
const errorMap: z.core.$ZodErrorMap = (iss) => {
  if (iss.code === 'unrecognized_keys') {
    const shape = (iss.inst as { _zod?: { def?: { shape?: object } } } | undefined)?._zod?.def?.shape ?? {};
    return `unknown key ${iss.keys.map((k) => `'${k}'`).join(', ')} (allowed keys: ${Object.keys(shape).join(', ')})`;
  }
  if (iss.code === 'invalid_type' && iss.input === undefined) return 'is required';
  return undefined;
};

export function parseJsonConfig(text: string, file: string, groups: readonly Group[]): Settings {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`-config ${file}: invalid JSON: ${(e as Error).message}`);
  }
  const r = jsonSchema(groups).safeParse(data, { error: errorMap });
  if (!r.success) {
    const iss = r.error.issues[0];
    const where = iss ? iss.path.join('.') || '(top level)' : '?';
    throw new ConfigError(`-config ${file}: ${where}: ${iss?.message ?? 'invalid'}`);
  }
  const settings: Settings = {};
  const at = (path: string): string => `-config ${file}: ${path}`;
  for (const g of groups) g.fromJson(r.data, settings, at);
  return settings;
}
