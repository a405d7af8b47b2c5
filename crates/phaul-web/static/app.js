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
  received: new Map(), // id -> time the last state arrived (for live clocks)
  defaultMode: 'auto',
  defaultFs: 'native',
  pull: false, // whether the other host's trees can be moved here
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

// --- words and numbers ------------------------------------------------------

function plural(n, one, many) {
  return n + ' ' + (n === 1 ? one : (many || one + 'es'));
}

function procs(n) {
  return n === 1 ? '1 process' : n + ' processes';
}

function size(bytes) {
  if (bytes === undefined || bytes === null) return '';
  if (bytes >= 1073741824) return (bytes / 1073741824).toFixed(2) + ' GiB';
  if (bytes >= 1048576) return (bytes / 1048576).toFixed(1) + ' MiB';
  return Math.max(0, Math.round(bytes / 1024)) + ' KiB';
}

function mib(bytes) {
  return (bytes / 1048576).toFixed(1) + ' MiB';
}

function fmtMs(v) {
  if (v === null || v === undefined) return '—';
  if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 1 : 2) + ' s';
  return v.toFixed(1) + ' ms';
}

function fmtSecs(s) {
  if (s < 1) return 'under a second';
  if (s < 90) return Math.round(s) + ' s';
  return Math.round(s / 60) + ' min';
}

// Sets an element's text only when it changed: no needless layout work.
function setText(e, text) {
  if (e && e.textContent !== text) e.textContent = text;
}

// --- the trees ------------------------------------------------------------
//
// Each host's tree is kept as DOM nodes keyed by PID and reconciled with
// every new list: rows that stayed are updated in place (only the text that
// changed), new ones inserted where they belong, gone ones removed. Focus,
// selection, folding and the filter so survive the updates.

const trees = {
  local: { rows: new Map(), collapsed: new Set(), seen: new Set(), data: new Map(), list: null },
  remote: { rows: new Map(), collapsed: new Set(), seen: new Set(), data: new Map(), list: null },
};

// Subtrees with more children than this start folded: a busy parent (a
// shell with 200 jobs) does not push everything else off the screen.
const FOLD_ABOVE = 12;

function model(list) {
  const procsList = list.processes || [];
  const own = new Set(list.own || []);
  const byPid = new Map(procsList.map((p) => [p.pid, p]));
  const kids = new Map();
  const roots = [];
  for (const p of procsList) {
    if (byPid.has(p.ppid) && p.ppid !== p.pid) {
      if (!kids.has(p.ppid)) kids.set(p.ppid, []);
      kids.get(p.ppid).push(p.pid);
    } else {
      roots.push(p.pid);
    }
  }
  for (const k of kids.values()) k.sort((a, b) => a - b);
  roots.sort((a, b) => a - b);
  // Subtree sizes, children first (iterative: trees can be deep).
  const count = new Map();
  const rss = new Map();
  const order = [];
  const stack = roots.slice();
  while (stack.length) {
    const pid = stack.pop();
    order.push(pid);
    for (const c of kids.get(pid) || []) stack.push(c);
  }
  for (let i = order.length - 1; i >= 0; i -= 1) {
    const p = byPid.get(order[i]);
    let n = p.container ? (p.ct_procs || 1) : 1;
    let m = p.container ? (p.ct_mem || p.mem || 0) : (p.mem || 0);
    for (const c of kids.get(p.pid) || []) {
      n += count.get(c);
      m += rss.get(c);
    }
    count.set(p.pid, n);
    rss.set(p.pid, m);
  }
  return { byPid, kids, roots, own, count, rss, hasMem: procsList.some((p) => p.mem !== undefined) };
}

function makeRow(which, pid) {
  const local = which === 'local';
  const li = el('li', { role: 'none', 'data-pid': pid });
  const row = el('div', { class: 'node', role: 'treeitem', tabindex: '-1', 'data-pid': pid });
  const toggle = el('span', { class: 'toggle', 'aria-hidden': 'true' });
  toggle.addEventListener('click', (e) => {
    e.stopPropagation();
    setCollapsed(which, pid, !trees[which].collapsed.has(pid));
  });
  row.append(toggle,
    el('span', { class: 'ctname' }),
    el('span', { class: 'name' }),
    el('span', { class: 'pid' }),
    el('span', { class: 'cmd' }),
    el('span', { class: 'mem' }));
  // Rows of the other host move here only when phaul-web knows this
  // host's service (--this-host).
  if (local || state.pull) {
    const go = el('button', {
      class: 'go small', type: 'button', tabindex: '-1', text: local ? 'Migrate…' : 'Move here…',
      title: local ? 'Migrate this tree to the other host' : 'Move this tree to this host',
    });
    go.addEventListener('click', (e) => {
      e.stopPropagation();
      const what = whatOf(which, pid);
      if (what) openConfirm(what);
    });
    row.append(go);
    row.addEventListener('dragstart', (e) => dragStart(e, row, whatOf(which, pid)));
    row.addEventListener('dragend', () => dragEnd(row));
  }
  row.addEventListener('click', () => focusRow(which, pid, true));
  row.addEventListener('keydown', (e) => treeKey(e, which, pid));
  li.append(row);
  return { li, row, ul: null, sig: '' };
}

