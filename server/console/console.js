// The Sluice console: a page over the same public API any client uses.
// Everything a tenant controls (descriptions, filters, records, dead
// letters) is put in the page as text (textContent), never as HTML; the
// server's Content-Security-Policy allows no inline script and no other
// origin. The API key lives in sessionStorage only and goes in the
// Authorization header, never in a URL.
'use strict';

const KEY = 'sluice.api_key';
const main = () => document.getElementById('main');
let stopView = () => {};

// ---------------------------------------------------------------- helpers

/** An element with attributes (`on*` as listeners) and children (strings become text). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function toast(msg, bad) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = 'show' + (bad ? ' bad' : '');
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.className = ''; }, bad ? 8000 : 3000);
}

class ApiError extends Error {
  constructor(status, body) {
    const msg = (body && (body.msg || body.message)) || `HTTP ${status}`;
    super(body && body.error_code ? `${msg} (${body.error_code})` : msg);
    this.status = status;
    this.body = body;
  }
}

/** Calls the API with the session's key. */
async function api(method, path, body) {
  const headers = { 'Authorization': 'Bearer ' + sessionStorage.getItem(KEY), 'Ngrok-Version': '2' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) { signOut('Your API key was refused: sign in again.'); throw new ApiError(401, null); }
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

/** A `next_page_uri` as a path on this origin (null when there is none). */
function relative(uri) { return uri ? uri.replace(/^https?:\/\/[^/]+/, '') : null; }

/** Every page of a list (`key`: its array's name). */
async function listAll(path, key) {
  let out = [], next = path;
  while (next) {
    const page = await api('GET', relative(next));
    out = out.concat(page[key] || []);
    next = page.next_page_uri;
  }
  return out;
}

function fail(e) { toast(e.message || String(e), true); }

function bytes(n) {
  if (!n) return '0 B';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function ms(v) { return v >= 100 ? v.toFixed(0) : v.toFixed(1); }

function rate(now, before, secs) {
  if (before === undefined || secs <= 0) return '–';
  return ((now - before) / secs).toFixed(1);
}

// ---------------------------------------------------------------- sign in

function signOut(why) {
  sessionStorage.removeItem(KEY);
  location.hash = '#/signin';
  if (why) toast(why, true);
}

function viewSignIn(root) {
  document.getElementById('nav').hidden = true;
  const input = el('input', { type: 'password', id: 'api-key', autocomplete: 'off', required: true });
  const out = el('p', { class: 'error', id: 'signin-error' });
  const form = el('form', { class: 'card signin', id: 'signin', onsubmit: async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    try {
      await api('GET', '/event_destinations?limit=1');
      location.hash = '#/destinations';
    } catch (e) {
      sessionStorage.removeItem(KEY);
      out.textContent = e.status === 401 || e.status === undefined
        ? 'That key was refused. Use an API key of this server (sluice keys create, or the one printed at first start).'
        : e.message;
    }
  } },
  el('h1', {}, 'Sign in'),
  el('label', { for: 'api-key' }, 'API key', el('span', { class: 'hint' }, ' — kept in this tab only')),
  input, out, el('button', { type: 'submit' }, 'Sign in'));
  root.replaceChildren(form);
  input.focus();
}

// ---------------------------------------------------------------- destinations

let kindsCache = null;
async function kinds() {
  if (!kindsCache) kindsCache = (await api('GET', '/event_destination_kinds')).kinds;
  return kindsCache;
}

/** The member of a target that is set (the API shows the others as null): [member, its object]. */
function targetEntry(t) {
  return Object.entries(t || {}).find(([, v]) => v) || ['', {}];
}

function targetSummary(t) {
  const [member, body] = targetEntry(t);
  return member === 'plugin' ? `${body.kind} (plugin)` : member;
}

async function viewDestinations(root) {
  const page = el('div', {}, el('div', { class: 'row' }, el('h1', {}, 'Destinations'), el('span', { class: 'spacer' }),
    el('button', { id: 'new-destination', onclick: () => { location.hash = '#/destinations/new'; } }, 'New destination')));
  root.replaceChildren(page);
  const list = await listAll('/event_destinations?limit=100', 'event_destinations');
  const rows = list.map((d) => el('tr', { 'data-id': d.id },
    el('td', {}, el('a', { href: `#/destinations/${d.id}` }, d.description || d.id), el('div', { class: 'hint mono' }, d.id)),
    el('td', {}, targetSummary(d.target)),
    el('td', { class: 'opt' }, d.created_at)));
  page.append(list.length
    ? el('div', { class: 'table-wrap' }, el('table', { id: 'destinations' },
      el('thead', {}, el('tr', {}, el('th', {}, 'Destination'), el('th', {}, 'Kind'), el('th', { class: 'opt' }, 'Created'))),
      el('tbody', {}, rows)))
    : el('p', { class: 'card' }, 'No destinations yet: create one, then a subscription that sends events to it.'));
}

const SECRET = /key|secret|token|password|authorization|headers/i;

/** Form inputs for a JSON schema's properties; returns a function that reads the config. */
function schemaForm(schema, into, current) {
  const props = (schema && schema.properties) || {};
  const required = new Set((schema && schema.required) || []);
  const readers = [];
  for (const [name, p] of Object.entries(props)) {
    const id = 'cfg-' + name;
    const has = current && current[name] !== undefined;
    const hint = p.description ? ' — ' + p.description : '';
    into.append(el('label', { for: id }, name + (required.has(name) ? ' *' : ''), el('span', { class: 'hint' }, hint)));
    let input, read;
    if (p.enum) {
      input = el('select', { id }, p.enum.map((v) => el('option', { value: v, selected: (has ? current[name] : p.default) === v }, v)));
      read = () => input.value;
    } else if (p.type === 'boolean') {
      input = el('input', { type: 'checkbox', id, checked: has ? current[name] : p.default });
      read = () => input.checked;
    } else if (p.type === 'integer' || p.type === 'number') {
      input = el('input', { type: 'number', id, value: has ? current[name] : '' , placeholder: p.default ?? '' });
      read = () => (input.value === '' ? undefined : Number(input.value));
    } else if (p.type === 'object' || p.type === 'array') {
      const secret = SECRET.test(name);
      input = el('textarea', { id, placeholder: secret && has ? '(set: write it again to change it)' : 'JSON' });
      if (!secret && has) input.value = JSON.stringify(current[name], null, 2);
      read = () => { if (input.value.trim() === '') return undefined; try { return JSON.parse(input.value); } catch (e) { throw new Error(`${name} is not JSON: ${e.message}`); } };
    } else {
      const secret = SECRET.test(name);
      input = el('input', { type: secret ? 'password' : 'text', id, autocomplete: 'off',
        placeholder: secret && has ? '(set: write it again to change it)' : (p.default ?? '') });
      if (!secret && has) input.value = current[name];
      read = () => (input.value === '' ? undefined : input.value);
    }
    into.append(input);
    readers.push([name, read]);
  }
  return () => {
    const cfg = {};
    for (const [name, read] of readers) { const v = read(); if (v !== undefined) cfg[name] = v; }
    return cfg;
  };
}

async function viewNewDestination(root) {
  const ks = await kinds();
  const box = el('div');
  const kindSel = el('select', { id: 'kind' }, ks.map((k) => el('option', { value: k.kind }, k.kind + (k.ngrok_target ? '' : ' (plugin)'))));
  const desc = el('input', { type: 'text', id: 'description' });
  const verify = el('input', { type: 'checkbox', id: 'verify' });
  const out = el('p', { class: 'error', id: 'form-error' });
  let read = () => ({});
  const render = () => {
    const k = ks.find((x) => x.kind === kindSel.value);
    box.replaceChildren();
    read = schemaForm(k && k.config_schema, box, null);
  };
  kindSel.addEventListener('change', render);
  const form = el('form', { class: 'card', id: 'destination-form', onsubmit: async (ev) => {
    ev.preventDefault();
    out.textContent = '';
    try {
      const k = ks.find((x) => x.kind === kindSel.value);
      const cfg = read();
      const target = k.ngrok_target ? { [k.kind]: cfg } : { plugin: { kind: k.kind, config: cfg } };
      const d = await api('POST', '/event_destinations', { description: desc.value, target, verify_with_test_event: verify.checked });
      location.hash = `#/destinations/${d.id}`;
    } catch (e) { out.textContent = e.message + ' — fix the form and create it again.'; }
  } },
  el('h1', {}, 'New destination'),
  el('label', { for: 'kind' }, 'Kind'), kindSel,
  el('label', { for: 'description' }, 'Description'), desc, box,
  el('label', { class: 'row' }, verify, 'Send a test event first (not created if it is refused)'),
  out, el('div', { class: 'row' }, el('button', { type: 'submit', id: 'create-destination' }, 'Create'),
    el('a', { href: '#/destinations' }, 'Cancel')));
  root.replaceChildren(form);
  render();
  kindSel.focus();
}

async function viewDestination(root, id) {
  const [d, ks] = await Promise.all([api('GET', `/event_destinations/${id}`), kinds()]);
  // The configuration form of its kind, filled with what is stored
  // (secrets come back redacted: left empty, they stay as they are).
  const [member, body] = targetEntry(d.target);
  const kind = member === 'plugin' ? body.kind : member;
  const config = member === 'plugin' ? (body.config || {}) : body;
  const k = ks.find((x) => x.kind === kind);
  const cfgBox = el('div');
  const desc = el('input', { type: 'text', id: 'description', value: d.description || '' });
  const read = schemaForm(k && k.config_schema, cfgBox, config);
  const editOut = el('p', { class: 'error', id: 'edit-error' });
  const editForm = el('form', { class: 'card', id: 'destination-edit', onsubmit: async (ev) => {
    ev.preventDefault();
    editOut.textContent = '';
    try {
      const cfg = read();
      for (const [name, v] of Object.entries(config)) if (SECRET.test(name) && cfg[name] === undefined) cfg[name] = v;
      const target = member === 'plugin' ? { plugin: { ...body, config: cfg } } : { [member]: cfg };
      await api('PATCH', `/event_destinations/${id}`, { description: desc.value, target });
      toast('Saved');
    } catch (e) { editOut.textContent = e.message + ' — fix it and save again.'; }
  } }, el('h2', {}, 'Edit'), el('label', { for: 'description' }, 'Description'), desc, cfgBox, editOut, el('p'),
  el('button', { type: 'submit', id: 'save-destination' }, 'Save'));
  const outcome = el('p', { id: 'test-outcome', role: 'status' });
  const page = el('div', {},
    el('h1', {}, d.description || d.id),
    el('div', { class: 'card' },
      el('p', {}, 'Id ', el('code', {}, d.id), ' · kind ', targetSummary(d.target), ' · created ', d.created_at),
      el('pre', { class: 'mono', id: 'target' }, JSON.stringify({ [member]: body }, null, 2)),
      el('p', { class: 'hint' }, 'Secrets are write-only: they show as redacted.'),
      el('div', { class: 'row' },
        el('button', { id: 'send-test-event', onclick: async () => {
          outcome.textContent = 'Sending…';
          outcome.className = '';
          try {
            const r = await api('POST', `/event_destinations/${id}/test_event`);
            if (r.outcome === 'delivered') { outcome.textContent = 'Delivered: the destination accepted the test event.'; outcome.className = 'ok'; }
            else if (r.outcome === 'try_again') { outcome.textContent = `Not delivered now: ${r.reason}. Try again in a moment.`; outcome.className = 'warn'; }
            else { outcome.textContent = `Refused: ${r.reason}. Fix the destination's configuration.`; outcome.className = 'error'; }
          } catch (e) { outcome.textContent = e.message; outcome.className = 'error'; }
        } }, 'Send a test event'),
        el('a', { href: `#/dead-letters/${id}`, id: 'dead-letters-link' }, 'Dead letters'),
        el('span', { class: 'spacer' }),
        el('button', { class: 'danger', id: 'delete-destination', onclick: async () => {
          if (!confirm(`Delete destination ${id}? Its records are no longer delivered.`)) return;
          try { await api('DELETE', `/event_destinations/${id}`); toast('Deleted'); location.hash = '#/destinations'; } catch (e) { fail(e); }
        } }, 'Delete')),
      outcome),
    editForm);
  root.replaceChildren(page);
}

// ---------------------------------------------------------------- dead letters

async function viewDeadLetters(root, id) {
  const body = el('tbody');
  const info = el('p', { id: 'dl-info', class: 'hint' });
  const state = el('p', { id: 'replay-state', role: 'status' });
  const reason = el('input', { type: 'text', id: 'replay-reason', placeholder: 'all of them' });
  let next = null;
  const load = async (path, reset) => {
    const page = await api('GET', path);
    if (reset) body.replaceChildren();
    for (const d of page.dead_letters) {
      body.append(el('tr', { class: 'dead-letter' },
        el('td', { class: 'mono' }, d.time, el('div', { class: 'hint' }, `#${d.id} · ${d.attempts} attempt(s)`)),
        el('td', {}, d.reason),
        el('td', { class: 'opt' }, el('pre', {}, JSON.stringify(d.record)))));
    }
    next = relative(page.next_page_uri);
    more.hidden = !next;
    info.textContent = `${bytes(page.bytes)} used` + (page.max_bytes ? ` of ${bytes(page.max_bytes)}` : '') +
      (page.paused_records ? ` — PAUSED: ${page.paused_records} records wait for room; replay or delete to resume` : '');
    info.className = page.paused_records ? 'warn' : 'hint';
  };
  const more = el('button', { class: 'secondary', hidden: true, onclick: () => load(next, false).catch(fail) }, 'Older');
  const refresh = () => load(`/event_destinations/${id}/dead_letters?limit=50`, true).catch(fail);
  const replay = async () => {
    const sel = reason.value.trim() ? { reason: reason.value.trim() } : {};
    try {
      let r = await api('POST', `/event_destinations/${id}/dead_letters/replay`, sel);
      state.textContent = `Replay ${r.id}: ${r.records} records, ${r.state}`;
      while (r.state !== 'done') {
        await new Promise((ok) => setTimeout(ok, 500));
        r = await api('GET', `/event_destinations/${id}/dead_letters/replays/${r.id}`);
        state.textContent = `Replay ${r.id}: ${r.records} records, ${r.state}`;
      }
      state.className = 'ok';
      refresh();
    } catch (e) { state.textContent = e.message; state.className = 'error'; }
  };
  const download = async () => {
    try {
      const all = await listAll(`/event_destinations/${id}/dead_letters?limit=100`, 'dead_letters');
      const blob = new Blob(all.map((d) => JSON.stringify(d) + '\n'), { type: 'application/x-ndjson' });
      const a = el('a', { href: URL.createObjectURL(blob), download: `${id}-dead-letters.ndjson` });
      document.body.append(a); a.click(); a.remove();
    } catch (e) { fail(e); }
  };
  root.replaceChildren(el('div', {},
    el('h1', {}, 'Dead letters of ', el('a', { href: `#/destinations/${id}` }, id)),
    el('div', { class: 'card' },
      el('p', {}, 'Records the destination gave up on, newest first. Fix the destination, then replay: each record is sent again once; what fails again comes back here with its new reason.'),
      el('label', { for: 'replay-reason' }, 'Replay those whose reason contains'), reason,
      el('p'), el('div', { class: 'row' },
        el('button', { id: 'replay', onclick: replay }, 'Replay'),
        el('button', { class: 'secondary', id: 'refresh-dead-letters', onclick: refresh }, 'Refresh'),
        el('button', { class: 'secondary', onclick: download }, 'Download (NDJSON)')),
      state, info),
    el('div', { class: 'table-wrap' }, el('table', { id: 'dead-letters' },
      el('thead', {}, el('tr', {}, el('th', {}, 'When'), el('th', {}, 'Reason'), el('th', { class: 'opt' }, 'Record'))), body)),
    el('p'), more));
  await refresh();
}

// ---------------------------------------------------------------- subscriptions

let typesCache = null;
async function eventTypes() {
  if (!typesCache) typesCache = (await api('GET', '/event_types')).event_types;
  return typesCache;
}

async function viewSubscriptions(root) {
  const body = el('tbody');
  const more = el('button', { class: 'secondary', hidden: true, id: 'older-subscriptions' }, 'Older');
  const page = el('div', {}, el('div', { class: 'row' }, el('h1', {}, 'Subscriptions'), el('span', { class: 'spacer' }),
    el('button', { id: 'new-subscription', onclick: () => { location.hash = '#/subscriptions/new'; } }, 'New subscription')),
  el('div', { class: 'table-wrap' }, el('table', { id: 'subscriptions' },
    el('thead', {}, el('tr', {}, el('th', {}, 'Subscription'), el('th', {}, 'Sources'), el('th', { class: 'opt' }, 'Destinations'), el('th', {}, ''))),
    body)), el('p'), more);
  root.replaceChildren(page);
  const row = (s) => el('tr', { 'data-id': s.id },
    el('td', {}, el('a', { href: `#/subscriptions/${s.id}` }, s.description || s.id), el('div', { class: 'hint mono' }, s.id)),
    el('td', {}, (s.sources || []).map((src) => el('div', {}, src.type, src.filter ? el('div', { class: 'hint mono' }, src.filter) : null))),
    el('td', { class: 'opt mono' }, (s.destinations || []).map((d) => el('div', {}, d.id))),
    el('td', {}, el('div', { class: 'row' },
      el('a', { href: `#/tap/${s.id}` }, 'Live tail'),
      el('button', { class: 'danger', onclick: async () => {
        if (!confirm(`Delete subscription ${s.id}?`)) return;
        try { await api('DELETE', `/event_subscriptions/${s.id}`); toast('Deleted'); viewSubscriptions(root); } catch (e) { fail(e); }
      } }, 'Delete'))));
  // A page at a time: an account may hold thousands.
  let next = '/event_subscriptions?limit=100';
  const load = async () => {
    const page = await api('GET', next);
    body.append(...page.event_subscriptions.map(row));
    next = relative(page.next_page_uri);
    more.hidden = !next;
    if (!body.childElementCount) body.append(el('tr', {}, el('td', { colspan: 4 }, 'No subscriptions yet.')));
  };
  more.addEventListener('click', () => load().catch(fail));
  await load();
}

/** A sample event of `type`: every known field with a plausible value. */
function sampleEvent(t) {
  const obj = {};
  const put = (path, v) => {
    const parts = path.split('.');
    let o = obj;
    for (const p of parts.slice(0, -1)) o = (o[p] = o[p] || {});
    o[parts[parts.length - 1]] = v;
  };
  for (const f of t.fields || []) {
    const v = { bool: false, string: f.path.endsWith('method') ? 'GET' : 'example', int32: 200, int64: 1000,
      timestamp: '2026-12-05T10:00:00.000000000Z', string_list_map: { 'user-agent': ['curl/8'] }, string_map_list: [] }[f.type];
    put(f.path, v === undefined ? null : v);
  }
  return { event_id: 'ev_sample', event_type: t.type, event_timestamp: '2026-12-05T10:00:00Z', account_id: 'ac_sample', object: obj };
}

/** One source's editor (`initial`: a source to edit): type, filter
 * compiled as you type, fields, try it, remove. */
function sourceEditor(types, initial, onRemove) {
  const traffic = types.filter((t) => t.class === 'traffic');
  const typeSel = el('select', { class: 'source-type' }, types.map((t) => el('option', { value: t.type }, t.type)));
  typeSel.value = initial ? initial.type : traffic.length ? traffic[0].type : types[0].type;
  const filter = el('textarea', { class: 'filter', rows: 3, spellcheck: 'false', placeholder: "e.g. ev.http.response.status_code >= 500 && ev.http.request.method == 'POST'" });
  const status = el('div', { class: 'filter-status', role: 'status', 'aria-live': 'polite' });
  const fieldsBox = el('div', { class: 'fields' });
  const sample = el('textarea', { class: 'sample', rows: 6, spellcheck: 'false' });
  const result = el('div', { class: 'try-result' });
  const t = () => types.find((x) => x.type === typeSel.value);
  const renderFields = () => {
    fieldsBox.replaceChildren(...(t().fields || []).map((f) => el('label', {}, el('input', { type: 'checkbox', value: f.path }), el('span', { class: 'mono' }, f.path), el('span', { class: 'hint' }, f.type))));
    if (!(t().fields || []).length) fieldsBox.replaceChildren(el('span', { class: 'hint' }, 'Audit types take no filter and no fields.'));
    sample.value = JSON.stringify(sampleEvent(t()), null, 2);
    filter.disabled = t().class === 'audit';
  };
  let timer = null, seq = 0;
  const check = async (withEvent) => {
    const n = ++seq;
    const body = { type: typeSel.value, filter: filter.value };
    if (withEvent) {
      try { body.event = JSON.parse(sample.value); } catch (e) { result.replaceChildren(el('p', { class: 'error' }, 'The sample is not JSON: ' + e.message)); return; }
    }
    if (!filter.value.trim() && !withEvent) { status.replaceChildren(); return; }
    try {
      const r = await api('POST', '/event_filters/check', body);
      if (n !== seq && !withEvent) return;
      if (!r.ok) {
        const lines = filter.value.split('\n');
        const line = lines[r.error.line - 1] || '';
        status.replaceChildren(el('div', { class: 'filter-error' },
          el('div', { class: 'error filter-message' }, `Line ${r.error.line}, column ${r.error.column}: ${r.error.message}`),
          el('pre', { class: 'mono' }, line),
          el('pre', { class: 'mono caret-line', 'data-column': r.error.column }, ' '.repeat(Math.max(0, r.error.column - 1)) + '^')));
        filter.setAttribute('aria-invalid', 'true');
        return;
      }
      filter.removeAttribute('aria-invalid');
      status.replaceChildren(el('div', { class: 'filter-ok ok' }, `Compiles (${r.runs_on}); reads ${r.reads.length ? r.reads.join(', ') : 'nothing'}`),
        ...(r.warnings || []).map((w) => el('div', { class: 'warn' }, w)));
      if (withEvent && r.result) {
        result.replaceChildren(
          el('p', { class: r.result.verdict === 'match' ? 'ok verdict' : 'error verdict' },
            r.result.verdict === 'match' ? 'Match: this event would be delivered.' : r.result.verdict === 'no_match' ? 'No match: this event would be skipped.' : 'Error: the filter fails on this event (skipped, counted as a filter error).'),
          el('table', { class: 'clauses' }, el('tbody', {}, r.result.clauses.map((c) => el('tr', {}, el('td', {}, c.clause), el('td', {}, c.value))))));
      }
    } catch (e) { status.replaceChildren(el('p', { class: 'error' }, e.message)); }
  };
  filter.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => check(false), 200); });
  typeSel.addEventListener('change', () => { renderFields(); check(false); });
  const node = el('div', { class: 'source' },
    el('label', {}, 'Event type'), typeSel,
    el('label', {}, 'Filter', el('span', { class: 'hint' }, ' — CEL over ', el('code', {}, 'ev'), ', checked as you type')), filter, status,
    el('details', {}, el('summary', {}, 'Fields to keep (none: the whole event)'), fieldsBox),
    el('details', {}, el('summary', {}, 'Try the filter on a sample event'), sample, el('p'),
      el('button', { type: 'button', class: 'secondary try-filter', onclick: () => check(true) }, 'Try it'), result));
  renderFields();
  if (initial) {
    filter.value = initial.filter || '';
    for (const f of initial.fields || []) {
      const box = [...fieldsBox.querySelectorAll('input')].find((i) => i.value === f);
      if (box) box.checked = true;
    }
    if (filter.value) check(false);
  }
  node.append(el('button', { type: 'button', class: 'danger remove-source', onclick: () => { node.remove(); onRemove(); } }, 'Remove this source'));
  return {
    node,
    read: () => {
      const src = { type: typeSel.value };
      if (filter.value.trim() && !filter.disabled) src.filter = filter.value;
      const fields = [...fieldsBox.querySelectorAll('input:checked')].map((i) => i.value);
      if (fields.length) src.fields = fields;
      return src;
    },
  };
}

