// capsule completion bash|zsh: a completion script made from the command tree itself, so it
// never falls behind the commands. Names of VMs, volumes, images and tenants are completed
// live through the hidden `capsule __complete KIND` (silent when not logged in).
import { Command, type Argument, type Option } from 'commander';
import { oneOf } from '../args.js';
import { ApiClient } from '../client.js';
import { resolveConnection } from '../config.js';
import type { List } from '../types.js';

type Kind = 'vm' | 'volume' | 'image' | 'tenant' | 'token';
const KINDS: Record<Kind, string> = { vm: '/v1/vms', volume: '/v1/volumes', image: '/v1/images', tenant: '/v1/tenants', token: '/v1/tokens' };

/** What an argument or option value names, from its name: <vm>, <vm...>, --image <image>, … */
function kindOf(name: string): Kind | undefined {
  const base = name.replace(/\.\.\.$/, '').replace(/^from-/, '');
  return (Object.keys(KINDS) as Kind[]).find((k) => k === base);
}

interface Node {
  id: string;
  cmd: Command;
}

function walk(cmd: Command, id = 'root', out: Node[] = []): Node[] {
  out.push({ id, cmd });
  for (const sub of cmd.commands) {
    if ((sub as Command & { _hidden?: boolean })._hidden) continue;
    walk(sub, `${id}_${sub.name().replace(/\W/g, '_')}`, out);
  }
  return out;
}

const visibleOptions = (cmd: Command) => (cmd.options as Option[]).filter((o) => !o.hidden);
const optionWords = (cmd: Command) => visibleOptions(cmd).flatMap((o) => [o.long, o.short].filter((x): x is string => !!x));

export function bashScript(program: Command): string {
  const nodes = walk(program);
  const transitions = nodes.flatMap((n) => n.cmd.commands
    .filter((s) => !(s as Command & { _hidden?: boolean })._hidden)
    .flatMap((s) => [s.name(), ...s.aliases()].map((w) => `      "${n.id}:${w}") node=${n.id}_${s.name().replace(/\W/g, '_')} ;;`)));
  const words = nodes.map((n) => {
    const subs = n.cmd.commands.filter((s) => !(s as Command & { _hidden?: boolean })._hidden).map((s) => s.name());
    const args = (n.cmd.registeredArguments as readonly Argument[]).map((a) => kindOf(a.name())).filter(Boolean);
    return `    ${n.id}) words="${[...subs, ...optionWords(n.cmd), "--output", "-o"].join(' ')}"; kind="${args[0] ?? ''}" ;;`;
  });
  // Options whose value is a name the server knows, or one of a fixed set.
  const valueCases = new Map<string, string>();
  for (const n of nodes) {
    for (const o of visibleOptions(n.cmd)) {
      if (!o.long || !(o.required || o.optional)) continue;
      const choices = o.argChoices ?? (o.long === '--output' ? ['table', 'json'] : o.long === '--backend' ? ['qemu', 'native'] : o.long === '--scope' ? ['admin', 'write', 'read'] : o.long === '--cache' ? ['none', 'writeback', 'unsafe'] : undefined);
      const kind = kindOf(o.long.slice(2));
      const flags = [o.long, o.short].filter(Boolean).join('|');
      if (choices) valueCases.set(flags, `COMPREPLY=($(compgen -W "${choices.join(' ')}" -- "$cur")); return ;;`);
      else if (kind) valueCases.set(flags, `COMPREPLY=($(compgen -W "$(capsule __complete ${kind} 2>/dev/null)" -- "$cur")); return ;;`);
      else valueCases.set(flags, 'return ;;');
    }
  }
  return `# bash completion for capsule (capsule completion bash)
# Load now:       source <(capsule completion bash)
# Load always:    capsule completion bash > ~/.local/share/bash-completion/completions/capsule
_capsule() {
  local cur prev node=root words kind i w
  cur="\${COMP_WORDS[COMP_CWORD]}"
  prev=""
  [ "$COMP_CWORD" -gt 0 ] && prev="\${COMP_WORDS[COMP_CWORD-1]}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$node:$w" in
${transitions.join('\n')}
    esac
  done
  case "$prev" in
${[...valueCases].map(([flags, action]) => `    ${flags}) ${action}`).join('\n')}
  esac
  case "$node" in
${words.join('\n')}
    *) words=""; kind="" ;;
  esac
  if [[ "$cur" != -* && -n "$kind" ]]; then
    words="$words $(capsule __complete "$kind" 2>/dev/null)"
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _capsule capsule
`;
}

export function zshScript(program: Command): string {
  // zsh runs bash completion functions through bashcompinit: one script to keep right.
  return `#compdef capsule
# zsh completion for capsule (capsule completion zsh)
# Load now:       source <(capsule completion zsh)
# Load always:    capsule completion zsh > "\${fpath[1]}/_capsule"
autoload -U +X bashcompinit && bashcompinit
${bashScript(program).split('\n').filter((l) => !l.startsWith('# ')).join('\n')}`;
}

export function completionCommand(program: Command): Command {
  return new Command('completion').description('Print a shell completion script (bash or zsh)')
    .argument('<shell>', 'bash or zsh', oneOf('bash', 'zsh'))
    .action((shell: 'bash' | 'zsh') => {
      process.stdout.write(shell === 'bash' ? bashScript(program) : zshScript(program));
    });
}

/** `capsule __complete KIND`: names for the completion script; prints nothing on any failure. */
export function completeCommand(): Command {
  return new Command('__complete').argument('<kind>')
    .action(async (kind: string) => {
      const path = KINDS[kind as Kind];
      if (!path) return;
      try {
        const list = await ApiClient.from(resolveConnection()).get<List<{ name?: string; id: string }>>(path);
        process.stdout.write(list.items.map((i) => i.name ?? i.id).join('\n') + '\n');
      } catch { /* no completions */ }
    });
}