// What a row stands for in a migration request.
function whatOf(which, pid) {
  const p = trees[which].data.get(pid);
  if (!p) return null;
  const what = p.container ? { container: p.container } : { pid: p.pid };
  if (which === 'remote') what.from = 'remote';
  return what;
}

function fillRow(which, m, r, p) {
  const local = which === 'local';
  const own = local && (m.own.has(p.pid) || p.pid === 1);
  // The other host's service refuses its own lineage itself; its init is
  // never offered.
  const movable = local ? !own : (state.pull && p.pid !== 1);
  const n = m.count.get(p.pid);
  const kids = (m.kids.get(p.pid) || []).length;
  const memText = m.hasMem
    ? (n > 1 || p.container ? size(m.rss.get(p.pid)) + ' in ' + procs(n) : size(m.rss.get(p.pid)))
    : (n > 1 ? procs(n) : '');
  // The comm of a container's init says "init" for every container: name
  // the container instead, and the command only when it says more.
  const name = p.container ? '' : p.name;
  const sig = [p.name, p.cmdline, p.container, own, memText, kids > 0].join('\u0000');
  if (sig === r.sig) return;
  r.sig = sig;
  const row = r.row;
  row.className = 'node' + (p.container ? ' container' : '') + (own ? ' own' : '') +
    (row.classList.contains('selected') ? ' selected' : '');
  row.setAttribute('data-kind', p.container ? 'container' : 'pid');
  row.setAttribute('data-id', p.container || p.pid);
  if (movable) row.setAttribute('draggable', 'true');
  else row.removeAttribute('draggable');
  row.title = own ? 'phaul-web itself or one of its parents: not migratable' : (p.cmdline || p.name);
  const label = (p.container ? 'container ' + p.container : p.name) + ', PID ' + p.pid +
    (memText ? ', ' + memText : '');
  row.setAttribute('aria-label', label);
  const [, ct, nm, pidEl, cmd, mem] = row.children;
  setText(ct, p.container ? 'container ' + p.container : '');
  setText(nm, name);
  setText(pidEl, String(p.pid));
  setText(cmd, p.cmdline && p.cmdline !== p.name ? p.cmdline : '');
  setText(mem, memText);
  r.li.classList.toggle('has-kids', kids > 0);
}

// Makes `ul` hold exactly the rows of `pids`, in order, moving only what
// is out of place.
function syncList(which, ul, pids, m, depth) {
  const t = trees[which];
  let at = ul.firstElementChild;
  for (const pid of pids) {
    let r = t.rows.get(pid);
    if (!r) {
      r = makeRow(which, pid);
      t.rows.set(pid, r);
    }
    const p = m.byPid.get(pid);
    fillRow(which, m, r, p);
    r.row.setAttribute('aria-level', String(depth + 1));
    if (r.li !== at) ul.insertBefore(r.li, at);
    else at = at.nextElementSibling;
    const kids = m.kids.get(pid) || [];
    if (!t.seen.has(pid)) {
      t.seen.add(pid);
      if (kids.length > FOLD_ABOVE) t.collapsed.add(pid);
    }
    if (kids.length && depth < 64) {
      if (!r.ul) {
        r.ul = el('ul', { role: 'group' });
        r.li.append(r.ul);
      }
      syncList(which, r.ul, kids, m, depth + 1);
      r.row.setAttribute('aria-expanded', String(!t.collapsed.has(pid)));
    } else {
      if (r.ul) { r.ul.remove(); r.ul = null; }
      r.row.removeAttribute('aria-expanded');
    }
    r.li.classList.toggle('collapsed', t.collapsed.has(pid));
  }
  // What is left after the wanted rows is gone from the host.
  while (at) {
    const next = at.nextElementSibling;
    at.remove();
    at = next;
  }
}