/** The subscription form: a new one, or `id` to edit (PATCH). */
async function viewSubscriptionForm(root, id) {
  const [types, dests, current] = await Promise.all([eventTypes(), listAll('/event_destinations?limit=100', 'event_destinations'),
    id ? api('GET', `/event_subscriptions/${id}`) : null]);
  const chosen = new Set(((current && current.destinations) || []).map((d) => d.id));
  const desc = el('input', { type: 'text', id: 'description', value: (current && current.description) || '' });
  const destBox = el('div', { class: 'fields', id: 'destination-choices' }, dests.map((d) => el('label', {},
    el('input', { type: 'checkbox', value: d.id, checked: chosen.has(d.id) }), d.description || d.id, el('span', { class: 'hint mono' }, d.id))));
  if (!dests.length) destBox.append(el('span', { class: 'hint' }, 'Create a destination first.'));
  let editors = [];
  const sources = el('div', { id: 'sources' });
  const add = (initial) => {
    const e = sourceEditor(types, initial, () => { editors = editors.filter((x) => x !== e); });
    editors.push(e);
    sources.append(e.node);
  };
  const initialSources = (current && current.sources) || [null];
  for (const src of initialSources) add(src);
  const out = el('p', { class: 'error', id: 'form-error' });
  const form = el('form', { class: 'card', id: 'subscription-form', onsubmit: async (ev) => {
    ev.preventDefault();
    out.textContent = '';
    try {
      const destination_ids = [...destBox.querySelectorAll('input:checked')].map((i) => i.value);
      const body = { description: desc.value, destination_ids, sources: editors.map((e) => e.read()) };
      const s = id ? await api('PATCH', `/event_subscriptions/${id}`, body) : await api('POST', '/event_subscriptions', body);
      if (id) toast('Saved');
      location.hash = id ? '#/subscriptions' : `#/tap/${s.id}`;
    } catch (e) { out.textContent = e.message + ' — fix it and save again.'; }
  } },
  el('h1', {}, id ? `Subscription ${id}` : 'New subscription'),
  el('label', { for: 'description' }, 'Description'), desc,
  el('label', {}, 'Send to'), destBox,
  el('h2', {}, 'Sources'), sources,
  el('button', { type: 'button', class: 'secondary', id: 'add-source', onclick: () => add(null) }, 'Add a source'),
  out, el('p'), el('div', { class: 'row' }, el('button', { type: 'submit', id: id ? 'save-subscription' : 'create-subscription' }, id ? 'Save' : 'Create'),
    el('a', { href: '#/subscriptions' }, 'Cancel')));
  root.replaceChildren(form);
  desc.focus();
}

