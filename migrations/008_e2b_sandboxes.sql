-- capsule schema v8: what the E2B-compatible API keeps of a sandbox beyond its VM
-- (docs/e2b.md): the template id as the client named it ("base" for the sandbox image) and the
-- environment variables every command gets. Metadata and the timeout are the VM's own
-- (migration 007). Gone with the VM.
CREATE TABLE e2b_sandboxes (
  vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
  template_id TEXT NOT NULL,
  env_vars TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(env_vars))
);