function renderTree(which, list) {
  const t = trees[which];
  const m = model(list);
  t.model = m;
  t.data = m.byPid;
  const box = $(which + '-tree');
  let root = box.firstElementChild;
  if (!root) {
    root = el('ul', { role: 'none' });
    box.append(root);
  }
  const hadFocus = box.contains(document.activeElement);
  syncList(which, root, m.roots, m, 0);
  // Forget rows of processes that ended.
  for (const pid of Array.from(t.rows.keys())) {
    if (!m.byPid.has(pid)) {
      t.rows.get(pid).li.remove();
      t.rows.delete(pid);
      t.seen.delete(pid);
      t.collapsed.delete(pid);
    }
  }
  if (t.current === undefined || !t.rows.has(t.current)) {
    // The focused process ended: its parent, or the first row, takes over.
    const gone = t.current !== undefined ? t.lastParent : undefined;
    t.current = t.rows.has(gone) ? gone : m.roots[0];
    updateRoving(which);
    if (hadFocus && !box.contains(document.activeElement)) focusRow(which, t.current, false);
  }
  if (which === 'local') applyFilter();
}

function updateRoving(which) {
  const t = trees[which];
  const box = $(which + '-tree');
  box.querySelectorAll('.node[tabindex="0"]').forEach((n) => {
    if (Number(n.dataset.pid) !== t.current) n.setAttribute('tabindex', '-1');
  });
  const r = t.rows.get(t.current);
  if (r) r.row.setAttribute('tabindex', '0');
}

function focusRow(which, pid, select) {
  const t = trees[which];
  const r = t.rows.get(pid);
  if (!r) return;
  t.current = pid;
  const p = t.data.get(pid);
  t.lastParent = p ? p.ppid : undefined;
  updateRoving(which);
  r.row.focus({ preventScroll: false });
  if (select && which === 'local') {
    document.querySelectorAll('.node.selected').forEach((x) => x.classList.remove('selected'));
    r.row.classList.add('selected');
    r.row.setAttribute('aria-selected', 'true');
    $('cp-pid').value = String(pid);
  }
}

function setCollapsed(which, pid, folded) {
  const t = trees[which];
  const r = t.rows.get(pid);
  if (!r || !r.ul) return;
  if (folded) t.collapsed.add(pid);
  else t.collapsed.delete(pid);
  r.li.classList.toggle('collapsed', folded);
  r.row.setAttribute('aria-expanded', String(!folded));
}

// The rows a person can see now, in order.
function visibleRows(which) {
  return Array.from($(which + '-tree').querySelectorAll('.node')).filter((n) => n.offsetParent !== null);
}

function treeKey(e, which, pid) {
  const t = trees[which];
  const rows = visibleRows(which);
  const i = rows.findIndex((n) => Number(n.dataset.pid) === pid);
  const go = (n) => {
    if (!n) return;
    e.preventDefault();
    focusRow(which, Number(n.dataset.pid), true);
  };
  const r = t.rows.get(pid);
  const open = r && r.ul && (!t.collapsed.has(pid) || r.li.classList.contains('filter-open'));
  switch (e.key) {
    case 'ArrowDown': go(rows[i + 1]); break;
    case 'ArrowUp': go(rows[i - 1]); break;
    case 'Home': go(rows[0]); break;
    case 'End': go(rows[rows.length - 1]); break;
    case 'ArrowRight':
      e.preventDefault();
      if (r && r.ul && !open) setCollapsed(which, pid, false);
      else if (open) go(rows[i + 1]);
      break;
    case 'ArrowLeft': {
      e.preventDefault();
      if (open) setCollapsed(which, pid, true);
      else {
        const p = t.data.get(pid);
        if (p && t.rows.has(p.ppid)) go(t.rows.get(p.ppid).row);
      }
      break;
    }
    case 'Enter':
    case ' ': {
      if (which !== 'local' && !state.pull) break;
      e.preventDefault();
      const row = r && r.row;
      if (row && row.getAttribute('draggable') === 'true') openConfirm(whatOf(which, pid));
      break;
    }
    default:
  }
}

// --- the filter -------------------------------------------------------------

function matches(p, q) {
  return String(p.pid) === q || (p.name || '').toLowerCase().includes(q) ||
    (p.cmdline || '').toLowerCase().includes(q) || (p.container || '').toLowerCase().includes(q);
}

