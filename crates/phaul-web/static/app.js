// phaul-web's page: vanilla JS, written for this page, no libraries.
//
// Every API call carries the token in an Authorization header; the event
// stream is read with fetch (EventSource cannot send headers), so the token
// never appears in a URL. Everything from the hosts (process names, command
// lines, errors) is put in the page as text, never as HTML.
'use strict';

const state = {
  token: null,
  dragging: false,
  gen: 0, // bumped at each start: older polling loops stop
  localKey: '',
  remoteKey: '',
  migrations: new Map(),
  received: new Map(), // id -> time the last state arrived (for live downtime)
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-')) e.setAttribute(k, String(v));
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

// --- the token ------------------------------------------------------------

function takeTokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem('phaul-web-token', decodeURIComponent(m[1]));
    // Out of the address bar and the history.
    history.replaceState(null, '', location.pathname + location.search);
  }
  state.token = sessionStorage.getItem('phaul-web-token');
}

function showLogin(message) {
  state.token = null;
  sessionStorage.removeItem('phaul-web-token');
  $('app').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.hidden = !message;
  err.textContent = message || '';
  $('token').focus();
}

class Unauthorized extends Error {}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {}, {
    Authorization: 'Bearer ' + state.token,
  });
  const r = await fetch(path, Object.assign({}, opts, { headers, cache: 'no-store' }));
  if (r.status === 401) {
    showLogin('The server refused the token.');
    throw new Unauthorized('unauthorized');
  }
  return r;
}

async function apiJson(path, opts) {
  const r = await api(path, opts);
  let body = null;
  try {
    body = await r.json();
  } catch (e) {
    body = { error: 'the server answered ' + r.status + ' without JSON' };
  }
  return { ok: r.ok, status: r.status, body };
}

// --- the trees ------------------------------------------------------------

function buildTree(list, local) {
  const procs = list.processes || [];
  const own = new Set(list.own || []);
  const byPid = new Map(procs.map((p) => [p.pid, p]));
  const kids = new Map();
  const roots = [];
  for (const p of procs) {
    if (byPid.has(p.ppid) && p.ppid !== p.pid) {
      if (!kids.has(p.ppid)) kids.set(p.ppid, []);
      kids.get(p.ppid).push(p);
    } else {
      roots.push(p);
    }
  }
  const render = (ps, depth) => {
    const ul = el('ul');
    for (const p of ps.sort((a, b) => a.pid - b.pid)) {
      const li = el('li', { 'data-pid': p.pid });
      li.append(nodeFor(p, local, own.has(p.pid) || p.pid === 1));
      const ch = kids.get(p.pid);
      if (ch && depth < 64) li.append(render(ch, depth + 1));
      ul.append(li);
    }
    return ul;
  };
  return render(roots, 0);
}

function nodeFor(p, local, own) {
  const ct = p.container || '';
  const movable = local && !own;
  const n = el('div', {
    class: 'node' + (ct ? ' container' : '') + (own ? ' own' : ''),
    draggable: movable ? 'true' : null,
    tabindex: local ? '0' : null,
    'data-kind': ct ? 'container' : 'pid',
    'data-id': ct || p.pid,
    title: own ? 'phaul-web itself or one of its parents: not migratable'
      : (p.cmdline || p.name),
  });
  if (ct) n.append(el('span', { class: 'ctname', text: 'container ' + ct }));
  n.append(el('span', { class: 'name', text: p.name }));
  n.append(el('span', { class: 'pid', text: String(p.pid) }));
  if (p.cmdline) n.append(el('span', { class: 'cmd', text: p.cmdline }));
  if (movable) {
    const go = el('button', {
      class: 'go small', type: 'button', title: 'Migrate to the target', text: 'migrate →',
    });
    go.addEventListener('click', (e) => {
      e.stopPropagation();
      startMigration(ct ? { container: ct } : { pid: p.pid });
    });
    n.append(go);
    wireDrag(n, ct ? { container: ct } : { pid: p.pid });
    n.addEventListener('click', () => selectNode(n, p.pid));
  }
  return n;
}

function selectNode(n, pid) {
  document.querySelectorAll('.node.selected').forEach((x) => x.classList.remove('selected'));
  n.classList.add('selected');
  $('cp-pid').value = String(pid);
}

