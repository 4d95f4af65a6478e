// The live plan view: lists the streams of the server this page comes
// from, asks for a stream's password, and shows its plan as it changes.
// QGroundControl .plan files are drawn (waypoints, geofence, rally
// points); any other JSON is shown as a tree. The changes of the last
// update are highlighted.
import { Client, EventKind, Status } from "./missionstream/index.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

// The server: this page's origin (the deploy front serves both), or
// #server=URL in the address (another front that allows this origin).
const hash = new URLSearchParams(location.hash.slice(1));
const serverUrl = hash.get("server") || location.origin;
const client = new Client(serverUrl, { post: hash.get("post") === "1" });

const view = {
  follower: null,
  previous: null,
  seq: -1,
  updatedMs: 0,
  renders: {}, // seq -> Date.now() once the frame showing it was rendered
  received: {}, // seq -> Date.now() when the state reached the page
  // seq -> performance.now() marks: bytes read, message parsed, state
  // applied (by the package), event, plan parsed, DOM updated, frame
  // started (requestAnimationFrame), frame rendered (the task after it).
  marks: {},
  renderWaiters: [],
  /** Resolves once the frame showing a state of seq >= `seq` is rendered (for tests: no polling). */
  rendered(seq) {
    return new Promise((resolve) => {
      const check = () => {
        if (view.seq >= seq && Object.keys(view.renders).some((s) => +s >= seq)) resolve(true);
        else view.renderWaiters.push(check);
      };
      check();
    });
  },
  followers: new Map(), // followMany(): name -> {seq, data}
  connection: "idle",
};
window.msView = view;

function setBadge(el, text, cls) {
  el.textContent = text;
  el.className = "badge" + (cls ? " " + cls : "");
}

function setConnection(text, cls) {
  view.connection = text;
  setBadge($("conn"), text, cls);
}

// ------------------------------------------------------------ stream list

async function refreshList() {
  if (view.follower) return;
  try {
    const streams = await client.list();
    const ul = $("streams");
    ul.replaceChildren();
    if (!streams.length) ul.innerHTML = '<li class="muted">no live stream</li>';
    for (const s of streams) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      // Ages on Redis' clock (its time when it listed the page): this
      // machine's clock, however far off, plays no part.
      const online = s.heardMs > 0 && s.nowMs - s.heardMs < 3 * s.heartbeatMs;
      b.textContent = `${s.name} · ${online ? "leader online" : "leader offline"} · seq ${s.seq} · ${s.followers} follower${s.followers === 1 ? "" : "s"} · ${age(s.nowMs - s.updatedMs)} ago`;
      b.dataset.name = s.name;
      b.onclick = () => { $("name").value = s.name; $("password").focus(); };
      li.append(b);
      ul.append(li);
    }
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = `cannot list the streams: ${e.message}`;
  }
}

// ----------------------------------------------------------------- follow

$("join").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const name = $("name").value;
  const password = $("password").value;
  $("error").textContent = "";
  try {
    await view.follow(name, password);
    $("password").value = "";
  } catch (e) {
    $("error").textContent = e.status === Status.MS_ERR_BAD_PASSWORD ? "wrong password for this stream" : e.message;
  }
});

$("leave").addEventListener("click", () => view.leave());

view.follow = async function follow(name, password) {
  if (view.follower) view.leave();
  setConnection("connecting", "warn");
  const f = await client.follow(name, password, { onEvent: onEvent });
  view.follower = f;
  view.previous = null;
  view.layout = null;
  view.seq = -1;
  $("stream-name").textContent = name;
  $("pick").hidden = true;
  $("watch").hidden = false;
  setBadge($("leader"), "leader online", "ok");
  history.replaceState(null, "", "#" + new URLSearchParams({ ...Object.fromEntries(hash), stream: name }).toString());
};

view.leave = function leave() {
  if (view.follower && !view.follower.ended) view.follower.disconnect();
  view.follower = null;
  $("watch").hidden = true;
  $("pick").hidden = false;
  setConnection("not following");
  refreshList();
};