// Shows the rows that match and their ancestors (unfolded so that the
// matches are in view); hides the rest. The containers list follows.
function applyFilter() {
  const t = trees.local;
  const m = t.model;
  const q = $('filter').value.trim().toLowerCase();
  const count = $('filter-count');
  if (!m) return;
  if (!q) {
    for (const r of t.rows.values()) {
      r.li.hidden = false;
      r.li.classList.remove('filter-open');
      r.row.classList.remove('match');
    }
    document.querySelectorAll('#local-containers li').forEach((li) => { li.hidden = false; });
    setText(count, '');
    return;
  }
  const shown = new Set();
  const open = new Set();
  let hits = 0;
  for (const p of m.byPid.values()) {
    if (!matches(p, q)) continue;
    hits += 1;
    shown.add(p.pid);
    let a = m.byPid.get(p.ppid);
    let guard = 0;
    while (a && !shown.has(a.pid) && guard < 4096) {
      shown.add(a.pid);
      open.add(a.pid);
      a = m.byPid.get(a.ppid);
      guard += 1;
    }
    // Ancestors already shown by another match still open for this one.
    for (let b = m.byPid.get(p.ppid); b && !open.has(b.pid); b = m.byPid.get(b.ppid)) open.add(b.pid);
  }
  for (const [pid, r] of t.rows) {
    r.li.hidden = !shown.has(pid);
    r.li.classList.toggle('filter-open', open.has(pid));
    r.row.classList.toggle('match', shown.has(pid) && matches(m.byPid.get(pid), q));
  }
  document.querySelectorAll('#local-containers li[data-ct]').forEach((li) => {
    li.hidden = !li.dataset.ct.toLowerCase().includes(q);
  });
  setText(count, hits === 0 ? 'nothing matches' : plural(hits, 'match'));
}

// --- containers ---------------------------------------------------------------

function renderContainers(which, list) {
  const ul = $(which + '-containers');
  const local = which === 'local';
  const cts = list.containers || [];
  const inits = new Map((list.processes || []).filter((p) => p.container).map((p) => [p.container, p]));
  const key = JSON.stringify(cts.map((c) => [c.name, c.state, c.init_pid,
    (inits.get(c.name) || {}).ct_mem, (inits.get(c.name) || {}).ct_procs]));
  if (ul.dataset.key === key) return;
  ul.dataset.key = key;
  const focused = document.activeElement && ul.contains(document.activeElement)
    ? document.activeElement.closest('[data-container]') : null;
  const focusName = focused ? focused.dataset.container : null;
  if (!cts.length) {
    ul.replaceChildren(el('li', { class: 'empty', text: 'none' }));
    return;
  }
  const items = cts.map((c) => {
    const running = c.state === 'RUNNING';
    const movable = running && (local || state.pull);
    const init = inits.get(c.name);
    const mem = init && init.ct_mem !== undefined
      ? size(init.ct_mem) + ' in ' + procs(init.ct_procs || 1) : '';
    const ct = el('span', {
      class: 'ct',
      'data-container': c.name,
      draggable: movable ? 'true' : null,
      tabindex: movable ? '0' : null,
      role: movable ? 'button' : null,
      'aria-label': movable ? 'container ' + c.name + ', ' + c.state.toLowerCase() + (mem ? ', ' + mem : '') : null,
      title: movable ? (local ? 'Drag onto the other host, or press Enter, to migrate'
        : 'Drag onto this host, or press Enter, to move it here') : null,
    },
    el('span', { class: 'ctname', text: c.name }),
    el('span', { class: 'state', text: c.state.toLowerCase() }),
    c.init_pid > 0 ? el('span', { class: 'pid', text: 'PID ' + c.init_pid }) : null,
    mem ? el('span', { class: 'mem', text: mem }) : null);
    if (movable) {
      const what = local ? { container: c.name } : { container: c.name, from: 'remote' };
      ct.addEventListener('dragstart', (e) => dragStart(e, ct, what));
      ct.addEventListener('dragend', () => dragEnd(ct));
      ct.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); openConfirm(what); }
      });
      ct.addEventListener('click', () => openConfirm(what));
    }
    return el('li', { 'data-ct': c.name }, ct);
  });
  ul.replaceChildren(...items);
  if (focusName) {
    const again = ul.querySelector('.ct[data-container="' + CSS.escape(focusName) + '"]');
    if (again) again.focus();
  }
  if (local) applyFilter();
}

// --- drag and drop ------------------------------------------------------------

// Which panel a drag may be dropped on is known from its data's types
// alone (a drop zone cannot read the data before the drop).
const DRAG_OUT = 'application/x-phaul-out';
const DRAG_IN = 'application/x-phaul-in';

function dragStart(e, n, what) {
  if (!what) return;
  state.dragging = true;
  n.classList.add('dragging');
  e.dataTransfer.setData(what.from === 'remote' ? DRAG_IN : DRAG_OUT, JSON.stringify(what));
  e.dataTransfer.setData('text/plain', what.container ? 'container ' + what.container : 'pid ' + what.pid);
  e.dataTransfer.effectAllowed = 'move';
}

function dragEnd(n) {
  state.dragging = false;
  n.classList.remove('dragging');
}

// Each panel takes what comes from the other one: the other host's panel
// this host's trees, this host's panel the other host's.
function wireDrop() {
  dropZone($('remote-panel'), DRAG_OUT);
  dropZone($('local-panel'), DRAG_IN);
}