function renderContainers(ul, list, local) {
  ul.replaceChildren();
  const cts = list.containers || [];
  if (!cts.length) {
    ul.append(el('li', { class: 'empty', text: 'none' }));
    return;
  }
  for (const c of cts) {
    const running = c.state === 'RUNNING';
    const item = el('li', {},
      el('span', {
        class: 'ct',
        'data-container': c.name,
        draggable: local && running ? 'true' : null,
        title: local && running ? 'Drag onto the target to migrate' : null,
      },
      el('span', { class: 'ctname', text: c.name }),
      el('span', { class: 'state', text: c.state }),
      c.init_pid > 0 ? el('span', { class: 'pid', text: 'init ' + c.init_pid }) : null));
    if (local && running) wireDrag(item.firstChild, { container: c.name });
    ul.append(item);
  }
}

function wireDrag(n, what) {
  n.addEventListener('dragstart', (e) => {
    state.dragging = true;
    n.classList.add('dragging');
    e.dataTransfer.setData('application/x-phaul', JSON.stringify(what));
    e.dataTransfer.setData('text/plain', what.container ? 'container ' + what.container : 'pid ' + what.pid);
    e.dataTransfer.effectAllowed = 'move';
  });
  n.addEventListener('dragend', () => {
    state.dragging = false;
    n.classList.remove('dragging');
  });
}

function wireDrop() {
  const zone = $('remote-panel');
  const ours = (e) => Array.from(e.dataTransfer.types || []).includes('application/x-phaul');
  zone.addEventListener('dragenter', (e) => {
    if (ours(e)) { e.preventDefault(); zone.classList.add('over'); }
  });
  zone.addEventListener('dragover', (e) => {
    if (ours(e)) {
      e.preventDefault();
      e.dataTransfer.dropEffect = 'move';
      zone.classList.add('over');
    }
  });
  zone.addEventListener('dragleave', (e) => {
    if (!zone.contains(e.relatedTarget)) zone.classList.remove('over');
  });
  zone.addEventListener('drop', (e) => {
    zone.classList.remove('over');
    state.dragging = false;
    const raw = e.dataTransfer.getData('application/x-phaul');
    if (!raw) return;
    e.preventDefault();
    let what;
    try { what = JSON.parse(raw); } catch (err) { return; }
    startMigration(what);
  });
}

function showList(which, list) {
  const local = which === 'local';
  const key = JSON.stringify(list);
  if (key === state[which + 'Key']) return;
  state[which + 'Key'] = key;
  renderContainers($(which + '-containers'), list, local);
  $(which + '-tree').replaceChildren(buildTree(list, local));
  const n = (list.processes || []).length;
  const status = $(which + '-status');
  status.classList.remove('error');
  status.textContent = n + ' processes, ' + (list.containers || []).length + ' containers';
}

function showListError(which, message) {
  const status = $(which + '-status');
  status.classList.add('error');
  status.textContent = message;
  state[which + 'Key'] = '';
  $(which + '-tree').replaceChildren();
  $(which + '-containers').replaceChildren();
}

async function poll(which, gen) {
  if (gen !== state.gen || !state.token) return;
  // Never redraw under a drag: the dragged node would vanish.
  if (!state.dragging) {
    try {
      const r = await apiJson('/api/' + which);
      if (r.ok) showList(which, r.body);
      else showListError(which, (which === 'remote' ? 'target unreachable: ' : '') + r.body.error);
    } catch (e) {
      if (e instanceof Unauthorized) return;
      showListError(which, 'phaul-web unreachable: ' + e.message);
    }
  }
  setTimeout(() => poll(which, gen), 1000);
}

// --- migrations -------------------------------------------------------------

