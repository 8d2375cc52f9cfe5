// The building blocks of every option group: a Key declares one setting once (its name on the
// command line and in the JSON file, the allowed values in words, the text parser and the
// check), and a KeyTable turns a set of keys into the `-opt a=1,b=2` parser and the zod shape of
// the matching JSON object. Both sources therefore accept, and refuse, the same values.
import * as z from 'zod';

export class ConfigError extends Error {
  constructor(msg: string) {
    super(msg);
    this.name = 'ConfigError';
  }
}

export interface Key<T, R extends boolean = boolean> {
  /** key in `-opt key=value`, or the option itself (`-kernel`) when the key is a whole option */
  readonly cli: string;
  /** key in the JSON file */
  readonly json: string;
  /** older JSON spellings still read (the first one given wins) */
  readonly jsonAliases: readonly string[];
  /** placeholder in the usage text */
  readonly metavar: string;
  /** the allowed values in words, for errors: "an integer in range 1-254" */
  readonly expect: string;
  readonly required: R;
  /** a whole option that takes no value (`-daemonize`); JSON: a boolean */
  readonly flag: boolean;
  /** command-line text to a value; undefined when the text is not of the expected form */
  fromText(text: string): T | undefined;
  /** range and format checks beyond the type, for both sources */
  valid(value: T): boolean;
  /** the JSON type (before `valid`) */
  readonly jsonType: z.ZodType<T>;
}

interface KeyOptions<R extends boolean> {
  cli: string;
  json?: string;
  jsonAliases?: readonly string[];
  metavar?: string;
  required?: R;
}

interface KeyKind<T> {
  expect: string;
  metavar: string;
  fromText(text: string): T | undefined;
  valid?: (value: T) => boolean;
  jsonType: z.ZodType<T>;
  flag?: boolean;
}

function makeKey<T, R extends boolean>(o: KeyOptions<R>, kind: KeyKind<T>): Key<T, R> {
  return {
    cli: o.cli,
    json: o.json ?? o.cli,
    jsonAliases: o.jsonAliases ?? [],
    metavar: o.metavar ?? kind.metavar,
    expect: kind.expect,
    required: (o.required ?? false) as R,
    flag: kind.flag ?? false,
    fromText: kind.fromText,
    valid: kind.valid ?? (() => true),
    jsonType: kind.jsonType,
  };
}

// ---- kinds of values --------------------------------------------------------------------------

/** Any non-empty text (names, command lines); `valid` narrows it, `expect` says how. */
export function text<const R extends boolean = false>(o: KeyOptions<R> & { expect?: string; valid?: (s: string) => boolean }): Key<string, R> {
  const valid = o.valid ?? ((s: string) => s !== '');
  return makeKey(o, { expect: o.expect ?? 'a non-empty string', metavar: 'TEXT', fromText: (s) => s, valid, jsonType: z.string() });
}

/** A host path; relative ones are resolved against the working directory when the config is built. */
export function path<const R extends boolean = false>(o: KeyOptions<R>): Key<string, R> {
  return text({ metavar: 'PATH', ...o, expect: 'a path' });
}

/** A path that must be absolute already (resolving it would hide a mistake, e.g. -mem-path). */
export function absolutePath<const R extends boolean = false>(o: KeyOptions<R> & { expect?: string }): Key<string, R> {
  return text({ metavar: 'PATH', expect: 'an absolute path', ...o, valid: (s) => s.startsWith('/') });
}

/** A device or object id: it appears in QMP commands and events. */
export const ID_EXPECT = "1-64 letters, digits, '-', '.' or '_', starting with a letter";
export function id<const R extends boolean = false>(o: KeyOptions<R>): Key<string, R> {
  return text({ metavar: 'ID', ...o, expect: ID_EXPECT, valid: (s) => /^[A-Za-z][A-Za-z0-9._-]{0,63}$/.test(s) });
}

/** on|off on the command line (true|false also accepted, as StratoVirt does); a boolean in JSON. */
export function onOff<const R extends boolean = false>(o: KeyOptions<R>): Key<boolean, R> {
  return makeKey(o, {
    expect: "'on' or 'off'",
    metavar: 'on|off',
    fromText: (s) => (s === 'on' || s === 'true' ? true : s === 'off' || s === 'false' ? false : undefined),
    jsonType: z.boolean(),
  });
}

/** A whole option without a value (`-daemonize`); a boolean in JSON. */
export function flag<const R extends boolean = false>(o: KeyOptions<R>): Key<boolean, R> {
  return makeKey(o, { expect: 'no value', metavar: '', fromText: () => true, jsonType: z.boolean(), flag: true });
}

