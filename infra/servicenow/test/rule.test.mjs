// Tests of ../accessgate_ticket_closed.js, the ServiceNow business rule that posts accessgate's
// signed "ticket closed" webhook. Node 20, no packages:
//
//   node --test infra/servicenow/test/
//
// The rule's text runs in a node:vm context with stubs of the ServiceNow APIs it uses
// (current, gs, GlideDateTime, sn_ws.RESTMessageV2, CertificateEncryption /
// GlideCertificateEncryption, GlideStringUtil). The generateMac stub behaves as ServiceNow
// documents it: the key argument is Base64 and is decoded to the HMAC key bytes, the result is
// the MAC in base64. Every request the rule makes is then checked with an independent verifier
// written from accessgate's webhook contract, not from the rule.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';

const RULE_PATH = new URL('../accessgate_ticket_closed.js', import.meta.url);
const RULE = readFileSync(RULE_PATH, 'utf8');

const SECRET = 'test-webhook-secret-0123456789abcdef';
const ENDPOINT = 'https://accessgate.example.test/api/servicenow/events';
const FIXED_MS = 1767225600123; // 2026-01-01T00:00:00.123Z
const FIXED_S = Math.floor(FIXED_MS / 1000);
const SYS_ID = '0123456789abcdef0123456789abcdef';

// ---------------------------------------------------------------- the contract's verifier

function hmac(secret, timestamp, body) {
  return createHmac('sha256', Buffer.from(secret, 'utf8'))
    .update(Buffer.concat([Buffer.from(`${timestamp}.`, 'utf8'), Buffer.from(body, 'utf8')]))
    .digest();
}

