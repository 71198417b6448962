/* NELS site: search (text, upload, microphone), clip page, admin. No build step, no dependencies. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

/** Create an element: h("a", {href: "/"}, "text", child...). Text is never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

// a fused score is a rank fusion; the tooltip shows what each mode scored
function scoreParts(r) {
  const parts = Object.entries(r.parts || r.scores || {});
  return parts.length > 1 ? parts.map(([m, v]) => `${m.replace("_", " ")} ${Number(v).toFixed(2)}`).join(" · ") : "";
}

function fmtTime(s) {
  s = Math.max(0, Number(s) || 0);
  const m = Math.floor(s / 60), sec = s - m * 60;
  return `${m}:${sec < 10 ? "0" : ""}${sec.toFixed(1)}`;
}
const pct = (p) => `${Math.round(p * 100)}%`;

async function api(path, opts = {}) {
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw Object.assign(new Error("the server cannot be reached"), { status: 0 });
  }
  let body = null;
  const ct = resp.headers.get("content-type") || "";
  if (ct.includes("application/json")) body = await resp.json();
  if (!resp.ok) {
    const msg = (body && body.error) || `${resp.status} ${resp.statusText}`;
    throw Object.assign(new Error(msg), { status: resp.status });
  }
  return body;
}

function setStatus(el, text, isError = false) {
  el.textContent = text || "";
  el.classList.toggle("error", !!isError);
}

function isHttp(u) { return typeof u === "string" && /^https?:\/\//i.test(u); }

function colorFor(label) {
  let x = 0;
  for (const ch of label) x = (x * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${x % 360} 65% 42%)`;
}

/** An <audio> that starts at `start` the first time it plays (and whenever the play button is used). */
function player(src, start, label) {
  const audio = h("audio", { controls: true, preload: "none", src: `${src}#t=${Number(start).toFixed(2)}`,
                             "aria-label": label });
  audio.dataset.start = start;
  let first = true;
  audio.addEventListener("play", () => {
    if (first) { first = false; if (audio.currentTime < start - 0.05) audio.currentTime = start; }
  });
  const btn = h("button", { type: "button", class: "play", "aria-label": `Play ${label} from ${fmtTime(start)}`,
    onclick: () => { first = false; audio.currentTime = start; audio.play().catch(() => {}); } },
    `▶ ${fmtTime(start)}`);
  return h("div", { class: "player" }, btn, audio);
}

/* ------------------------------------------------------------------------------------------------ search */
const S = { modes: null, last: null, page: 1, k: 10, blob: null, blobName: null, recorder: null };

function currentMode() { return (document.querySelector("input[name=mode]:checked") || {}).value || ""; }

async function loadModes() {
  try {
    S.modes = await api("/api/modes");
  } catch (e) { return; }
  for (const input of document.querySelectorAll("input[name=mode]")) {
    if (!input.value) continue;
    const ok = S.modes.available.includes(input.value);
    input.disabled = !ok;
    input.parentElement.title = ok ? "" : "not available for this library";
  }
  const q = $("#q");
  if (!S.modes.text) q.placeholder = "No classifier here: search by sound (upload or record)";
}

async function loadLibraryLine() {
  try {
    const s = await api("/api/stats");
    $("#library-line").textContent = `${s.clips} clips · ${s.segments} segments · ${s.hours} h indexed` +
      (s.classifier ? ` · classifier ${s.classifier}` : " · no classifier (acoustic search)");
  } catch (e) { /* optional */ }
}

function runTextSearch(page = 1, push = true) {
  const q = $("#q").value.trim();
  if (!q) { setStatus($("#status"), "Type a description, upload a sound, or record one.", true); return; }
  S.last = { kind: "text", q, mode: currentMode() };
  S.page = page;
  if (push) {
    const p = new URLSearchParams({ q });
    if (S.last.mode) p.set("mode", S.last.mode);
    if (page > 1) p.set("page", page);
    applyFilters(p);  // filters.js
    history.pushState({}, "", `/?${p}`);
  }
  const p = new URLSearchParams({ q, k: S.k, page });
  if (S.last.mode) p.set("mode", S.last.mode);
  applyFilters(p);
  return doSearch(() => api(`/api/search?${p}`));
}

