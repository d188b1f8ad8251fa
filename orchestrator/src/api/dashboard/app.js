"use strict";
// The netreset dashboard: one page over /api/v1. The admin token lives in
// sessionStorage only. GET calls load the views; /api/v1/events (read with fetch,
// since EventSource cannot send the token) keeps them live. Every server text goes
// into the page through textContent, never as markup.

const TOKEN_KEY = "netreset.token";
const FAMILIES = ["windows", "office"];
const FAMILY_NAMES = { windows: "Windows", office: "Office" };
const STATES = ["idle", "pending", "waking", "pxe", "restoring", "booting", "reported",
  "unreachable", "quarantined", "in-use", "failed"];
const RECENT_MAX = 50;
const NO_ROOM = "No room";
const DAY_MS = 86400000;
const SVG_NS = "http://www.w3.org/2000/svg";

/** What the page knows; the render functions draw it. */
const model = {
  stations: new Map(),   // mac -> StationView
  campaigns: new Map(),  // id -> CampaignView
  kms: null,             // Overview of GET /api/v1/kms
  recent: [],            // boot events, newest first
  detail: null,          // {mac, data: StationDetail | null, error}
  cancelling: new Set(), // campaign ids whose cancel was sent
};

/** The signed-in session: its token, the stream's abort signal, the last event id. */
let session = null;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- small helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const dayFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" });
const dayTimeFormat = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hour12: false });
const fullFormat = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

/** A time of today as 07:31:54, an older one with its date. */
function formatTime(iso) {
  if (!iso) return "–";
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  return t.toDateString() === new Date().toDateString() ? timeFormat.format(t) : fullFormat.format(t);
}

function formatBytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i === 0 ? `${n} bytes` : `${n.toFixed(1)} ${units[i]}`;
}

function stationName(mac) {
  const s = model.stations.get(mac);
  return (s && s.name) || mac;
}

/** The state as words: "restoring 42 %", "in use". */
function stateText(station) {
  if (station.state === "restoring" && typeof station.percent === "number") {
    return `restoring ${Math.floor(station.percent)} %`;
  }
  return station.state === "in-use" ? "in use" : station.state;
}

function stateClass(state) {
  return STATES.includes(state) ? `state-${state}` : "state-unknown";
}

// ---------------------------------------------------------------- token and API

