// End-to-end test of phaul-web in a real browser (Debian's chromium, driven
// by playwright-core): open the page, see both hosts' trees, drag the
// workload onto the target, and wait for the outcome the test expects.
//
// Run by tests/web.rs (it starts the two hosts, phaul-service, the workload
// and phaul-web); by hand:
//
//   PHAUL_WEB_URL='http://127.0.0.1:8080/#token=...' PHAUL_WEB_PID=4242 \
//   PHAUL_WEB_EXPECT=success PHAUL_WEB_SHOT=target/web-e2e/success.png node web/e2e.mjs
//
// Environment:
//   PHAUL_WEB_URL     the URL phaul-web printed, with its #token= fragment
//   PHAUL_WEB_PID     the workload's PID on the source host
//   PHAUL_WEB_CONTAINER  instead: an LXC container on the source host to drag
//                     from the containers list (expect "success")
//   PHAUL_WEB_EXPECT  "success" or "failure" (a migration by drag and drop), or
//                     "checkpoint" (checkpoint with "stop", download the
//                     archive, upload it to restore)
//   PHAUL_WEB_SHOT    where to write the screenshot of the outcome (PNG)
//   PHAUL_WEB_WAIT_GO when set, print "READY" once both trees are seen and
//                     wait for a line on stdin before dragging (the test
//                     stops the target's service in between)
//   PHAUL_WEB_MODE    the mode to pick in the page (default: auto)
//   CHROMIUM          the browser (default /usr/bin/chromium)
//
// Prints "RESULT {json}" and exits 0 only when every check passed.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const url = need('PHAUL_WEB_URL');
const container = process.env.PHAUL_WEB_CONTAINER || '';
const pid = need('PHAUL_WEB_PID');
const expect = need('PHAUL_WEB_EXPECT');
const shot = need('PHAUL_WEB_SHOT');
const mode = process.env.PHAUL_WEB_MODE || 'auto';
const waitGo = !!process.env.PHAUL_WEB_WAIT_GO;
if (!/^[0-9]+$/.test(pid)) fail('PHAUL_WEB_PID is not a PID: ' + pid);
if (!['success', 'failure', 'checkpoint'].includes(expect)) {
  fail('PHAUL_WEB_EXPECT must be success, failure or checkpoint');
}
if (container && (!/^[A-Za-z0-9_.-]+$/.test(container) || expect !== 'success')) {
  fail('PHAUL_WEB_CONTAINER must be a plain container name, with PHAUL_WEB_EXPECT=success');
}

function need(name) {
  const v = process.env[name];
  if (!v) fail(name + ' is not set');
  return v;
}

function fail(message) {
  console.error('e2e: FAILED: ' + message);
  process.exit(1);
}

function log(message) {
  console.error('e2e: ' + message);
}

function check(cond, message) {
  if (!cond) throw new Error(message);
  log('ok: ' + message);
}

async function waitForLine() {
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    return line.trim();
  }
  return '';
}

// Checkpoint with "stop after checkpoint", download the archive, restore it
// from the downloaded file through the restore form.
async function checkpointAndRestore(localNode) {
  await localNode.locator('.name').click();
  check(await page.inputValue('#cp-pid') === pid, 'clicking the process fills in its PID');
  await page.check('#cp-stop');
  await page.click('#checkpoint-form button[type=submit]');
  const cp = page.locator('#cp-result.ok');
  await cp.waitFor({ state: 'visible', timeout: 120000 });
  const cpText = await cp.textContent();
  check(/Checkpoint of PID [0-9]+: [0-9]+ files/.test(cpText), 'the checkpoint is done: ' + cpText);
  check(/stopped/.test(cpText), 'the tree was stopped');
  const [download] = await Promise.all([
    page.waitForEvent('download', { timeout: 60000 }),
    page.click('#cp-result button'),
  ]);
  const file = path.join(profile, download.suggestedFilename());
  await download.saveAs(file);
  const size = fs.statSync(file).size;
  check(/^phaul-checkpoint-[0-9a-f]{32}\.tar$/.test(download.suggestedFilename()) && size > 1024,
    'the archive downloads: ' + download.suggestedFilename() + ', ' + size + ' bytes');
  const head = Buffer.alloc(512);
  const fd = fs.openSync(file, 'r');
  fs.readSync(fd, head, 0, 512, 0);
  fs.closeSync(fd);
  check(head.subarray(257, 262).toString() === 'ustar', 'it is a tar archive');
  await page.locator(`#local-tree li[data-pid="${pid}"]`).waitFor({ state: 'detached', timeout: 20000 });
  check(true, `PID ${pid} left the local tree`);
  await page.setInputFiles('#rs-file', file);
  await page.click('#restore-form button[type=submit]');
  const rs = page.locator('#rs-result.ok, #rs-result.bad');
  await rs.waitFor({ state: 'visible', timeout: 120000 });
  const rsText = await rs.textContent();
  const m = /runs here as PID ([0-9]+)/.exec(rsText);
  check(!!m, 'the archive restores: ' + rsText);
  result.target_pid = Number(m[1]);
  result.status = 'restored';
  await page.locator(`#local-tree li[data-pid="${m[1]}"]`).waitFor({ state: 'visible', timeout: 20000 });
  check(true, `the restored PID ${m[1]} is in the local tree`);
  await page.screenshot({ path: shot, fullPage: true });
  log('screenshot ' + shot);
}

