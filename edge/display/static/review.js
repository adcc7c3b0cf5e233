"use strict";
// The review page: one gallery per class, least confident first; move cells by click + key, the Move
// button or drag; machine and reviewed counts side by side; sign with the PIN. Everything it changes
// goes through /api/slides/... with the session's CSRF token; the server keeps the audit trail.

const $ = (id) => document.getElementById(id);
const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "-", "="];
let session = { operator: null, csrf: null };
let view = null;
let slideId = null;
const selected = new Set();

function label(name) { return name.replace(/_/g, " "); }
function say(text, error = false) { $("message").textContent = text; $("message").classList.toggle("error", error); }
function pct(x) { return x === null || x === undefined ? "-" : x.toFixed(1); }

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf || "" },
    body: JSON.stringify(body),
  };
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) { const error = new Error(data.error || response.statusText); error.status = response.status; throw error; }
  return data;
}

async function loadSession() {
  session = await api("/api/session");
  $("login").hidden = !!session.operator;
  $("who").hidden = !session.operator;
  $("operator").textContent = session.operator || "";
}

async function loadHistory() {
  const { slides } = await api("/api/slides");
  const select = $("slide-select");
  select.replaceChildren(...slides.map((s) => {
    const option = document.createElement("option");
    option.value = s.slide_id;
    const signed = s.signed_version ? ` v${s.signed_version}` : "";
    const lis = ["rejected", "failed"].includes(s.lis) ? ` · LIS ${s.lis.toUpperCase()}` : "";
    option.textContent = `${s.started.slice(0, 16).replace("T", " ")} UTC ${s.specimen_id || "(no specimen)"} - ${s.state}${signed}${lis}`;
    return option;
  }));
  const wanted = new URLSearchParams(location.search).get("slide");
  const first = slides.find((s) => s.state !== "counting") || slides[0];
  slideId = (wanted && slides.some((s) => s.slide_id === wanted)) ? wanted : (first ? first.slide_id : null);
  if (slideId) select.value = slideId;
  else say("No slide in the store yet: count one first.");
}

async function loadSlide() {
  if (!slideId) return;
  view = await api(`/api/slides/${encodeURIComponent(slideId)}`);
  for (const id of [...selected]) if (!view.cells.some((c) => c.id === id)) selected.delete(id);
  render();
}

function render() {
  const slide = view.slide;
  const state = $("review-state");
  const words = { counting: "COUNTING", finished: "PRELIMINARY", signed: `SIGNED v${slide.signed_version}`,
    amending: `AMENDING v${slide.signed_version}`, interrupted: "INTERRUPTED" };
  state.textContent = words[slide.state] || slide.state.toUpperCase();
  state.className = `badge ${slide.state === "signed" ? "online" : "warn"}`;
  state.dataset.state = slide.state;
  $("slide-info").textContent = `specimen ${slide.specimen_id || "-"} · slide ${slide.slide_id}`;
  const domain = slide.domain;
  $("domain").hidden = !(domain && domain.state === "shifted");
  if (domain) $("domain").textContent = domain.message;
  // the scale the slide was counted at, and whether its cells were the size the detector works at
  $("scale").textContent = domain && domain.scale ? domain.scale : "";
  renderLis(slide.lis);
  const flagged = view.reviewed.flagged;
  $("provisional").hidden = !flagged;
  $("provisional").textContent = `${flagged} counted cell(s) flagged and not yet looked at: the count is provisional`;
  $("amend-reason").hidden = slide.state !== "signed";
  $("sign-button").disabled = !["finished", "amending"].includes(slide.state) || !session.operator;
  $("move-button").disabled = !session.operator;
  if (slide.provenance) {
    const b = slide.provenance.bundle;
    $("provenance").textContent = `bundle ${b.name} ${b.version} (${b.hash}) · ${slide.provenance.backend} · marrow-edge ${slide.provenance.software_version}`;
  }
  if (slide.disclaimer) $("disclaimer").textContent = slide.disclaimer;
  renderDownloads(slide);
  renderCounts();
  renderRules();
  renderAudit();
  renderTrays();
}

// A signed report the lab's system refused, gave up on, or has not taken after retries: say so here,
// where the technician looks, with what to do.
function renderLis(lis) {
  const stuck = lis && (["rejected", "failed"].includes(lis.state) || (lis.state === "pending" && lis.last_error));
  $("lis").hidden = !stuck;
  if (!stuck) return;
  const what = { rejected: "REJECTED by the LIS", failed: `NOT DELIVERED after ${lis.attempts} attempts`,
    pending: `not delivered yet (${lis.attempts} attempt(s), retrying)` }[lis.state];
  $("lis").textContent = `LIS: signed v${lis.version} ${what}: ${lis.last_error || ""}. ` +
    (lis.state === "pending" ? "" : "Fix the cause, then send it again: marrow-edge report --slide ID --send.");
}