/** An integer in [min, max]. */
export function uint<const R extends boolean = false>(o: KeyOptions<R> & { min: number; max: number }): Key<number, R> {
  return makeKey(o, {
    expect: `an integer in range ${o.min}-${o.max}`,
    metavar: 'N',
    fromText: (s) => (/^\d+$/.test(s) ? Number(s) : undefined),
    valid: (n) => Number.isSafeInteger(n) && n >= o.min && n <= o.max,
    jsonType: z.number(),
  });
}

/** One of a fixed set of words (compared without case when `anyCase`; the value is the listed spelling). */
export function choice<const V extends string, const R extends boolean = false>(o: KeyOptions<R> & { values: readonly V[]; anyCase?: boolean; expect?: string }): Key<V, R> {
  const pick = (s: string): V | undefined => o.values.find((v) => (o.anyCase ? v.toLowerCase() === s.toLowerCase() : v === s));
  return makeKey(o, {
    expect: o.expect ?? `one of ${o.values.join(', ')}`,
    metavar: o.values.join('|'),
    fromText: pick,
    jsonType: z.string().refine((s) => pick(s) !== undefined, { error: (iss) => `must be ${o.expect ?? `one of ${o.values.join(', ')}`} (got ${show(iss.input)})` })
      .transform((s) => pick(s) as V),
  });
}

/** A MAC address for a guest NIC: six hex pairs, unicast (multicast bit clear), not all zero. Lower-cased. */
export function mac<const R extends boolean = false>(o: KeyOptions<R>): Key<string, R> {
  const valid = (s: string): boolean => /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(s) && (parseInt(s.slice(0, 2), 16) & 1) === 0 && s !== '00:00:00:00:00:00';
  return makeKey(o, {
    expect: 'a unicast MAC address like 52:54:00:12:34:56',
    metavar: 'MAC',
    fromText: (s) => s.toLowerCase(),
    valid,
    jsonType: z.string().transform((s) => s.toLowerCase()),
  });
}

/** A byte size: bytes, or N followed by K, M or G (binary units); JSON: a number of bytes. */
export function size<const R extends boolean = false>(o: KeyOptions<R> & { min: number; max: number; align: number; range: string }): Key<number, R> {
  return makeKey(o, {
    expect: `${o.range}, a multiple of ${o.align} bytes (bytes, or N followed by K, M or G)`,
    metavar: 'N[M|G]',
    fromText: parseSizeText,
    valid: (n) => Number.isSafeInteger(n) && n >= o.min && n <= o.max && n % o.align === 0,
    jsonType: z.number(),
  });
}

