// The page at the microscope. Everything it shows is the box's own MQTT payloads, relayed by
// `marrow-edge display` as Server-Sent Events (/events); the buttons post commands that the
// display publishes on cmd/<verb> (/api/command/<verb>). No asset comes from outside the box.
"use strict";

// Paul Tol's colour-blind-safe "light" scheme (readable on the dark ground), then white.
const PALETTE = ["#77AADD", "#EE8866", "#EEDD88", "#FFAABB", "#99DDFF", "#44BB99", "#BBCC33", "#AAAA00", "#DDDDDD", "#FFFFFF"];
const NOT_COUNTED = "#8a939c";
const GATE_WORDS = {
  accepted: "Counted",
  moving: "Not counted: the stage is moving",
  settling: "Hold still…",
  blurred: "Not counted: out of focus",
  dark: "Not counted: too dark",
  bright: "Not counted: overexposed",
  already_counted: "Not counted: this area was already counted — move on",
};
const REFUSED = new Set(["moving", "blurred", "dark", "bright", "already_counted"]);

// The kinds the page shows (command replies come back to the button's own request).
const state = { link: null, status: null, health: null, gate: null, tally: null, report: null, field: null };
const classes = [];  // bundle order, from the preview frames: stable colours
let lastField = null;
let flashUntil = 0;
let flashTimer = 0;
let framesSeen = [];
let streamUp = false;
let openedAt = 0;  // the first burst after (re)connecting replays state: no flash for old fields

const $ = (id) => document.getElementById(id);

function colourOf(name) {
  let i = classes.indexOf(name);
  if (i < 0) { classes.push(name); i = classes.length - 1; }
  return PALETTE[i % PALETTE.length];
}

function pretty(name) { return name.replace(/_/g, " "); }
function pct(v) { return v === null || v === undefined ? "-" : (v < 10 ? v.toFixed(1) : v.toFixed(0)); }

function online() {
  return streamUp && state.link && state.link.connected && state.status && state.status.state === "online";
}

// A clean stop (status "stopped") is a finished run, not a fault: only the broker's last will
// ("offline") or no appliance at all reads as offline.
function finished() {
  return streamUp && state.link && state.link.connected && state.status && state.status.state === "stopped";
}

function renderStatus() {
  const badge = $("state");
  let text, cls;
  if (!streamUp) { text = "DISPLAY DISCONNECTED"; cls = "offline"; }
  else if (!state.link || !state.link.connected) { text = "NO BROKER"; cls = "offline"; }
  else if (!state.status) { text = "OFFLINE (never seen)"; cls = "offline"; }
  else if (state.status.state === "online") { text = "● ONLINE"; cls = "online"; }
  else if (state.status.state === "stopped") { text = "FINISHED — appliance stopped"; cls = "stopped"; }
  else { text = "OFFLINE"; cls = "offline"; }
  badge.textContent = text;
  badge.className = "badge " + cls;
  badge.dataset.state = cls;
  $("device").textContent = (state.status && state.status.device_id) || (state.link && state.link.device_id) || "-";
  const prov = (state.status && state.status.provenance) || (state.tally && state.tally.provenance);
  if (prov) {
    $("backend").textContent = `backend ${prov.backend}` + (prov.providers.length ? ` (${prov.providers.join(", ")})` : "");
    $("bundle").textContent = `bundle ${prov.bundle.name} ${prov.bundle.version}`;
    $("untrained").hidden = !prov.bundle.untrained;
    // A bundle's scope, said where the technician looks: not marrow-trained, not for clinical use.
    const scope = [];
    if (!prov.bundle.untrained && prov.bundle.trained_on !== "bone_marrow") scope.push("NOT TRAINED ON MARROW");
    if (!prov.bundle.untrained && !prov.bundle.clinical_use) scope.push("NOT FOR CLINICAL USE");
    $("scope").textContent = scope.join(" · ");
    $("scope").hidden = scope.length === 0;
  }
  const cam = state.status && state.status.camera;
  $("camera").textContent = cam ? `camera ${cam.state}` : "";
  $("camera").title = cam ? cam.detail : "";
  const now = performance.now();
  framesSeen = framesSeen.filter((t) => now - t < 3000);
  const live = framesSeen.length > 1 ? (framesSeen.length - 1) / ((framesSeen[framesSeen.length - 1] - framesSeen[0]) / 1000) : 0;
  const parts = [];
  if (state.health && online()) parts.push(`${state.health.frames_per_s.toFixed(1)} frames/s in`);
  parts.push(`view ${live.toFixed(1)} fps`);
  $("rates").textContent = parts.join(" · ");
  $("rates").dataset.viewFps = live.toFixed(2);
  $("viewport").classList.toggle("dim", !online());
  const banner = $("banner");
  if (!online()) {
    clearTimeout(flashTimer);
    flashUntil = 0;
    $("viewport").classList.remove("flash");
    if (finished()) {  // the result stays readable: no alarm over it
      banner.hidden = true;
      banner.className = "banner";
    } else {
      banner.hidden = false;
      banner.className = "banner offline";
      banner.textContent = streamUp ? "Appliance offline — nothing is being counted" : "Display service unreachable";
    }
  } else if (banner.classList.contains("offline")) {
    banner.hidden = true;
    banner.className = "banner";
  }
  $("start").disabled = !online() || counting();
  const t = state.report || state.tally;
  if (t) $("target").placeholder = `target ${t.target_count}`;
  $("stop").disabled = !online();
}

