// The envd protocol's message and service definitions (E2B's `process.Process` and
// `filesystem.Filesystem` Connect services), written here from their public interface: the
// package, message, field and method names and numbers the E2B SDK sends and expects. They are
// built at start-up as protobuf descriptors (no protoc, no generated files), so that
// @connectrpc/connect can serve them in both encodings (the SDK speaks Connect with JSON).
//
// Only what a field is and where it lives is declared; what each means is in docs/e2b.md.
import { create } from '@bufbuild/protobuf';
import { createFileRegistry, type DescMessage, type DescService } from '@bufbuild/protobuf';
import {
  FieldDescriptorProto_Label as Label, FieldDescriptorProto_Type as T, FileDescriptorProtoSchema, file_google_protobuf_timestamp,
  type DescriptorProto, type EnumDescriptorProto, type FieldDescriptorProto, type FileDescriptorProto,
} from '@bufbuild/protobuf/wkt';

// --- a small declaration language: just enough of proto3 for these two files ---------------

type Scalar = 'string' | 'bytes' | 'bool' | 'uint32' | 'int64' | 'sint32';
const SCALARS: Record<Scalar, T> = { string: T.STRING, bytes: T.BYTES, bool: T.BOOL, uint32: T.UINT32, int64: T.INT64, sint32: T.SINT32 };

interface FieldDecl {
  number: number;
  name: string;
  /** A scalar, a message (`.pkg.Name`), an enum (`enum .pkg.Name`) or `map<string,string>`. */
  type: string;
  repeated?: boolean;
  optional?: boolean;
  oneof?: string;
}
interface MessageDecl { name: string; fields: FieldDecl[]; nested?: MessageDecl[] }

const f = (number: number, name: string, type: string, more: Partial<FieldDecl> = {}): FieldDecl => ({ number, name, type, ...more });
const msg = (name: string, fields: FieldDecl[], nested: MessageDecl[] = []): MessageDecl => ({ name, fields, nested });

const camel = (s: string) => s.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
const pascal = (s: string) => camel(s).replace(/^./, (c) => c.toUpperCase());

function messageProto(m: MessageDecl): Partial<DescriptorProto> {
  const nested = (m.nested ?? []).map(messageProto);
  const oneofs: string[] = [];
  const synthetic: string[] = [];
  for (const x of m.fields) if (x.oneof && !oneofs.includes(x.oneof)) oneofs.push(x.oneof);
  const fields: Partial<FieldDescriptorProto>[] = m.fields.map((x) => {
    const fd: Partial<FieldDescriptorProto> = { name: x.name, number: x.number, jsonName: camel(x.name), label: x.repeated ? Label.REPEATED : Label.OPTIONAL };
    const map = /^map<string,\s*string>$/.exec(x.type);
    if (map) {
      // A map is a repeated nested entry message marked map_entry, as protoc makes it.
      const entry = `${pascal(x.name)}Entry`;
      nested.push({ name: entry, field: [
        { name: 'key', number: 1, jsonName: 'key', label: Label.OPTIONAL, type: T.STRING },
        { name: 'value', number: 2, jsonName: 'value', label: Label.OPTIONAL, type: T.STRING },
      ] as FieldDescriptorProto[], options: { mapEntry: true } as DescriptorProto['options'] });
      return { ...fd, label: Label.REPEATED, type: T.MESSAGE, typeName: `${FULL_NAME_PLACEHOLDER}.${entry}` };
    }
    if (x.type in SCALARS) fd.type = SCALARS[x.type as Scalar];
    else if (x.type.startsWith('enum ')) { fd.type = T.ENUM; fd.typeName = x.type.slice(5); }
    else { fd.type = T.MESSAGE; fd.typeName = x.type; }
    if (x.oneof) fd.oneofIndex = oneofs.indexOf(x.oneof);
    if (x.optional) {
      // proto3 `optional`: a synthetic one-field oneof, declared after the real ones.
      fd.proto3Optional = true;
      synthetic.push(`_${x.name}`);
      fd.oneofIndex = -synthetic.length; // fixed below, once the real oneofs are counted
    }
    return fd;
  });
  for (const fd of fields) if (fd.oneofIndex !== undefined && fd.oneofIndex < 0) fd.oneofIndex = oneofs.length - fd.oneofIndex - 1;
  return {
    name: m.name,
    field: fields as FieldDescriptorProto[],
    nestedType: nested as DescriptorProto[],
    oneofDecl: [...oneofs, ...synthetic].map((name) => ({ name })) as DescriptorProto['oneofDecl'],
  };
}

