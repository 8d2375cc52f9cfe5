// Our envd protocol definitions against the ones the real E2B SDK carries (embedded in its
// bundle as serialized descriptors): every message, field number, type, oneof and method the
// same, so that both sides encode and decode alike. A newer SDK that changes the protocol
// fails here first, naming the first difference.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fromBinary, toJson, type JsonObject } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { PROTO_FILES } from './proto.js';

function sdkDescriptors(): FileDescriptorProto[] {
  const bundle = createRequire(import.meta.url).resolve('e2b');
  const src = readFileSync(bundle, 'utf8');
  return [...src.matchAll(/fileDesc\)?\("([A-Za-z0-9+/=]+)"/g)].map((m) => fromBinary(FileDescriptorProtoSchema, Buffer.from(m[1]!, 'base64')));
}

/** What both sides must agree on: not json_name or dependencies (dropped from embedded descriptors), not options (but map entries). */
function shape(fd: FileDescriptorProto): JsonObject {
  const j = toJson(FileDescriptorProtoSchema, fd) as JsonObject;
  delete j.options;
  delete j.dependency;
  const walk = (o: unknown): void => {
    if (Array.isArray(o)) return o.forEach(walk);
    if (!o || typeof o !== 'object') return;
    const r = o as Record<string, unknown>;
    delete r.jsonName;
    if (!(r.options as { mapEntry?: boolean } | undefined)?.mapEntry) delete r.options;
    Object.values(r).forEach(walk);
  };
  walk(j.messageType);
  walk(j.service);
  walk(j.enumType);
  return j;
}

test('the process and filesystem protocols are the ones the e2b SDK speaks', () => {
  const theirs = sdkDescriptors();
  for (const mine of PROTO_FILES) {
    const t = theirs.find((x) => x.name === mine.name);
    assert.ok(t, `the SDK has no ${mine.name}`);
    assert.deepEqual(shape(mine), shape(t));
  }
});