function runAudioSearch(blob, name, page = 1) {
  S.blob = blob; S.blobName = name;
  S.last = { kind: "audio", mode: currentMode() };
  S.page = page;
  const fd = new FormData();
  fd.append("audio", blob, name);
  const q = $("#q").value.trim();
  if (q && S.last.mode !== "acoustic") fd.append("q", q);
  if (S.last.mode) fd.append("mode", S.last.mode);
  fd.append("k", S.k);
  fd.append("page", page);
  applyFilters(fd);  // filters.js
  return doSearch(() => api("/api/search", { method: "POST", body: fd }));
}

async function doSearch(call) {
  const status = $("#status"), list = $("#results");
  setStatus(status, "Searching…");
  list.setAttribute("aria-busy", "true");
  const t0 = performance.now();
  try {
    const data = await call();
    renderResults(data, performance.now() - t0);
  } catch (e) {
    list.replaceChildren();
    $("#pager").hidden = true;
    $("#query-info").hidden = true;
    setStatus(status, e.message, true);
  } finally {
    list.removeAttribute("aria-busy");
  }
}

function renderResults(data, ms) {
  const list = $("#results"), info = $("#query-info");
  const n = data.results.length;
  setStatus($("#status"), n ? `${n} result${n > 1 ? "s" : ""} · page ${data.page} · ${data.mode} mode · ${Math.round(ms)} ms`
                            : (data.notice || "No results."), !n && !!data.notice);
  const bits = [];
  if (data.query_labels && data.query_labels.length) {
    // "probably" only where a class is more likely than not (a speech file the ESC-50 CNN calls dog 30 % is no dog)
    const sure = Math.max(...data.query_labels.map((l) => l.prob)) >= 0.5;
    bits.push(h("span", {}, sure ? "Your sound is probably: " : "No class is sure of your sound; best guesses: "),
      h("ul", { class: "chips", style: { display: "inline-flex" } },
        data.query_labels.slice(0, 3).map((l) => h("li", { class: "chip" }, l.label, " ", h("b", {}, pct(l.prob))))));
  }
  if (n && data.notice) bits.push(h("div", { class: data.coverage && data.coverage.covered === false ? "notice" : null }, data.notice));
  info.replaceChildren(...bits);
  info.hidden = !bits.length;
  list.replaceChildren(...data.results.map((r, i) => resultItem(r, data, i)));
  document.body.dataset.results = "ready";
  const pager = $("#pager");
  pager.hidden = !(data.page > 1 || data.has_more);
  $("#prev").disabled = data.page <= 1;
  $("#next").disabled = !data.has_more;
  $("#page-no").textContent = `Page ${data.page}`;
  markFeedback(data.query);
}

