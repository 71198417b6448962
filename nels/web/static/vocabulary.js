/* NELS site: the vocabulary page (/vocabulary). Every class the library's models know, with the number of
   segments each labels (facets); a class is a link to a search for it. Uses h(), api() and $() of app.js. */
"use strict";

async function initVocabulary() {
  const root = $("#vocabulary"), status = $("#vocabulary-status");
  setStatus(status, "Loading…");
  let data;
  try {
    data = await api("/api/vocabulary");
  } catch (e) { setStatus(status, e.message, true); return; }
  if (!data.models.length) {
    setStatus(status, "This library has no classifier yet: add audio (nels ingest), then its classes appear here.");
    root.replaceChildren();
    return;
  }
  setStatus(status, `${data.models.length} model${data.models.length > 1 ? "s" : ""} · ${data.segments} segments labelled`);
  root.replaceChildren(...data.models.map(vocabularyModel));
  const filter = $("#vocabulary-filter");
  filter.oninput = () => {
    const t = filter.value.trim().toLowerCase();
    for (const li of root.querySelectorAll("li.facet"))
      li.hidden = !!t && !li.dataset.text.includes(t);
  };
}

function vocabularyModel(m) {
  const max = Math.max(1, ...m.labels.map((r) => r.segments));
  const used = m.labels.filter((r) => r.segments > 0).length;
  return h("section", { class: "card vocab-model", dataset: { model: m.model } },
    h("h2", {}, m.model, " ", h("span", { class: "muted small" },
      `${m.classes} classes · ${used} present · ${m.segments} segments`)),
    h("ol", { class: "facets", "aria-label": `Classes of ${m.model}` },
      m.labels.map((r) => h("li", { class: `facet${r.segments ? "" : " empty"}`,
                                    dataset: { label: r.label, text: `${r.name} ${r.label}`.toLowerCase() } },
        h("a", { href: `/?${new URLSearchParams({ q: r.name })}`, title: r.description || r.name }, r.name),
        h("span", { class: "bar", "aria-hidden": "true" },
          h("span", { style: { width: `${(100 * r.segments / max).toFixed(1)}%` } })),
        h("span", { class: "count" }, String(r.segments))))));
}
