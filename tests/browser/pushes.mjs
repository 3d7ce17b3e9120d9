// Drives Debian's Chromium, headless, through the web console's push
// targets: opens the console, clicks "targets" on a stream, waits until the
// table shows every target in the state the test asks for, and prints the
// rows it read as JSON (tests/browser.rs judges them).
//
// node pushes.mjs CONSOLE_URL APP/KEY STATE...
import { chromium } from "playwright-core";

const [consoleUrl, stream, ...states] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
const result = { rows: [], pageErrors: [] };
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  await page.goto(consoleUrl);
  const button = `button[data-pushes="${stream}"]:not([disabled])`;
  await page.waitForSelector(button, { timeout: 20000 });
  await page.click(button);
  const want = states.slice().sort().join(",");
  const end = Date.now() + 20000;
  while (Date.now() < end) {
    result.rows = await page.evaluate(() =>
      [...document.querySelectorAll("#pushes tbody tr")].map((tr) =>
        [...tr.cells].map((td) => td.textContent)));
    const seen = result.rows.map((r) => r[3]).sort().join(",");
    if (seen === want) break;
    await page.waitForTimeout(250);
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
