/* NELS search filters and sort (label, source, clip duration; relevance, duration, label, source): the inputs
   above the results, kept in the page's URL, sent with every text and audio search (app.js calls applyFilters). */
"use strict";

const FILTERS = [["label", "#f-label"], ["source", "#f-source"], ["min_duration", "#f-min"], ["max_duration", "#f-max"]];

/** Add the chosen filters and sort to `params` (URLSearchParams or FormData). */
function applyFilters(params) {
  for (const [name, sel] of FILTERS) {
    const el = document.querySelector(sel);
    const v = el ? el.value.trim() : "";
    if (v) params.set(name, v);
  }
  const sort = document.querySelector("#f-sort");
  if (sort && sort.value && sort.value !== "relevance") params.set("sort", sort.value);
  return params;
}

function filtersActive() {
  return FILTERS.some(([, sel]) => (document.querySelector(sel) || {}).value) ||
    ((document.querySelector("#f-sort") || {}).value || "relevance") !== "relevance";
}

(function initFilters() {
  const box = document.querySelector("#filters");
  if (!box) return;
  const q = new URLSearchParams(location.search);
  for (const [name, sel] of FILTERS) if (q.get(name)) document.querySelector(sel).value = q.get(name);
  if (q.get("sort")) document.querySelector("#f-sort").value = q.get("sort");
  box.open = filtersActive();
  const rerun = () => {
    if (typeof S === "undefined" || !S.last) return;
    if (S.last.kind === "text") runTextSearch(1); else runAudioSearch(S.blob, S.blobName, 1);
  };
  box.addEventListener("change", rerun);
  document.querySelector("#f-clear").addEventListener("click", () => {
    for (const [, sel] of FILTERS) document.querySelector(sel).value = "";
    document.querySelector("#f-sort").value = "relevance";
    rerun();
  });
  // label suggestions (the library's most frequent labels), asked for when the box is first opened: other pages
  // (a clip's) do not pay for them
  let asked = false;
  const suggest = () => {
    if (asked || !box.open) return;
    asked = true;
    fetch("/api/stats").then((r) => (r.ok ? r.json() : null)).then((s) => {
      if (!s) return;
      const list = document.querySelector("#f-labels");
      for (const t of s.top_labels || []) list.append(new Option(t.label, t.label));
    }).catch(() => {});
  };
  box.addEventListener("toggle", suggest);
  suggest();
})();