/** Map entries name their parent message only once it is known: patched in here. */
const FULL_NAME_PLACEHOLDER = '\0parent';
function fixMapTypeNames(m: Partial<DescriptorProto>, fullName: string): void {
  for (const fd of m.field ?? []) if (fd.typeName?.startsWith(FULL_NAME_PLACEHOLDER)) fd.typeName = fullName + fd.typeName.slice(FULL_NAME_PLACEHOLDER.length);
  for (const n of m.nestedType ?? []) fixMapTypeNames(n, `${fullName}.${n.name}`);
}

interface ServiceDecl { name: string; methods: Array<{ name: string; input: string; output: string; serverStreaming?: boolean; clientStreaming?: boolean }> }

function fileProto(name: string, pkg: string, deps: string[], enums: Record<string, Record<string, number>>, messages: MessageDecl[], service: ServiceDecl): FileDescriptorProto {
  const messageType = messages.map((m) => {
    const p = messageProto(m);
    fixMapTypeNames(p, `.${pkg}.${m.name}`);
    return p as DescriptorProto;
  });
  return create(FileDescriptorProtoSchema, {
    name, package: pkg, syntax: 'proto3', dependency: deps,
    enumType: Object.entries(enums).map(([n, values]) => ({ name: n, value: Object.entries(values).map(([vn, number]) => ({ name: vn, number })) })) as EnumDescriptorProto[],
    messageType,
    service: [{ name: service.name, method: service.methods.map((m) => ({ name: m.name, inputType: m.input, outputType: m.output, ...(m.serverStreaming ? { serverStreaming: true } : {}), ...(m.clientStreaming ? { clientStreaming: true } : {}) })) }],
  });
}

// --- process/process.proto -------------------------------------------------------------------