async function startMigration(what) {
  const body = Object.assign({ mode: $('mode').value }, what);
  try {
    const r = await apiJson('/api/migrate', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    if (r.ok) {
      const got = await apiJson('/api/migrations/' + r.body.id);
      if (got.ok) upsertMigration(got.body);
    } else {
      refusedCard(what, r.body.error || ('refused (' + r.status + ')'));
    }
  } catch (e) {
    if (!(e instanceof Unauthorized)) refusedCard(what, e.message);
  }
}

function refusedCard(what, message) {
  const box = $('migrations');
  box.querySelector('.none')?.remove();
  const label = what.container ? 'container ' + what.container : 'pid ' + what.pid;
  box.prepend(el('div', { class: 'migration refused', 'data-status': 'refused' },
    el('div', { class: 'title', text: 'Migration of ' + label + ' refused' }),
    el('div', { class: 'outcome', text: message })));
}

function mib(bytes) {
  return (bytes / 1048576).toFixed(1) + ' MiB';
}

function fmtMs(v) {
  return v === null || v === undefined ? '—' : v.toFixed(1) + ' ms';
}

function upsertMigration(m) {
  const prev = state.migrations.get(m.id);
  // Events may cross a fetched state: never go back from an end.
  if (prev && prev.status !== 'running' && m.status === 'running') return;
  state.migrations.set(m.id, m);
  state.received.set(m.id, performance.now());
  renderMigration(m);
}

function liveDowntime(m) {
  if (m.frozen && m.status === 'running' && m.downtime_ms !== null) {
    return m.downtime_ms + (performance.now() - (state.received.get(m.id) || performance.now()));
  }
  return m.downtime_ms;
}

function renderMigration(m) {
  const box = $('migrations');
  box.querySelector('.none')?.remove();
  let card = box.querySelector('.migration[data-id="' + m.id + '"]');
  if (!card) {
    card = el('div', { 'data-id': m.id });
    box.prepend(card);
  }
  card.className = 'migration ' + m.status;
  card.setAttribute('data-status', m.status);
  if (m.target_pid) card.setAttribute('data-target-pid', m.target_pid);
  const mode = m.mode ? (m.mode === m.requested_mode ? m.mode : m.requested_mode + ' → ' + m.mode)
    : m.requested_mode;
  const kids = [
    el('div', { class: 'title', text: 'Migration #' + m.id + ': ' + m.what + ' → target (mode ' + mode + ')' }),
    el('div', { class: 'facts' },
      el('span', {}, el('b', { text: 'phase' }), el('span', { class: 'phase', text: m.phase })),
      el('span', {}, el('b', { text: 'iterations' }), String(m.iterations)),
      el('span', {}, el('b', { text: 'sent' }), mib(m.bytes)),
      el('span', {}, el('b', { text: m.downtime_final ? 'downtime' : 'downtime so far' }),
        el('span', { class: 'downtime', text: fmtMs(liveDowntime(m)) })),
      el('span', {}, el('b', { text: 'elapsed' }), fmtMs(m.elapsed_ms))),
  ];
  if (m.mode_reason) kids.push(el('div', { class: 'hint', text: 'why this mode: ' + m.mode_reason }));
  if (m.status === 'succeeded') {
    kids.push(el('div', { class: 'outcome', text:
      'Migration succeeded: ' + m.what + ' now runs on the target as PID ' + m.target_pid +
      ' (downtime ' + fmtMs(m.downtime_ms) + ', ' + mib(m.bytes) + ' sent).' }));
  } else if (m.status === 'failed') {
    kids.push(el('div', { class: 'outcome', text:
      'Migration failed in phase ' + m.phase + ': ' + (m.error || 'unknown error') }));
    kids.push(el('div', { class: 'hint', text:
      'Until the target runs it, a failure resumes the source: ' + m.what + ' still runs here.' }));
  } else {
    const cancel = el('button', { class: 'small', type: 'button', text: 'cancel' });
    cancel.addEventListener('click', () => {
      api('/api/migrations/' + m.id + '/cancel', { method: 'POST' }).catch(() => {});
    });
    kids.push(el('div', {}, cancel));
  }
  const log = el('details', {}, el('summary', { text: 'log' }),
    el('pre', { text: (m.log || []).join('\n') }));
  kids.push(log);
  if (m.report) {
    kids.push(el('details', {}, el('summary', { text: 'report' }),
      el('pre', { class: 'report', text: JSON.stringify(m.report, null, 2) })));
  }
  // Keep open what the user opened.
  const open = Array.from(card.querySelectorAll('details')).map((d) => d.open);
  card.replaceChildren(...kids);
  card.querySelectorAll('details').forEach((d, i) => { d.open = !!open[i]; });
}

function tickDowntimes() {
  for (const m of state.migrations.values()) {
    if (m.status !== 'running' || !m.frozen) continue;
    const span = document.querySelector('.migration[data-id="' + m.id + '"] .downtime');
    if (span) span.textContent = fmtMs(liveDowntime(m));
  }
}

// Server-sent events, read with fetch so that the token goes in a header.
async function events(gen) {
  for (;;) {
    if (gen !== state.gen || !state.token) return;
    try {
      const r = await api('/api/events');
      if (!r.ok || !r.body) throw new Error('events: ' + r.status);
      $('live').textContent = 'live';
      $('live').className = 'live on';
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          handleEvent(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch (e) {
      if (e instanceof Unauthorized) return;
    }
    $('live').textContent = 'reconnecting';
    $('live').className = 'live off';
    await new Promise((res) => setTimeout(res, 1000));
  }
}

function handleEvent(chunk) {
  let type = 'message';
  const data = [];
  for (const line of chunk.split('\n')) {
    if (line.startsWith('event:')) type = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (!data.length) return;
  let v;
  try { v = JSON.parse(data.join('\n')); } catch (e) { return; }
  if (type === 'snapshot') v.forEach(upsertMigration);
  else if (type === 'migration') upsertMigration(v);
}

// --- checkpoint and restore ---------------------------------------------------

function wireCheckpoint() {
  $('checkpoint-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const out = $('cp-result');
    out.className = 'result';
    out.textContent = 'checkpointing…';
    try {
      const r = await apiJson('/api/checkpoint', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ pid: $('cp-pid').value.trim(), stop: $('cp-stop').checked }),
      });
      if (!r.ok) {
        out.className = 'result bad';
        out.textContent = 'Checkpoint failed: ' + r.body.error;
        return;
      }
      out.className = 'result ok';
      out.replaceChildren(
        'Checkpoint of PID ' + r.body.pid + ': ' + r.body.files + ' files, ' + mib(r.body.bytes) +
        (r.body.left_running ? '; it keeps running. ' : '; it was stopped. '));
      const dl = el('button', { type: 'button', class: 'small', text: 'download archive' });
      dl.addEventListener('click', () => download(r.body.archive, 'phaul-checkpoint-' + r.body.id + '.tar'));
      out.append(dl);
    } catch (err) {
      if (!(err instanceof Unauthorized)) {
        out.className = 'result bad';
        out.textContent = 'Checkpoint failed: ' + err.message;
      }
    }
  });
  $('restore-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const out = $('rs-result');
    const file = $('rs-file').files[0];
    if (!file) return;
    out.className = 'result';
    out.textContent = 'uploading and restoring…';
    try {
      const r = await apiJson('/api/restore', {
        method: 'POST',
        headers: { 'Content-Type': 'application/x-tar' },
        body: file,
      });
      out.className = r.ok ? 'result ok' : 'result bad';
      out.textContent = r.ok ? 'Restored: the tree runs here as PID ' + r.body.pid + '.'
        : 'Restore failed: ' + r.body.error;
    } catch (err) {
      if (!(err instanceof Unauthorized)) {
        out.className = 'result bad';
        out.textContent = 'Restore failed: ' + err.message;
      }
    }
  });
}

