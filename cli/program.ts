// The command tree. Kept apart from main.ts so the completion script and tests can build it.
import { Command, Option } from 'commander';
import { readFileSync } from 'node:fs';
import { completeCommand, completionCommand } from './commands/completion.js';
import { eventsCommand } from './commands/events.js';
import { imageCommand } from './commands/image.js';
import { loginCommand, logoutCommand, whoamiCommand } from './commands/login.js';
import { poolCommand, templateCommand } from './commands/template.js';
import { tenantCommand } from './commands/tenant.js';
import { tokenCommand } from './commands/token.js';
import { vmCommand } from './commands/vm.js';
import { volumeCommand } from './commands/volume.js';

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

export function buildProgram(): Command {
  const program = new Command('capsule')
    .description('capsule: microVMs as a service (docs/cli.md)')
    .version(packageVersion(), '-V, --version')
    .addOption(new Option('-o, --output <format>', 'table or json (json: the API\'s objects)').choices(['table', 'json']).default('table'))
    .showSuggestionAfterError()
    // Usage errors are turned into exit code 2 in main.ts instead of commander's exit(1).
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(s) });
  // Subcommands made with `new Command()` do not inherit settings from the parent: copy them.
  const children = [
    loginCommand(), logoutCommand(), whoamiCommand(), vmCommand(), volumeCommand(), imageCommand(),
    templateCommand(), poolCommand(), eventsCommand(), tenantCommand(), tokenCommand(),
  ];
  for (const c of children) program.addCommand(c);
  program.addCommand(completionCommand(program));
  program.addCommand(completeCommand(), { hidden: true });
  inheritSettings(program);
  return program;
}

function inheritSettings(cmd: Command): void {
  for (const sub of cmd.commands) {
    sub.copyInheritedSettings(cmd);
    inheritSettings(sub);
  }
}
