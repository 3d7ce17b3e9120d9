// The Tributary web console: the cluster's streams and this node's health
// from the admin API, a kick button, the push targets of a stream this node
// publishes (state, bytes, last error), and a live preview of any stream
// from this node's media listener (LL-HLS through hls.js, HTTP-FLV through
// mpegts.js), and this node's recordings, played back through their VOD
// playlist in hls.js; a live stream rewound plays its recording from some
// minutes back on to the live edge. window.tributary exposes the preview's
// state (for tests).
"use strict";

const $ = (id) => document.getElementById(id);
const tokenInput = $("token");
tokenInput.value = localStorage.getItem("tributary-token") || "";
tokenInput.addEventListener("change", () => {
  localStorage.setItem("tributary-token", tokenInput.value);
  refresh();
});

window.tributary = { kind: null, errors: [], player: null, latency: () => null };

async function api(path, options = {}) {
  const headers = {};
  if (tokenInput.value) headers["Authorization"] = "Bearer " + tokenInput.value;
  const response = await fetch(path, { ...options, headers });
  const body = await response.text();
  let json = null;
  try { json = JSON.parse(body); } catch (_) { /* a text answer */ }
  if (!response.ok) throw new Error((json && json.error) || body.trim() || response.statusText);
  return json;
}

let node = null;
let lastListing = null;
// The stream whose push targets are shown ("app/name"), if any.
let pushesOf = null;

function mediaBase() {
  if (!node || !node.media_listen) return null;
  const port = node.media_listen.split(":").pop();
  return `${location.protocol}//${location.hostname}:${port}`;
}