const selector = f(1, 'process', '.process.ProcessSelector');
const processFile = fileProto('process/process.proto', 'process', [], {
  Signal: { SIGNAL_UNSPECIFIED: 0, SIGNAL_SIGTERM: 15, SIGNAL_SIGKILL: 9 },
}, [
  msg('PTY', [f(1, 'size', '.process.PTY.Size')], [msg('Size', [f(1, 'cols', 'uint32'), f(2, 'rows', 'uint32')])]),
  msg('ProcessConfig', [f(1, 'cmd', 'string'), f(2, 'args', 'string', { repeated: true }), f(3, 'envs', 'map<string,string>'), f(4, 'cwd', 'string', { optional: true })]),
  msg('ListRequest', []),
  msg('ProcessInfo', [f(1, 'config', '.process.ProcessConfig'), f(2, 'pid', 'uint32'), f(3, 'tag', 'string', { optional: true })]),
  msg('ListResponse', [f(1, 'processes', '.process.ProcessInfo', { repeated: true })]),
  msg('StartRequest', [f(1, 'process', '.process.ProcessConfig'), f(2, 'pty', '.process.PTY', { optional: true }), f(3, 'tag', 'string', { optional: true }), f(4, 'stdin', 'bool', { optional: true })]),
  msg('UpdateRequest', [selector, f(2, 'pty', '.process.PTY', { optional: true })]),
  msg('UpdateResponse', []),
  msg('ProcessEvent', [
    f(1, 'start', '.process.ProcessEvent.StartEvent', { oneof: 'event' }),
    f(2, 'data', '.process.ProcessEvent.DataEvent', { oneof: 'event' }),
    f(3, 'end', '.process.ProcessEvent.EndEvent', { oneof: 'event' }),
    f(4, 'keepalive', '.process.ProcessEvent.KeepAlive', { oneof: 'event' }),
  ], [
    msg('StartEvent', [f(1, 'pid', 'uint32')]),
    msg('DataEvent', [f(1, 'stdout', 'bytes', { oneof: 'output' }), f(2, 'stderr', 'bytes', { oneof: 'output' }), f(3, 'pty', 'bytes', { oneof: 'output' })]),
    msg('EndEvent', [f(1, 'exit_code', 'sint32'), f(2, 'exited', 'bool'), f(3, 'status', 'string'), f(4, 'error', 'string', { optional: true })]),
    msg('KeepAlive', []),
  ]),
  msg('StartResponse', [f(1, 'event', '.process.ProcessEvent')]),
  msg('ConnectResponse', [f(1, 'event', '.process.ProcessEvent')]),
  msg('SendInputRequest', [selector, f(2, 'input', '.process.ProcessInput')]),
  msg('SendInputResponse', []),
  msg('ProcessInput', [f(1, 'stdin', 'bytes', { oneof: 'input' }), f(2, 'pty', 'bytes', { oneof: 'input' })]),
  msg('StreamInputRequest', [
    f(1, 'start', '.process.StreamInputRequest.StartEvent', { oneof: 'event' }),
    f(2, 'data', '.process.StreamInputRequest.DataEvent', { oneof: 'event' }),
    f(3, 'keepalive', '.process.StreamInputRequest.KeepAlive', { oneof: 'event' }),
  ], [msg('StartEvent', [selector]), msg('DataEvent', [f(2, 'input', '.process.ProcessInput')]), msg('KeepAlive', [])]),
  msg('StreamInputResponse', []),
  msg('SendSignalRequest', [selector, f(2, 'signal', 'enum .process.Signal')]),
  msg('SendSignalResponse', []),
  msg('CloseStdinRequest', [selector]),
  msg('CloseStdinResponse', []),
  msg('ConnectRequest', [selector]),
  msg('ProcessSelector', [f(1, 'pid', 'uint32', { oneof: 'selector' }), f(2, 'tag', 'string', { oneof: 'selector' })]),
], {
  name: 'Process',
  methods: [
    { name: 'List', input: '.process.ListRequest', output: '.process.ListResponse' },
    { name: 'Connect', input: '.process.ConnectRequest', output: '.process.ConnectResponse', serverStreaming: true },
    { name: 'Start', input: '.process.StartRequest', output: '.process.StartResponse', serverStreaming: true },
    { name: 'Update', input: '.process.UpdateRequest', output: '.process.UpdateResponse' },
    { name: 'StreamInput', input: '.process.StreamInputRequest', output: '.process.StreamInputResponse', clientStreaming: true },
    { name: 'SendInput', input: '.process.SendInputRequest', output: '.process.SendInputResponse' },
    { name: 'SendSignal', input: '.process.SendSignalRequest', output: '.process.SendSignalResponse' },
    { name: 'CloseStdin', input: '.process.CloseStdinRequest', output: '.process.CloseStdinResponse' },
  ],
});

// --- filesystem/filesystem.proto -------------------------------------------------------------