function resultItem(r, data, i) {
  const dur = r.duration || r.end || 1;
  const title = r.title || `Clip ${r.clip_id}`;
  const mark = h("div", { class: "mark", style: { left: `${100 * r.start / dur}%`, width: `${Math.max(1, 100 * (r.end - r.start) / dur)}%` } });
  const fb = (relevant) => h("button", {
    type: "button", class: relevant ? "yes" : "no", "aria-pressed": "false",
    onclick: (ev) => sendFeedback(ev.currentTarget, data, r, relevant),
  }, relevant ? "✓ Relevant" : "✕ Not relevant");
  return h("li", { class: "result", dataset: { clip: r.clip_id, segment: r.segment_id, start: r.start } },
    h("h2", {}, h("a", { href: `/clip/${r.clip_id}?t=${r.start}` }, `${i + 1 + (data.page - 1) * data.k}. ${title}`),
      // one calibrated relevance (P(relevant), fitted on validation); what each mode scored in the tooltip
      // (a fused score is a rank fusion, ~0.03, meaningless to read)
      r.relevance !== null && r.relevance !== undefined
        ? h("span", { class: "score", title: `calibrated relevance, then each mode's score; ${scoreParts(r) ? "rank-fusion" : "ranking"} score ${Number(r.score).toFixed(3)}` },
            h("b", {}, `relevance ${pct(r.relevance)}`), scoreParts(r) ? ` · ${scoreParts(r)}` : "")
        : scoreParts(r)
        ? h("span", { class: "score", title: `rank-fusion score ${Number(r.score).toFixed(3)}` }, scoreParts(r))
        : h("span", { class: "score", title: "score" }, `score ${Number(r.score).toFixed(3)}`)),
    h("div", { class: "spec" },
      h("img", { src: `/api/spectrogram/${r.clip_id}.png`, alt: `Spectrogram of ${title}; matched ${fmtTime(r.start)}–${fmtTime(r.end)}`,
                 loading: "lazy", width: 480, height: 96 }), mark),
    player(r.media_url, r.start, title),
    r.labels && r.labels.length ? h("ul", { class: "chips", "aria-label": "Detected sounds" },
      r.labels.slice(0, 5).map((l) => h("li", { class: "chip" }, l.label, " ", h("b", {}, pct(l.prob))))) : null,
    h("p", { class: "why" }, h("strong", {}, "Why: "), r.explanation || "—"),
    h("div", { class: "meta" },
      h("span", {}, `${fmtTime(r.start)}–${fmtTime(r.end)} of ${fmtTime(dur)} · `,
        isHttp(r.source) ? h("a", { href: r.source, target: "_blank", rel: "noopener noreferrer" }, "source") : h("span", { title: r.source || "" }, "local file")),
      h("a", { class: "similar-link", href: `/clip/${r.clip_id}?t=${r.start}&similar=${r.start}-${r.end}`,
               title: "Sounds like this segment, from other clips" }, "≈ Similar sounds"),
      h("span", { class: "fb", role: "group", "aria-label": "Was this relevant?" }, fb(true), fb(false))));
}

async function sendFeedback(btn, data, r, relevant) {
  const group = btn.parentElement;
  try {
    await api("/api/feedback", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ query: data.query, mode: data.mode, clip_id: r.clip_id, segment_id: r.segment_id, relevant }) });
    for (const b of group.querySelectorAll("button")) b.setAttribute("aria-pressed", String(b === btn));
    setStatus($("#status"), "Thanks, feedback saved.");
  } catch (e) { setStatus($("#status"), `Feedback not saved: ${e.message}`, true); }
}

async function markFeedback(query) {
  if (!query) return;
  try {
    const fb = await api(`/api/feedback?${new URLSearchParams({ query })}`);
    for (const f of fb.feedback) {
      const li = document.querySelector(`.result[data-clip="${f.clip_id}"]`);
      if (!li) continue;
      for (const b of li.querySelectorAll(".fb button"))
        b.setAttribute("aria-pressed", String(b.classList.contains(f.relevant ? "yes" : "no")));
    }
  } catch (e) { /* cosmetic */ }
}

async function toggleRecording() {
  const btn = $("#record"), label = $(".label", btn);
  if (S.recorder && S.recorder.state === "recording") { S.recorder.stop(); return; }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus($("#status"), "Recording is not supported by this browser (it needs HTTPS or localhost).", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    setStatus($("#status"), `Microphone unavailable: ${e.message}`, true);
    return;
  }
  const rec = new MediaRecorder(stream);
  const chunks = [];
  rec.ondataavailable = (e) => { if (e.data && e.data.size) chunks.push(e.data); };
  rec.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    clearTimeout(S.recTimer);
    btn.setAttribute("aria-pressed", "false");
    label.textContent = "Record";
    const type = rec.mimeType || "audio/webm";
    const blob = new Blob(chunks, { type });
    if (!blob.size) { setStatus($("#status"), "Nothing was recorded.", true); return; }
    runAudioSearch(blob, `recording.${type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm"}`);
  };
  S.recorder = rec;
  rec.start(250);
  btn.setAttribute("aria-pressed", "true");
  label.textContent = "Stop";
  setStatus($("#status"), "Recording… press Stop when done (10 s max).");
  S.recTimer = setTimeout(() => rec.state === "recording" && rec.stop(), 10000);
}

