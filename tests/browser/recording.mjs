// Drives Debian's Chromium, headless, through the web console's
// recordings: opens the console, clicks "play" on a recorded stream (its
// VOD playlist through hls.js), samples the video element for SECONDS,
// saves a screenshot, and prints what it saw as JSON (tests/browser.rs
// judges it).
//
// node recording.mjs CONSOLE_URL APP/KEY SCREENSHOT SECONDS [BUTTON]
//
// BUTTON is "recording" (the recordings table's "play", the default) or
// "rewind" (a live stream's rewind in the streams table).
import { chromium } from "playwright-core";

const [consoleUrl, stream, screenshot, seconds, which = "recording"] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"],
});
const result = { times: [], errors: [], pageErrors: [], events: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  await page.goto(consoleUrl);
  const button = `button[data-${which}="${stream}"]:not([disabled])`;
  await page.waitForSelector(button, { timeout: 20000 });
  await page.click(button);
  await page.evaluate(() => {
    const v = document.getElementById("video");
    window.videoErrors = [];
    v.addEventListener("error", () => window.videoErrors.push(String(v.error && v.error.message)));
  });
  const end = Date.now() + Number(seconds) * 1000;
  while (Date.now() < end) {
    await page.waitForTimeout(250);
    result.times.push(await page.evaluate(() => document.getElementById("video").currentTime));
  }
  result.errors = await page.evaluate(() => window.tributary.errors.concat(window.videoErrors));
  await page.screenshot({ path: screenshot });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
