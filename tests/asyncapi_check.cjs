#!/usr/bin/env node
// docs/asyncapi.yaml checked with AsyncAPI's own parser (@asyncapi/parser: the specification's
// JSON Schema and its rules, every $ref resolved), then real bus messages checked against it:
// each example file (written by the end-to-end tests) names its channel; its payload must
// validate against one of the channel's message payload schemas and its headers against that
// message's headers schema.
//
// Usage: node tests/asyncapi_check.cjs docs/asyncapi.yaml [EXAMPLES_DIR]
// (NODE_PATH must reach @asyncapi/parser; scripts/install.sh installs it in /opt/tcb-node.)
'use strict';
const fs = require('fs');
const path = require('path');
const { Parser, fromFile } = require('@asyncapi/parser');
const Ajv = require('ajv').default;
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats');

function fail(message) {
  console.error(`asyncapi: ${message}`);
  process.exit(1);
}

function compiler(schema) {
  const draft2020 = typeof schema.$schema === 'string' && schema.$schema.includes('2020-12');
  const ajv = draft2020 ? new Ajv2020({ strict: false, allErrors: true }) : new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  return ajv.compile(stripParserKeys(schema));
}

// The parser marks schemas with x-parser-* keys; they are not JSON Schema.
function stripParserKeys(value) {
  if (Array.isArray(value)) return value.map(stripParserKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value)
      .filter(([k]) => !k.startsWith('x-parser-'))
      .map(([k, v]) => [k, stripParserKeys(v)]));
  }
  return value;
}

(async () => {
  const [file, examples] = process.argv.slice(2);
  if (!file) fail('usage: asyncapi_check.cjs ASYNCAPI_FILE [EXAMPLES_DIR]');
  const { document, diagnostics } = await fromFile(new Parser(), file).parse();
  const problems = diagnostics.filter((d) => d.severity <= 1);
  for (const d of problems) console.error(`${file}: ${d.message} at ${JSON.stringify(d.path)}`);
  if (!document || problems.length) fail(`${file} is not a valid AsyncAPI document`);
  let checked = 0;
  if (examples) {
    const files = fs.readdirSync(examples).filter((f) => f.endsWith('.json')).sort();
    if (!files.length) fail(`no example messages in ${examples}`);
    for (const f of files) {
      const example = JSON.parse(fs.readFileSync(path.join(examples, f), 'utf8'));
      const channel = document.channels().get(example.channel);
      if (!channel) fail(`${f}: no channel ${example.channel}`);
      const errors = [];
      const fits = channel.messages().all().some((m) => {
        const payload = compiler(m.payload().json());
        const headers = m.headers() ? compiler(m.headers().json()) : () => true;
        const ok = payload(example.payload) && headers(example.headers);
        if (!ok) errors.push(`${m.id()}: ${JSON.stringify((payload.errors || []).concat(headers.errors || []).slice(0, 5))}`);
        return ok;
      });
      if (!fits) fail(`${f} fits no message of channel ${example.channel}:\n  ${errors.join('\n  ')}`);
      checked += 1;
    }
  }
  console.log(`test result: ok. ${checked + 1} passed; 0 failed; (tests/asyncapi_check.cjs: the document and ${checked} messages)`);
})().catch((e) => fail(e.stack || String(e)));