function uptime(ms) {
  if (!ms) return "";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min ${s % 60} s` : `${s} s`;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function button(td, label, onclick, cls) {
  const b = document.createElement("button");
  b.textContent = label;
  if (cls) b.className = cls;
  b.addEventListener("click", onclick);
  td.appendChild(b);
  return b;
}

async function refresh() {
  try {
    node = await api("/api/node");
    $("node-name").textContent = `node ${node.node_id}`;
    const health = $("health");
    health.replaceChildren();
    const rows = [
      ["ready", node.ready ? "yes" : "no"],
      ["cluster", node.cluster ? "yes" : "standalone"],
      ["shards", node.shards],
      ["uptime", `${node.uptime_seconds} s`],
      ["connections", node.connections],
      ["publishers", node.publishers],
      ["RTMP players", node.viewers.rtmp],
      ["HTTP-FLV viewers", node.viewers.http_flv],
      ["LL-HLS viewers", node.viewers.ll_hls],
      ["LL-HLS streams packaged", node.hls_streams],
      ["RTMP", node.rtmp_listen],
      ["media", node.media_listen || "off (--media-listen)"],
    ];
    for (const [k, v] of rows) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = String(v);
      health.append(dt, dd);
    }
    const list = await api(node.cluster ? "/api/streams?scope=cluster" : "/api/streams");
    $("scope").textContent = `(${list.scope})`;
    $("streams-error").textContent = "";
    // Viewers are summed over the nodes that answered in time.
    const missing = list.viewers_missing || [];
    $("viewers-missing").textContent = list.viewers_error
      ? `viewers of this node only: ${list.viewers_error}`
      : missing.length
        ? `viewers not counted from node${missing.length > 1 ? "s" : ""} ${missing.join(", ")} (no answer)` : "";
    // Rebuilt only when something changed, so a button is not replaced
    // under the pointer.
    const seen = JSON.stringify([list.streams, !!mediaBase()]);
    if (seen === lastListing) return;
    lastListing = seen;
    const tbody = $("streams").tBodies[0];
    tbody.replaceChildren();
    for (const s of list.streams) {
      const key = `${s.app}/${s.name}`;
      const row = tbody.insertRow();
      cell(row, key);
      cell(row, s.node);
      cell(row, s.video_codec);
      cell(row, s.audio_codec);
      cell(row, s.bitrate_kbps, "num");
      cell(row, uptime(s.started_ms), "num");
      const v = s.viewers || {};
      for (const protocol of ["rtmp", "http_flv", "ll_hls"]) {
        cell(row, v[protocol] || 0, "num").dataset.viewers = `${key} ${protocol}`;
      }
      const p = row.insertCell();
      for (const [label, kind] of [["LL-HLS", "hls"], ["HTTP-FLV", "flv"]]) {
        const b = button(p, label, () => preview(s.app, s.name, kind));
        b.dataset.preview = key;
        b.dataset.kind = kind;
        b.disabled = !mediaBase();
      }
      // Rewind: the stream's recording from some minutes back, played on
      // to the live edge (an EVENT playlist while it is recorded).
      const r = button(p, "rewind", () => {
        const minutes = Math.max(1, Number($("rewind-minutes").value) || 5);
        playRecording(key, new Date(Date.now() - minutes * 60000).toISOString());
      });
      r.dataset.rewind = key;
      r.title = "play its recording from the minutes set under Recordings, on to now";
      r.disabled = !mediaBase();
      const t = button(row.insertCell(), "targets", () => { pushesOf = key; showPushes(); });
      t.dataset.pushes = key;
      t.disabled = s.node !== node.node_id;
      button(row.insertCell(), "kick", () => kick(key), "kick").dataset.kick = key;
    }
  } catch (e) {
    $("streams-error").textContent = String(e.message || e);
  }
  showPushes();
  showRecordings();
}

// This node's recorded streams; "play" plays one from its first file on.
async function showRecordings() {
  const tbody = $("recordings").tBodies[0];
  try {
    const r = await api("/api/recordings");
    const seen = JSON.stringify(r.streams);
    if (seen === tbody.dataset.seen) return;
    tbody.dataset.seen = seen;
    tbody.replaceChildren();
    for (const s of r.streams) {
      const row = tbody.insertRow();
      cell(row, s.stream);
      cell(row, s.files, "num");
      cell(row, (s.bytes / 1e6).toFixed(1), "num");
      cell(row, s.first);
      cell(row, `${Math.round(s.duration)} s`, "num");
      const b = button(row.insertCell(), "play", () => playRecording(s.stream, s.first));
      b.dataset.recording = s.stream;
      b.disabled = !mediaBase();
    }
    $("recordings-status").textContent = r.streams.length ? "" : "nothing recorded";
  } catch (e) {
    $("recordings-status").textContent = String(e.message || e);
  }
}

async function playRecording(stream, from) {
  stopPreview();
  const generation = ++previewGeneration;
  const t = window.tributary;
  t.kind = "hls";
  $("preview-name").textContent = `${stream} (recording from ${from})`;
  let query = "";
  try {
    const play = await api(`/api/play?stream=${encodeURIComponent(stream)}`);
    if (play.query) query = `&${play.query}`;
  } catch (e) {
    return status(`no play token: ${e.message || e}`);
  }
  if (generation !== previewGeneration) return;
  if (!window.Hls || !Hls.isSupported()) return status("this browser has no Media Source Extensions");
  // From the start of the range, also when the playlist is a live
  // recording's (EVENT), where hls.js would start at the live edge.
  const hls = new Hls({ backBufferLength: 30, startPosition: 0 });
  hls.on(Hls.Events.ERROR, (_, data) => {
    t.errors.push(`${data.type}: ${data.details}${data.fatal ? " (fatal)" : ""}`);
    status(`hls.js: ${data.details}`);
  });
  hls.loadSource(`${mediaBase()}/recordings/${path(stream)}/index.m3u8?start=${encodeURIComponent(from)}${query}`);
  const video = $("video");
  hls.attachMedia(video);
  t.player = hls;
  t.latency = () => null;
  video.play().catch(() => { /* muted autoplay may need a click elsewhere */ });
  status("starting");
}

async function showPushes() {
  if (!pushesOf) return;
  $("pushes-name").textContent = pushesOf;
  const tbody = $("pushes").tBodies[0];
  try {
    const r = await api(`/api/streams/${pushesOf.split("/").map(encodeURIComponent).join("/")}/pushes`);
    tbody.replaceChildren();
    for (const p of r.pushes) {
      const row = tbody.insertRow();
      row.dataset.push = p.id;
      cell(row, p.id, "num");
      cell(row, p.url);
      cell(row, p.origin);
      cell(row, p.state).dataset.state = p.state;
      cell(row, `${Math.round(p.for_ms / 1000)} s`, "num");
      cell(row, (p.bytes / 1e6).toFixed(1), "num");
      cell(row, p.reconnects, "num");
      cell(row, p.error || "");
    }
    $("pushes-status").textContent = r.pushes.length ? "" : "no push targets";
  } catch (e) {
    tbody.replaceChildren();
    $("pushes-status").textContent = String(e.message || e);
  }
}

async function kick(key) {
  if (!confirm(`Disconnect the publisher of ${key}?`)) return;
  try {
    const r = await api(`/api/streams/${key.split("/").map(encodeURIComponent).join("/")}`, { method: "DELETE" });
    $("notice").textContent = r.kicked ? `kicked ${key} on node ${r.node}` : "";
  } catch (e) {
    $("notice").textContent = String(e.message || e);
  }
  refresh();
}

// An app name (which may hold slashes) as a URL path.
function path(app) {
  return app.split("/").map(encodeURIComponent).join("/");
}

// The levels of an adaptive group, as a choice beside the preview.
function showLevels(hls, levels) {
  const select = $("level");
  select.replaceChildren();
  const add = (value, label) => {
    const o = document.createElement("option");
    o.value = String(value);
    o.textContent = label;
    select.appendChild(o);
  };
  add(-1, "auto");
  levels.forEach((l, i) => add(i, `${l.height ? l.height + "p" : "level " + i} (${Math.round(l.bitrate / 1000)} kbit/s)`));
  select.hidden = levels.length < 2;
  select.onchange = () => { hls.currentLevel = Number(select.value); };
}

function stopPreview() {
  $("level").hidden = true;
  const t = window.tributary;
  if (t.player) {
    try { t.kind === "hls" ? t.player.destroy() : (t.player.unload(), t.player.detachMediaElement(), t.player.destroy()); } catch (_) { /* gone */ }
  }
  t.player = null;
  t.kind = null;
  t.errors = [];
}

function status(text) {
  $("preview-status").textContent = text;
}

let previewGeneration = 0;

async function preview(app, name, kind) {
  stopPreview();
  const generation = ++previewGeneration;
  const video = $("video");
  const base = mediaBase();
  const t = window.tributary;
  t.kind = kind;
  $("preview-name").textContent = `${app}/${name} (${kind === "hls" ? "LL-HLS" : "HTTP-FLV"})`;
  // What the play rules ask of this stream's players (a token, for a token
  // app), from the admin API.
  let query = "";
  try {
    const play = await api(`/api/play?stream=${encodeURIComponent(`${app}/${name}`)}`);
    if (play.query) query = `?${play.query}`;
  } catch (e) {
    return status(`no play token: ${e.message || e}`);
  }
  if (generation !== previewGeneration) return; // another preview started meanwhile
  if (kind === "hls") {
    if (!window.Hls || !Hls.isSupported()) return status("this browser has no Media Source Extensions");
    // Low-latency mode holds PART-HOLD-BACK behind the live edge; a
    // player that fell behind (a slow start) plays up to 1.5x to catch up.
    const hls = new Hls({ lowLatencyMode: true, backBufferLength: 10, maxLiveSyncPlaybackRate: 1.5 });
    hls.on(Hls.Events.ERROR, (_, data) => {
      t.errors.push(`${data.type}: ${data.details}${data.fatal ? " (fatal)" : ""}`);
      status(`hls.js: ${data.details}`);
    });
    // A stream with renditions is an adaptive group: the levels hls.js
    // found are offered (automatic by default).
    hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => showLevels(hls, data.levels));
    hls.loadSource(`${base}/${path(app)}/${encodeURIComponent(name)}/index.m3u8${query}`);
    hls.attachMedia(video);
    t.player = hls;
    // How far behind the live edge playback is, seconds.
    t.latency = () => (hls.latency == null ? null : hls.latency);
  } else {
    if (!window.mpegts || !mpegts.isSupported()) return status("this browser has no Media Source Extensions");
    const player = mpegts.createPlayer(
      { type: "flv", isLive: true, url: `${base}/${path(app)}/${encodeURIComponent(name)}.flv${query}` },
      { enableStashBuffer: false, liveBufferLatencyChasing: true, liveBufferLatencyMaxLatency: 0.7, liveBufferLatencyMinRemain: 0.3 },
    );
    player.on(mpegts.Events.ERROR, (type, detail) => {
      t.errors.push(`${type}: ${detail}`);
      status(`mpegts.js: ${type} ${detail}`);
    });
    player.attachMediaElement(video);
    player.load();
    t.player = player;
    t.latency = () => {
      const b = video.buffered;
      return b.length ? b.end(b.length - 1) - video.currentTime : null;
    };
  }
  video.play().catch(() => { /* muted autoplay may need a click elsewhere */ });
  status("starting");
}

setInterval(() => {
  const t = window.tributary, video = $("video");
  if (t.kind && !video.paused) {
    const l = t.latency();
    status(`playing ${video.currentTime.toFixed(1)} s, ${l == null ? "?" : l.toFixed(2)} s behind the live edge`);
  }
}, 500);

refresh();
setInterval(refresh, 3000);