// ---------------------------------------------------------------- live

async function viewLive(root) {
  const subsBody = el('tbody'), destBody = el('tbody');
  const shownOf = el('p', { class: 'hint' });
  root.replaceChildren(el('div', {}, el('h1', {}, 'Live'),
    el('p', { class: 'hint' }, 'Refreshed every second; rates are per second since the last refresh.'),
    el('h2', {}, 'Subscriptions'), shownOf,
    el('div', { class: 'table-wrap' }, el('table', { id: 'live-subscriptions' }, el('thead', {}, el('tr', {},
      el('th', {}, 'Subscription'), el('th', { class: 'num' }, 'Evaluated/s'), el('th', { class: 'num' }, 'Matched/s'),
      el('th', { class: 'num' }, 'Matched'), el('th', { class: 'num opt' }, 'Filter errors'))), subsBody)),
    el('h2', {}, 'Destinations'),
    el('div', { class: 'table-wrap' }, el('table', { id: 'live-destinations' }, el('thead', {}, el('tr', {},
      el('th', {}, 'Destination'), el('th', { class: 'num' }, 'Delivered/s'), el('th', { class: 'num' }, 'Delivered'),
      el('th', { class: 'num opt' }, 'Retried/s'), el('th', { class: 'num' }, 'Dead-lettered'), el('th', { class: 'num opt' }, 'In flight'),
      el('th', { class: 'num opt' }, 'p50 / p99 ms'), el('th', {}, 'Health'))), destBody))));
  let last = null, lastAt = 0;
  let live = true;
  stopView = () => { live = false; };
  while (live) {
    try {
      const s = await api('GET', '/event_stats?limit=100');
      shownOf.textContent = s.subscriptions_total > 100 ? `The 100 most matched of ${s.subscriptions_total} subscriptions.` : '';
      const now = performance.now(), secs = (now - lastAt) / 1000;
      subsBody.replaceChildren(...Object.entries(s.subscriptions).map(([id, c]) => {
        const b = last && last.subscriptions[id];
        return el('tr', { 'data-id': id }, el('td', { class: 'mono' }, el('a', { href: `#/tap/${id}` }, id)),
          el('td', { class: 'num' }, rate(c.evaluated, b && b.evaluated, secs)), el('td', { class: 'num' }, rate(c.matched, b && b.matched, secs)),
          el('td', { class: 'num matched' }, c.matched), el('td', { class: 'num opt' }, c.filter_errors));
      }));
      destBody.replaceChildren(...Object.entries(s.destinations).map(([id, c]) => {
        const b = last && last.destinations[id];
        return el('tr', { 'data-id': id }, el('td', { class: 'mono' }, el('a', { href: `#/destinations/${id}` }, id)),
          el('td', { class: 'num' }, rate(c.delivered, b && b.delivered, secs)), el('td', { class: 'num delivered' }, c.delivered),
          el('td', { class: 'num opt' }, rate(c.retried, b && b.retried, secs)),
          el('td', { class: 'num dead-lettered' }, el('a', { href: `#/dead-letters/${id}` }, c.dead_lettered)),
          el('td', { class: 'num opt' }, c.in_flight), el('td', { class: 'num opt' }, c.delivered ? `${ms(c.latency_p50_ms)} / ${ms(c.latency_p99_ms)}` : '–'),
          el('td', {}, c.healthy ? el('span', { class: 'badge ok' }, 'healthy') : el('span', { class: 'badge error', title: c.unhealthy_reason }, 'unhealthy: ' + c.unhealthy_reason)));
      }));
      last = s; lastAt = now;
    } catch (e) { fail(e); }
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

// ---------------------------------------------------------------- tap

async function viewTap(root, id) {
  const tail = el('div', { class: 'tail', id: 'tap' });
  const status = el('p', { class: 'hint', id: 'tap-status' }, 'Connecting…');
  root.replaceChildren(el('div', {}, el('h1', {}, 'Live tail of ', el('code', {}, id)),
    el('p', { class: 'hint' }, 'Records as the subscription makes them, sampled (at most 100 a second); a tap never slows delivery.'),
    status, tail));
  const ctl = new AbortController();
  stopView = () => ctl.abort();
  try {
    const r = await fetch(`/event_subscriptions/${id}/tap?rate=100`, {
      headers: { 'Authorization': 'Bearer ' + sessionStorage.getItem(KEY), 'Ngrok-Version': '2' }, signal: ctl.signal });
    if (!r.ok) { const b = await r.json().catch(() => null); throw new ApiError(r.status, b); }
    status.textContent = 'Live.';
    status.classList.add('live');
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i); buf = buf.slice(i + 1);
        if (!line) continue;
        const m = JSON.parse(line);
        if (m.record) {
          tail.prepend(el('pre', { class: 'tap-record' }, JSON.stringify(m.record)));
          while (tail.childElementCount > 200) tail.lastElementChild.remove();
        } else if (m.tap) {
          status.textContent = `Live: ${m.tap.sent} records shown, ${m.tap.skipped} skipped (over the rate, or not read fast enough).`;
        }
      }
    }
    status.textContent = 'The tap ended (the server stopped or the subscription is gone).';
  } catch (e) {
    if (e.name !== 'AbortError') status.textContent = e.message;
  }
}

