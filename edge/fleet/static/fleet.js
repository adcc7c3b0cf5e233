"use strict";
// The fleet page: one card per box, from the boxes' own MQTT payloads relayed by the fleet server
// (GET /api/fleet at load, then Server-Sent Events). Text only ever goes in through textContent:
// a device id or specimen id is data, never markup.

const cards = new Map(); // device_id -> {node, heardAt, data}
let session = { operator: null, csrf: null };

const $ = (id) => document.getElementById(id);
const pct = (x) => (x === null || x === undefined ? "-" : x.toFixed(1));
const STATE_WORDS = { online: "ONLINE", stopped: "STOPPED", offline: "OFFLINE", unknown: "UNKNOWN" };
const RULE_WORDS = { positive: "POSITIVE", indeterminate: "indeterminate", negative: "negative", not_applicable: "n/a" };

function cardFor(id) {
  let entry = cards.get(id);
  if (!entry) {
    const node = $("card").content.firstElementChild.cloneNode(true);
    node.dataset.device = id;
    node.querySelector(".device").textContent = id;
    node.querySelector(".control").addEventListener("submit", (e) => {
      e.preventDefault();
      send(id, "start_slide", { specimen_id: node.querySelector(".specimen").value.trim() });
    });
    node.querySelector(".stop").addEventListener("click", () => send(id, "stop_slide", {}));
    entry = { node, heardAt: null, data: null };
    cards.set(id, entry);
    // Stable places: cards sorted by device id, so a wall screen does not shuffle.
    const after = [...cards.keys()].sort().find((other) => other > id);
    $("boxes").insertBefore(node, after ? cards.get(after).node : null);
    $("empty").hidden = true;
  }
  return entry;
}

function render(box) {
  const entry = cardFor(box.device_id);
  const node = entry.node;
  entry.data = box;
  entry.heardAt = box.seen_s_ago === null ? null : Date.now() - box.seen_s_ago * 1000;
  node.className = `card ${box.state}`;
  node.dataset.state = box.state;
  const badge = node.querySelector(".state");
  badge.textContent = STATE_WORDS[box.state] || box.state;
  badge.className = `state badge ${box.state}`;
  node.querySelector(".why").textContent = box.why || "";

  const prov = box.status && box.status.provenance;
  if (prov) {
    const b = prov.bundle;
    node.querySelector(".bundle-name").textContent = `${b.name} ${b.version} (${b.hash}) · ${prov.backend}`;
    const scope = [];
    if (b.untrained) scope.push("UNTRAINED MODEL");
    else if (b.trained_on !== "bone_marrow") scope.push("NOT TRAINED ON MARROW");
    if (!b.untrained && !b.clinical_use) scope.push("NOT FOR CLINICAL USE");
    const badgeScope = node.querySelector(".scope");
    badgeScope.textContent = scope.join(" · ");
    badgeScope.hidden = scope.length === 0;
  }
  const camera = box.status && box.status.camera;
  node.querySelector(".camera").textContent = camera ? `camera ${camera.state}: ${camera.detail}` : "";
  renderSlide(node, box.current, box.state === "online");
  renderHealth(node, box.health);
  const link = node.querySelector(".review-link");
  link.hidden = !box.review_url;
  if (box.review_url) link.href = box.review_url;
  node.querySelector(".control").hidden = !session.operator || box.state !== "online";
  tick();
  summary();
}

function renderSlide(node, c, live) {
  const line = node.querySelector(".slide-line");
  const cells = node.querySelector(".cells");
  const bar = node.querySelector(".bar");
  const blast = node.querySelector(".blast");
  const rules = node.querySelector(".rules");
  const domain = node.querySelector(".domain");
  rules.replaceChildren();
  if (!c || c.state === "idle") {
    line.textContent = "No slide since the box started";
    cells.textContent = "";
    bar.style.width = "0";
    blast.textContent = "";
    domain.textContent = "";
    return;
  }
  const doing = c.state === "counting" ? (live ? "Counting" : "Last known: counting") : "Finished";
  line.textContent = `${doing}: ${c.specimen_id || "no specimen id"} · ${c.slide_id}`;
  cells.textContent = `${c.cells_counted} / ${c.target_count ?? "-"} cells`;
  bar.style.width = `${Math.round(c.progress * 100)}%`;
  bar.classList.toggle("done", c.state === "finished");
  blast.replaceChildren();
  if (c.percent.blast !== undefined) {
    const strong = document.createElement("b");
    strong.textContent = `${pct(c.percent.blast)}%`;
    const ci = (c.intervals || {}).blast;
    blast.append("Blasts ", strong, ci ? ` (95% CI ${pct(ci[0])}-${pct(ci[1])}%)` : "");
  }
  const call = document.createElement("li");
  call.className = `call ${c.rule_state}`;
  call.textContent = `Slide call: ${RULE_WORDS[c.rule_state] || c.rule_state}`;
  rules.append(call);
  for (const [id, state] of Object.entries(c.rules)) {
    const li = document.createElement("li");
    li.className = state;
    li.dataset.rule = id;
    li.textContent = `${id}: ${RULE_WORDS[state] || state}`;
    rules.append(li);
  }
  domain.className = `domain ${c.domain}`;
  domain.textContent = c.domain === "shifted" ? "DOMAIN SHIFT: the slide does not look like the training data" : `domain guard: ${c.domain}`;
}

