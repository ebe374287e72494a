// The gateway's player page: hls.js on live.m3u8 (low-latency mode when the gateway serves
// parts), the facts from stats.json, a small chart, and a player that reconnects by itself
// when the stream or the gateway goes away and comes back (kiosks are left alone for days).
// Every URL is relative to the page's <base>, so the page works mounted under a prefix.
"use strict";

const config = window.SHOAL || { lowLatency: true };
const video = document.getElementById("video");
const notice = document.getElementById("notice");
const badge = document.getElementById("badge");
const $ = (id) => document.getElementById(id);
// (hls.js resolves against the page's address, not <base>: give it the whole URL.)
const playlist = new URL("live.m3u8", document.baseURI).href;
$("url").textContent = playlist;

let hls = null;
let state = "connecting";
let retryMs = 1000;
let retryTimer = null;
let latencyS = null;

function setState(next, text) {
  state = next;
  badge.className = "badge " + next;
  badge.textContent = next === "live" ? "live" : next;
  notice.hidden = next === "live";
  if (text) notice.textContent = text;
}

function start() {
  clearTimeout(retryTimer);
  if (hls) hls.destroy();
  hls = null;
  if (!window.Hls || !Hls.isSupported()) {
    if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = playlist; // Safari plays HLS itself
      video.play().catch(() => {});
      return;
    }
    setState("offline", "This browser cannot play HLS: open " + playlist + " in VLC.");
    return;
  }
  hls = new Hls({
    lowLatencyMode: config.lowLatency,
    backBufferLength: 30,
    // Catch up gently after a stall instead of staying behind, and let a stall move the
    // target back by one part rather than a whole second (hls.js's default).
    maxLiveSyncPlaybackRate: 1.5,
    liveSyncOnStallIncrease: config.lowLatency ? 0.2 : 1,
  });
  hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
  hls.on(Hls.Events.FRAG_LOADED, () => { retryMs = 1000; });
  hls.on(Hls.Events.ERROR, (_, data) => {
    if (!data.fatal) return;
    if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
      hls.recoverMediaError();
      return;
    }
    // Gateway restarting, stream not there yet, network gone: try again, backing off.
    setState(state === "ended" ? "ended" : "offline", "Waiting for the stream… (retrying)");
    retryTimer = setTimeout(start, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  });
  hls.loadSource(playlist);
  hls.attachMedia(video);
}

video.addEventListener("playing", () => setState("live"));
// Playback that ran dry after it started.
let stalls = 0;
let played = false;
video.addEventListener("waiting", () => { if (played) stalls += 1; });
video.addEventListener("playing", () => { played = true; });

// Latency as a viewer feels it: wall clock minus the broadcaster's time of the frame shown.
function measureLatency() {
  const date = hls && hls.playingDate;
  latencyS = date && !video.paused ? (Date.now() - date.getTime()) / 1000 : null;
  $("latency").textContent = latencyS == null ? "–" : latencyS.toFixed(1) + " s";
  if (config.lowLatency) keepUp();
}

// hls.js speeds up only with more than a second buffered, which low latency never has: when
// playback has fallen well behind its target (a slow start, a stall), jump back to it.
function keepUp() {
  if (!hls || video.paused || hls.latency == null || !hls.targetLatency) return;
  const buffered = video.buffered.length ? video.buffered.end(video.buffered.length - 1) : 0;
  const sync = hls.liveSyncPosition;
  if (hls.latency - hls.targetLatency > 1 && sync != null && sync < buffered) {
    video.currentTime = sync;
  }
}
setInterval(measureLatency, 500);
// For tests and curious users: window.shoal.latency() in the console.
window.shoal = { latency: () => latencyS, state: () => state, stalls: () => stalls, hls: () => hls };

// Facts and the chart, from the gateway's stats.
const history = [];
const HISTORY = 120;
let last = null;
let lastNewSegmentAt = Date.now();

async function poll() {
  let s;
  try {
    const response = await fetch("stats.json", { cache: "no-store" });
    s = await response.json();
  } catch (e) {
    setState("offline", "The gateway is not answering… (retrying)");
    return;
  }
  const links = (s.neighbours || []).filter((n) => n.connected);
  $("neighbours").textContent = links.length;
  const all = (s.neighbours || []).reduce((sum, n) => sum + n.bytes_in, 0);
  const fromSource = (s.neighbours || []).filter((n) => n.source).reduce((sum, n) => sum + n.bytes_in, 0);
  $("share").textContent = all > 0 ? Math.round((100 * (all - fromSource)) / all) + " %" : "–";
  const now = Date.now();
  const received = s.bytes_in.data + s.bytes_in.control;
  const published = s.segments ? s.segments.published : 0;
  let mbps = 0;
  if (last) {
    mbps = ((received - last.received) * 8) / ((now - last.at) / 1000) / 1e6;
    if (published > last.published) lastNewSegmentAt = now;
  }
  $("rate").textContent = mbps.toFixed(2) + " Mbit/s";
  const ended = s.segments && s.segments.ended;
  if (ended && state !== "ended") {
    setState("ended", "The broadcast has ended.");
  } else if (!ended && last && published > last.published && (state === "ended" || state === "offline")) {
    start(); // the broadcaster is back: play the new broadcast
  } else if (!ended && now - lastNewSegmentAt > 5000 && state === "live") {
    setState("offline", "The stream is offline — waiting for the broadcaster…");
  }
  last = { received, published, at: now };
  history.push({ latency: latencyS, mbps });
  if (history.length > HISTORY) history.shift();
  draw();
}

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const line = (values, max, colour) => {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.beginPath();
    let drawing = false;
    values.forEach((v, i) => {
      if (v == null) { drawing = false; return; }
      const x = (i / (HISTORY - 1)) * width;
      const y = height - 4 - (Math.min(v, max) / max) * (height - 8);
      if (drawing) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      drawing = true;
    });
    ctx.stroke();
  };
  const lat = history.map((h) => h.latency);
  const thr = history.map((h) => h.mbps);
  line(lat, Math.max(3, ...lat.filter((v) => v != null)), getComputedStyle(document.body).getPropertyValue("--lat"));
  line(thr, Math.max(1, ...thr), getComputedStyle(document.body).getPropertyValue("--thr"));
}

setInterval(poll, 1000);
poll();
start();
