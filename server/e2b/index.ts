// E2B compatibility (docs/e2b.md): E2B's control plane and envd API as a thin layer over
// capsule's own API and guest agent. Mounted by api/app.ts:
//   /e2b          the SDK's E2B_API_URL      (rest.ts)
//   /e2b/sandbox  the SDK's E2B_SANDBOX_URL  (envd/)
import type { AppDeps } from '../api/app.js';
import { SandboxTokens } from './keys.js';
import { E2bSandboxStore } from '../db/e2b-sandboxes.js';
import { e2bRestRoutes, type CapsuleApi } from './rest.js';
import { envdRoutes } from './envd/index.js';

/** How long a create waits for the new guest's agent (TCG boots take 20-60 s on a loaded host). */
const BOOT_TIMEOUT_MS = 180_000;

/** `rateLimit`: the tenant's API rate limit, for envd calls (which carry no capsule token). */
export function e2bApi(deps: AppDeps, api: CapsuleApi, rateLimit: (tenant: string) => number | undefined) {
  const sandboxTokens = SandboxTokens.fromDataDir(deps.config.dataDir);
  const sandboxes = deps.e2bSandboxes;
  return {
    rest: e2bRestRoutes({ api, agent: deps.agent, sandboxes, sandboxTokens, tokens: deps.tokens, bootTimeoutMs: BOOT_TIMEOUT_MS }),
    envd: envdRoutes({ agent: deps.agent, vms: deps.vms, sandboxTokens, sandboxes, rateLimit }),
  };
}
