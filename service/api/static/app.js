// FleetWatch status page: devices on a map coloured by status, drill-down by location,
// floor plans, active alerts, live updates over server-sent events. No external resources.
"use strict";

const COLORS = { critical: "#c62828", offline: "#6a1b9a", warning: "#ef6c00", info: "#1565c0", ok: "#2e7d32" };
const RANK = { critical: 0, offline: 1, warning: 2, info: 3, ok: 4 };

const state = {
  devices: new Map(),        // id -> {id, status, lat, lon, x, y, site, zone, region, alerts}
  alerts: new Map(),         // alert id -> alert
  level: { region: null, site: null, zone: null },
  tree: null,
  config: null,
  ready: false,
  renderMs: null,
  drawnMs: null,
  live: false,
};
window.fleetwatch = {
  state,
  statusOf: (id) => (state.devices.get(id) || {}).status || null,
  colourOf: (id) => drawnAs.get(id) || null,  // the colour the device is drawn in now
  shownCount: () => document.getElementById("device-count").dataset.count | 0,
};

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// ---- maps ---------------------------------------------------------------------------

const renderer = L.canvas({ padding: 0.5 });
const map = L.map("map", { preferCanvas: true, worldCopyJump: true, minZoom: 2, maxZoom: 19 }).setView([48, 8], 4);
const CELL_PX = 48;           // devices closer than this on screen are drawn as one cluster
const SINGLE_ZOOM = 17;       // from this zoom on, every device is drawn on its own
let layer = L.layerGroup().addTo(map);
let floor = null;
let onMap = [];               // the devices the map currently draws (the drill-down's)
let drawnAs = new Map();      // device id -> the colour it is drawn in (its own or its cluster's)

function worstOf(devices) {
  let worst = "ok";
  for (const d of devices) if (RANK[d.status] < RANK[worst]) worst = d.status;
  return worst;
}

// Clusters are made per view: devices are binned into screen cells of CELL_PX, so a view
// costs one pass over the devices whatever their number, and only what is visible is drawn.
function draw() {
  const zoom = map.getZoom();
  const bounds = map.getBounds().pad(0.2);
  const cells = new Map();
  for (const d of onMap) {
    if (!bounds.contains([d.lat, d.lon])) continue;
    const p = map.project([d.lat, d.lon], zoom);
    const key = zoom >= SINGLE_ZOOM ? d.id : `${Math.floor(p.x / CELL_PX)}:${Math.floor(p.y / CELL_PX)}`;
    let cell = cells.get(key);
    if (!cell) cells.set(key, (cell = []));
    cell.push(d);
  }
  const next = L.layerGroup();
  drawnAs = new Map();
  for (const members of cells.values()) {
    const colour = COLORS[worstOf(members)];
    for (const d of members) drawnAs.set(d.id, colour);
    if (members.length === 1) {
      const d = members[0];
      const marker = L.circleMarker([d.lat, d.lon], {
        renderer, radius: 6, weight: 1, color: "#fff", fillOpacity: 0.9, fillColor: colour,
      });
      marker.on("click", () => showTwin(d.id));
      next.addLayer(marker);
      continue;
    }
    let lat = 0, lon = 0;
    for (const d of members) { lat += d.lat; lon += d.lon; }
    const n = members.length;
    const size = n < 100 ? 30 : n < 1000 ? 38 : 46;
    const cluster = L.marker([lat / n, lon / n], {
      icon: L.divIcon({
        html: `<div class="cluster" style="width:${size}px;height:${size}px;background:${colour}">${n}</div>`,
        className: "", iconSize: [size, size],
      }),
    });
    cluster.on("click", () => map.fitBounds(L.latLngBounds(members.map((d) => [d.lat, d.lon])).pad(0.2)));
    next.addLayer(cluster);
  }
  map.removeLayer(layer);
  layer = next.addTo(map);
}
map.on("moveend", () => draw());

let redraw = null;
function drawSoon() {  // live updates come in bursts: draw once per burst
  if (redraw === null) redraw = setTimeout(() => { redraw = null; draw(); }, 150);
}

function inLevel(d, level) {  // whether a device lies under a place of the drill-down
  return (!level.region || d.region === level.region) && (!level.site || d.site === level.site)
    && (!level.zone || d.zone === level.zone);
}

function visibleDevices() {
  const out = [];
  for (const d of state.devices.values()) if (inLevel(d, state.level)) out.push(d);
  return out;
}

