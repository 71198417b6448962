/* NELS site: the /run page. What the unattended loop (`nels run`) is doing now, per-cycle counts, the held-out
   AP of every model version (chart), promoted / rejected versions with reasons, and the candidate classes (weakly
   covered queries) an admin can accept. Admin only: uses the token of the Admin page (token(), adminHeaders(),
   api(), h(), $() and setStatus() of app.js). Shows itself on /run, so app.js needs no change. */
"use strict";

const RUN = { poll: null };

function runCell(v) { return h("td", {}, v === null || v === undefined ? "—" : String(v)); }

async function loadRun() {
  const msg = $("#run-msg");
  if (!token()) { setStatus(msg, "Enter the admin token on the Admin page first."); return; }
  let s;
  try { s = await api("/api/admin/run", { headers: adminHeaders() }); } catch (e) { setStatus(msg, e.message, true); return; }
  const now = s.now || {};
  setStatus(msg, s.running
    ? `Running (pid ${s.pid}): cycle ${now.cycle}, ${now.step} since ${new Date(now.since * 1000).toLocaleTimeString()}`
    : `Not running${now.step ? ` (last: cycle ${now.cycle}, ${now.step}${now.reason ? `, ${now.reason}` : ""})` : ""}.`);
  $("#run-summary").textContent = `${s.audio_hours} h of audio · index generation ${s.generation}`;
  $("#run-cycles").replaceChildren(h("table", {},
    h("tr", {}, ["cycle", "crawl", "listed", "new", "ingest", "added", "audio s", "learn", "candidate mAP", "gate"].map((x) => h("th", {}, x))),
    s.cycles.map((c) => h("tr", {}, runCell(c.cycle), runCell(c.crawl), runCell(c.listed), runCell(c.new_items),
      runCell(c.ingest), runCell(c.added), runCell(c.audio_seconds), runCell(c.learn), runCell(c.candidate_map),
      h("td", { title: c.reason || "" }, c.promoted === true ? "promoted" : c.promoted === false ? "rejected" : (c.gate || "—"))))));
  $("#run-versions").replaceChildren(h("table", {},
    h("tr", {}, ["version", "cycle", "status", "held-out mAP", "reason"].map((x) => h("th", {}, x))),
    s.versions.map((v) => h("tr", {}, runCell(v.name), runCell(v.cycle), h("td", {}, h("span", { class: `badge ${v.status}` }, v.status)),
      runCell(v.map === null ? null : Number(v.map).toFixed(3)), runCell(v.reason)))));
  const chart = $("#run-chart");
  chart.replaceChildren();
  if (s.chart) {
    const png = await fetch(s.chart, { headers: adminHeaders() });
    if (png.ok) chart.append(h("img", { class: "chart", alt: "Held-out AP per class of every model version", src: URL.createObjectURL(await png.blob()) }));
  }
  $("#run-candidates").replaceChildren(...(s.candidates.length ? s.candidates.map((c) => h("li", {},
    `${c.query} `, h("span", { class: "muted small" }, `asked ${c.count}× · closest ${c.best_label || "—"} (${Number(c.best_score).toFixed(2)}) `),
    h("button", { type: "button", class: "small-btn", onclick: () => acceptClass(c.query) }, "Accept as a class"))) :
    [h("li", { class: "muted" }, "No weakly covered queries logged.")]));
  const added = Object.keys(s.new_classes || {});
  $("#run-new").textContent = added.length ? `New classes: ${added.join(", ")}` : "";
  clearTimeout(RUN.poll);
  if (s.running) RUN.poll = setTimeout(loadRun, 5000);
}

async function acceptClass(query) {
  try {
    const r = await api("/api/admin/vocabulary/accept", { method: "POST", headers: adminHeaders({ "content-type": "application/json" }), body: JSON.stringify({ query }) });
    setStatus($("#run-msg"), `New class '${r.class}': the next cycles crawl for ${r.queries.join(", ")}.`);
    loadRun();
  } catch (e) { setStatus($("#run-msg"), e.message, true); }
}

document.addEventListener("DOMContentLoaded", () => {
  if (!location.pathname.startsWith("/run")) return;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "run-view";
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === "run") a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  $("#run-refresh").addEventListener("click", loadRun);
  loadRun();
});
