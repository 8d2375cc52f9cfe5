// The E2B-compatible API's record of a sandbox beyond its VM (migration 008): the template id
// as the client named it and the sandbox's environment variables. Deleted with the VM (cascade).
import type { Db } from './index.js';

export interface E2bSandbox {
  templateId: string;
  envVars: Record<string, string>;
}

export class E2bSandboxStore {
  private readonly putStmt;
  private readonly getStmt;

  constructor(db: Db) {
    this.putStmt = db.prepare('INSERT OR REPLACE INTO e2b_sandboxes (vm_id, template_id, env_vars) VALUES (@vmId, @templateId, @envVars)');
    this.getStmt = db.prepare('SELECT template_id, env_vars FROM e2b_sandboxes WHERE vm_id = ?');
  }

  put(vmId: string, s: E2bSandbox): void {
    this.putStmt.run({ vmId, templateId: s.templateId, envVars: JSON.stringify(s.envVars) });
  }

  get(vmId: string): E2bSandbox | undefined {
    const r = this.getStmt.get(vmId) as { template_id: string; env_vars: string } | undefined;
    return r && { templateId: r.template_id, envVars: JSON.parse(r.env_vars) as Record<string, string> };
  }
}