function render() {
  const started = performance.now();
  const devices = visibleDevices();
  const geo = devices.filter((d) => d.lat !== null && d.lon !== null);
  const planned = devices.filter((d) => (d.lat === null || d.lon === null) && d.x !== null && d.y !== null);
  const onFloor = state.level.site && planned.length > 0 && geo.length === 0;
  document.getElementById("map").hidden = onFloor;
  document.getElementById("floor").hidden = !onFloor;
  onMap = geo;
  if (onFloor) renderFloor(planned);
  else if (geo.length) {
    let south = 90, west = 180, north = -90, east = -180;
    for (const d of geo) {
      if (d.lat < south) south = d.lat; if (d.lat > north) north = d.lat;
      if (d.lon < west) west = d.lon; if (d.lon > east) east = d.lon;
    }
    map.fitBounds(L.latLngBounds([south, west], [north, east]).pad(0.1), { animate: false });
  }
  draw();  // fitBounds may not move the map (same view): draw anyway
  const shown = onFloor ? planned.length : geo.length;
  const counter = document.getElementById("device-count");
  counter.dataset.count = String(shown);
  counter.textContent = `${shown.toLocaleString()} devices shown`;
  state.renderMs = performance.now() - started;
  state.drawnMs = performance.now();
}

function renderFloor(devices) {
  if (!floor) {
    floor = L.map("floor", { crs: L.CRS.Simple, minZoom: -5, maxZoom: 6, preferCanvas: true, attributionControl: false });
  }
  floor.eachLayer((layer) => floor.removeLayer(layer));
  const xs = devices.map((d) => d.x), ys = devices.map((d) => d.y);
  const bounds = [[Math.min(...ys) - 1, Math.min(...xs) - 1], [Math.max(...ys) + 1, Math.max(...xs) + 1]];
  L.rectangle(bounds, { color: "#90a4ae", weight: 2, fill: true, fillColor: "#fff", fillOpacity: 1 }).addTo(floor);
  for (const d of devices) {
    d.marker = L.circleMarker([d.y, d.x], {
      renderer, radius: 6, weight: 1, color: "#fff", fillOpacity: 0.9, fillColor: COLORS[d.status],
    });
    d.marker.on("click", () => showTwin(d.id));
    d.marker.addTo(floor);
    drawnAs.set(d.id, COLORS[d.status]);
  }
  floor.invalidateSize();
  floor.fitBounds(bounds, { animate: false });
}

function paint(id, status) {
  const device = state.devices.get(id);
  if (!device || !status) return;
  device.status = status;
  if (device.marker && !document.getElementById("floor").hidden) {
    device.marker.setStyle({ fillColor: COLORS[status] });  // on the floor plan
    drawnAs.set(id, COLORS[status]);
  } else {
    drawSoon();
  }
  renderCounts();
}

// ---- side panels --------------------------------------------------------------------

function renderCounts() {
  const counts = {};
  for (const d of state.devices.values()) counts[d.status] = (counts[d.status] || 0) + 1;
  document.getElementById("counts").innerHTML = Object.keys(COLORS)
    .filter((s) => counts[s])
    .map((s) => `<span><i class="dot" style="background:${COLORS[s]}"></i>${s} ${counts[s]}</span>`)
    .join("");
}

function renderAlerts() {
  const list = document.getElementById("alerts");
  const alerts = [...state.alerts.values()].sort((a, b) => a.started_at < b.started_at ? 1 : -1);
  document.getElementById("alert-count").textContent = `(${alerts.length})`;
  list.replaceChildren(...alerts.slice(0, 300).map((a) => {
    const li = document.createElement("li");
    li.className = `sev-${a.severity}`;
    li.textContent = `${a.kind} · ${a.summary}`;
    li.dataset.subject = a.subject;
    li.onclick = () => showTwin(a.subject.split("/")[0]);
    return li;
  }));
}

async function showTwin(id) {
  const box = document.getElementById("twin");
  let twin;
  try { twin = await getJSON(`/api/devices/${encodeURIComponent(id)}`); } catch { return; }
  const metrics = twin.latest ? Object.entries(twin.latest.metrics) : [];
  const rows = [
    ["status", twin.status], ["site / zone", `${twin.site || "-"} / ${twin.zone || "-"}`],
    ["model", twin.model], ["firmware", twin.firmware], ["gateway", twin.gateway],
    ["last seen", twin.last_seen],
    ...metrics.map(([k, v]) => [k, Number(v).toPrecision(4)]),
  ];
  if (twin.detectors.battery && twin.detectors.battery.tte_s)
    rows.push(["battery empty in", `${(twin.detectors.battery.tte_s / 86400).toFixed(1)} d`]);
  box.hidden = false;
  box.innerHTML = `<h3>${escapeHTML(twin.id)}</h3><table>${rows
    .map(([k, v]) => `<tr><td>${escapeHTML(k)}</td><td>${escapeHTML(String(v ?? "-"))}</td></tr>`)
    .join("")}</table>${twin.active_alerts.map((a) => `<p class="sev-${a.severity}">${escapeHTML(a.summary)}</p>`).join("")}`;
}