function onEvent(ev) {
  switch (ev.kind) {
    case EventKind.MS_EVENT_STATE:
      view.received[ev.seq] = ev.receivedAt;
      setConnection("connected", "ok");
      show(ev);
      break;
    case EventKind.MS_EVENT_CONNECTION_LOST:
      setConnection("reconnecting", "warn");
      break;
    case EventKind.MS_EVENT_RECONNECTED:
      setConnection("connected", "ok");
      break;
    case EventKind.MS_EVENT_LEADER_OFFLINE:
      setBadge($("leader"), "leader offline", "bad");
      break;
    case EventKind.MS_EVENT_LEADER_ONLINE:
      setBadge($("leader"), "leader online", "ok");
      break;
    case EventKind.MS_EVENT_ENDED:
      setConnection("stream ended", "bad");
      break;
  }
}

/** Follows several streams at once (no drawing): their newest seq and state. */
view.followMany = async function followMany(names, password) {
  await Promise.all(names.map(async (name) => {
    const entry = { seq: -1, data: null, at: 0 };
    view.followers.set(name, entry);
    await client.follow(name, password, {
      onEvent: (ev) => {
        if (ev.kind === EventKind.MS_EVENT_STATE) Object.assign(entry, { seq: ev.seq, data: ev.data, at: Date.now() });
      },
    });
  }));
};

// --------------------------------------------------------------- drawing

function show(ev) {
  const t = view.follower && view.follower.timing && view.follower.timing.seq === ev.seq ? view.follower.timing : {};
  const marks = { bytes: t.bytes, parsed: t.parsed, applied: t.applied, event: performance.now() };
  view.marks[ev.seq] = marks;
  let doc;
  try { doc = JSON.parse(ev.data); } catch { doc = ev.data; }
  marks.planParsed = performance.now();
  view.seq = ev.seq;
  view.updatedMs = ev.updatedMs;
  $("seq").textContent = String(ev.seq);
  if (isPlan(doc)) {
    $("tree").hidden = true;
    $("plan").hidden = false;
    drawPlan(doc, isPlan(view.previous) ? view.previous : null);
  } else {
    $("plan").hidden = true;
    $("tree").hidden = false;
    view.layout = null;
    drawTree(doc, view.previous);
  }
  view.previous = doc;
  tickAge();
  marks.dom = performance.now();
  afterFrame(ev.seq, marks);
}

/**
 * Marks when the frame showing state `seq` is rendered: its
 * requestAnimationFrame callback runs before the frame's style, layout and
 * paint; a task posted from it runs once they are done and the frame is
 * handed to the compositor.
 */
function afterFrame(seq, marks) {
  requestAnimationFrame(() => {
    marks.frame = performance.now();
    const ch = new MessageChannel();
    ch.port1.onmessage = () => {
      marks.rendered = performance.now();
      view.renders[seq] = Date.now();
      ch.port1.close();
      for (const w of view.renderWaiters.splice(0)) w();
    };
    ch.port2.postMessage(0);
  });
}

const isPlan = (d) => d && typeof d === "object" && d.fileType === "Plan" && d.mission && Array.isArray(d.mission.items);

const COMMANDS = { 16: "waypoint", 17: "loiter", 19: "loiter time", 20: "return", 21: "land", 22: "takeoff", 82: "spline waypoint", 178: "speed", 206: "camera trigger", 530: "camera mode" };

/** The items of a plan with a position: {n, lat, lon, alt, command, item}. */
export function planPoints(plan) {
  const out = [];
  plan.mission.items.forEach((item, index) => {
    const p = item && item.params;
    if (!Array.isArray(p) || item.type !== "SimpleItem") return;
    const lat = p[4], lon = p[5];
    if (typeof lat !== "number" || typeof lon !== "number" || (lat === 0 && lon === 0) || Math.abs(lat) > 90 || Math.abs(lon) > 180) return;
    out.push({ n: item.doJumpId ?? index + 1, index, lat, lon, alt: item.Altitude ?? p[6], command: item.command });
  });
  return out;
}