function counting() { return Boolean(state.tally && !state.report); }

function ruleSentence(r, confidence) {
  const ci = r.ci_low === null ? "" : ` (${Math.round(confidence * 100)}% CI ${pct(r.ci_low)}-${pct(r.ci_high)}%)`;
  const measured = r.percent === null ? "" : `${pretty(r.class)} ${pct(r.percent)}%${ci}`;
  switch (r.state) {
    case "positive": return `${measured}: ${r.label} — for haematologist review`;
    case "negative": return `${measured}: ${r.id} not suggested (at or below ${r.threshold_percent}%)`;
    case "indeterminate":
      if (r.cells_to_settle) return `${r.id} indeterminate: count about ${r.cells_to_settle} more cells` + (measured ? ` — ${measured}` : "");
      return `${r.id} indeterminate: ${measured || "no countable cells yet"}`;
    default: return `${r.id}: not applicable (${r.note})`;
  }
}

function renderCount() {
  const t = state.report || state.tally;
  const body = $("classes").tBodies[0];
  if (!t) {
    $("slide-line").textContent = state.field ? `Slide ${state.field.slide_id}: starting…` : "No slide yet — enter a specimen id and press Start";
    $("progress-text").textContent = "0 / - cells";
    $("bar").style.width = "0%";
    $("progress").classList.remove("reached");
    $("progress").dataset.reached = "false";
    $("rules").replaceChildren();
    $("domain").hidden = true;
    $("scale").textContent = "";
    $("flagged").hidden = true;
    body.replaceChildren();
    return;
  }
  const done = Boolean(state.report);
  $("slide-line").textContent = `Specimen ${t.specimen_id || "-"} · ${t.fields} field${t.fields === 1 ? "" : "s"}` +
    (t.fields_skipped ? ` (${t.fields_skipped} skipped)` : "") + (done ? " · FINISHED" : " · counting") +
    ` · slide ${t.slide_id}`;
  $("slide-line").dataset.slideId = t.slide_id;
  $("slide-line").dataset.fields = t.fields;
  $("slide-line").dataset.done = String(done);
  // a finished slide is one click from its review
  $("review-link").href = done ? `/review?slide=${encodeURIComponent(t.slide_id)}` : "/review";
  const progress = Math.min(1, t.progress);
  $("bar").style.width = `${(progress * 100).toFixed(1)}%`;
  $("bar").className = t.countable >= t.target_count ? "done" : "";
  $("progress").setAttribute("aria-valuenow", (progress * 100).toFixed(0));
  const reached = t.countable >= t.target_count;
  $("progress-text").textContent = `${t.countable} / ${t.target_count} cells` +
    (reached ? (done ? " — target reached" : " — TARGET REACHED, stop the slide") : "");
  $("progress").classList.toggle("reached", reached && !done);
  $("progress").dataset.reached = String(reached && !done);
  $("progress-text").dataset.countable = t.countable;
  $("ci-head").textContent = `${Math.round(t.confidence * 100)}% CI`;
  const applicable = t.rules.filter((r) => r.state !== "not_applicable");
  const without = t.rules.filter((r) => r.state === "not_applicable");
  $("not-applicable").textContent = without.length ? `Not applicable with this bundle: ${without.map((r) => r.id).join(", ")}` : "";
  $("not-applicable").title = without.map((r) => r.note).join("; ");

  const shifted = Boolean(t.domain && t.domain.state === "shifted");
  $("domain").hidden = !shifted;
  $("domain").textContent = shifted ? `⚠ ${t.domain.message}. Rules held at indeterminate; review every cell.` : "";
  $("domain").dataset.state = t.domain ? t.domain.state : "none";
  // The scale the fields are counted at: unset or off the cells' size is worth a look before the count goes on.
  const scale = t.domain && t.domain.scale ? t.domain.scale : "";
  const ratio = t.domain ? t.domain.cell_size_ratio : null;
  const scaleState = !t.domain ? "none" : (t.domain.um_per_px == null ? "unset" : (ratio != null && (ratio > 1.35 || ratio < 1 / 1.35) ? "changed" : "set"));
  $("scale").textContent = scale;
  $("scale").dataset.state = scaleState;
  $("scale").classList.toggle("warn", scaleState === "unset" || scaleState === "changed");
  // Cells the classifier was unsure of: the count is provisional until someone looks at them.
  const flagged = t.flagged || 0;
  $("flagged").hidden = !flagged;
  $("flagged").dataset.flagged = String(flagged);
  $("flagged").textContent = flagged ? `⚑ ${flagged} of ${t.countable} counted cell${t.countable === 1 ? "" : "s"} uncertain ` +
    `(top probability under ${Math.round(t.review_below * 100)}%): provisional, review them` : "";
  $("rules").replaceChildren(...applicable.map((r) => {
    const li = document.createElement("li");
    li.className = r.state;
    li.dataset.rule = r.id;
    li.textContent = ruleSentence(r, t.confidence);
    return li;
  }));
  body.replaceChildren(...t.shares.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.class = s.class;
    if (!s.count) tr.className = "zero";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.background = colourOf(s.class);
    const cells = [sw, pretty(s.class), String(s.count), pct(s.percent), s.count ? `${pct(s.ci_low)}-${pct(s.ci_high)}` : "-"];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i >= 2) td.className = "num" + (i === 2 ? " n" : "");
      if (typeof c === "string") td.textContent = c; else td.append(c);
      tr.append(td);
    });
    return tr;
  }));
  $("disclaimer").textContent = t.disclaimer + (t.provenance.bundle.untrained ? " The model is UNTRAINED: these counts mean nothing clinically." : "");
}