function dropZone(zone, type) {
  const ours = (e) => Array.from(e.dataTransfer.types || []).includes(type);
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
    const raw = e.dataTransfer.getData(type);
    if (!raw) return;
    e.preventDefault();
    let what;
    try { what = JSON.parse(raw); } catch (err) { return; }
    openConfirm(what);
  });
}

// --- polling the hosts --------------------------------------------------------

function showList(which, list) {
  const key = JSON.stringify(list);
  if (key === state[which + 'Key']) return;
  state[which + 'Key'] = key;
  trees[which].list = list;
  renderContainers(which, list);
  renderTree(which, list);
  const n = (list.processes || []).length;
  const c = (list.containers || []).length;
  const status = $(which + '-status');
  status.classList.remove('error');
  setText(status, procs(n) + ', ' + (c === 1 ? '1 container' : c + ' containers'));
}

function showListError(which, message) {
  const status = $(which + '-status');
  status.classList.add('error');
  setText(status, message);
  state[which + 'Key'] = '';
}

async function poll(which, gen) {
  if (gen !== state.gen || !state.token) return;
  // Never redraw under a drag: the dragged node would vanish.
  if (!state.dragging) {
    try {
      const r = await apiJson('/api/' + which);
      if (r.ok) showList(which, r.body);
      else showListError(which, (which === 'remote' ? 'other host unreachable: ' : '') + r.body.error);
    } catch (e) {
      if (e instanceof Unauthorized) return;
      showListError(which, 'phaul-web unreachable: ' + e.message);
    }
  }
  setTimeout(() => poll(which, gen), 1000);
}

// --- the confirmation -----------------------------------------------------------

const confirmState = { what: null, seq: 0 };

// What moves: the root, its processes and memory, its container.
function facts(what) {
  const t = what.from === 'remote' ? trees.remote : trees.local;
  const m = t.model;
  // The other host's list carries no memory: its service counts it.
  const mem = (v) => (m && m.hasMem ? v : null);
  if (what.container) {
    const init = m && Array.from(m.byPid.values()).find((p) => p.container === what.container);
    return {
      title: 'container ' + what.container,
      root: init ? 'init, PID ' + init.pid : 'its init',
      count: init && m.hasMem ? (init.ct_procs || 1) : null,
      rss: init ? mem(init.ct_mem || init.mem || 0) : null,
      container: what.container,
      fs: true,
    };
  }
  const p = m && m.byPid.get(Number(what.pid));
  return {
    title: p ? p.name + ' (PID ' + p.pid + ')' : 'PID ' + what.pid,
    root: p ? p.name + ', PID ' + p.pid + (p.cmdline ? ': ' + p.cmdline : '') : 'PID ' + what.pid,
    count: p ? m.count.get(p.pid) : null,
    rss: p ? mem(m.rss.get(p.pid)) : null,
    container: p && p.container ? p.container : '',
    fs: false,
  };
}

function openConfirm(what) {
  if (!what) return;
  const d = $('confirm');
  const f = facts(what);
  confirmState.what = what;
  const pull = what.from === 'remote';
  const other = $('target-addr').textContent || 'the other host';
  setText($('confirm-title'), pull
    ? 'Move ' + f.title + ' from ' + other + ' to this host?'
    : 'Migrate ' + f.title + ' to ' + other + '?');
  const dl = $('confirm-facts');
  const row = (k, v) => [el('dt', { text: k }), el('dd', { text: v })];
  dl.replaceChildren(
    ...row('Root', f.root),
    ...row('Processes', f.count === null ? 'unknown' : procs(f.count)),
    ...row('Memory', f.rss === null ? 'counted by the other host as it starts' : size(f.rss) + ' to copy'),
    ...row('Container', f.container ? f.container : 'none (a plain process tree)'));
  setText($('confirm-scope'), f.count > 1
    ? 'The whole tree moves: ' + f.title + ' and ' + plural(f.count - 1, 'process', 'processes') +
      ' below it, paused together for the switch-over.'
    : f.title + ' moves alone; it is paused for the switch-over.');
  const fsSel = $('confirm-fs');
  fsSel.disabled = !f.fs || pull;
  setText($('confirm-fs-note'), pull && f.fs
    ? 'The other host\'s service moves the container\'s files with its own driver (native).'
    : f.fs
      ? 'native: phaul copies the container\'s files over its own link. shared: both hosts see the same storage, nothing is copied.'
      : 'A process tree has no file system of its own: nothing but memory and state moves.');
  $('confirm-mode').value = state.defaultMode || 'auto';
  fsSel.value = state.defaultFs || 'native';
  d.returnValue = '';
  if (!d.open) d.showModal();
  $('confirm-go').focus();
  askPlan();
}