// Waits for the first migration card to end; records and returns how.
async function migrationOutcome() {
  const card = page.locator('.migration[data-status="succeeded"], .migration[data-status="failed"], .migration[data-status="refused"]').first();
  await card.waitFor({ state: 'visible', timeout: 180000 });
  const status = await card.getAttribute('data-status');
  const outcome = (await card.locator('.outcome').textContent()) || '';
  result.status = status;
  result.message = outcome;
  log('outcome: ' + status + ': ' + outcome);
  return { card, status, outcome };
}

// Drag the workload onto the target tree and check the outcome.
async function migrateByDrag(localNode) {
  await page.locator('#remote-tree li').first().waitFor({ state: 'visible', timeout: 20000 });
  const remoteCount = await page.locator('#remote-tree li').count();
  check(remoteCount > 0, `the target's tree shows ${remoteCount} processes`);
  check(await page.locator(`#remote-tree li[data-pid="${pid}"]`).count() === 0,
    'the workload is not in the target tree yet');
  const target = await page.locator('#target-addr').textContent();
  check(!!target, 'the page names the target ' + target);

  if (waitGo) {
    console.log('READY');
    const go = await waitForLine();
    check(go === 'GO', 'told to go on');
  }
  if (expect === 'failure') {
    // The service is gone: the target's panel says so.
    await page.locator('#remote-status.error').waitFor({ state: 'visible', timeout: 20000 });
    check(true, 'the target panel reports: ' + await page.locator('#remote-status').textContent());
  }

  await page.selectOption('#mode', mode);
  // Record every phase the page shows: progress must arrive live.
  await page.evaluate(() => {
    window.phaulPhases = [];
    const seen = () => {
      const p = document.querySelector('.migration[data-id] .phase');
      const t = p && p.textContent;
      if (t && window.phaulPhases[window.phaulPhases.length - 1] !== t) window.phaulPhases.push(t);
    };
    new MutationObserver(seen).observe(document.getElementById('migrations'),
      { subtree: true, childList: true, characterData: true });
  });
  await localNode.dragTo(page.locator('#remote-panel'));
  log('dragged the workload onto the target');

  const { card, status, outcome } = await migrationOutcome();

  if (expect === 'success') {
    check(status === 'succeeded', 'the migration succeeded');
    check(outcome.includes('Migration succeeded'), 'the page says "Migration succeeded"');
    const tpid = Number(await card.getAttribute('data-target-pid'));
    check(tpid > 0, 'the page gives the PID on the target: ' + tpid);
    result.target_pid = tpid;
    const downtime = (await card.locator('.downtime').textContent()) || '';
    check(/[0-9.]+ ms/.test(downtime), 'the page shows the downtime: ' + downtime);
    result.downtime = downtime;
    const report = JSON.parse((await card.locator('pre.report').textContent()) || '{}');
    check(report.success === true && report.target_pid === tpid, 'the report is attached');
    result.mode = report.mode;
    const phases = await page.evaluate(() => window.phaulPhases);
    result.phases = phases;
    check(phases.length >= 3 && phases[phases.length - 1] === 'done',
      'the page followed the phases live: ' + phases.join(' → '));
    // The trees follow: the workload appears on the target, leaves here.
    await page.locator(`#remote-tree li[data-pid="${tpid}"]`).waitFor({ state: 'visible', timeout: 20000 });
    check(true, `PID ${tpid} is in the target tree`);
    await page.locator(`#local-tree li[data-pid="${pid}"]`).waitFor({ state: 'detached', timeout: 20000 });
    check(true, `PID ${pid} left the local tree`);
  } else {
    check(status === 'failed', 'the migration failed');
    check(outcome.includes('Migration failed'), 'the page says "Migration failed"');
    check(/refused|connect|link/i.test(outcome), 'the page gives the error: ' + outcome);
    // A failure leaves the source running: still in the local tree.
    await page.waitForTimeout(1500);
    check(await page.locator(`#local-tree li[data-pid="${pid}"]`).count() === 1,
      `PID ${pid} is still in the local tree`);
  }
  await card.scrollIntoViewIfNeeded();
  await page.screenshot({ path: shot, fullPage: true });
  log('screenshot ' + shot);
}