function renderHealth(node, h) {
  const list = node.querySelector(".health");
  list.replaceChildren();
  const lis = node.querySelector(".lis");
  const add = (label, value, alarm) => {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (alarm) dd.className = "alarm";
    list.append(dt, dd);
  };
  if (!h) {
    lis.textContent = "";
    return;
  }
  if (h.gpu) {
    const g = h.gpu;
    add("GPU", `${g.name}: ${g.utilisation_percent ?? "-"}% · ${g.temperature_c ?? "-"} °C`, (g.temperature_c ?? 0) >= 85);
  }
  if (h.cpu) add("CPU", `${pct(h.cpu.load_percent)}% load · ${h.cpu.temperature_c === null ? "-" : h.cpu.temperature_c.toFixed(0)} °C`, (h.cpu.temperature_c ?? 0) >= 85);
  add("Disk free", h.disk_free_mb === null ? "-" : `${Math.round(h.disk_free_mb)} MB`, h.disk_alarm);
  add("Fields", `${h.fields_counted} counted · ${h.frames_per_s} frames/s`, false);
  if (h.scale) add("Scale", h.scale, !h.scale.startsWith("scale: ") || h.scale.startsWith("scale: not set"));
  const alarms = [];
  if (h.disk_alarm) alarms.push("disk nearly full");
  if (h.outbox_alarm) alarms.push("MQTT outbox over its bound");
  if (h.drops.publish_failures) alarms.push(`${h.drops.publish_failures} publish failures`);
  add("Alarms", alarms.length ? alarms.join(", ") : "none", alarms.length > 0);
  if (!h.lis) {
    lis.textContent = "LIS: not configured";
    lis.className = "lis detail";
    return;
  }
  const oldest = h.lis.oldest_s === null ? "" : ` · oldest ${Math.round(h.lis.oldest_s / 60)} min`;
  lis.textContent = `LIS: ${h.lis.pending} pending · ${h.lis.rejected} rejected${oldest}`;
  lis.className = h.lis.rejected ? "lis alarm" : "lis";
}

function tick() {
  for (const { node, heardAt } of cards.values()) {
    const seen = node.querySelector(".seen");
    seen.textContent = heardAt === null ? "not heard from since the page started" : `heard ${Math.max(0, Math.round((Date.now() - heardAt) / 1000))} s ago`;
  }
}

function summary() {
  const by = { online: 0, stopped: 0, offline: 0, unknown: 0 };
  for (const { data } of cards.values()) if (data) by[data.state] = (by[data.state] || 0) + 1;
  $("summary").textContent = `${cards.size} boxes: ${by.online} online · ${by.stopped} stopped · ${by.offline} offline`;
}

function link(l) {
  const badge = $("link");
  badge.dataset.connected = String(l.connected);
  badge.textContent = l.connected ? "BROKER CONNECTED" : "NO BROKER: cards show the last known state";
  badge.className = `badge ${l.connected ? "online" : "offline"}`;
  $("broker").textContent = `${l.broker} · ${l.prefix}/+`;
}

async function send(id, verb, body) {
  const reply = cards.get(id).node.querySelector(".reply");
  reply.className = "reply";
  reply.textContent = `${verb}: waiting for ${id}…`;
  try {
    const response = await fetch(`/api/boxes/${encodeURIComponent(id)}/command/${verb}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
      body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error);
    const slide = answer.slide_id ? `, slide ${answer.slide_id}` : "";
    reply.textContent = answer.ok ? `${id} accepted ${verb} (now ${answer.state}${slide})` : `${id} refused ${verb}: ${answer.error}`;
    reply.classList.toggle("error", !answer.ok);
  } catch (error) {
    reply.textContent = String(error.message || error);
    reply.classList.add("error");
  }
}

async function who() {
  const response = await fetch("/api/session");
  if (response.ok) session = await response.json();
  $("operator").textContent = session.operator ? `signed in: ${session.operator}` : "read-only";
  $("sign-in").hidden = Boolean(session.operator);
  $("sign-out").hidden = !session.operator;
  for (const { node, data } of cards.values()) {
    node.querySelector(".control").hidden = !session.operator || !data || data.state !== "online";
  }
}

$("sign-out").addEventListener("click", async () => {
  await fetch("/api/logout", { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" }, body: "{}" });
  session = { operator: null, csrf: null };
  await who();
});

async function start() {
  await who();
  const response = await fetch("/api/fleet");
  if (response.ok) {
    const state = await response.json();
    link(state.link);
    state.boxes.forEach(render);
  }
  const events = new EventSource("/events");
  events.addEventListener("box", (e) => render(JSON.parse(e.data)));
  events.addEventListener("link", (e) => link(JSON.parse(e.data)));
  events.onerror = () => link({ connected: false, broker: "the fleet server", prefix: "" });
  setInterval(tick, 1000);
}

start();
