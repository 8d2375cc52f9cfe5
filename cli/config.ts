// Where the CLI finds its server and token: the environment (CAPSULE_URL, CAPSULE_TOKEN) first,
// then the file `capsule login` writes ($XDG_CONFIG_HOME/capsule/config.json, else
// ~/.config/capsule/config.json). The file holds a bearer token, so it is 0600 in a 0700 directory.
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { UsageError } from './errors.js';

export interface StoredConfig {
  url: string;
  token: string;
}

export interface Connection extends StoredConfig {
  /** Where each half came from, for `capsule whoami` and error messages. */
  source: { url: 'env' | 'file'; token: 'env' | 'file' };
}

export function configDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME.startsWith('/') ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), '.config');
  return join(base, 'capsule');
}

export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(configDir(env), 'config.json');
}

export function readConfig(env: NodeJS.ProcessEnv = process.env): Partial<StoredConfig> {
  let text: string;
  try {
    text = readFileSync(configPath(env), 'utf8');
  } catch {
    return {};
  }
  try {
    const parsed = JSON.parse(text) as Partial<StoredConfig>;
    return {
      ...(typeof parsed.url === 'string' ? { url: parsed.url } : {}),
      ...(typeof parsed.token === 'string' ? { token: parsed.token } : {}),
    };
  } catch {
    throw new UsageError(`${configPath(env)} is not valid JSON: run capsule login again`);
  }
}

/** Writes the config atomically (temp file + rename) so a half-written token never lands on disk. */
export function writeConfig(config: StoredConfig, env: NodeJS.ProcessEnv = process.env): string {
  const path = configPath(env);
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  // mkdir's mode does not apply to a directory that already exists (or is masked by the umask).
  chmodSync(dirname(path), 0o700);
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
  return path;
}

/** Removes the stored token; returns whether there was one. */
export function removeConfig(env: NodeJS.ProcessEnv = process.env): boolean {
  const path = configPath(env);
  const had = readConfigQuietly(env).token !== undefined;
  rmSync(path, { force: true });
  return had;
}

function readConfigQuietly(env: NodeJS.ProcessEnv): Partial<StoredConfig> {
  try {
    return readConfig(env);
  } catch {
    return {};
  }
}

/** The server and token a command uses: environment over file; neither → a usage error. */
export function resolveConnection(env: NodeJS.ProcessEnv = process.env): Connection {
  const file = readConfig(env);
  const url = env.CAPSULE_URL || file.url;
  const token = env.CAPSULE_TOKEN || file.token;
  if (!url || !token) {
    throw new UsageError(`not logged in: run \`capsule login\` or set CAPSULE_URL and CAPSULE_TOKEN (no ${!url ? 'server URL' : 'token'} in the environment or ${configPath(env)})`);
  }
  return { url: normalizeUrl(url), token, source: { url: env.CAPSULE_URL ? 'env' : 'file', token: env.CAPSULE_TOKEN ? 'env' : 'file' } };
}

/** `host:8080` → `http://host:8080`; no trailing slash. */
export function normalizeUrl(raw: string): string {
  let url = raw.trim();
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) url = `http://${url}`;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError(`not a URL: ${raw}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new UsageError(`the server URL must be http:// or https://, not ${parsed.protocol}`);
  return parsed.toString().replace(/\/+$/, '');
}
