// Drives Debian's Chromium, headless, through the web console's preview:
// opens the console, clicks the preview button of a stream, samples the
// video element and the player's state, reads the stream's viewers from
// the console's table, saves a screenshot, and prints what it saw as JSON
// (tests/browser.rs judges it).
//
// node preview.mjs CONSOLE_URL APP/KEY hls|flv SCREENSHOT SECONDS
import { chromium } from "playwright-core";

const [consoleUrl, stream, kind, screenshot, seconds] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
  ],
});
const result = { samples: [], pageErrors: [], console: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && result.console.push(m.text()));
  await page.goto(consoleUrl);
  const button = `button[data-preview="${stream}"][data-kind="${kind}"]:not([disabled])`;
  await page.waitForSelector(button, { timeout: 20000 });
  await page.click(button);
  const end = Date.now() + Number(seconds) * 1000;
  while (Date.now() < end) {
    await page.waitForTimeout(250);
    result.samples.push(
      await page.evaluate(() => {
        const v = document.getElementById("video");
        return {
          at: Date.now(),
          currentTime: v.currentTime,
          paused: v.paused,
          latency: window.tributary.latency(),
          errors: window.tributary.errors.slice(),
        };
      }),
    );
  }
  // The stream's viewers by protocol, as the console's table shows them.
  result.viewers = await page.evaluate((stream) => {
    const out = {};
    for (const td of document.querySelectorAll("td[data-viewers]")) {
      const [key, protocol] = td.dataset.viewers.split(" ");
      if (key === stream) out[protocol] = Number(td.textContent);
    }
    return out;
  }, stream);
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