// Asks the server what the chosen mode comes to on these two hosts, and
// why (a dry run: nothing is frozen).
async function askPlan() {
  const what = confirmState.what;
  const seq = ++confirmState.seq;
  const out = $('confirm-plan');
  const mode = $('confirm-mode').value;
  if (what && what.from === 'remote') {
    // The control API orders migrations but has no dry run: the other
    // host's service checks the tree when the order arrives, and a
    // refusal comes back at once with its reason.
    out.className = 'plan ok remote';
    setText(out, 'The other host\'s service checks the tree and picks what ' + mode +
      ' means there when the order arrives (no dry run across hosts); the card shows its choice and why.');
    return;
  }
  out.className = 'plan';
  setText(out, 'asking both hosts what ' + mode + ' means here…');
  try {
    const r = await apiJson('/api/plan', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(Object.assign({ mode, fs: $('confirm-fs').value }, what)),
    });
    if (seq !== confirmState.seq) return;
    if (r.ok) {
      out.className = 'plan ok';
      setText(out, (r.body.requested === 'auto' ? 'auto picks ' + r.body.mode : r.body.mode + ' works here') +
        ': ' + r.body.reason);
    } else {
      out.className = 'plan bad';
      setText(out, 'Not possible as it stands: ' + r.body.error);
    }
  } catch (e) {
    if (seq === confirmState.seq && !(e instanceof Unauthorized)) {
      out.className = 'plan bad';
      setText(out, 'Could not ask: ' + e.message);
    }
  }
}

function wireConfirm() {
  const d = $('confirm');
  $('confirm-mode').addEventListener('change', askPlan);
  $('confirm-fs').addEventListener('change', askPlan);
  d.addEventListener('close', () => {
    const what = confirmState.what;
    confirmState.seq += 1;
    if (d.returnValue === 'go' && what) {
      const fs = $('confirm-fs').disabled ? undefined : $('confirm-fs').value;
      startMigration(what, $('confirm-mode').value, fs);
    }
    confirmState.what = null;
  });
}

// --- migrations -------------------------------------------------------------

async function startMigration(what, mode, fs) {
  const body = Object.assign({ mode }, fs ? { fs } : {}, what);
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
  const label = (what.container ? 'container ' + what.container : 'PID ' + what.pid) +
    (what.from === 'remote' ? ' of the other host' : '');
  box.prepend(el('article', { class: 'migration refused', 'data-status': 'refused' },
    el('div', { class: 'head' },
      el('h3', { class: 'title', text: label + ': not started' }),
      el('span', { class: 'badge', text: 'refused' })),
    el('div', { class: 'outcome', text: message })));
}

function upsertMigration(m) {
  const prev = state.migrations.get(m.id);
  // Events may cross a fetched state: never go back from an end.
  if (prev && prev.status !== 'running' && m.status === 'running') return;
  state.migrations.set(m.id, m);
  state.received.set(m.id, performance.now());
  trackRate(m);
  renderMigration(m);
}

// Recent (time, bytes) points of each running migration, for its ETA.
const samples = new Map();

function trackRate(m) {
  const now = performance.now();
  const s = samples.get(m.id) || [];
  if (!s.length || s[s.length - 1][1] !== m.bytes) s.push([now, m.bytes]);
  while (s.length > 2 && now - s[0][0] > 3000) s.shift();
  samples.set(m.id, s);
}

function eta(m) {
  const s = samples.get(m.id) || [];
  if (s.length < 2 || !m.expected_bytes) return '';
  const [t0, b0] = s[0];
  const [t1, b1] = s[s.length - 1];
  const rate = (b1 - b0) / Math.max(1, t1 - t0) * 1000;
  if (rate <= 0) return '';
  const left = Math.max(0, m.expected_bytes - m.bytes);
  return left > 0 ? 'about ' + fmtSecs(left / rate) + ' left' : 'almost done';
}

function live(m, field) {
  const since = performance.now() - (state.received.get(m.id) || performance.now());
  if (m.status !== 'running' || m[field] === null || m[field] === undefined) return m[field];
  return m[field] + since;
}

function liveDowntime(m) {
  return m.frozen ? live(m, 'downtime_ms') : m.downtime_ms;
}

