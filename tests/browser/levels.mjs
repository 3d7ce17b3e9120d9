// Drives Debian's Chromium, headless, through the web console's LL-HLS
// preview of an adaptive group: waits until hls.js has the group's levels
// and plays one, picks the other in the console's level choice, waits
// until the video's picture is the other level's, and prints what it saw
// as JSON (tests/browser.rs judges it).
//
// node levels.mjs CONSOLE_URL APP/KEY
import { chromium } from "playwright-core";

const [consoleUrl, stream] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--autoplay-policy=no-user-gesture-required"],
});
const result = { pageErrors: [], levels: [], before: null, after: null, picked: null, errors: [] };
const state = () => ({
  levels: (window.tributary.player && window.tributary.player.levels || []).map((l) => l.height),
  height: document.getElementById("video").videoHeight,
  time: document.getElementById("video").currentTime,
  errors: window.tributary.errors.slice(),
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on("pageerror", (e) => result.pageErrors.push(String(e)));
  await page.goto(consoleUrl);
  const button = `button[data-preview="${stream}"][data-kind="hls"]:not([disabled])`;
  await page.waitForSelector(button, { timeout: 20000 });
  await page.click(button);
  let s = null;
  const end = Date.now() + 60000;
  while (Date.now() < end) {
    s = await page.evaluate(state);
    if (s.levels.length >= 2 && s.height > 0 && s.time > 0) break;
    await page.waitForTimeout(250);
  }
  result.levels = s.levels;
  result.before = s.height;
  // The other level: the one whose picture is not the one playing.
  const other = s.levels.findIndex((h) => h !== s.height);
  result.picked = other;
  if (other >= 0) {
    await page.selectOption("#level", String(other));
    const until = Date.now() + 60000;
    while (Date.now() < until) {
      s = await page.evaluate(state);
      if (s.height === result.levels[other]) break;
      await page.waitForTimeout(250);
    }
    result.after = s.height;
    // Frames of the other level go on playing.
    const t0 = s.time;
    await page.waitForTimeout(2000);
    s = await page.evaluate(state);
    result.advanced = s.time - t0;
  }
  result.errors = s.errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
