// Opens the gateway's player page in headless Chromium and watches it play.
//
//   node play.mjs URL SECONDS [SCREENSHOT.png]
//
// Prints one JSON object: how far the video played, frames decoded and dropped, the latency
// behind the broadcaster as hls.js sees it (wall clock − playing date; median of the samples
// taken after the first five seconds of playback), time from page open to the first frame,
// how far the video advanced in the last three seconds, what the page said, and any page
// errors. Gives up after SECONDS + 40 s.
import puppeteer from "puppeteer-core";
import { existsSync } from "node:fs";

const [url, secondsArg, screenshot] = process.argv.slice(2);
const seconds = Number(secondsArg || 10);
const executablePath = ["/usr/bin/chromium-headless-shell", "/usr/bin/chromium"].find(existsSync);
if (!url || !executablePath) {
  console.error("usage: node play.mjs URL SECONDS [SCREENSHOT]; needs chromium-headless-shell or chromium");
  process.exit(2);
}
const giveUp = setTimeout(() => {
  console.error(`gave up after ${seconds + 40} s`);
  process.exit(3);
}, (seconds + 40) * 1000);

const browser = await puppeteer.launch({
  executablePath,
  headless: "shell",
  args: ["--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--window-size=1000,900"],
});
const errors = [];
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1000, height: 900 });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const opened = Date.now();
  await page.goto(url, { waitUntil: "domcontentloaded" });
  await page.waitForFunction(() => document.getElementById("video").currentTime > 0, { timeout: 30000, polling: 50 });
  const firstFrameMs = Date.now() - opened;
  const start = await page.evaluate(() => document.getElementById("video").currentTime);
  const latencies = [];
  const positions = [];
  const until = Date.now() + seconds * 1000;
  while (Date.now() < until) {
    await new Promise((r) => setTimeout(r, 500));
    const [l, t] = await page.evaluate(() => [window.shoal.latency(), document.getElementById("video").currentTime]);
    positions.push([Date.now(), t]);
    if (l != null && Date.now() - opened - firstFrameMs > 5000) latencies.push(l);
  }
  // How far the video advanced over the last three seconds: is it playing at the end?
  const lastAt = positions[positions.length - 1];
  const before = positions.find(([at]) => at >= lastAt[0] - 3000) || lastAt;
  const playedLast3s = lastAt[1] - before[1];
  const result = await page.evaluate(() => {
    const v = document.getElementById("video");
    const q = v.getVideoPlaybackQuality();
    return {
      current_time: v.currentTime,
      frames: q.totalVideoFrames,
      dropped: q.droppedVideoFrames,
      state: window.shoal.state(),
      stalls: window.shoal.stalls(),
      badge: document.getElementById("badge").textContent,
      neighbours: document.getElementById("neighbours").textContent,
      share: document.getElementById("share").textContent,
      // hls.js's own view: seconds behind the playlist's live edge, and what it aims for.
      hls_latency_s: window.shoal.hls() ? window.shoal.hls().latency : null,
      hls_target_latency_s: window.shoal.hls() ? window.shoal.hls().targetLatency : null,
    };
  });
  if (screenshot) await page.screenshot({ path: screenshot });
  latencies.sort((a, b) => a - b);
  const median = latencies.length ? latencies[Math.floor(latencies.length / 2)] : null;
  console.log(
    JSON.stringify({
      ...result,
      played_s: result.current_time - start,
      played_last_3s: playedLast3s,
      first_frame_ms: firstFrameMs,
      latency_s: median,
      latency_max_s: latencies.length ? latencies[latencies.length - 1] : null,
      latency_end_s: await page.evaluate(() => window.shoal.latency()),
      errors,
    }),
  );
} finally {
  clearTimeout(giveUp);
  await browser.close();
}