function escapeHTML(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// ---- drill-down ---------------------------------------------------------------------

function countIn(level) {  // [devices not ok, all devices] under a place, from live statuses
  let trouble = 0, all = 0;
  for (const d of state.devices.values()) {
    if (!inLevel(d, level)) continue;
    all += 1;
    if (d.status !== "ok") trouble += 1;
  }
  return [trouble, all];
}

function renderTree() {
  const { region, site, zone } = state.level;
  const crumbs = [`<a data-depth="0">fleet</a>`];
  if (region) crumbs.push(`<a data-depth="1">${escapeHTML(region)}</a>`);
  if (site) crumbs.push(`<a data-depth="2">${escapeHTML(site)}</a>`);
  if (zone) crumbs.push(`<span>${escapeHTML(zone)}</span>`);
  const crumbBox = document.getElementById("crumbs");
  crumbBox.innerHTML = crumbs.join(" › ");
  crumbBox.querySelectorAll("a").forEach((a) => (a.onclick = () => {
    const depth = Number(a.dataset.depth);
    state.level = { region: depth >= 1 ? region : null, site: depth >= 2 ? site : null, zone: null };
    renderTree(); render();
  }));
  let children = [];
  let depth = "region";
  if (!region) children = Object.values(state.tree.regions);
  else if (!site) { children = Object.values(state.tree.regions[region].sites); depth = "site"; }
  else if (!zone) { children = Object.values(state.tree.regions[region].sites[site].zones); depth = "zone"; }
  const list = document.getElementById("levels");
  list.replaceChildren(...children.sort((a, b) => a.name < b.name ? -1 : 1).map((node) => {
    const li = document.createElement("li");
    li.dataset.level = depth;
    li.dataset.name = node.name;
    const [trouble, all] = countIn({ ...state.level, [depth]: node.name });
    li.innerHTML = `<span>${escapeHTML(node.title || node.name)}</span><span title="devices in trouble / all"><b class="trouble">${trouble}</b>/${all}</span>`;
    li.onclick = () => { state.level[depth] = node.name; renderTree(); render(); };
    return li;
  }));
}

// ---- loading and live updates ---------------------------------------------------------

async function load() {
  const [config, page, tree, alerts] = await Promise.all([
    getJSON("/api/view-config"),
    getJSON("/api/devices?format=compact&limit=100000"),
    getJSON("/api/geo/tree"),
    getJSON("/api/alerts?state=active&limit=100000"),
  ]);
  state.loadedMs = performance.now();  // every response is in
  state.config = config;
  document.getElementById("title").textContent = config.title;
  document.title = config.title;
  if (config.tile_url && !state.tiles) {
    state.tiles = L.tileLayer(config.tile_url, { maxZoom: 19 }).addTo(map);
  }
  state.devices.clear();
  const c = Object.fromEntries(page.columns.map((name, i) => [name, i]));
  for (const row of page.rows) {
    state.devices.set(row[c.id], {
      id: row[c.id], status: row[c.status], lat: row[c.lat], lon: row[c.lon], x: row[c.x],
      y: row[c.y], site: row[c.site], zone: row[c.zone], region: row[c.region], alerts: row[c.alerts],
    });
  }
  state.tree = tree;
  state.alerts = new Map(alerts.active.map((a) => [a.id, a]));
  renderTree(); render(); renderCounts(); renderAlerts();
  state.ready = true;
}

let reloadTimer = null;
function reloadSoon() {  // a device the page has not seen yet: reload, at most every 5 s
  if (reloadTimer === null) reloadTimer = setTimeout(() => { reloadTimer = null; load(); }, 5000);
}

function listen() {
  const source = new EventSource("/api/events");
  const live = document.getElementById("live");
  source.addEventListener("hello", () => { state.live = true; live.className = "live on"; });
  source.onerror = () => { state.live = false; live.className = "live off"; };
  source.addEventListener("resync", () => load());
  source.addEventListener("alert", (event) => {
    const data = JSON.parse(event.data);
    const alert = data.alert;
    if (alert.state === "resolved") state.alerts.delete(alert.id); else state.alerts.set(alert.id, alert);
    if (data.device && !state.devices.has(data.device)) { reloadSoon(); return; }
    if (data.device) paint(data.device, data.status);
    renderAlerts();
    renderTree();
  });
}

load().then(listen).catch((error) => {
  document.getElementById("device-count").textContent = `failed to load: ${error && (error.message || error)}`;
  console.error(error);
});