function parseSizeText(s: string): number | undefined {
  const m = /^(\d+)([KkMmGg]?)$/.exec(s.trim());
  if (!m) return undefined;
  const shift = { '': 0, K: 10, M: 20, G: 30 }[(m[2] ?? '').toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(m[1]) * 2 ** shift;
}

/** A value as shown in an error: text in quotes, anything else as JSON. */
export function show(v: unknown): string {
  return typeof v === 'string' ? `'${v}'` : JSON.stringify(v) ?? String(v);
}

// ---- tables of keys ---------------------------------------------------------------------------

// `any`: the value type varies per key
export type Keys = Record<string, Key<any, boolean>>;
type ValueOf<X> = X extends Key<infer T, boolean> ? T : never;
type RequiredProps<K extends Keys> = { [P in keyof K]: K[P] extends { required: true } ? P : never }[keyof K];
/** What a table parses to: required keys present, the others optional. */
export type Values<K extends Keys> =
  { [P in RequiredProps<K>]: ValueOf<K[P]> } & { [P in Exclude<keyof K, RequiredProps<K>>]?: ValueOf<K[P]> };

/** Where a value came from, for errors that span keys: the option or JSON path, and how a key is written there. */
export interface Source<K extends Keys> {
  where: string;
  /** `netdev=TAPNAME` on the command line, `"host_dev_name"` in JSON */
  key(prop: keyof K & string): string;
}

export class KeyTable<K extends Keys> {
  /** `positional`: the key a first item without `key=` stands for (`-smp 4` = `-smp cpus=4`) */
  constructor(readonly keys: K, readonly positional?: keyof K & string) {}

  private entries(): Array<[keyof K & string, K[keyof K]]> {
    return Object.entries(this.keys) as Array<[keyof K & string, K[keyof K]]>;
  }

  private allowedKeys(): string {
    return this.entries().map(([, k]) => k.cli).join(', ');
  }

  /** `-opt a=1,b=2` (or `-opt 1,b=2` with a positional key). `opt` names the option in errors. */
  parseKv(opt: string, value: string): Values<K> {
    const byCli = new Map(this.entries().map(([prop, k]) => [k.cli, prop]));
    const out: Record<string, unknown> = {};
    const items = value === '' ? [] : value.split(',');
    items.forEach((item, i) => {
      if (item === '') throw new ConfigError(`${opt}: empty item in '${value}'`);
      const eq = item.indexOf('=');
      let cliKey: string;
      let text: string;
      if (eq < 0) {
        if (i !== 0 || this.positional === undefined) throw new ConfigError(`${opt}: '${item}' is not key=value (allowed keys: ${this.allowedKeys()})`);
        cliKey = this.keys[this.positional]!.cli;
        text = item;
      } else {
        cliKey = item.slice(0, eq);
        text = item.slice(eq + 1);
      }
      const prop = byCli.get(cliKey);
      if (prop === undefined) throw new ConfigError(`${opt}: unknown key '${cliKey}' (allowed keys: ${this.allowedKeys()})`);
      if (prop in out) throw new ConfigError(`${opt}: '${cliKey}' given twice`);
      out[prop] = this.fromText(`${opt}: ${cliKey}`, 'must be', this.keys[prop]!, text);
    });
    const missing = this.entries().filter(([prop, k]) => k.required && !(prop in out));
    if (missing.length > 0) throw new ConfigError(`${opt}: needs ${this.requiredSyntax()} (got '${value}')`);
    return out as Values<K>;
  }

  /** The whole text of option `opt` is the value of key `prop` (`-kernel FILE`). */
  parseOption<P extends keyof K & string>(opt: string, prop: P, value: string): ValueOf<K[P]> {
    return this.fromText(opt, 'expected', this.keys[prop]!, value) as ValueOf<K[P]>;
  }

  private fromText(where: string, verb: 'must be' | 'expected', key: Key<unknown>, text: string): unknown {
    const v = key.fromText(text);
    if (v === undefined || !key.valid(v)) throw new ConfigError(`${where}${verb === 'expected' ? ':' : ''} ${verb} ${key.expect} (got '${text}')`);
    return v;
  }

  /** The zod shape of the JSON object: JSON key names (and aliases), types and checks. */
  jsonShape(): Record<string, z.ZodType> {
    const shape: Record<string, z.ZodType> = {};
    for (const [, k] of this.entries()) {
      const checked = k.jsonType.refine((v: unknown) => k.valid(v), { error: (iss) => `must be ${k.expect} (got ${show(iss.input)})` });
      shape[k.json] = k.required ? checked : checked.optional();
      for (const alias of k.jsonAliases) shape[alias] = checked.optional();
    }
    return shape;
  }

  /** `z.strictObject(jsonShape())`: an object of this table's keys only */
  jsonObject(): z.ZodType<Record<string, unknown>> {
    return z.strictObject(this.jsonShape()) as unknown as z.ZodType<Record<string, unknown>>;
  }

  /** A JSON object already checked against jsonShape() → the values, under the table's property names. */
  fromJson(o: Record<string, unknown>): Values<K> {
    const out: Record<string, unknown> = {};
    for (const [prop, k] of this.entries()) {
      const v = [k.json, ...k.jsonAliases].map((name) => o[name]).find((x) => x !== undefined);
      if (v !== undefined) out[prop] = v;
    }
    return out as Values<K>;
  }

  cliSource(opt: string): Source<K> {
    return { where: opt, key: (p) => `${this.keys[p]!.cli}=${this.keys[p]!.metavar}` };
  }

  jsonSource(where: string): Source<K> {
    return { where, key: (p) => `"${this.keys[p]!.json}"` };
  }

  private requiredSyntax(): string {
    return this.entries().filter(([, k]) => k.required).map(([, k]) => `${k.cli}=${k.metavar}`).join(',');
  }

  /** Usage text of the kv form: `id=ID,file=PATH[,readonly=on|off]`, positional key first as `[cpus=]N`. */
  syntax(): string {
    const parts: string[] = [];
    const pos = this.positional === undefined ? undefined : this.keys[this.positional];
    if (pos) parts.push(`[${pos.cli}=]${pos.metavar}`);
    const rest = this.entries().filter(([, k]) => k !== pos);
    const req = rest.filter(([, k]) => k.required).map(([, k]) => `${k.cli}=${k.metavar}`);
    if (req.length > 0) parts.push((parts.length > 0 ? ',' : '') + req.join(','));
    for (const [, k] of rest.filter(([, k]) => !k.required)) parts.push(`[${parts.length > 0 ? ',' : ''}${k.cli}=${k.metavar}]`);
    return parts.join('');
  }
}
