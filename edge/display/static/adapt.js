"use strict";
// "Adapt to this microscope" on the review page: starts /api/adaptation, follows it while it runs, shows
// the gate's before/after table; an accepted candidate is activated under the operator's PIN. Uses api(),
// $() and label() of review.js.

let adaptTimer = null;
const ADAPT_WORDS = {
  idle: () => "",
  running: (a) => `Working: ${a.step}`,
  accepted: (a) => `Accepted: ${a.version}. Activate it with your PIN to use it.`,
  refused: (a) => `Refused, nothing installed: ${a.reasons.join("; ")}`,
  failed: (a) => `Could not adapt: ${a.error}`,
  activated: (a) => a.note,
};

function renderAdaptation(a) {
  $("adapt-state").textContent = ADAPT_WORDS[a.state](a);
  $("adapt-state").classList.toggle("error", a.state === "failed" || a.state === "refused");
  $("adapt-progress").hidden = a.state !== "running";
  $("adapt-progress").value = a.done;
  $("adapt-start").disabled = a.state === "running";
  $("adapt-cells").textContent = Object.keys(a.cells_per_type).length
    ? "Cells per type: " + Object.entries(a.cells_per_type).map(([t, n]) => `${label(t)} ${n}`).join(", ") : "";
  $("adapt-table").hidden = !a.table.length;
  $("adapt-table").tBodies[0].replaceChildren(...a.table.map((row) => {
    const tr = document.createElement("tr");
    for (const value of [row.words || label(row.figure), row.base.toFixed(3), row.adapted.toFixed(3)]) {
      const td = document.createElement("td");
      td.textContent = value;
      tr.append(td);
    }
    tr.cells[1].className = tr.cells[2].className = "num";
    return tr;
  }));
  $("adapt-activate").hidden = a.state !== "accepted";
}

async function followAdaptation() {
  clearTimeout(adaptTimer);
  try {
    const a = await api("/api/adaptation");
    renderAdaptation(a);
    if (a.state === "running") adaptTimer = setTimeout(followAdaptation, 1000);
  } catch (error) {
    $("adapt-state").textContent = error.message;
  }
}

$("adapt-start").addEventListener("click", async () => {
  try {
    renderAdaptation(await api("/api/adaptation", { corrected_only: $("adapt-corrected").checked }));
    adaptTimer = setTimeout(followAdaptation, 500);
  } catch (error) {
    $("adapt-state").textContent = error.status === 401 ? "Sign in first." : error.message;
    $("adapt-state").classList.add("error");
  }
});

$("adapt-activate-button").addEventListener("click", async () => {
  try {
    renderAdaptation(await api("/api/adaptation/activate", { pin: $("adapt-pin").value }));
  } catch (error) {
    $("adapt-state").textContent = error.message;
    $("adapt-state").classList.add("error");
  } finally {
    $("adapt-pin").value = "";
  }
});

followAdaptation();