function renderDownloads(slide) {
  // The report of a slide with a sign-off is its latest signed version; before that, preliminary.
  const base = `/api/slides/${encodeURIComponent(slide.slide_id)}/`;
  const links = { "report-print": "report.pdf?inline=1", "report-pdf": "report.pdf", "report-pdf-letter": "report.pdf?paper=letter",
    "report-fhir": "report.fhir.json", "report-hl7": "report.hl7", "report-csv": "report.csv", "report-cells": "cells.csv" };
  for (const [id, path] of Object.entries(links)) $(id).href = base + path;
  $("downloads").hidden = !["finished", "signed", "amending"].includes(slide.state);
  $("report-status").textContent = slide.signed_version ? `signed v${slide.signed_version}` : "preliminary, not signed";
}

function renderCounts() {
  const machine = Object.fromEntries(view.machine.shares.map((s) => [s.class, s]));
  const rows = view.reviewed.shares.map((r) => {
    const m = machine[r.class] || { count: 0, percent: 0 };
    const tr = document.createElement("tr");
    tr.dataset.class = r.class;
    const cells = [label(r.class), m.count, pct(m.percent), r.count, pct(r.percent), `${pct(r.ci[0])}-${pct(r.ci[1])}`];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i > 0) td.className = "num";
      if (i === 3 && r.count !== m.count) td.classList.add("changed");
      tr.append(td);
    });
    return tr;
  });
  const total = document.createElement("tr");
  total.innerHTML = "<td>counted</td>";
  for (const text of [view.machine.countable, "", view.reviewed.countable, "", ""]) {
    const td = document.createElement("td"); td.className = "num"; td.textContent = text; total.append(td);
  }
  $("counts").tBodies[0].replaceChildren(...rows, total);
}

function renderRules() {
  const machine = Object.fromEntries(view.machine.rules.map((r) => [r.id, r]));
  $("rules").replaceChildren(...view.reviewed.rules.filter((r) => r.state !== "not_applicable").map((r) => {
    const li = document.createElement("li");
    li.className = r.state;
    li.dataset.rule = r.id;
    const was = machine[r.id] && machine[r.id].state !== r.state ? ` (machine: ${machine[r.id].state})` : "";
    li.textContent = `${r.label}: ${r.state.replace("_", " ")}${was} · ${r.note}`;
    return li;
  }));
}

function renderAudit() {
  $("audit").tBodies[0].replaceChildren(...view.audit.map((a) => {
    const tr = document.createElement("tr");
    const change = a.old ? `${label(a.old)} → ${label(a.new)}` : (a.note || "");
    for (const text of [a.time.replace("T", " ").slice(0, 19), a.operator, a.action, a.cell_id ?? "", change]) {
      const td = document.createElement("td"); td.textContent = text; tr.append(td);
    }
    return tr;
  }));
}

function renderTrays() {
  const move = $("move-to");
  move.replaceChildren(...view.trays.map((t, i) => {
    const option = document.createElement("option");
    option.value = t; option.textContent = `${KEYS[i] || ""} ${label(t)}`; return option;
  }));
  const byTray = Object.fromEntries(view.trays.map((t) => [t, []]));
  for (const cell of view.cells) (byTray[cell.tray] || (byTray[cell.tray] = [])).push(cell);
  $("trays").replaceChildren(...view.trays.map((tray, i) => {
    const section = document.createElement("section");
    section.className = `tray ${tray}`;
    section.dataset.tray = tray;
    const cells = byTray[tray].sort((a, b) => a.probability - b.probability);
    const h3 = document.createElement("h3");
    h3.innerHTML = `<span class="key">[${KEYS[i] || ""}]</span> `;
    h3.append(`${label(tray)} (${cells.length})`);
    const grid = document.createElement("div");
    grid.className = "cells";
    grid.append(...cells.map(tile));
    section.append(h3, grid);
    section.addEventListener("dragover", (e) => { e.preventDefault(); section.classList.add("drop"); });
    section.addEventListener("dragleave", () => section.classList.remove("drop"));
    section.addEventListener("drop", (e) => {
      e.preventDefault(); section.classList.remove("drop");
      const id = Number(e.dataTransfer.getData("text/plain"));
      if (!selected.has(id)) { selected.clear(); selected.add(id); }
      moveSelected(tray);
    });
    return section;
  }));
  $("selected").textContent = `${selected.size} selected`;
}