function endFlash() {
  flashUntil = 0;
  $("viewport").classList.remove("flash");
  const banner = $("banner");
  if (!banner.classList.contains("offline")) banner.hidden = true;
  renderGate();
}

function showBanner(text, cls, ms) {
  const banner = $("banner");
  if (!online()) return;
  banner.hidden = false;
  banner.className = "banner " + cls;
  banner.textContent = text;
  if (ms) {
    flashUntil = performance.now() + ms;
    $("viewport").classList.add("flash");
    clearTimeout(flashTimer);  // a newer flash restarts the clock
    flashTimer = setTimeout(endFlash, ms);
    renderGate();
  }
}

function renderGate() {
  if (performance.now() < flashUntil) {  // one state at a time: the counted flash holds the line
    $("gate-line").textContent = GATE_WORDS.accepted;
    $("gate-reason").textContent = "";
    $("gate-line").dataset.decision = "accepted";
    return;
  }
  const g = state.gate;
  if (!g) {
    $("gate-line").textContent = "";
    $("gate-reason").textContent = "";
    delete $("gate-line").dataset.decision;
    return;
  }
  const words = GATE_WORDS[g.decision] || g.decision;
  $("gate-line").textContent = words;
  $("gate-reason").textContent = g.reason;
  $("gate-line").dataset.decision = g.decision;
  if (REFUSED.has(g.decision) && performance.now() >= flashUntil) showBanner(words, "refused", 0);
  else if (!REFUSED.has(g.decision) && performance.now() >= flashUntil && $("banner").classList.contains("refused")) $("banner").hidden = true;
}

function onField(f) {
  if (lastField === f.message_id) return;
  lastField = f.message_id;
  if (performance.now() - openedAt < 500) return;
  const n = f.countable_in_field;
  showBanner(`✓ COUNTED — field ${f.field_index + 1} · ${n} countable cell${n === 1 ? "" : "s"}`, "counted", 1500);
}

const canvas = $("view");
const ctx = canvas.getContext("2d");
let drawing = null;

function drawPreview(p) {
  p.classes.forEach(colourOf);
  const img = new Image();
  img.onload = () => {
    if (canvas.width !== p.width || canvas.height !== p.height) { canvas.width = p.width; canvas.height = p.height; }
    ctx.drawImage(img, 0, 0);
    const font = Math.max(14, Math.round(p.width / 36));
    ctx.font = `bold ${font}px sans-serif`;
    ctx.textBaseline = "top";
    // While the stage moves, boxes found on an earlier view would trail the cells: none are drawn.
    const moving = p.gate === "moving";
    const drawn = moving ? [] : (p.cells || []);
    const labels = [];
    for (const c of drawn) {
      const [x1, y1, x2, y2] = c.box;
      const colour = c.countable ? colourOf(c.class) : NOT_COUNTED;
      ctx.lineWidth = Math.max(2, p.width / 260);
      ctx.setLineDash(c.countable ? [] : [8, 6]);
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.setLineDash([]);
      const label = c.countable ? c.label : `${c.label} not counted: ${c.why_not || "not countable"}`;
      labels.push(label);
      const w = ctx.measureText(label).width + 8;
      const ty = y1 - font - 6 >= 0 ? y1 - font - 6 : y2 + 2;
      const tx = Math.max(0, Math.min(x1, p.width - w));  // a long label stays on the canvas, reason included
      ctx.fillStyle = colour;
      ctx.fillRect(tx, ty, w, font + 6);
      ctx.fillStyle = "#000";
      ctx.fillText(label, tx + 4, ty + 3);
    }
    $("no-view").hidden = true;
    canvas.dataset.seq = p.seq;
    canvas.dataset.cells = p.cells ? p.cells.length : "";
    canvas.dataset.boxes = moving ? "hidden" : String(drawn.length);
    canvas.dataset.gate = p.gate || "";
    canvas.dataset.labels = JSON.stringify(labels);
    framesSeen.push(performance.now());
    drawing = null;
  };
  img.onerror = () => { drawing = null; };  // a bad frame: the next one replaces it
  img.src = "data:image/jpeg;base64," + p.jpeg;
  drawing = img;
}