// Drag an LXC container from the containers list onto the target, and
// watch it move there in both hosts' lists.
async function migrateContainerByDrag() {
  const here = page.locator(`#local-containers [data-container="${container}"]`);
  await here.waitFor({ state: 'visible', timeout: 20000 });
  check(await here.locator('.state').textContent() === 'RUNNING', `container ${container} runs here`);
  check(await here.getAttribute('draggable') === 'true', 'it can be dragged');
  // Its init is drawn in the process tree as a container.
  await page.locator(`#local-tree .node[data-kind="container"][data-id="${container}"]`).first()
    .waitFor({ state: 'visible', timeout: 20000 });
  check(true, 'its init is in the process tree, marked as the container');
  check(await page.locator(`#remote-containers [data-container="${container}"]`).count() === 0,
    'the target does not have it yet');

  await here.dragTo(page.locator('#remote-panel'));
  log('dragged container ' + container + ' onto the target');
  const { card, status, outcome } = await migrationOutcome();
  check(status === 'succeeded', 'the migration succeeded');
  const report = JSON.parse((await card.locator('pre.report').textContent()) || '{}');
  check(report.success === true, 'the report is attached');
  result.mode = report.mode;
  result.target_pid = report.target_pid;
  const there = page.locator(`#remote-containers [data-container="${container}"]`);
  await there.waitFor({ state: 'visible', timeout: 20000 });
  await page.waitForFunction(
    (name) => {
      const s = document.querySelector(`#remote-containers [data-container="${name}"] .state`);
      return s && s.textContent === 'RUNNING';
    }, container, { timeout: 20000 });
  check(true, `the target lists container ${container}, running`);
  await here.waitFor({ state: 'detached', timeout: 20000 });
  check(true, 'it left this host\'s list');
  await card.scrollIntoViewIfNeeded();
  await page.screenshot({ path: shot, fullPage: true });
  log('screenshot ' + shot);
}

fs.mkdirSync(path.dirname(shot), { recursive: true });
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'phaul-web-e2e-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
  ],
  viewport: { width: 1400, height: 1000 },
});
const page = context.pages()[0] || (await context.newPage());
const consoleErrors = [];
page.on('console', (m) => {
  if (m.type() === 'error') consoleErrors.push(m.text());
});
page.on('pageerror', (e) => consoleErrors.push('page error: ' + e.message));

let result = { expect, pid: Number(pid), container };
let code = 0;
try {
  // Without the token: the login form; a wrong token is refused there.
  const base = url.split('#')[0];
  await page.goto(base);
  await page.locator('#login').waitFor({ state: 'visible', timeout: 20000 });
  check(await page.locator('#app').isHidden(), 'without a token the page asks for one');
  await page.fill('#token', 'not-the-token-0123456789');
  await page.click('#login button[type=submit]');
  await page.locator('#login-error').waitFor({ state: 'visible', timeout: 20000 });
  check(/refused/.test(await page.locator('#login-error').textContent()), 'a wrong token is refused');

  await page.goto(url);
  // The token moved from the fragment into sessionStorage.
  await page.waitForFunction(() => location.hash === '');
  check(true, 'the token left the address bar');
  await page.locator('#app').waitFor({ state: 'visible', timeout: 20000 });

  if (container) {
    await migrateContainerByDrag();
  } else {
    const localNode = page.locator(`#local-tree li[data-pid="${pid}"] > .node`);
    await localNode.waitFor({ state: 'visible', timeout: 20000 });
    check(await localNode.getAttribute('draggable') === 'true', `the workload ${pid} is in the local tree, draggable`);
    if (expect === 'checkpoint') await checkpointAndRestore(localNode);
    else await migrateByDrag(localNode);
  }
  // The refused login (401) and the stopped target (502) are expected.
  const errors = consoleErrors.filter((e) => !/status of (401|502)/.test(e));
  check(errors.length === 0, 'no errors in the page console' + (errors.length ? ': ' + errors.join(' | ') : ''));
} catch (e) {
  code = 1;
  result.error = String(e && e.message ? e.message : e);
  console.error('e2e: FAILED: ' + result.error);
  try {
    await page.screenshot({ path: shot.replace(/\.png$/, '') + '-error.png', fullPage: true });
  } catch (e2) {
    // nothing more to show
  }
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log('RESULT ' + JSON.stringify(result));
process.exit(code);