function cardSkeleton(m) {
  const cancel = el('button', { class: 'small ghost cancel', type: 'button', text: 'Cancel migration' });
  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try {
      const r = await apiJson('/api/migrations/' + m.id + '/cancel', { method: 'POST' });
      if (!r.ok) setText(cancel, r.body.error || 'cannot cancel');
    } catch (e) {
      cancel.disabled = false;
    }
  });
  const fact = (k, cls) => el('span', { class: 'fact ' + cls }, el('b', { text: k }), el('span', { class: 'v' }));
  return el('article', { class: 'migration', 'data-id': m.id, 'aria-label': 'migration ' + m.id },
    el('div', { class: 'head' },
      el('h3', { class: 'title' }),
      el('span', { class: 'badge' })),
    el('div', { class: 'bar', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-label': 'bytes sent' },
      el('div', { class: 'fill' })),
    el('div', { class: 'barline' },
      el('span', { class: 'sent' }),
      el('span', { class: 'eta' })),
    el('div', { class: 'phase-line' }, el('span', { class: 'phase' })),
    el('div', { class: 'facts' },
      fact('mode', 'mode'), fact('iterations', 'iterations'),
      fact('downtime', 'downtime-f'), fact('elapsed', 'elapsed')),
    el('div', { class: 'hint why' }),
    el('div', { class: 'outcome' }),
    el('div', { class: 'detail' }),
    el('div', { class: 'actions' }, cancel),
    el('details', { class: 'log' }, el('summary', { text: 'log' }), el('pre')),
    el('details', { class: 'report-box', hidden: true }, el('summary', { text: 'report (JSON)' }),
      el('pre', { class: 'report' })));
}

// Where a migration's tree goes and where it came from, in words.
function ends(m) {
  return m.direction === 'in'
    ? { there: 'this host', home: 'the other host' }
    : { there: 'the target', home: 'this host' };
}

function outcomeText(m) {
  const who = m.title || m.what;
  const { there, home } = ends(m);
  if (m.status === 'succeeded') {
    return 'Migration succeeded: ' + who + ' now runs on ' + there + ' as PID ' + m.target_pid +
      ' (downtime ' + fmtMs(m.downtime_ms) + ', ' + mib(m.bytes) + ' sent).';
  }
  if (m.status === 'cancelled') return 'Cancelled: ' + who + ' still runs on ' + home + ', as before.';
  if (m.status === 'failed') {
    const where = m.outcome === 'diverged'
      ? ' It may run on both hosts or only partly on ' + there + ': look before going on.'
      : ' ' + who + ' still runs on ' + home + '.';
    return 'Migration failed: ' + (m.failure || 'the migration failed') + '.' + where;
  }
  return '';
}

function renderMigration(m) {
  const box = $('migrations');
  box.querySelector('.none')?.remove();
  let card = box.querySelector('.migration[data-id="' + m.id + '"]');
  if (!card) {
    card = cardSkeleton(m);
    box.prepend(card);
  }
  const q = (sel) => card.querySelector(sel);
  card.className = 'migration ' + m.status;
  card.setAttribute('data-status', m.status);
  card.setAttribute('data-direction', m.direction || 'out');
  card.setAttribute('data-phase', m.phase);
  if (m.target_pid) card.setAttribute('data-target-pid', m.target_pid);
  const who = m.title || m.what;
  const pull = m.direction === 'in';
  const titles = {
    running: pull ? 'Moving ' + who + ' here' : 'Moving ' + who + ' to the target',
    succeeded: pull ? 'Moved ' + who + ' here' : 'Moved ' + who + ' to the target',
    failed: 'Could not move ' + who,
    cancelled: 'Cancelled moving ' + who,
  };
  setText(q('.title'), titles[m.status] || who);
  setText(q('.badge'), m.status === 'running' && m.cancel_asked ? 'cancelling' : m.status);
  const mode = m.mode ? (m.mode === m.requested_mode ? m.mode : m.requested_mode + ' → ' + m.mode)
    : m.requested_mode;
  setText(q('.mode .v'), mode);
  setText(q('.iterations .v'), String(m.iterations));
  setText(q('.downtime-f b'), m.downtime_final ? 'downtime' : 'paused for');
  setText(q('.why'), m.mode_reason ? 'why ' + (m.mode || 'this mode') + ': ' + m.mode_reason : '');
  setText(q('.outcome'), outcomeText(m));
  const detail = [];
  if (m.status === 'failed') {
    if (m.error) detail.push('Cause: ' + m.error);
    if (m.logs) detail.push((pull ? 'The other host' : 'This host') + ' kept its CRIU logs in ' + m.logs);
  }
  setText(q('.detail'), detail.join('\n'));
  q('.actions').hidden = !m.cancellable;
  setText(q('.log pre'), (m.log || []).join('\n'));
  if (m.report) {
    q('.report-box').hidden = false;
    setText(q('pre.report'), JSON.stringify(m.report, null, 2));
  }
  renderLive(card, m);
}