/** Take a token from `#token=...` into the session and drop it from the address. */
function takeTokenFromUrl() {
  const match = location.hash.match(/^#token=([^&]+)/);
  if (!match) return false;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
  return true;
}

class AuthError extends Error {}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`.trim();
}

/** Call the API with the token; a 401 ends the session, other errors throw the server's words. */
async function api(path, options = {}) {
  if (!session) throw new AuthError("not signed in");
  const headers = { Authorization: `Bearer ${session.token}`, Accept: "application/json" };
  const init = { method: options.method || "GET", headers, cache: "no-store" };
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    const message = await errorMessage(response);
    signOut(message);
    throw new AuthError(message);
  }
  if (!response.ok) throw new Error(await errorMessage(response));
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// ---------------------------------------------------------------- session

function signIn(token) {
  stopSession();
  sessionStorage.setItem(TOKEN_KEY, token);
  session = { token, abort: new AbortController(), lastEventId: null, loading: false, reloadAgain: false, queue: null };
  $("sign-out").hidden = false;
  route();
  runEvents(session);
}

function stopSession() {
  if (session) session.abort.abort();
  session = null;
  model.stations.clear();
  model.campaigns.clear();
  model.kms = null;
  model.recent = [];
  model.detail = null;
  model.cancelling.clear();
  tiles.clear();
  roomSections.clear();
  for (const id of ["rooms", "recent-events", "campaign-current", "station-events", "station-fields", "station-reset", "station-capture"]) {
    $(id).replaceChildren();
  }
}

/** End the session (a 401 or Sign out) and show the login with `message`. */
function signOut(message) {
  stopSession();
  sessionStorage.removeItem(TOKEN_KEY);
  $("sign-out").hidden = true;
  setConnection("", "");
  const error = $("login-error");
  error.textContent = message || "";
  error.hidden = !message;
  showView("login");
  $("login-token").value = "";
  $("login-token").focus();
}

/** Load every view again; events that arrive meanwhile wait and are applied after. */
async function reloadAll() {
  const s = session;
  if (!s) return;
  if (s.loading) { s.reloadAgain = true; return; }
  s.loading = true;
  s.queue = [];
  try {
    const [stations, campaigns, kms] = await Promise.all([
      api("/api/v1/stations"), api("/api/v1/campaigns"), api("/api/v1/kms"),
    ]);
    if (s !== session) return;
    model.stations = new Map(stations.map((st) => [st.mac, st]));
    model.campaigns = new Map(campaigns.map((c) => [c.id, c]));
    model.kms = kms;
    if (model.detail) loadStation(model.detail.mac);
  } catch (e) {
    if (e instanceof AuthError || s !== session) return;
    setConnection("error", `Could not load the views: ${e.message}`);
    setTimeout(() => { if (s === session) reloadAll(); }, 3000);
  } finally {
    if (s === session) {
      const queued = s.queue;
      s.queue = null;
      s.loading = false;
      for (const [type, data] of queued) applyEvent(type, data);
      markDirty("rooms", "bars", "chart", "campaign", "events", "station");
      if (s.reloadAgain) { s.reloadAgain = false; reloadAll(); }
    }
  }
}

// ---------------------------------------------------------------- live events

function setConnection(kind, text) {
  const node = $("connection");
  node.className = `connection ${kind}`;
  node.textContent = text;
}

/**
 * Read /api/v1/events until the session ends, reconnecting with Last-Event-ID after
 * an error (1 s, doubling to 10 s). The first connection asks from id 0: the server
 * answers `lagged` and replays what it kept, which fills the recent events.
 */
async function runEvents(s) {
  let backoff = 1000;
  let first = true;
  while (s === session) {
    try {
      setConnection("connecting", first ? "Connecting…" : "Reconnecting…");
      const headers = { Authorization: `Bearer ${s.token}`, Accept: "text/event-stream" };
      headers["Last-Event-ID"] = s.lastEventId === null ? "0" : s.lastEventId;
      const response = await fetch("/api/v1/events", { headers, signal: s.abort.signal, cache: "no-store" });
      if (response.status === 401) { signOut(await errorMessage(response)); return; }
      if (!response.ok || !response.body) throw new Error(await errorMessage(response));
      setConnection("live", "Live");
      backoff = 1000;
      if (first) { first = false; reloadAll(); }
      await readEvents(response.body, s);
      throw new Error("the server closed the stream");
    } catch (e) {
      if (s !== session || s.abort.signal.aborted) return;
      setConnection("error", `Connection lost (${e.message}); retrying in ${backoff / 1000} s`);
      await sleep(backoff, s.abort.signal);
      backoff = Math.min(backoff * 2, 10000);
    }
  }
}

/** Parse a text/event-stream body: `id:`, `event:`, `data:`; a blank line ends an event. */
async function readEvents(body, s) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let id = null;
  let type = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done || s !== session) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      let line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (id !== null) s.lastEventId = id;
        if (data.length) receiveEvent(type, data.join("\n"));
        type = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue; // keep-alive comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (field === "id") id = text;
      else if (field === "event") type = text;
      else if (field === "data") data.push(text);
    }
  }
}

function receiveEvent(type, text) {
  let data;
  try { data = JSON.parse(text); } catch (_) { return; }
  if (type === "lagged") {
    // missed 0 at the start of a stream: history older than the server keeps; a load
    // under way already covers it.
    if (!(data.missed === 0 && session && session.loading)) reloadAll();
    return;
  }
  if (session && session.queue) { session.queue.push([type, data]); return; }
  applyEvent(type, data);
}

/** Fold one event into the model and mark what must be drawn again. */
function applyEvent(type, data) {
  const detail = model.detail;
  switch (type) {
    case "station":
      model.stations.set(data.mac, data);
      if (detail && detail.data && detail.mac === data.mac) Object.assign(detail.data, data);
      markDirty("rooms", "campaign", "station");
      break;
    case "boot":
      model.recent.unshift(data);
      if (model.recent.length > RECENT_MAX) model.recent.length = RECENT_MAX;
      if (detail && detail.mac === data.mac) {
        if (detail.data) addStationEvent(detail.data, data);
        else detail.pending.push(data);
      }
      markDirty("events", "station");
      break;
    case "restore": {
      const station = model.stations.get(data.station);
      if (station && data.state === "restoring") station.percent = data.percent;
      if (detail && detail.data && detail.mac === data.station) detail.data.reset = data;
      markDirty("rooms", "station");
      break;
    }
    case "capture":
      if (detail && detail.data && detail.mac === data.station) detail.data.capture = data;
      markDirty("station");
      break;
    case "campaign":
      model.campaigns.set(data.id, data);
      markDirty("bars", "campaign");
      break;
    case "kms":
      model.kms = data;
      markDirty("bars", "chart");
      break;
    default:
      break;
  }
}

/** Append a live event to a station's history unless its GET already had it. */
function addStationEvent(station, event) {
  const entry = { kind: event.kind, at: event.at, detail: event.detail };
  const known = station.events.slice(-50).some((e) => e.kind === entry.kind && e.at === entry.at && e.detail === entry.detail);
  if (!known) station.events.push(entry);
}

// ---------------------------------------------------------------- drawing

const dirty = new Set();
let drawScheduled = false;

function markDirty(...parts) {
  for (const part of parts) dirty.add(part);
  if (!drawScheduled) {
    drawScheduled = true;
    requestAnimationFrame(draw);
  }
}

function draw() {
  drawScheduled = false;
  const parts = new Set(dirty);
  dirty.clear();
  if (!session) return;
  if (parts.has("rooms")) { renderRooms(); renderRoomChoices(); }
  if (parts.has("bars")) renderBars();
  if (parts.has("chart")) renderChart();
  if (parts.has("campaign")) renderCampaign();
  if (parts.has("events")) renderRecentEvents();
  if (parts.has("station")) renderStation();
}

function showView(name) {
  $("login").hidden = name !== "login";
  $("dashboard").hidden = name !== "dashboard";
  $("station-page").hidden = name !== "station";
}

// Rooms: sections and tiles are kept and updated in place, so focus survives updates.
const tiles = new Map();        // mac -> button
const roomSections = new Map(); // room -> {section, grid}

function roomsInOrder() {
  const groups = new Map();
  for (const station of model.stations.values()) {
    const room = station.room || NO_ROOM;
    if (!groups.has(room)) groups.set(room, []);
    groups.get(room).push(station);
  }
  const names = [...groups.keys()].sort((a, b) => {
    if (a === NO_ROOM) return 1;
    if (b === NO_ROOM) return -1;
    return a.localeCompare(b, undefined, { numeric: true });
  });
  const byName = (a, b) => (a.name || a.mac).localeCompare(b.name || b.mac, undefined, { numeric: true });
  return names.map((name) => [name, groups.get(name).sort(byName)]);
}

function renderRooms() {
  const container = $("rooms");
  const rooms = roomsInOrder();
  const wanted = new Set(rooms.map(([name]) => name));
  for (const [name, parts] of roomSections) {
    if (!wanted.has(name)) { parts.section.remove(); roomSections.delete(name); }
  }
  const seen = new Set();
  rooms.forEach(([name, stations], index) => {
    const parts = roomSection(name);
    if (container.children[index] !== parts.section) container.insertBefore(parts.section, container.children[index] || null);
    parts.count.textContent = countText(stations);
    stations.forEach((station, i) => {
      const tile = tiles.get(station.mac) || makeTile(station.mac);
      updateTile(tile, station);
      if (parts.grid.children[i] !== tile) parts.grid.insertBefore(tile, parts.grid.children[i] || null);
      seen.add(station.mac);
    });
  });
  for (const [mac, tile] of tiles) {
    if (!seen.has(mac)) { tile.remove(); tiles.delete(mac); }
  }
  $("rooms").classList.toggle("empty", rooms.length === 0);
}

function countText(stations) {
  const busy = stations.filter((s) => s.state !== "idle").length;
  const word = stations.length === 1 ? "station" : "stations";
  return busy ? `${stations.length} ${word}, ${busy} not idle` : `${stations.length} ${word}`;
}

function roomSection(name) {
  let parts = roomSections.get(name);
  if (parts) return parts;
  const section = el("section", "room");
  section.dataset.room = name;
  const head = el("div", "room-head");
  const title = el("h3", "room-name", name === NO_ROOM ? name : `Room ${name}`);
  title.id = `room-${roomSections.size}-title`;
  section.setAttribute("aria-labelledby", title.id);
  const count = el("span", "muted small");
  head.append(title, count);
  const grid = el("div", "tiles");
  section.append(head, grid);
  parts = { section, grid, count };
  roomSections.set(name, parts);
  return parts;
}

function makeTile(mac) {
  const tile = el("button", "tile");
  tile.type = "button";
  tile.dataset.mac = mac;
  const top = el("span", "tile-top");
  top.append(el("span", "tile-name"), el("span", "tile-kms", "KMS"));
  tile.append(top, el("span", "tile-state"));
  const progress = el("span", "tile-progress");
  progress.append(el("span", "tile-progress-fill"));
  tile.append(progress);
  tile.addEventListener("click", () => openStationPage(mac));
  tiles.set(mac, tile);
  return tile;
}

function updateTile(tile, station) {
  const name = station.name || station.mac;
  const state = stateText(station);
  tile.dataset.state = station.state;
  tile.className = `tile ${stateClass(station.state)}`;
  tile.querySelector(".tile-name").textContent = name;
  tile.querySelector(".tile-state").textContent = state;
  tile.querySelector(".tile-kms").hidden = !station.kms_activation;
  const restoring = station.state === "restoring" && typeof station.percent === "number";
  const progress = tile.querySelector(".tile-progress");
  progress.hidden = !restoring;
  if (restoring) progress.firstChild.style.width = `${Math.max(0, Math.min(100, station.percent))}%`;
  const kms = station.kms_activation ? ", KMS activation on" : "";
  tile.setAttribute("aria-label", `${name}, ${state}${kms}`);
  tile.title = [name, station.mac, station.ip].filter((v, i) => v && (i > 0 || v !== station.mac)).join(" · ");
}

function renderLegend() {
  const list = $("legend");
  list.replaceChildren(...STATES.map((state) => {
    const item = el("li", `legend-item ${stateClass(state)}`);
    item.append(el("span", "swatch"), document.createTextNode(state === "in-use" ? "in use" : state));
    return item;
  }));
}

// Bars: the running (else the latest) campaign's counts, else the KMS host's.

function latestCampaign() {
  const all = [...model.campaigns.values()].sort((a, b) => b.id - a.id);
  return all.find((c) => c.state === "running") || all[0] || null;
}

function renderBars() {
  const campaign = latestCampaign();
  const source = $("bars-source");
  source.textContent = campaign
    ? `campaign ${campaign.id}, ${campaign.state}`
    : "as the KMS host last reported";
  for (const family of FAMILIES) {
    const fromCampaign = campaign && campaign.families && campaign.families[family];
    const fromKms = model.kms && model.kms.families && model.kms.families[family];
    const figures = fromCampaign || fromKms;
    const bar = $(`bar-${family}`);
    const text = $(`bar-${family}-text`);
    if (!figures) {
      bar.setAttribute("aria-valuenow", "0");
      bar.setAttribute("aria-valuemax", "0");
      bar.setAttribute("aria-valuetext", "unknown");
      text.textContent = "– / –";
      continue;
    }
    const reported = figures.reported;
    const target = figures.target;
    bar.setAttribute("aria-valuenow", String(reported));
    bar.setAttribute("aria-valuemax", String(target));
    bar.setAttribute("aria-valuetext", `${reported} of ${target}`);
    bar.classList.toggle("reached", reported >= target && target > 0);
    const share = target > 0 ? Math.min(1, reported / target) : 0;
    bar.firstElementChild.style.width = `${(share * 100).toFixed(1)}%`;
    let words = `${reported} / ${target}`;
    if (fromCampaign && campaign.state === "running" && figures.in_flight) words += ` · ${figures.in_flight} in flight`;
    text.textContent = words;
  }
}

// Chart: the projected count per family over the next days, targets dashed, the next
// top-up as a vertical marker.

const CHART = { width: 400, height: 190, left: 30, right: 12, top: 20, bottom: 26 };

function niceStep(max) {
  for (const step of [1, 2, 5, 10, 20, 25, 50, 100, 200, 500, 1000]) {
    if (max / step <= 5) return step;
  }
  return Math.ceil(max / 5);
}

function renderChart() {
  const chart = $("kms-chart");
  const kms = model.kms;
  chart.replaceChildren();
  if (!kms) return;
  const days = kms.projection_days || 60;
  const families = FAMILIES.filter((f) => kms.families && kms.families[f]);
  const peak = Math.max(1, ...families.flatMap((f) => [kms.families[f].target, ...kms.families[f].projection]));
  const step = niceStep(peak * 1.1);
  const yMax = Math.ceil((peak * 1.1) / step) * step;
  const plotW = CHART.width - CHART.left - CHART.right;
  const plotH = CHART.height - CHART.top - CHART.bottom;
  const x = (day) => CHART.left + (day / days) * plotW;
  const y = (count) => CHART.top + plotH - (count / yMax) * plotH;
  const today = new Date();
  today.setHours(0, 0, 0, 0);

  const grid = svg("g", { class: "chart-grid" });
  for (let v = 0; v <= yMax; v += step) {
    grid.append(svg("line", { x1: CHART.left, x2: CHART.width - CHART.right, y1: y(v), y2: y(v) }));
    grid.append(svg("text", { x: CHART.left - 5, y: y(v) + 3.5, "text-anchor": "end", class: "chart-label" }, String(v)));
  }
  for (let d = 0; d <= days; d += 15) {
    const label = d === 0 ? "today" : dayFormat.format(new Date(today.getTime() + d * DAY_MS));
    const anchor = d === 0 ? "start" : d === days ? "end" : "middle";
    grid.append(svg("line", { x1: x(d), x2: x(d), y1: CHART.top + plotH, y2: CHART.top + plotH + 4 }));
    grid.append(svg("text", { x: x(d), y: CHART.height - 8, "text-anchor": anchor, class: "chart-label" }, label));
  }
  chart.append(grid);

  for (const family of families) {
    const f = kms.families[family];
    chart.append(svg("line", {
      x1: CHART.left, x2: CHART.width - CHART.right, y1: y(f.target), y2: y(f.target),
      class: `chart-target family-${family}`,
    }));
    chart.append(svg("text", { x: CHART.width - CHART.right, y: y(f.target) - 4, "text-anchor": "end", class: `chart-label family-${family}` },
      `${FAMILY_NAMES[family]} target ${f.target}`));
    let path = "";
    f.projection.forEach((count, day) => {
      path += day === 0 ? `M${x(0)},${y(count)}` : `V${y(count)}`;
      path += `H${x(day + 1)}`;
    });
    chart.append(svg("path", { d: path, class: `chart-line family-${family}` }));
  }

  const opens = topUpOpens(kms);
  if (opens !== null) {
    const day = Math.max(0, (opens.getTime() - Date.now()) / DAY_MS);
    if (day <= days) {
      const mx = x(day);
      chart.append(svg("line", { x1: mx, x2: mx, y1: CHART.top - 4, y2: CHART.top + plotH, class: "chart-marker" }));
      const anchor = day > days * 0.7 ? "end" : "start";
      chart.append(svg("text", { x: anchor === "end" ? mx - 4 : mx + 4, y: CHART.top - 8, "text-anchor": anchor, class: "chart-label chart-marker-label" },
        `next top-up ${dayFormat.format(opens)}`));
    }
  }

  const words = chartWords(kms, families, opens);
  chart.setAttribute("aria-label", words.join(" "));
  $("kms-notes").textContent = words.slice(1).join(" ");
}

function topUpOpens(kms) {
  const top = kms.next_top_up;
  if (!top || !top.window_opens) return null;
  const opens = new Date(top.window_opens);
  return Number.isNaN(opens.getTime()) ? null : opens;
}

/** The chart in sentences: its aria-label, and (after the first) the notes under it. */
function chartWords(kms, families, opens) {
  const words = [`Projected KMS counts for the next ${kms.projection_days} days, if no station activates again.`];
  for (const family of families) {
    const f = kms.families[family];
    let sentence = `${FAMILY_NAMES[family]}: ${f.projection[0] ?? f.reported} today, target ${f.target}`;
    if (f.below_target_from) sentence += `, below the target from ${dayFormat.format(new Date(f.below_target_from))}`;
    words.push(`${sentence}.`);
  }
  const top = kms.next_top_up;
  if (!top) words.push("No top-up planned.");
  else if (top.campaign !== null && top.campaign !== undefined) words.push(`Top-up under way: campaign ${top.campaign}.`);
  else if (opens) words.push(`Next top-up (${top.families.join(", ")}): its window opens ${dayTimeFormat.format(opens)}.`);
  else words.push(`Next top-up planned for ${top.families.join(", ")}.`);
  return words;
}

// Campaign: the running one with Cancel, else the last one's outcome and a start form.

function runningCampaign() {
  return [...model.campaigns.values()].filter((c) => c.state === "running").sort((a, b) => b.id - a.id)[0] || null;
}

function renderCampaign() {
  const box = $("campaign-current");
  const running = runningCampaign();
  const cancel = $("campaign-cancel");
  $("campaign-form").hidden = running !== null;
  cancel.hidden = running === null;
  if (running) {
    cancel.textContent = `Cancel campaign ${running.id}`;
    cancel.dataset.id = String(running.id);
    cancel.disabled = model.cancelling.has(running.id);
    box.replaceChildren(...campaignDetails(running, true));
    return;
  }
  const last = latestCampaign();
  const parts = [el("p", "muted", "No campaign is running.")];
  if (last) parts.push(...campaignDetails(last, false));
  box.replaceChildren(...parts);
}

function campaignDetails(c, running) {
  const nodes = [];
  const head = el("div", "campaign-head");
  head.append(el("strong", null, running ? `Campaign ${c.id}` : `Last: campaign ${c.id}`), el("span", `pill campaign-${c.state}`, c.state));
  if (c.waiting_for_window) head.append(el("span", "pill", "waiting for its window"));
  if (model.cancelling.has(c.id) && c.state === "running") head.append(el("span", "pill", "cancelling"));
  nodes.push(head);

  const facts = el("dl", "fields compact");
  const fact = (name, value) => { facts.append(el("dt", null, name), el("dd", null, value)); };
  fact("Image", c.image);
  fact("Cycles", `${c.cycles_done} done of ${c.cycles_started} started`);
  for (const family of FAMILIES) {
    const f = c.families && c.families[family];
    if (!f) continue;
    let text = `${f.reported} / ${f.target}`;
    if (running) text += `, ${f.in_flight} in flight, ${f.planned} planned`;
    fact(FAMILY_NAMES[family], text);
  }
  fact("Margin", String(c.margin));
  if (c.top_up_until) fact("Top-up until", formatTime(c.top_up_until));
  if (c.reason) fact("Reason", c.reason);
  fact(running ? "Started" : "Updated", formatTime(running ? c.created_at : c.updated_at));
  nodes.push(facts);

  if (running && c.stations && c.stations.length) {
    const phases = new Map();
    for (const st of c.stations) {
      if (!phases.has(st.phase)) phases.set(st.phase, []);
      phases.get(st.phase).push(stationName(st.mac));
    }
    const list = el("ul", "phases");
    list.setAttribute("aria-label", "Stations per phase");
    for (const [phase, names] of phases) {
      const item = el("li");
      item.append(el("span", "phase-name", `${phase} (${names.length})`), el("span", "phase-stations", names.join(", ")));
      list.append(item);
    }
    nodes.push(list);
  }

  return nodes;
}

function showCampaignError(message) {
  const node = $("campaign-error");
  node.textContent = message || "";
  node.hidden = !message;
}

async function cancelCampaign(id) {
  if (!window.confirm(`Cancel campaign ${id}? Cycles under way finish; no new one starts.`)) return;
  showCampaignError("");
  model.cancelling.add(id);
  markDirty("campaign");
  try {
    await api(`/api/v1/campaigns/${encodeURIComponent(id)}`, { method: "DELETE" });
  } catch (e) {
    model.cancelling.delete(id);
    markDirty("campaign");
    if (!(e instanceof AuthError)) showCampaignError(`Could not cancel: ${e.message}`);
  }
}

async function startCampaign(event) {
  event.preventDefault();
  const form = $("campaign-form");
  const families = [...form.querySelectorAll("input[name=families]:checked")].map((i) => i.value);
  const margin = Number($("campaign-margin").value);
  if (!families.length) { showCampaignError("Choose at least one family."); return; }
  if (!Number.isInteger(margin) || margin < 0) { showCampaignError("The margin is a whole number, 0 or more."); return; }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  showCampaignError("");
  try {
    const body = { room: $("campaign-room").value, families, margin, start: $("campaign-start").value };
    const created = await api("/api/v1/campaigns", { method: "POST", body });
    const campaigns = await api("/api/v1/campaigns");
    for (const c of campaigns) model.campaigns.set(c.id, c);
    markDirty("campaign", "bars");
    if (!created || !model.campaigns.has(created.id)) showCampaignError("The campaign was created but is not listed yet.");
  } catch (e) {
    if (!(e instanceof AuthError)) showCampaignError(`Could not start: ${e.message}`);
  } finally {
    button.disabled = false;
  }
}

function renderRoomChoices() {
  const select = $("campaign-room");
  const rooms = [...new Set([...model.stations.values()].map((s) => s.room).filter((r) => r))]
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  const current = [...select.options].map((o) => o.value);
  if (current.length === rooms.length && current.every((r, i) => r === rooms[i])) return;
  const chosen = select.value;
  select.replaceChildren(...rooms.map((room) => {
    const option = el("option", null, `Room ${room}`);
    option.value = room;
    return option;
  }));
  if (rooms.includes(chosen)) select.value = chosen;
}

// Recent events: the last boot events of any station, newest first.

function renderRecentEvents() {
  const list = $("recent-events");
  list.replaceChildren(...model.recent.map((e) => eventItem(e, true)));
  $("recent-events-empty").hidden = model.recent.length > 0;
}

function eventItem(event, withStation) {
  const item = el("li", "event");
  const time = el("time", "event-time", formatTime(event.at));
  time.dateTime = event.at;
  item.append(time);
  if (withStation) item.append(el("span", "event-station", stationName(event.mac)));
  item.append(el("span", `event-kind kind-${String(event.kind).split("-")[0]}`, event.kind));
  const detail = el("span", "event-detail", event.detail);
  detail.title = event.detail;
  item.append(detail);
  return item;
}

// Station page: `#station=MAC`.

function openStationPage(mac) {
  returnToGrid = true;
  location.hash = `station=${mac}`;
}

let returnToGrid = false;

function leaveStationPage() {
  if (returnToGrid) {
    returnToGrid = false;
    history.back();
  } else {
    history.pushState(null, "", location.pathname + location.search);
    route();
  }
}

async function loadStation(mac) {
  try {
    const data = await api(`/api/v1/stations/${encodeURIComponent(mac)}`);
    if (!model.detail || model.detail.mac !== mac) return;
    const previous = model.detail.data;
    // Events that came live while the GET was under way.
    const live = previous ? previous.events : model.detail.pending;
    for (const e of live) addStationEvent(data, e);
    model.detail.data = data;
    model.detail.pending = [];
    model.detail.error = null;
  } catch (e) {
    if (e instanceof AuthError || !model.detail || model.detail.mac !== mac) return;
    model.detail.error = e.message;
  }
  markDirty("station");
}

function renderStation() {
  const detail = model.detail;
  const page = $("station-page");
  if (!detail) return;
  page.dataset.mac = detail.mac;
  const error = $("station-error");
  error.textContent = detail.error ? `Could not load the station: ${detail.error}` : "";
  error.hidden = !detail.error;
  const s = detail.data || model.stations.get(detail.mac);
  $("station-title").textContent = s ? (s.name || s.mac) : detail.mac;
  const badge = $("station-state");
  badge.textContent = s ? stateText(s) : "";
  badge.className = `state-badge ${s ? stateClass(s.state) : ""}`;
  if (!s) return;
  renderStationFields(s);
  renderStationReset(detail.data ? detail.data.reset : undefined);
  renderStationCapture(detail.data ? detail.data.capture : undefined);
  const events = (detail.data && detail.data.events) || [];
  const list = $("station-events");
  if (list.children.length !== events.length || list.dataset.mac !== detail.mac) {
    list.dataset.mac = detail.mac;
    list.replaceChildren(...events.map((e) => eventItem(e, false)));
  }
  $("station-events-empty").hidden = !detail.data || events.length > 0;
}

function renderStationFields(s) {
  const yesNo = (v) => (v ? "yes" : "no");
  const rows = [
    ["MAC", s.mac], ["Name", s.name], ["Room", s.room], ["State", stateText(s)], ["IP address", s.ip],
    ["Architecture", s.arch], ["Firmware", s.firmware],
    ["Boot loader", { signed: "signed: shim, GRUB (Secure Boot)", ipxe: "iPXE" }[s.boot_loader]],
    ["Image", s.image],
    ["KMS activation", yesNo(s.kms_activation)], ["User logged on", yesNo(s.in_use)],
    ["Listed by the admin", yesNo(s.confirmed)], ["Last seen", formatTime(s.last_seen)],
    ["Last agent report", formatTime(s.last_report)],
  ];
  $("station-fields").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", null, name), el("dd", null, value ?? "–")]));
}

function renderStationReset(reset) {
  const box = $("station-reset");
  if (reset === undefined) { box.replaceChildren(el("p", "muted", "Loading…")); return; }
  if (reset === null) { box.replaceChildren(el("p", "muted", "No reset recorded.")); return; }
  box.replaceChildren(...workNodes(reset, "Restore", (fact) => {
    fact("Image", reset.image);
    fact("Profile", reset.profile);
    if (reset.disk) fact("Disk", reset.disk);
    if (typeof reset.secure_boot === "boolean") fact("Secure Boot", reset.secure_boot ? "on" : "off");
    // The stations restoring the same image with it, taking chunks from each other.
    if (typeof reset.wave === "number") fact("Restore wave", `#${reset.wave}`);
  }));
}

/** A station's capture into a new image: shown only when one was asked for. */
function renderStationCapture(capture) {
  $("station-capture-card").hidden = !capture;
  if (!capture) { $("station-capture").replaceChildren(); return; }
  $("station-capture").replaceChildren(...workNodes(capture, "Capture", (fact) => {
    fact("New image", capture.image);
    fact("Disk (read only)", capture.disk);
    if (capture.index) fact("Index", capture.index.slice(0, 16) + "…");
  }));
}

/** The progress bar, facts, error and figures of a restore or a capture. */
function workNodes(work, what, facts) {
  const percent = typeof work.percent === "number" ? work.percent : 0;
  const bar = el("div", work.state === "done" ? "bar small-bar reached" : "bar small-bar");
  bar.setAttribute("role", "progressbar");
  bar.setAttribute("aria-label", `${what} progress`);
  bar.setAttribute("aria-valuemin", "0");
  bar.setAttribute("aria-valuemax", "100");
  bar.setAttribute("aria-valuenow", String(Math.floor(percent)));
  const fill = el("div", "bar-fill");
  fill.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  bar.append(fill);
  const list = el("dl", "fields");
  const fact = (name, value) => list.append(el("dt", null, name), el("dd", null, value ?? "–"));
  fact("State", work.state);
  fact("Progress", `${Math.floor(percent)} % (${formatBytes(work.done_bytes)} of ${formatBytes(work.total_bytes)})`);
  facts(fact);
  fact("Requested", formatTime(work.requested_at));
  fact("Updated", formatTime(work.updated_at));
  const nodes = [bar, list];
  if (work.error) nodes.push(el("p", "error", work.error));
  const stats = Object.entries(work.stats || {});
  if (stats.length) {
    const more = el("details", "stats");
    more.append(el("summary", null, `${what} figures`));
    const figures = el("dl", "fields compact");
    for (const [name, value] of stats) figures.append(el("dt", null, name.replace(/_/g, " ")), el("dd", null, typeof value === "object" ? JSON.stringify(value) : value));
    more.append(figures);
    nodes.push(more);
  }
  return nodes;
}

// ---------------------------------------------------------------- routing

function route() {
  if (!session) { showView("login"); return; }
  const match = location.hash.match(/^#station=(.+)$/);
  if (!match) {
    const left = model.detail && tiles.get(model.detail.mac);
    model.detail = null;
    showView("dashboard");
    if (left) left.focus();
    markDirty("rooms", "bars", "chart", "campaign", "events");
    return;
  }
  const mac = decodeURIComponent(match[1]).toLowerCase();
  if (!model.detail || model.detail.mac !== mac) {
    model.detail = { mac, data: null, error: null, pending: [] };
    $("station-events").replaceChildren();
    loadStation(mac);
  }
  showView("station");
  renderStation();
  $("station-title").focus();
}

function start() {
  renderLegend();
  $("station-title").tabIndex = -1;
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("login-token").value.trim();
    if (!token) return;
    $("login-error").hidden = true;
    signIn(token);
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("station-back").addEventListener("click", leaveStationPage);
  $("campaign-form").addEventListener("submit", startCampaign);
  $("campaign-cancel").addEventListener("click", (event) => cancelCampaign(Number(event.currentTarget.dataset.id)));
  window.addEventListener("hashchange", () => (takeTokenFromUrl() ? signIn(sessionStorage.getItem(TOKEN_KEY)) : route()));
  takeTokenFromUrl();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
  else signOut("");
}

start();