function drawPlan(plan, prev) {
  const pts = planPoints(plan);
  const prevItems = prev ? prev.mission.items : [];
  // Each item's JSON, kept for the next update's comparison.
  const texts = plan.mission.items.map((it) => JSON.stringify(it));
  const prevTexts = prev && view.itemTexts && view.itemTexts.plan === prev ? view.itemTexts.texts : prevItems.map((it) => JSON.stringify(it));
  view.itemTexts = { plan, texts };
  const changed = (i) => !prev || texts[i] !== prevTexts[i];
  const fence = plan.geoFence || {};
  const circles = (fence.circles || []).filter((c) => c && c.circle && Array.isArray(c.circle.center));
  const polygons = (fence.polygons || []).filter((p) => p && Array.isArray(p.polygon));
  const rally = ((plan.rallyPoints || {}).points || []).filter(Array.isArray);
  const home = Array.isArray(plan.mission.plannedHomePosition) ? plan.mission.plannedHomePosition : null;
  if (prev && updatePlan(plan, pts, changed)) return;

  // Web Mercator (the projection of map tiles) around the plan, fitted
  // into 1000 x 700.
  const all = [...pts.map((p) => [p.lat, p.lon]), ...rally, ...polygons.flatMap((p) => p.polygon)];
  if (home) all.push(home);
  // Inclusion circles usually dwarf the mission: fitted only when there is
  // nothing else to fit (they are drawn anyway, clipped).
  for (const c of circles) {
    if (pts.length && c.inclusion !== false) continue;
    const d = (c.circle.radius || 0) / 111320;
    all.push([c.circle.center[0] - d, c.circle.center[1]], [c.circle.center[0] + d, c.circle.center[1]]);
  }
  const good = all.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]) && Math.abs(p[0]) < 85);
  const lat0 = good.length ? good.reduce((a, p) => a + p[0], 0) / good.length : 0;
  const mx = (lon) => (lon + 180) / 360;
  const my = (lat) => { const t = Math.sin((lat * Math.PI) / 180); return 0.5 - Math.log((1 + t) / (1 - t)) / (4 * Math.PI); };
  const xs = good.map((p) => mx(p[1])), ys = good.map((p) => my(p[0]));
  const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
  const span = Math.max(maxX - minX, (maxY - minY) * (1000 / 700), 1e-12);
  const scale = 940 / span;
  const ox = 500 - ((minX + maxX) / 2) * scale, oy = 350 - ((minY + maxY) / 2) * scale;
  const X = (lon) => (mx(lon) * scale + ox).toFixed(1);
  const Y = (lat) => (my(lat) * scale + oy).toFixed(1);
  const metres = (m) => (m / (40075016.686 * Math.cos((lat0 * Math.PI) / 180))) * scale;

  const svg = $("map");
  const el = (tag, attrs, parent = svg) => {
    const e = document.createElementNS(SVG, tag);
    for (const [a, v] of Object.entries(attrs)) e.setAttribute(a, v);
    parent.append(e);
    return e;
  };
  svg.replaceChildren();
  // Map tiles under the plan, where the deployment has a tile server:
  // #tiles=https://tiles.example.org/{z}/{x}/{y}.png in the page's address.
  const tiles = hash.get("tiles");
  if (tiles) {
    const z = Math.max(0, Math.min(19, Math.round(Math.log2(scale / 256))));
    const n = 2 ** z, T = scale / n;
    const g = el("g", { class: "tiles", "data-z": z });
    for (let ty = Math.max(0, Math.floor(-oy / T)); ty <= Math.min(n - 1, Math.floor((700 - oy) / T)); ty++) {
      for (let tx = Math.floor(-ox / T); tx <= Math.floor((1000 - ox) / T); tx++) {
        const x = ((tx % n) + n) % n;
        el("image", { href: tiles.replace("{z}", z).replace("{x}", x).replace("{y}", ty), x: (ox + tx * T).toFixed(1), y: (oy + ty * T).toFixed(1), width: T.toFixed(1), height: T.toFixed(1), "data-tile": `${z}/${x}/${ty}` }, g);
      }
    }
  }
  for (const c of circles) {
    el("circle", { class: "fence" + (c.inclusion === false ? " exclusion" : ""), cx: X(c.circle.center[1]), cy: Y(c.circle.center[0]), r: metres(c.circle.radius || 0).toFixed(1) });
  }
  for (const p of polygons) {
    el("polygon", { class: "fence" + (p.inclusion === false ? " exclusion" : ""), points: p.polygon.map((q) => `${X(q[1])},${Y(q[0])}`).join(" ") });
  }
  // The path as one line per leg: a moved waypoint repaints its two legs,
  // not the whole map (a single polyline's change repaints its whole box).
  const pathGroup = el("g", { class: "path" });
  const legs = [];
  for (let i = 1; i < pts.length; i++) {
    legs.push(el("line", { x1: X(pts[i - 1].lon), y1: Y(pts[i - 1].lat), x2: X(pts[i].lon), y2: Y(pts[i].lat) }, pathGroup));
  }
  if (home) el("rect", { class: "home", x: X(home[1]) - 5, y: Y(home[0]) - 5, width: 10, height: 10 });
  for (const r of rally) el("circle", { class: "rally", cx: X(r[1]), cy: Y(r[0]), r: 6 });
  // Marker size from the spacing of consecutive waypoints; numbers only
  // where they fit (and on changed waypoints).
  const gaps = [];
  for (let i = 1; i < pts.length; i++) gaps.push(Math.hypot(X(pts[i].lon) - X(pts[i - 1].lon), Y(pts[i].lat) - Y(pts[i - 1].lat)));
  gaps.sort((a, b) => a - b);
  const gap = gaps.length ? gaps[Math.floor(gaps.length / 2)] : 40;
  const r0 = Math.max(3, Math.min(9, gap / 2.4));
  const rows = [];
  const layout = { X, Y, r0, n: pts.length, extras: extrasOf(plan), nodes: [], highlighted: [] };
  for (const p of pts) {
    const ch = changed(p.index);
    const g = el("g", { class: "wp" + (ch && prev ? " changed" : ""), "data-n": p.n, "data-lat": p.lat, "data-lon": p.lon, "data-alt": p.alt });
    const circle = el("circle", {}, g);
    const text = el("text", { "font-size": Math.min(11, Math.max(r0, 10) * (String(p.n).length > 2 ? 0.95 : 1.2)).toFixed(1) }, g);
    text.textContent = String(p.n);
    const title = el("title", {}, g);
    const tr = document.createElement("tr");
    for (let i = 0; i < 5; i++) tr.append(document.createElement("td"));
    const node = { g, circle, text, title, tr, index: p.index };
    layout.nodes.push(node);
    setPoint(layout, node, p, ch && !!prev);
    rows.push(tr);
  }
  layout.legs = legs;
  view.layout = layout;
  $("items").tBodies[0].replaceChildren(...rows);
  // The first changed row scrolls into the table's view (not the page's).
  const first = rows.find((r) => r.className === "changed");
  const box = $("items-box");
  if (first && prev) scrollRow(box, first);
}