function initSearch() {
  loadModes();
  loadLibraryLine();
  $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runTextSearch(1); });
  $("#audio-file").addEventListener("change", (e) => {
    const f = e.target.files[0];
    if (f) runAudioSearch(f, f.name);
    e.target.value = "";
  });
  $("#record").addEventListener("click", toggleRecording);
  const go = (d) => {
    const page = Math.max(1, S.page + d);
    if (!S.last) return;
    if (S.last.kind === "text") runTextSearch(page);
    else runAudioSearch(S.blob, S.blobName, page);
    window.scrollTo({ top: 0, behavior: "smooth" });
  };
  $("#prev").addEventListener("click", () => go(-1));
  $("#next").addEventListener("click", () => go(1));
  const p = new URLSearchParams(location.search);
  if (p.get("mode")) { const r = document.querySelector(`input[name=mode][value="${CSS.escape(p.get("mode"))}"]`); if (r) r.checked = true; }
  if (p.get("q")) { $("#q").value = p.get("q"); runTextSearch(Number(p.get("page")) || 1, false); }
  $("#q").focus();
}

/* ------------------------------------------------------------------------------------------------ clip */
// the clip page (overview + zoomable detail, events by label, similar sounds, download): clip.js

/* ------------------------------------------------------------------------------------------------ admin */
const A = { poll: null };
const token = () => sessionStorage.getItem("nels-admin-token") || "";
function adminHeaders(extra = {}) { const t = token(); return t ? { ...extra, Authorization: `Bearer ${t}` } : extra; }
function adminError(e) { setStatus($("#admin-msg"), `Refused${e.status ? ` (${e.status})` : ""}: ${e.message}`, true); }

async function adminPost(path, body) {
  try {
    const job = await api(path, { method: "POST", headers: adminHeaders({ "content-type": "application/json" }), body: JSON.stringify(body) });
    setStatus($("#admin-msg"), `Job ${job.id} queued (${job.kind}).`);
    loadJobs();
  } catch (e) { adminError(e); }
}

function kv(obj) {
  return Object.entries(obj).map(([k, v]) => [h("dt", {}, k), h("dd", {}, typeof v === "object" && v !== null ? h("pre", {}, JSON.stringify(v, null, 1)) : String(v))]).flat();
}

async function loadJobs() {
  try {
    const data = await api("/api/admin/jobs", { headers: adminHeaders() });
    $("#jobs").replaceChildren(...(data.jobs.length ? data.jobs.map((j) => h("li", {},
      h("span", { class: `badge ${j.status}` }, j.status), ` #${j.id} ${j.kind} `,
      h("span", { class: "muted" }, JSON.stringify(j.params)),
      j.progress ? h("div", { class: "muted small" }, `${j.progress.elapsed_s} s · items ${JSON.stringify(j.progress.items)}`) : null,
      j.error ? h("div", { class: "status error" }, j.error) : null,
      j.result ? h("pre", {}, JSON.stringify(j.result, null, 1)) : null)) : [h("li", { class: "muted" }, "No jobs yet.")]));
    const busy = data.jobs.some((j) => j.status === "queued" || j.status === "running");
    clearTimeout(A.poll);
    if (busy) A.poll = setTimeout(loadJobs, 2000);
    return true;
  } catch (e) { $("#jobs").replaceChildren(h("li", { class: "muted" }, e.message)); return false; }
}