let pendingPreview = null;
function onPreview(p) {
  pendingPreview = p;  // newest wins: a frame still decoding is not interrupted, the next one waits
  if (!drawing) { drawPreview(pendingPreview); pendingPreview = null; }
}
setInterval(() => { if (!drawing && pendingPreview) { drawPreview(pendingPreview); pendingPreview = null; } }, 20);

function render() {
  renderStatus();
  renderCount();
}

function connect() {
  const events = new EventSource("/events");
  events.onopen = () => { streamUp = true; openedAt = performance.now(); render(); };
  events.onerror = () => { streamUp = false; render(); };
  for (const kind of Object.keys(state)) {
    events.addEventListener(kind, (e) => {
      const data = JSON.parse(e.data);
      if (kind === "tally" || kind === "report" || kind === "field") {
        for (const k of ["tally", "report", "field"]) {
          if (state[k] && state[k].slide_id !== data.slide_id) state[k] = null;  // a new slide
        }
      }
      state[kind] = data;
      if (kind === "gate") renderGate();
      if (kind === "field") onField(data);
      render();
    });
  }
  events.addEventListener("preview", (e) => onPreview(JSON.parse(e.data)));
}

async function command(verb, body) {
  const reply = $("reply");
  reply.className = "reply";
  reply.textContent = `${verb.replace("_", " ")}…`;
  try {
    const res = await fetch(`/api/command/${verb}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await res.json();
    if (res.ok && data.ok) {
      reply.textContent = verb === "start_slide" ? `Slide requested for specimen ${data.specimen_id || body.specimen_id}`
        : verb === "stop_slide" ? "Slide stopped: final report follows" : "Done";
    } else {
      reply.className = "reply error";
      reply.textContent = data.error || `refused (${res.status})`;
    }
    reply.dataset.ok = String(Boolean(res.ok && data.ok));
  } catch (err) {
    reply.className = "reply error";
    reply.textContent = `The display did not answer: ${err}`;
  }
}

$("start").addEventListener("click", () => {
  const specimen = $("specimen").value.trim();
  if (!specimen) { $("reply").className = "reply error"; $("reply").textContent = "Enter the specimen id first"; $("specimen").focus(); return; }
  const body = { specimen_id: specimen };
  const target = $("target").value.trim();
  if (target) {
    if (!/^[0-9]+$/.test(target) || Number(target) < 1) {
      $("reply").className = "reply error";
      $("reply").textContent = "The target must be a whole number of cells";
      return;
    }
    body.target_count = Number(target);
  }
  command("start_slide", body);
});
$("stop").addEventListener("click", () => command("stop_slide", {}));

// A barcode scanner is a keyboard that types fast and ends with Enter (a "keyboard wedge"). A scan
// while no field has focus fills the specimen id; a person typing slowly does not. Start stays a
// deliberate press: a scan never starts a slide by itself.
const wedge = { text: "", last: 0 };
document.addEventListener("keydown", (e) => {
  const target = e.target;
  if (target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || e.ctrlKey || e.metaKey || e.altKey) return;
  const now = performance.now();
  if (now - wedge.last > 60) wedge.text = "";  // a pause longer than a scanner's: start over
  wedge.last = now;
  if (e.key === "Enter") {
    const scanned = wedge.text.trim();
    wedge.text = "";
    if (scanned.length >= 3) {
      $("specimen").value = scanned.slice(0, 64);
      $("reply").className = "reply";
      $("reply").textContent = `Scanned specimen ${scanned} — press Start slide`;
      $("start").focus();
      e.preventDefault();
    }
  } else if (e.key.length === 1) {
    wedge.text += e.key;
  }
});
$("specimen").addEventListener("keydown", (e) => { if (e.key === "Enter") $("start").click(); });
setInterval(renderStatus, 1000);  // frame rate and staleness, even when nothing arrives
connect();
render();