// What moves between events: the bar, the clock, the downtime.
function renderLive(card, m) {
  const q = (sel) => card.querySelector(sel);
  const total = m.expected_bytes || 0;
  let pct;
  if (m.status === 'succeeded') pct = 100;
  else if (total > 0) pct = Math.min(99, Math.floor((m.bytes / total) * 100));
  else pct = 0;
  const bar = q('.bar');
  if (bar.getAttribute('aria-valuenow') !== String(pct)) {
    bar.setAttribute('aria-valuenow', String(pct));
    q('.fill').style.width = pct + '%';
  }
  bar.classList.toggle('unknown', !total && m.status === 'running');
  setText(q('.sent'), total ? mib(m.bytes) + ' of about ' + mib(total) + ' sent (' + pct + '%)'
    : mib(m.bytes) + ' sent');
  setText(q('.eta'), m.status === 'running' ? eta(m) : '');
  setText(q('.phase'), m.status === 'running' ? m.phase_text : '');
  q('.phase').setAttribute('data-phase', m.phase);
  setText(q('.downtime-f .v'), fmtMs(liveDowntime(m)));
  q('.downtime-f').classList.add('downtime');
  // Never paused, or paused and resumed here: no downtime to speak of.
  q('.downtime-f').hidden = m.downtime_ms === null && !(m.status === 'running' && m.frozen);
  setText(q('.elapsed .v'), fmtMs(live(m, 'elapsed_ms')));
}

function tickLive() {
  for (const m of state.migrations.values()) {
    if (m.status !== 'running') continue;
    const card = document.querySelector('.migration[data-id="' + m.id + '"]');
    if (card) renderLive(card, m);
  }
}

// A snapshot is every migration the server keeps: cards of others go.
function applySnapshot(list) {
  const ids = new Set(list.map((m) => m.id));
  for (const id of Array.from(state.migrations.keys())) {
    if (ids.has(id)) continue;
    state.migrations.delete(id);
    samples.delete(id);
    document.querySelector('.migration[data-id="' + id + '"]')?.remove();
  }
  list.forEach(upsertMigration);
  noneIfEmpty();
}

function noneIfEmpty() {
  const box = $('migrations');
  if (!box.querySelector('.migration')) box.replaceChildren(el('p', { class: 'none', text: 'None yet.' }));
}

function wireClear() {
  $('clear').addEventListener('click', async () => {
    document.querySelectorAll('.migration.refused').forEach((c) => c.remove());
    try {
      await apiJson('/api/migrations', { method: 'DELETE' });
    } catch (e) {
      // the next snapshot tells
    }
    noneIfEmpty();
  });
}

// Server-sent events, read with fetch so that the token goes in a header.
async function events(gen) {
  for (;;) {
    if (gen !== state.gen || !state.token) return;
    try {
      const r = await api('/api/events');
      if (!r.ok || !r.body) throw new Error('events: ' + r.status);
      setText($('live'), 'live');
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
    setText($('live'), 'reconnecting');
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
  if (type === 'snapshot') applySnapshot(v);
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

function wireFilter() {
  const f = $('filter');
  f.addEventListener('input', applyFilter);
  f.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') {
      f.value = '';
      applyFilter();
    } else if (e.key === 'ArrowDown' || e.key === 'Enter') {
      // Into the tree, at the first match.
      e.preventDefault();
      const first = document.querySelector('#local-tree .node.match') || visibleRows('local')[0];
      if (first) focusRow('local', Number(first.dataset.pid), true);
    }
  });
  document.addEventListener('keydown', (e) => {
    const typing = /^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName);
    if (e.key === '/' && !typing && !$('confirm').open) {
      e.preventDefault();
      f.focus();
    }
  });
}

// --- start ------------------------------------------------------------------

async function start() {
  $('login').hidden = true;
  $('app').hidden = false;
  try {
    const r = await apiJson('/api/info');
    if (!r.ok) return;
    $('target-addr').textContent = r.body.target;
    state.pull = !!r.body.pull;
    $('this-addr').textContent = r.body.this_host || 'this host';
    document.body.classList.toggle('both-ways', state.pull);
    setText($('remote-hint'), state.pull
      ? 'Drop a tree of this host here to migrate it; drag one from here onto this host to move it back.'
      : 'Drop here to migrate. Moving trees back needs phaul-web\'s --this-host (this host\'s phaul-service).');
    setText($('local-hint-drop'), state.pull ? ' Trees of the other host dropped here move to this host.' : '');
    const sel = $('confirm-mode');
    sel.replaceChildren(...r.body.modes.map((m) => el('option', { value: m, text: m })));
    state.defaultMode = r.body.default_mode;
    sel.value = r.body.default_mode;
    const fs = $('confirm-fs');
    fs.replaceChildren(...r.body.fs_drivers.map((d) => el('option', { value: d, text: d })));
    state.defaultFs = r.body.default_fs;
    fs.value = r.body.default_fs;
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
  wireConfirm();
  wireClear();
  wireFilter();
  wireCheckpoint();
  setInterval(tickLive, 200);
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
