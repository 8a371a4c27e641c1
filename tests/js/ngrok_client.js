// Drives `sluice serve` with the official ngrok JavaScript client
// (@ngrok/ngrok-api from npm, pinned in package.json), unchanged: a full
// create / list across several pages / get / update / delete cycle of event
// destinations, subscriptions and sources, and errors.
//
// Usage: node ngrok_client.js BASE_URL API_KEY
//
// Two habits of this client shape the checks:
// - list() asks for page 2 onward with the query key `beforeId` (camelCase)
//   and the caller's `limit`, and reads `next_page_uri` only to decide
//   whether to go on;
// - delete() rejects with a SyntaxError even on a correct empty 204 (it
//   parses the empty body as JSON; it does the same against api.ngrok.com),
//   so every delete is confirmed by a get() that must answer 404.
'use strict';

const { Ngrok } = require('@ngrok/ngrok-api');

const [baseUrl, apiToken] = process.argv.slice(2);
if (!baseUrl || !apiToken) {
  console.error('usage: node ngrok_client.js BASE_URL API_KEY');
  process.exit(2);
}
const client = new Ngrok({ apiToken, baseUrl });

function check(cond, what) {
  if (!cond) throw new Error(`FAILED: ${what}`);
  console.log(`ok: ${what}`);
}

// Resolves to the client's error object (errorCode, statusCode, msg, details).
async function refusal(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  return null;
}

// delete() always rejects (see above); anything but that SyntaxError is a
// real failure. The deletion itself is confirmed by the 404 that follows.
async function remove(service, arg, get, notFoundCode, what) {
  const e = await refusal(service.delete(arg));
  check(e === null || e instanceof SyntaxError, `${what}: delete answered an empty 204 (${e && e.message})`);
  const gone = await refusal(get());
  check(gone && gone.statusCode === 404 && gone.errorCode === notFoundCode,
    `${what}: get after delete answers 404 ${notFoundCode} (got ${gone && gone.errorCode})`);
}