const entry = f(1, 'entry', '.filesystem.EntryInfo');
const watchFields = [f(1, 'path', 'string'), f(2, 'recursive', 'bool'), f(3, 'include_entry', 'bool'), f(4, 'allow_network_mounts', 'bool')];
const filesystemFile = fileProto('filesystem/filesystem.proto', 'filesystem', ['google/protobuf/timestamp.proto'], {
  FileType: { FILE_TYPE_UNSPECIFIED: 0, FILE_TYPE_FILE: 1, FILE_TYPE_DIRECTORY: 2, FILE_TYPE_SYMLINK: 3 },
  EventType: { EVENT_TYPE_UNSPECIFIED: 0, EVENT_TYPE_CREATE: 1, EVENT_TYPE_WRITE: 2, EVENT_TYPE_REMOVE: 3, EVENT_TYPE_RENAME: 4, EVENT_TYPE_CHMOD: 5 },
}, [
  msg('MoveRequest', [f(1, 'source', 'string'), f(2, 'destination', 'string')]),
  msg('MoveResponse', [entry]),
  msg('MakeDirRequest', [f(1, 'path', 'string')]),
  msg('MakeDirResponse', [entry]),
  msg('RemoveRequest', [f(1, 'path', 'string')]),
  msg('RemoveResponse', []),
  msg('StatRequest', [f(1, 'path', 'string')]),
  msg('StatResponse', [entry]),
  msg('EntryInfo', [
    f(1, 'name', 'string'), f(2, 'type', 'enum .filesystem.FileType'), f(3, 'path', 'string'), f(4, 'size', 'int64'), f(5, 'mode', 'uint32'),
    f(6, 'permissions', 'string'), f(7, 'owner', 'string'), f(8, 'group', 'string'), f(9, 'modified_time', '.google.protobuf.Timestamp'),
    f(10, 'symlink_target', 'string', { optional: true }), f(11, 'metadata', 'map<string,string>'),
  ]),
  msg('ListDirRequest', [f(1, 'path', 'string'), f(2, 'depth', 'uint32')]),
  msg('ListDirResponse', [f(1, 'entries', '.filesystem.EntryInfo', { repeated: true })]),
  msg('WatchDirRequest', watchFields),
  msg('FilesystemEvent', [f(1, 'name', 'string'), f(2, 'type', 'enum .filesystem.EventType'), f(3, 'entry', '.filesystem.EntryInfo', { optional: true })]),
  msg('WatchDirResponse', [
    f(1, 'start', '.filesystem.WatchDirResponse.StartEvent', { oneof: 'event' }),
    f(2, 'filesystem', '.filesystem.FilesystemEvent', { oneof: 'event' }),
    f(3, 'keepalive', '.filesystem.WatchDirResponse.KeepAlive', { oneof: 'event' }),
  ], [msg('StartEvent', []), msg('KeepAlive', [])]),
  msg('CreateWatcherRequest', watchFields),
  msg('CreateWatcherResponse', [f(1, 'watcher_id', 'string')]),
  msg('GetWatcherEventsRequest', [f(1, 'watcher_id', 'string')]),
  msg('GetWatcherEventsResponse', [f(1, 'events', '.filesystem.FilesystemEvent', { repeated: true })]),
  msg('RemoveWatcherRequest', [f(1, 'watcher_id', 'string')]),
  msg('RemoveWatcherResponse', []),
], {
  name: 'Filesystem',
  methods: [
    { name: 'Stat', input: '.filesystem.StatRequest', output: '.filesystem.StatResponse' },
    { name: 'MakeDir', input: '.filesystem.MakeDirRequest', output: '.filesystem.MakeDirResponse' },
    { name: 'Move', input: '.filesystem.MoveRequest', output: '.filesystem.MoveResponse' },
    { name: 'ListDir', input: '.filesystem.ListDirRequest', output: '.filesystem.ListDirResponse' },
    { name: 'Remove', input: '.filesystem.RemoveRequest', output: '.filesystem.RemoveResponse' },
    { name: 'WatchDir', input: '.filesystem.WatchDirRequest', output: '.filesystem.WatchDirResponse', serverStreaming: true },
    { name: 'CreateWatcher', input: '.filesystem.CreateWatcherRequest', output: '.filesystem.CreateWatcherResponse' },
    { name: 'GetWatcherEvents', input: '.filesystem.GetWatcherEventsRequest', output: '.filesystem.GetWatcherEventsResponse' },
    { name: 'RemoveWatcher', input: '.filesystem.RemoveWatcherRequest', output: '.filesystem.RemoveWatcherResponse' },
  ],
});

const registry = createFileRegistry(
  createFileRegistry(processFile, () => undefined),
  createFileRegistry(filesystemFile, (n) => (n === 'google/protobuf/timestamp.proto' ? file_google_protobuf_timestamp : undefined)),
);

function service(name: string): DescService {
  const s = registry.getService(name);
  if (!s) throw new Error(`envd protocol: no service ${name}`);
  return s;
}

export function message(name: string): DescMessage {
  const m = registry.getMessage(name);
  if (!m) throw new Error(`envd protocol: no message ${name}`);
  return m;
}

export const ProcessService = service('process.Process');
export const FilesystemService = service('filesystem.Filesystem');
/** Both files' descriptors (the protocol test compares them with what the SDK carries). */
export const PROTO_FILES: readonly FileDescriptorProto[] = [processFile, filesystemFile];

/** envd's FileType values. */
export const FileType = { UNSPECIFIED: 0, FILE: 1, DIRECTORY: 2, SYMLINK: 3 } as const;
/** envd's Signal values (the numbers are the Linux signals). */
export const Signal = { SIGTERM: 15, SIGKILL: 9 } as const;