/** Scrolls the table (not the page) to a row, at the next frame: reading its position needs a layout. */
function scrollRow(box, tr) {
  requestAnimationFrame(() => { box.scrollTop = Math.max(0, tr.offsetTop - box.clientHeight / 2); });
}

const extrasOf = (plan) => JSON.stringify([plan.geoFence, plan.rallyPoints, plan.mission.plannedHomePosition]);

/** Draws waypoint `p` on its node: position, number, title, table row, highlight. */
function setPoint(layout, node, p, highlight) {
  const { X, Y, r0 } = layout;
  node.g.setAttribute("class", "wp" + (highlight ? " changed" : ""));
  for (const [k, v] of [["n", p.n], ["lat", p.lat], ["lon", p.lon], ["alt", p.alt]]) node.g.dataset[k] = String(v);
  node.circle.setAttribute("cx", X(p.lon));
  node.circle.setAttribute("cy", Y(p.lat));
  node.circle.setAttribute("r", highlight ? Math.max(r0 + 3, 10) : r0);
  node.text.setAttribute("x", X(p.lon));
  node.text.setAttribute("y", Y(p.lat));
  node.text.style.display = r0 >= 7 || highlight ? "" : "none";
  node.text.textContent = String(p.n);
  node.title.textContent = `#${p.n} ${COMMANDS[p.command] || "command " + p.command}: ${p.lat}, ${p.lon}, ${p.alt} m`;
  node.tr.className = highlight ? "changed" : "";
  const cells = node.tr.children;
  [p.n, COMMANDS[p.command] || String(p.command), p.lat.toFixed(7), p.lon.toFixed(7), p.alt].forEach((v, i) => { cells[i].textContent = String(v); });
  if (highlight) layout.highlighted.push(node);
}