function tile(cell) {
  const figure = document.createElement("figure");
  figure.className = "cell";
  figure.dataset.id = cell.id;
  figure.tabIndex = 0;
  figure.draggable = true;
  if (cell.flags.length) figure.classList.add("flag");
  if (cell.reviewed) figure.classList.add("moved");
  if (selected.has(cell.id)) figure.classList.add("selected");
  const top = cell.top.map(([n, p]) => `${label(n)} ${(p * 100).toFixed(0)}%`).join(", ");
  figure.title = [top, cell.why_not, cell.flags.length ? `flagged: ${cell.flags.join(", ")}` : ""].filter(Boolean).join("\n");
  if (cell.image) {
    const img = document.createElement("img");
    img.src = `/api/slides/${encodeURIComponent(view.slide.slide_id)}/cells/${cell.id}/crop.jpg`;
    img.alt = `cell ${cell.id}`;
    img.loading = "lazy";
    figure.append(img);
  } else {
    const none = document.createElement("div"); none.className = "noimg"; none.textContent = "no image"; figure.append(none);
  }
  const caption = document.createElement("figcaption");
  caption.textContent = cell.reviewed ? `was ${label(cell.machine)}` : `${(cell.probability * 100).toFixed(0)}%${cell.flags.length ? " ⚑" : ""}`;
  figure.append(caption);
  figure.addEventListener("click", () => {
    if (selected.has(cell.id)) selected.delete(cell.id); else selected.add(cell.id);
    figure.classList.toggle("selected");
    $("selected").textContent = `${selected.size} selected`;
  });
  figure.addEventListener("dblclick", () => zoom(cell));
  figure.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/plain", String(cell.id)));
  return figure;
}

async function moveSelected(tray) {
  if (!selected.size) { say("select cells first (click them)"); return; }
  if (!session.operator) { say("sign in with your name and PIN to change cells", true); return; }
  const body = { cells: [...selected], to: tray };
  if (view.slide.state === "signed") {
    const reason = $("amend-reason").value.trim();
    if (!reason) { say("this slide is signed: give the reason for the amendment first", true); $("amend-reason").focus(); return; }
    body.amend_reason = reason;
  }
  try {
    const { changed } = await api(`/api/slides/${encodeURIComponent(view.slide.slide_id)}/reclassify`, body);
    say(`${changed.length} cell(s) moved to ${label(tray)}`);
    selected.clear();
    await loadSlide();
  } catch (error) { say(error.message, true); }
}

async function zoom(cell) {
  const dialog = $("zoom");
  const canvas = $("field-view");
  const context = canvas.getContext("2d");
  const base = `/api/slides/${encodeURIComponent(view.slide.slide_id)}`;
  $("context-view").src = `${base}/cells/${cell.id}/context.jpg`;
  $("zoom-text").textContent = `cell ${cell.id}, field ${cell.field}: ${cell.top.map(([n, p]) => `${label(n)} ${(p * 100).toFixed(0)}%`).join(", ")}`;
  const image = new Image();
  image.onload = () => {
    canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    context.drawImage(image, 0, 0);
    const meta = view.fields ? view.fields[cell.field] : null;
    const scale = meta ? image.naturalWidth / meta.width : 1;
    const [x1, y1, x2, y2] = cell.box.map((v) => v * scale);
    context.strokeStyle = "#77AADD"; context.lineWidth = 3;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
  };
  image.src = `${base}/fields/${cell.field}.jpg`;
  dialog.showModal();
}

document.addEventListener("keydown", (event) => {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT" || !view) return;
  const index = KEYS.indexOf(event.key);
  if (index >= 0 && index < view.trays.length) { event.preventDefault(); moveSelected(view.trays[index]); }
});

$("move-button").addEventListener("click", () => moveSelected($("move-to").value));
$("clear-button").addEventListener("click", () => { selected.clear(); renderTrays(); });
$("zoom-close").addEventListener("click", () => $("zoom").close());
$("slide-select").addEventListener("change", async (e) => {
  slideId = e.target.value; selected.clear();
  history.replaceState(null, "", `/review?slide=${encodeURIComponent(slideId)}`);
  await loadSlide();
});
$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/api/login", { name: $("login-name").value, pin: $("login-pin").value });
    $("login-pin").value = "";
    await loadSession();
    say(`signed in as ${session.operator}`);
    if (view) render();
  } catch (error) { say(error.message, true); }
});
$("logout").addEventListener("click", async () => { await api("/api/logout", {}); await loadSession(); if (view) render(); });
$("sign-button").addEventListener("click", async () => {
  try {
    // the revision reviewed: a slide changed meanwhile (another session) is refused and reloaded
    const body = { pin: $("sign-pin").value, revision: view.revision };
    const result = await api(`/api/slides/${encodeURIComponent(view.slide.slide_id)}/sign`, body);
    $("sign-pin").value = "";
    say(`report signed: ${result.status}, version ${result.version}`);
    await loadHistory();
    await loadSlide();
  } catch (error) {
    $("sign-pin").value = "";
    if (error.status === 409) await loadSlide();
    say(error.message, true);
  }
});

(async () => {
  await loadSession();
  await loadHistory();
  await loadSlide();
})().catch((error) => say(error.message, true));