// ---------------------------------------------------------------- routing

async function route() {
  document.getElementById('toast').className = '';
  stopView();
  stopView = () => {};
  const hash = location.hash || '#/destinations';
  // Each route renders into a container of its own: a slow view that
  // finishes after the user moved on renders into nothing.
  const root = el('div', { class: 'view' });
  main().replaceChildren(root);
  if (!sessionStorage.getItem(KEY)) { if (hash !== '#/signin') location.hash = '#/signin'; viewSignIn(root); return; }
  document.getElementById('nav').hidden = false;
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', hash.startsWith(a.getAttribute('href')));
  const [, view, id] = hash.split('/');
  const views = {
    signin: () => viewSignIn(root),
    destinations: () => (id === 'new' ? viewNewDestination(root) : id ? viewDestination(root, id) : viewDestinations(root)),
    'dead-letters': () => viewDeadLetters(root, id),
    subscriptions: () => (id === 'new' ? viewSubscriptionForm(root, null) : id ? viewSubscriptionForm(root, id) : viewSubscriptions(root)),
    live: () => viewLive(root),
    tap: () => viewTap(root, id),
    blank: () => {},
  };
  try {
    const shown = (views[view] || views.destinations)();
    if (document.activeElement === document.body) main().focus({ preventScroll: true });
    await shown;
  } catch (e) {
    root.replaceChildren(el('p', { class: 'card error' }, e.message));
  }
}

document.getElementById('sign-out').addEventListener('click', () => signOut());
window.addEventListener('hashchange', route);
route();