/** Updates the drawing in place when only waypoints moved within it; false when it must be drawn anew. */
function updatePlan(plan, pts, changed) {
  const L = view.layout;
  if (!L || L.n !== pts.length || L.extras !== extrasOf(plan)) return false;
  for (let i = 0; i < pts.length; i++) {
    const p = pts[i];
    if (L.nodes[i].index !== p.index) return false;
    const x = +L.X(p.lon), y = +L.Y(p.lat);
    if (!(x >= 0 && x <= 1000 && y >= 0 && y <= 700)) return false;
  }
  const before = L.highlighted;
  L.highlighted = [];
  const touched = new Set();
  pts.forEach((p, i) => {
    if (changed(p.index)) { setPoint(L, L.nodes[i], p, true); touched.add(L.nodes[i]); }
  });
  pts.forEach((p, i) => {
    if (before.includes(L.nodes[i]) && !touched.has(L.nodes[i])) setPoint(L, L.nodes[i], p, false);
  });
  for (const node of touched) {
    const i = L.nodes.indexOf(node);
    const x = L.X(pts[i].lon), y = L.Y(pts[i].lat);
    if (i > 0) { L.legs[i - 1].setAttribute("x2", x); L.legs[i - 1].setAttribute("y2", y); }
    if (i < L.legs.length) { L.legs[i].setAttribute("x1", x); L.legs[i].setAttribute("y1", y); }
  }
  const first = L.highlighted[0];
  const box = $("items-box");
  if (first) scrollRow(box, first.tr);
  return true;
}

function drawTree(doc, prev) {
  const node = (value, old, key, path) => {
    const li = document.createElement("li");
    const changed = prev !== null && JSON.stringify(value) !== JSON.stringify(old);
    if (changed) li.className = "changed";
    li.dataset.path = path;
    if (key !== null) {
      const k = document.createElement("span");
      k.className = "key";
      k.textContent = key + ": ";
      li.append(k);
    }
    if (value && typeof value === "object") {
      const ul = document.createElement("ul");
      const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v]) : Object.entries(value);
      const o = old && typeof old === "object" ? old : {};
      for (const [kk, v] of entries) ul.append(node(v, o[kk], kk, path + "/" + kk));
      const v = document.createElement("span");
      v.className = "v";
      v.textContent = Array.isArray(value) ? `[${value.length}]` : "{}";
      li.append(v, ul);
    } else {
      const v = document.createElement("span");
      v.className = "v";
      v.textContent = JSON.stringify(value);
      li.append(v);
    }
    return li;
  };
  const ul = document.createElement("ul");
  ul.append(node(doc, prev === null ? undefined : prev, null, ""));
  $("tree").replaceChildren(ul);
}

function age(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function tickAge() {
  // The package's age of the newest state: Redis' age of it when read,
  // plus the time elapsed here since (never this clock against Redis').
  if (view.follower && view.follower.seq >= 0) $("age").textContent = age(view.follower.updatedAgeMs);
}

setInterval(tickAge, 1000);
setInterval(refreshList, 5000);
refreshList();
if (hash.get("stream")) $("name").value = hash.get("stream");