async function download(path, name) {
  const r = await api(path);
  if (!r.ok) return;
  const url = URL.createObjectURL(await r.blob());
  const a = el('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// --- start ------------------------------------------------------------------

async function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  try {
    const r = await apiJson('/api/info');
    if (!r.ok) return;
    $('target-addr').textContent = r.body.target;
    const sel = $('mode');
    sel.replaceChildren(...r.body.modes.map((m) => el('option', { value: m, text: m })));
    sel.value = r.body.default_mode;
  } catch (e) {
    return;
  }
  state.gen += 1;
  poll('local', state.gen);
  poll('remote', state.gen);
  events(state.gen);
}

document.addEventListener('DOMContentLoaded', () => {
  takeTokenFromFragment();
  wireDrop();
  wireCheckpoint();
  setInterval(tickDowntimes, 100);
  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token').value.trim();
    if (!t) return;
    sessionStorage.setItem('phaul-web-token', t);
    state.token = t;
    start();
  });
  $('logout').addEventListener('click', () => showLogin(''));
  // The printed URL opened in a tab that already shows the page only
  // changes the fragment: take the token from there too.
  window.addEventListener('hashchange', () => {
    if (!/token=/.test(location.hash)) return;
    takeTokenFromFragment();
    if (state.token) start();
  });
  if (state.token) start();
  else showLogin('');
});
