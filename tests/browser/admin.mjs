// The admin page in headless Chromium: under load, its figures must be live and non-zero.
// Usage: node tests/browser/admin.mjs ADMIN_URL SCREENSHOT_PATH
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failed = 0;
const check = (name, ok, detail) => {
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok ? "" : " " + JSON.stringify(detail)}`);
  if (!ok) failed++;
};
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  // Wait (on the page's own updates, not a fixed sleep) until the live rates are non-zero.
  const live = await page.waitForFunction(() => {
    const m = parseFloat(document.getElementById("totals-m")?.textContent || "0");
    const d = parseFloat(document.getElementById("totals-d")?.textContent || "0");
    const points = +(document.body.dataset.points || 0);
    return m > 0 && d > 0 && points >= 6 ? { m, d, points } : null;
  }, null, { timeout: 20000 }).then((h) => h.jsonValue()).catch(() => null);
  check("admin page: live messages/s and deliveries/s above zero", live !== null, live);
  const state = await page.textContent("#state");
  check("admin page: readiness shown as ready", state === "ready", state);
  const rows = await page.$$eval("#shards tr", (trs) => trs.length);
  check("admin page: one row per shard (2 shards)", rows === 3, rows);
  const conns = await page.$$eval("#shards tr td:nth-child(2)", (tds) => tds.map((t) => +t.textContent));
  check("admin page: connections per shard add up to the load's", conns.reduce((a, b) => a + b, 0) >= 50, conns);
  const rooms = await page.$$eval("#rooms tr", (trs) => trs.length);
  check("admin page: top rooms listed", rooms > 1, rooms);
  check("admin page: no script errors", errors.length === 0, errors);
  if (shot) await page.screenshot({ path: shot, fullPage: true });
} finally {
  await browser.close();
}
console.log(failed ? `admin page: ${failed} failed` : "admin page: all passed");
process.exit(failed ? 1 : 0);
