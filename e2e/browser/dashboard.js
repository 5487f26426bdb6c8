// Opens a Superset dashboard in headless Chromium (the system's /usr/bin/chromium,
// through playwright-core, which downloads no browser), as a user who logged in
// through /login/, and reports what rendered: the Big Number's text, the table's
// rows, every chart-data response body and the chart-data request timings.
//
//   node dashboard.js '{"base":"http://127.0.0.1:PORT","user":"alice","password":"...",
//                       "slug":"sales-e2e","charts":4,"loads":2,"out":"/tmp/dir"}'
//
// Prints one JSON object on stdout. Every wait is bounded.
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

const cfg = JSON.parse(process.argv[2]);
const timeoutMs = cfg.timeout_ms || 60000;

async function login(context) {
  // The login form's own requests, in the browser context (shared cookie jar).
  const page = await context.request.get(`${cfg.base}/login/`);
  const html = await page.text();
  const m = html.match(/name="csrf_token"[^>]*value="([^"]+)"/) ||
            html.match(/id="csrf_token"[^>]*value="([^"]+)"/);
  if (!m) throw new Error('no csrf_token on /login/');
  const r = await context.request.post(`${cfg.base}/login/`, {
    form: { csrf_token: m[1], username: cfg.user, password: cfg.password },
    maxRedirects: 0,
  });
  if (r.status() !== 302) throw new Error(`POST /login/ -> ${r.status()}`);
}

async function loadOnce(page, n) {
  const responses = [];
  const timings = [];
  const onResponse = async (resp) => {
    const url = resp.url();
    if (!url.includes('/api/v1/chart/data')) return;
    const entry = {
      url: url.replace(cfg.base, ''), method: resp.request().method(), status: resp.status(),
      cache_status: resp.headers()['cache-status'] || null, body: null,
    };
    try { entry.body = await resp.json(); } catch (e) { /* not JSON */ }
    responses.push(entry);
  };
  const onFinished = (req) => {
    if (req.method() === 'POST' && req.url().includes('/api/v1/chart/data')) {
      const t = req.timing();
      if (t.responseEnd >= 0) timings.push(t.responseEnd);
    }
  };
  page.on('response', onResponse);
  page.on('requestfinished', onFinished);
  const t0 = Date.now();
  await page.goto(`${cfg.base}/superset/dashboard/${cfg.slug}/`, { timeout: timeoutMs });
  const dataBodies = () => responses.filter(
    (r) => r.status === 200 && r.body && r.body.result).length;
  while (dataBodies() < cfg.charts && Date.now() - t0 < timeoutMs) {
    await page.waitForTimeout(100);
  }
  const allData = Date.now() - t0;
  let bigNumber = null;
  let tableRows = [];
  try {
    const big = page.locator('.header-line').first();
    await big.waitFor({ timeout: Math.max(1000, timeoutMs - (Date.now() - t0)) });
    bigNumber = (await big.innerText()).trim();
    const rows = page.locator('table tbody tr');
    await rows.first().waitFor({ timeout: 10000 });
    tableRows = await rows.evaluateAll((trs) => trs.map(
      (tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.innerText.trim())));
  } catch (e) { /* reported as missing */ }
  const canvases = await page.locator('.dashboard-chart canvas, .chart-container canvas').count();
  const errors = await page.locator('.ant-alert-error, .alert-danger').count();
  await page.screenshot({ path: path.join(cfg.out, `${cfg.user}-load${n}.png`), fullPage: true });
  page.off('response', onResponse);
  page.off('requestfinished', onFinished);
  return {
    load: n, ms_until_all_data: allData, big_number: bigNumber, table_rows: tableRows,
    canvases, error_alerts: errors, responses, post_timings_ms: timings,
  };
}

(async () => {
  const browser = await chromium.launch({
    executablePath: cfg.chromium || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
    timeout: 30000,
  });
  const out = { user: cfg.user, loads: [], error: null };
  try {
    const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
    context.setDefaultTimeout(timeoutMs);
    await login(context);
    const page = await context.newPage();
    for (let n = 1; n <= (cfg.loads || 3); n += 1) out.loads.push(await loadOnce(page, n));
  } catch (e) {
    out.error = String(e && e.stack ? e.stack : e);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out));
})();