function sameBytes(a, b) {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** accessgate's check: header names are case-insensitive; window ±300 s; hex or base64. */
function verify(headers, body, secret, nowSeconds = FIXED_S) {
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const tsText = lower['x-accessgate-timestamp'];
  const sigText = lower['x-accessgate-signature'];
  if (typeof tsText !== 'string' || !/^[0-9]+$/.test(tsText)) return false;
  if (typeof sigText !== 'string' || !sigText.startsWith('v1=')) return false;
  let ts = Number(tsText);
  if (ts > 1e11) ts = ts / 1000; // milliseconds
  if (Math.abs(nowSeconds - ts) > 300) return false;
  const expected = hmac(secret, tsText, body);
  const sig = sigText.slice(3);
  if (/^[0-9a-f]{64}$/.test(sig)) return sameBytes(Buffer.from(sig, 'hex'), expected);
  if (/^[A-Za-z0-9+/]{43}=$/.test(sig)) return sameBytes(Buffer.from(sig, 'base64'), expected);
  return false;
}

// ---------------------------------------------------------------- ServiceNow stubs

function strictBase64Decode(text) {
  const s = String(text);
  assert.match(s, /^[A-Za-z0-9+/]*={0,2}$/, 'generateMac key must be Base64');
  assert.equal(s.length % 4, 0, 'generateMac key must be padded Base64');
  return Buffer.from(s, 'base64');
}

/** generateMac(key, algorithm, data) as documented: key Base64, result base64. */
function generateMac(key, algorithm, data) {
  assert.equal(algorithm, 'HmacSHA256');
  return createHmac('sha256', strictBase64Decode(key)).update(String(data), 'utf8').digest('base64');
}

function element(value, changedTo) {
  return {
    toString: () => (value === null ? '' : String(value)),
    getValue: () => value,
    changesTo: (v) => changedTo !== undefined && String(v) === String(changedTo),
    nil: () => value === null || value === '',
  };
}

function makeCurrent(fields, table) {
  const current = {
    getTableName: () => table,
    getUniqueValue: () => fields.sys_id,
    getValue: (name) => (fields[name] === undefined ? null : fields[name]),
    active: element(fields.active, fields.active === 'false' ? false : undefined),
    correlation_id: element(fields.correlation_id),
  };
  return current;
}

/**
 * Runs the rule once. `flavor`: 'scoped' (CertificateEncryption, gs.base64Encode) or 'global'
 * (GlideCertificateEncryption, GlideStringUtil.base64Encode, no gs.base64Encode).
 */
function runRule({
  script = RULE,
  flavor = 'scoped',
  table = 'sc_req_item',
  fields = {},
  properties = {},
  status = 202,
  executeThrows = null,
} = {}) {
  const record = {
    sys_id: SYS_ID,
    number: 'RITM0010001',
    state: '3',
    active: 'false',
    correlation_id: 'accessgate:8f3b7c1e-5d2a-4e6f-9a0b-1c2d3e4f5a6b',
    ...fields,
  };
  const props = {
    'x_accessgate.webhook_secret': SECRET,
    'x_accessgate.endpoint': ENDPOINT,
    ...properties,
  };
  const logs = [];
  const requests = [];
  const macCalls = [];

  class RESTMessageV2 {
    constructor(name, method) {
      this.name = name;
      this.method = method;
      this.endpoint = null;
      this.headers = {};
      this.body = null;
      this.timeout = null;
      this.executed = 0;
      this.substitutionDisabled = false;
      requests.push(this);
    }
    setEndpoint(url) { this.endpoint = String(url); }
    setHttpTimeout(ms) { this.timeout = ms; }
    disableForcedVariableSubstitution() { this.substitutionDisabled = true; }
    setRequestHeader(name, value) { this.headers[String(name)] = String(value); }
    setRequestBody(body) { this.body = String(body); }
    setStringParameterNoEscape() {}
    execute() {
      this.executed += 1;
      if (executeThrows) throw executeThrows;
      return {
        getStatusCode: () => status,
        haveError: () => status < 200 || status >= 300,
        getErrorMessage: () => (status >= 200 && status < 300 ? '' : `Method failed: (/api/servicenow/events) with code: ${status}`),
        getBody: () => '',
      };
    }
  }

  const gs = {
    getProperty: (name, dflt) => (Object.hasOwn(props, name) ? props[name] : dflt),
    info: (msg) => logs.push({ level: 'info', msg: String(msg) }),
    warn: (msg) => logs.push({ level: 'warn', msg: String(msg) }),
    error: (msg) => logs.push({ level: 'error', msg: String(msg) }),
    debug: (msg) => logs.push({ level: 'debug', msg: String(msg) }),
    log: (msg) => logs.push({ level: 'log', msg: String(msg) }),
  };
  const b64 = (text) => Buffer.from(String(text), 'utf8').toString('base64');

  class GlideDateTime {
    getNumericValue() { return FIXED_MS; }
  }
  class Mac {
    generateMac(key, algorithm, data) {
      macCalls.push({ key, algorithm, data });
      return generateMac(key, algorithm, data);
    }
  }

  const sandbox = {
    current: makeCurrent(record, table),
    previous: null, // async rule
    gs,
    GlideDateTime,
    sn_ws: { RESTMessageV2 },
  };
  if (flavor === 'scoped') {
    gs.base64Encode = b64;
    sandbox.CertificateEncryption = Mac;
  } else {
    sandbox.GlideCertificateEncryption = Mac;
    sandbox.GlideStringUtil = { base64Encode: b64 };
  }
  vm.createContext(sandbox);
  vm.runInContext(script, sandbox, { filename: 'accessgate_ticket_closed.js' });
  return { requests, logs, macCalls, record };
}

function sent(result) {
  assert.equal(result.requests.length, 1, 'one REST message');
  const [req] = result.requests;
  assert.equal(req.executed, 1, 'executed once');
  return req;
}

// ---------------------------------------------------------------- tests

for (const flavor of ['scoped', 'global']) {
  test(`${flavor}: posts the contract's body, timestamp and a signature that verifies`, () => {
    const result = runRule({ flavor });
    const req = sent(result);

    assert.equal(req.name, 'accessgate');
    assert.equal(req.method, 'ticket_closed');
    assert.equal(req.endpoint, ENDPOINT);
    assert.equal(req.headers['Content-Type'], 'application/json');

    const body = JSON.parse(req.body);
    assert.deepEqual(Object.keys(body), ['table', 'sys_id', 'number', 'state', 'correlation_id', 'event']);
    assert.deepEqual(body, {
      table: 'sc_req_item',
      sys_id: SYS_ID,
      number: 'RITM0010001',
      state: '3',
      correlation_id: 'accessgate:8f3b7c1e-5d2a-4e6f-9a0b-1c2d3e4f5a6b',
      event: 'closed',
    });
    assert.match(body.sys_id, /^[0-9a-f]{32}$/);

    // Unix seconds, not milliseconds.
    assert.equal(req.headers['X-Accessgate-Timestamp'], String(FIXED_S));
    assert.ok(Number(req.headers['X-Accessgate-Timestamp']) < 1e11);

    // v1=<base64>, and exactly HMAC-SHA256(secret, ts + "." + body).
    const sig = req.headers['X-Accessgate-Signature'];
    assert.match(sig, /^v1=[A-Za-z0-9+/]{43}=$/);
    assert.equal(sig, `v1=${hmac(SECRET, String(FIXED_S), req.body).toString('base64')}`);
    assert.ok(verify(req.headers, req.body, SECRET));

    // The same MAC in hex is also what accessgate accepts.
    const hexHeaders = { ...req.headers, 'X-Accessgate-Signature': `v1=${hmac(SECRET, String(FIXED_S), req.body).toString('hex')}` };
    assert.ok(verify(hexHeaders, req.body, SECRET));

    // generateMac got the secret Base64 encoded, as ServiceNow requires.
    assert.equal(result.macCalls.length, 1);
    assert.equal(result.macCalls[0].key, Buffer.from(SECRET, 'utf8').toString('base64'));
    assert.equal(result.macCalls[0].data, `${FIXED_S}.${req.body}`);

    assert.ok(req.substitutionDisabled, 'forced variable substitution disabled');
    assert.deepEqual(result.logs.filter((l) => l.level === 'error'), []);
  });
}

test('the verifier rejects a wrong secret, a changed body or timestamp, and a stale timestamp', () => {
  const req = sent(runRule());
  assert.ok(verify(req.headers, req.body, SECRET));
  assert.equal(verify(req.headers, req.body, `${SECRET}x`), false);
  assert.equal(verify(req.headers, req.body.replace('"3"', '"4"'), SECRET), false);
  assert.equal(verify({ ...req.headers, 'X-Accessgate-Timestamp': String(FIXED_S + 1) }, req.body, SECRET), false);
  assert.equal(verify(req.headers, req.body, SECRET, FIXED_S + 301), false);
  assert.equal(verify(req.headers, req.body, SECRET, FIXED_S - 301), false);
  assert.ok(verify(req.headers, req.body, SECRET, FIXED_S + 300));
  const noPrefix = { ...req.headers, 'X-Accessgate-Signature': req.headers['X-Accessgate-Signature'].slice(3) };
  assert.equal(verify(noPrefix, req.body, SECRET), false);
});

/** What accessgate requires of one request; throws when it is not met. */
function assertContract(req, secret = SECRET) {
  assert.equal(req.headers['Content-Type'], 'application/json');
  const body = JSON.parse(req.body);
  assert.deepEqual(Object.keys(body), ['table', 'sys_id', 'number', 'state', 'correlation_id', 'event']);
  assert.equal(body.event, 'closed');
  assert.match(req.headers['X-Accessgate-Timestamp'] || '', /^[0-9]{1,10}$/, 'Unix seconds');
  assert.ok(verify(req.headers, req.body, secret), 'signature verifies');
}

test('the test catches a rule that signs or sends wrongly (mutation checks)', () => {
  assertContract(sent(runRule())); // the rule as written passes
  const mutations = [
    // the secret passed to generateMac without Base64 encoding
    ['generateMac(base64(secret)', 'generateMac(secret'],
    // the "." separator left out
    ["timestamp + '.' + body", 'timestamp + body'],
    // the body signed without the timestamp
    ["hmacSha256Base64(secret, timestamp + '.' + body)", 'hmacSha256Base64(secret, body)'],
    // milliseconds sent instead of seconds
    ['str(Math.floor(new GlideDateTime().getNumericValue() / 1000))', 'str(new GlideDateTime().getNumericValue())'],
    // no "v1=" prefix
    ["var signature = 'v1=' + ", 'var signature = '],
    // a header name misspelt
    ["'X-Accessgate-Signature'", "'X-Accessgate-Sig'"],
    // the event name wrong
    ["event: 'closed'", "event: 'close'"],
  ];
  for (const [from, to] of mutations) {
    assert.ok(RULE.includes(from), `mutation anchor present: ${from}`);
    const mutated = RULE.replace(from, to);
    assert.throws(() => assertContract(sent(runRule({ script: mutated }))), `mutation not detected: ${from} -> ${to}`);
  }
});

test('the secret never appears in a log line, header, endpoint or body', () => {
  const keyB64 = Buffer.from(SECRET, 'utf8').toString('base64');
  const scenarios = [
    {},
    { status: 500 },
    { status: 401 },
    { executeThrows: new Error('connection refused') },
    { properties: { 'x_accessgate.endpoint': '' } },
  ];
  for (const scenario of scenarios) {
    const result = runRule(scenario);
    const texts = result.logs.map((l) => l.msg);
    for (const req of result.requests) {
      texts.push(req.endpoint || '', req.body || '', ...Object.keys(req.headers), ...Object.values(req.headers));
    }
    for (const text of texts) {
      assert.ok(!text.includes(SECRET), `secret leaked: ${text}`);
      assert.ok(!text.includes(keyB64), `Base64 secret leaked: ${text}`);
    }
  }
});

test('a record whose correlation_id does not start with accessgate: sends nothing', () => {
  for (const correlation_id of ['', null, 'other:123', 'ACCESSGATE:123', ' accessgate:123', 'x-accessgate:1']) {
    const result = runRule({ fields: { correlation_id } });
    assert.equal(result.requests.length, 0, `sent for correlation_id ${JSON.stringify(correlation_id)}`);
    assert.equal(result.macCalls.length, 0);
  }
});

test('a record that is active again when the async job runs sends nothing', () => {
  for (const active of ['true', '1']) {
    const result = runRule({ fields: { active } });
    assert.equal(result.requests.length, 0);
    assert.ok(result.logs.some((l) => l.level === 'info' && l.msg.includes('RITM0010001')));
  }
});

test('a missing secret property sends nothing and logs an error', () => {
  const result = runRule({ properties: { 'x_accessgate.webhook_secret': '' } });
  assert.equal(result.requests.length, 0);
  const errors = result.logs.filter((l) => l.level === 'error');
  assert.equal(errors.length, 1);
  assert.match(errors[0].msg, /x_accessgate\.webhook_secret/);
});

test('without the endpoint property the REST message record endpoint is used', () => {
  const req = sent(runRule({ properties: { 'x_accessgate.endpoint': '' } }));
  assert.equal(req.endpoint, null, 'setEndpoint not called');
  assert.ok(verify(req.headers, req.body, SECRET));
});

test('a non-2xx answer is logged with gs.error', () => {
  for (const status of [500, 401, 409, 302]) {
    const result = runRule({ status });
    sent(result);
    const errors = result.logs.filter((l) => l.level === 'error');
    assert.equal(errors.length, 1, `status ${status}`);
    assert.match(errors[0].msg, new RegExp(`HTTP ${status}`));
    assert.match(errors[0].msg, /sc_req_item RITM0010001/);
  }
  for (const status of [200, 202, 204]) {
    assert.deepEqual(runRule({ status }).logs.filter((l) => l.level === 'error'), []);
  }
});

test('a transport failure is caught and logged with gs.error', () => {
  const result = runRule({ executeThrows: new Error('Connection refused') });
  sent(result);
  const errors = result.logs.filter((l) => l.level === 'error');
  assert.equal(errors.length, 1);
  assert.match(errors[0].msg, /not sent for sc_req_item RITM0010001: Connection refused/);
});

test('other tables: sc_task and incident use their own table name and state', () => {
  for (const [table, number, state] of [['sc_task', 'SCTASK0010001', '4'], ['incident', 'INC0010001', '7'], ['u_access_task', 'UAT0001001', '7']]) {
    const req = sent(runRule({ table, fields: { number, state } }));
    const body = JSON.parse(req.body);
    assert.equal(body.table, table);
    assert.equal(body.number, number);
    assert.equal(body.state, state);
    assert.ok(verify(req.headers, req.body, SECRET));
  }
});

test('non-ASCII and "$" in values go out as \\u escapes: ASCII bytes, same JSON value, valid signature', () => {
  const number = 'RITM-Ünïcødé-€-${x}-😀';
  const req = sent(runRule({ fields: { number } }));
  assert.match(req.body, /^[\x20-\x7e]*$/, 'body is printable ASCII');
  assert.ok(!req.body.includes('$'), 'no "$" left for variable substitution');
  assert.equal(JSON.parse(req.body).number, number);
  assert.ok(verify(req.headers, req.body, SECRET));
});

test('the condition documented in the header holds for a closing accessgate record', () => {
  const condition = RULE.match(/Condition \.+ (.+)\n/)[1].trim();
  const run = (fields) => {
    const sandbox = { current: makeCurrent({ sys_id: SYS_ID, ...fields }, 'sc_req_item'), String };
    return vm.runInNewContext(condition, sandbox);
  };
  assert.equal(run({ active: 'false', correlation_id: 'accessgate:1' }), true);
  assert.equal(run({ active: 'false', correlation_id: 'other:1' }), false);
  assert.equal(run({ active: 'true', correlation_id: 'accessgate:1' }), false);
});

test('the rule is ES5: no let/const, arrow functions, template or class syntax', () => {
  // Strip comments and string literals first, then look for ES2015+ syntax.
  const code = RULE
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/\/\/.*$/gm, '')
    .replace(/'(?:\\.|[^'\\])*'/g, "''");
  assert.doesNotMatch(code, /\blet\s|\bconst\s|=>|`|\bclass\s|\.\.\./);
  assert.match(RULE, /\(function executeRule\(current, previous[^)]*\) \{[\s\S]*\}\)\(current, previous\);\s*$/);
  new vm.Script(RULE); // parses
});