async function loadAdmin() {
  try {
    const s = await api("/api/stats", { headers: adminHeaders() });  // the admin also sees the folder and failures
    const fmt = (o) => Object.entries(o || {}).map(([k, v]) => `${k}: ${v}`).join(", ") || "—";
    $("#stats").replaceChildren(...kv({
      library: s.library || "(admin only)", clips: s.clips, segments: s.segments, hours: s.hours,
      "vector spaces": Object.entries(s.spaces || {}).map(([k, v]) => `${k} (${v.vectors} vectors, ${v.model})`).join(", ") || "—",
      classifier: s.classifier || "none", "search modes": s.modes.available.join(", ") || "—",
      "crawl items": fmt(s.items), feedback: s.feedback, "admin enabled": s.admin_enabled ? "yes" : "no",
      "top labels": (s.top_labels || []).map((t) => `${t.label} (${t.segments})`).join(", ") || "—",
      "recent failures": (s.failures || []).length ? s.failures.slice(0, 5).map((f) => `${f.uri}: ${f.error}`).join("\n") : "0",
    }));
    // without NELS_ADMIN_TOKEN the server refuses every admin action: say so, and hide forms that cannot work
    const off = s.admin_enabled === false;
    $("#admin-off").hidden = !off;
    for (const el of ["#token-form", "#crawl-form", "#ingest-form", "#jobs"]) {
      const box = el === "#jobs" ? $("#jobs").closest(".card") : $(el);
      if (box) box.hidden = off;
    }
    if (off) { setStatus($("#admin-msg"), ""); return; }
  } catch (e) { $("#stats").replaceChildren(h("dd", {}, e.message)); }
  if (!token()) {
    setStatus($("#admin-msg"), "Enter the admin token to manage crawls, ingests, models and iterations.");
    return;
  }
  if (!(await loadJobs())) return;
  try {
    const m = await api("/api/admin/models", { headers: adminHeaders() });
    $("#models").replaceChildren(h("dl", { class: "kv" }, ...kv({ "library model": m.library.model_name || m.library.model || "—",
      "shipped CNN": m.default_model.present ? "present" : "missing" })),
      h("table", {}, h("tr", {}, h("th", {}, "name"), h("th", {}, "kind"), h("th", {}, "classes")),
        m.models.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, r.kind), h("td", {}, r.n_labels)))));
  } catch (e) { $("#models").textContent = e.message; }
  try {
    const it = await api("/api/admin/iterations", { headers: adminHeaders() });
    const box = $("#iterations");
    if (!it.iterations.length) { box.replaceChildren(h("p", { class: "muted" }, "No learning iterations yet (run 'nels learn').")); return; }
    const rows = it.iterations.map((r) => h("tr", {}, h("td", {}, r.run), h("td", {}, r.strategy), h("td", {}, r.iteration),
      h("td", {}, r.map === null ? "—" : Number(r.map).toFixed(3)), h("td", {}, r.model || "")));
    box.replaceChildren(h("table", {}, h("tr", {}, ["run", "strategy", "iteration", "mAP", "model"].map((x) => h("th", {}, x))), rows));
    const png = await fetch(it.chart, { headers: adminHeaders() });
    if (png.ok) box.append(h("img", { class: "chart", alt: "AP per class and mean AP per iteration", src: URL.createObjectURL(await png.blob()) }));
  } catch (e) { $("#iterations").textContent = e.message; }
}

function initAdmin() {
  $("#token").value = token();
  $("#token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("nels-admin-token", $("#token").value.trim());
    setStatus($("#admin-msg"), "");
    loadAdmin();
  });
  $("#forget").addEventListener("click", () => { sessionStorage.removeItem("nels-admin-token"); $("#token").value = ""; loadAdmin(); });
  $("#crawl-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const queries = $("#crawl-queries").value.split("\n").map((s) => s.trim()).filter(Boolean);
    adminPost("/api/admin/crawl", { queries, per_query: Number($("#per-query").value) || 5 });
  });
  $("#ingest-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const urls = $("#ingest-urls").value.split("\n").map((s) => s.trim()).filter(Boolean);
    adminPost("/api/admin/ingest", { urls });
  });
  $("#refresh-jobs").addEventListener("click", loadJobs);
  loadAdmin();
}

/* ------------------------------------------------------------------------------------------------ router */
function route() {
  const path = location.pathname;
  const m = path.match(/^\/clip\/(\d+)\/?$/);
  const view = m ? "clip" : path.startsWith("/admin") ? "admin" : path.startsWith("/vocabulary") ? "vocabulary" : "search";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `${view}-view`;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === view) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (view === "clip") initClipPage(m[1]);  // clip.js
  else if (view === "admin") initAdmin();
  else if (view === "vocabulary") initVocabulary();  // vocabulary.js
  else initSearch();
}

window.addEventListener("popstate", () => {
  if (location.pathname === "/") {
    const q = new URLSearchParams(location.search).get("q");
    if (q) { $("#q").value = q; runTextSearch(Number(new URLSearchParams(location.search).get("page")) || 1, false); }
  }
});
document.addEventListener("DOMContentLoaded", route);