async function main() {
  const filePlugin = (path) => ({ plugin: { kind: 'file', config: { path } } });
  const kinesis = {
    kinesis: {
      auth: { role: { roleArn: 'arn:aws:iam::123456789012:role/example' } },
      streamArn: 'arn:aws:kinesis:us-east-2:123456789012:stream/mystream',
    },
  };

  // ---------------------------------------------------------- destinations
  const dest = await client.eventDestinations.create({
    description: 'kinesis dev stream', metadata: '{"environment":"dev"}', format: 'json', target: kinesis,
  });
  check(dest.id.startsWith('ed_'), 'create destination');
  check(dest.target.kinesis.streamArn === kinesis.kinesis.streamArn, 'target round-trips (camelCased by the client)');
  check(dest.target.kinesis.auth.role.roleArn === 'arn:aws:iam::123456789012:role/example', 'auth role round-trips');
  check(dest.target.datadog === null, 'unused targets are null');

  const got = await client.eventDestinations.get(dest.id);
  check(got.id === dest.id && got.description === 'kinesis dev stream', 'get destination');

  const upd = await client.eventDestinations.update({ id: dest.id, description: 'renamed' });
  check(upd.description === 'renamed' && upd.metadata === '{"environment":"dev"}', 'update destination (body carries id)');

  const extra = [];
  for (let i = 0; i < 6; i++) {
    extra.push(await client.eventDestinations.create({
      description: `page ${i}`, format: 'json', target: filePlugin(`out-${i}.ndjson`),
    }));
  }
  const expected = [dest, ...extra].map((d) => d.id).reverse();
  const listed = (await client.eventDestinations.list(undefined, '2')).map((d) => d.id);
  check(JSON.stringify(listed) === JSON.stringify(expected),
    `list pages through all ${expected.length} destinations, 2 a page, newest first (got ${listed.length})`);
  const fromMiddle = (await client.eventDestinations.list(expected[2], '2')).map((d) => d.id);
  check(JSON.stringify(fromMiddle) === JSON.stringify(expected.slice(3)), 'list from a beforeId the caller gives');

  // --------------------------------------------------------- subscriptions
  const subs = [];
  for (let i = 0; i < 5; i++) {
    subs.push(await client.eventSubscriptions.create({
      description: `subscription ${i}`,
      sources: [{ type: 'ip_policy_created.v0' }],
      destinationIds: [dest.id],
    }));
  }
  const sub = subs[0];
  check(sub.id.startsWith('esb_'), 'create subscription');
  check(sub.sources.map((s) => s.type).join() === 'ip_policy_created.v0', 'sources round-trip');
  check(sub.destinations.map((d) => d.id).join() === dest.id, 'destinations round-trip');
  check((await client.eventSubscriptions.get(sub.id)).description === 'subscription 0', 'get subscription');
  const subUpd = await client.eventSubscriptions.update({ id: sub.id, description: 'renamed sub' });
  check(subUpd.description === 'renamed sub' && subUpd.sources.length === 1, 'update subscription keeps its sources');
  const subsListed = (await client.eventSubscriptions.list(undefined, '2')).map((s) => s.id);
  check(JSON.stringify(subsListed) === JSON.stringify(subs.map((s) => s.id).reverse()),
    `list pages through all ${subs.length} subscriptions, 2 a page`);

  // --------------------------------------------------------------- sources
  const src = await client.eventSources.create({
    subscriptionId: sub.id, type: 'http_request_complete.v0',
  });
  check(src.type === 'http_request_complete.v0', 'create source (body carries subscription_id and type)');
  const srcGot = await client.eventSources.get({ subscriptionId: sub.id, type: 'http_request_complete.v0' });
  check(srcGot.type === 'http_request_complete.v0', 'get source');
  const srcList = await client.eventSources.list({ subscriptionId: sub.id });
  check(srcList.sources.map((s) => s.type).sort().join() === 'http_request_complete.v0,ip_policy_created.v0', 'list sources');
  const srcUpd = await client.eventSources.update({ subscriptionId: sub.id, type: 'http_request_complete.v0' });
  check(srcUpd.type === 'http_request_complete.v0', 'update source');
  await remove(client.eventSources, { subscriptionId: sub.id, type: 'http_request_complete.v0' },
    () => client.eventSources.get({ subscriptionId: sub.id, type: 'http_request_complete.v0' }),
    'ERR_NGROK_5125', 'source');

  // ---------------------------------------------------------------- errors
  const inUse = await refusal(client.eventDestinations.delete(dest.id));
  check(inUse && inUse.errorCode === 'ERR_NGROK_5112' && inUse.statusCode === 400,
    `deleting a destination in use fails with ERR_NGROK_5112 (got ${inUse && inUse.errorCode})`);
  check(inUse.details instanceof Map && String(inUse.details.get('operation_id') || inUse.details.get('operationId')).startsWith('op_'),
    'errors carry an operation id');
  const badType = await refusal(client.eventSubscriptions.create({ sources: [{ type: 'nope.v0' }] }));
  check(badType && badType.errorCode === 'ERR_NGROK_238', 'an unknown event type is refused');
  const badKey = await refusal(new Ngrok({ apiToken: 'not-a-key', baseUrl }).eventDestinations.list());
  check(badKey && badKey.statusCode === 401, 'a bad key is refused');

  // --------------------------------------------------------------- deletes
  for (const s of subs) {
    await remove(client.eventSubscriptions, s.id, () => client.eventSubscriptions.get(s.id), 'ERR_NGROK_5123', `subscription ${s.id}`);
  }
  for (const d of [dest, ...extra]) {
    await remove(client.eventDestinations, d.id, () => client.eventDestinations.get(d.id), 'ERR_NGROK_5103', `destination ${d.id}`);
  }
  check((await client.eventDestinations.list()).length === 0, 'nothing is left');
  console.log('all checks passed');
}

main().catch((e) => {
  console.error(e instanceof Error ? e.stack : JSON.stringify(e, (k, v) => (v instanceof Map ? Object.fromEntries(v) : v)));
  process.exit(1);
});
