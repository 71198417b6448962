/* NELS clip page: an overview of the whole clip with a window onto a zoomable detail view (waveform over
   spectrogram, drawn by the server for the visible range only), the timeline of sound events (runs of one
   label), the events grouped by label with jump links, similar sounds, and download with licence and
   attribution. Uses app.js's helpers (h, api, fmtTime, pct, colorFor, isHttp, resultItem). */
"use strict";

const CLIP = { c: null, a: 0, b: 0, dur: 0, audio: null, pending: null, drag: null };
// spans the detail view zooms through (seconds): a range is snapped to them, so views repeat and are cached
const SPANS = [2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400];
const DETAIL_H = 160, OVERVIEW_H = 80;

function widthClass(px) { return Math.min(2400, Math.max(100, Math.ceil(px * (window.devicePixelRatio > 1 ? 1.5 : 1) / 100) * 100)); }

function viewUrl(a, b, width, height) {
  const p = new URLSearchParams({ start: a.toFixed(2), end: b.toFixed(2), width, height });
  return `${CLIP.c.view_url}?${p}`;
}

/** The snapped range of span >= `want` seconds around `centre`, inside the clip. */
function snapRange(centre, want) {
  const dur = CLIP.dur;
  let span = SPANS.find((s) => s >= want) || SPANS[SPANS.length - 1];
  if (span >= dur) return [0, dur];
  const step = span / 10;
  let a = Math.round((centre - span / 2) / step) * step;
  a = Math.max(0, Math.min(a, dur - span));
  return [a, Math.min(dur, a + span)];
}

function tickStep(span) {
  for (const s of [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200]) if (span / s <= 8) return s;
  return 14400;
}

function clock(s) {
  s = Math.max(0, s);
  const hh = Math.floor(s / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const sec = Number.isInteger(ss) ? String(ss).padStart(2, "0") : ss.toFixed(1).padStart(4, "0");
  return hh ? `${hh}:${String(mm).padStart(2, "0")}:${sec}` : `${mm}:${sec}`;
}

/* ----------------------------------------------------------------------------------------------- drawing */
function drawOverviewWindow() {
  const win = $("#ov-window");
  if (!win) return;
  win.style.left = `${100 * CLIP.a / CLIP.dur}%`;
  win.style.width = `${Math.max(0.4, 100 * (CLIP.b - CLIP.a) / CLIP.dur)}%`;
}

function drawAxis() {
  const axis = $("#detail-axis"), span = CLIP.b - CLIP.a, step = tickStep(span);
  const ticks = [];
  for (let t = Math.ceil(CLIP.a / step) * step; t <= CLIP.b + 1e-9; t += step) {
    ticks.push(h("span", { class: "tick", style: { left: `${100 * (t - CLIP.a) / span}%` } }, clock(Math.round(t * 10) / 10)));
  }
  axis.replaceChildren(...ticks);
}

function drawDetailEvents() {
  const box = $("#detail-events"), span = CLIP.b - CLIP.a;
  const inView = CLIP.c.events.filter((ev) => ev.end > CLIP.a && ev.start < CLIP.b);
  box.replaceChildren(...inView.map((ev) => {
    const l = Math.max(ev.start, CLIP.a), r = Math.min(ev.end, CLIP.b);
    const w = 100 * (r - l) / span;
    return h("button", { type: "button", class: "bar", title: `${ev.label} ${clock(ev.start)}–${clock(ev.end)} (${pct(ev.prob)})`,
      style: { left: `${100 * (l - CLIP.a) / span}%`, width: `${Math.max(0.5, w)}%`, background: colorFor(ev.label) },
      onclick: () => playAt(ev.start) }, w > 6 ? ev.label : "");
  }));
}

function drawPlayhead() {
  const t = CLIP.audio ? CLIP.audio.currentTime : 0;
  const ph = $("#playhead"), oph = $("#ov-playhead");
  const inView = t >= CLIP.a && t <= CLIP.b;
  ph.hidden = !inView;
  if (inView) ph.style.left = `${100 * (t - CLIP.a) / (CLIP.b - CLIP.a)}%`;
  if (oph) oph.style.left = `${100 * t / CLIP.dur}%`;
}

/** Show [a, b] in the detail view: the picture is asked for after a short pause (dragging asks once). */
function setRange(a, b, now = false) {
  CLIP.a = a; CLIP.b = b;
  drawOverviewWindow(); drawAxis(); drawDetailEvents(); drawPlayhead();
  $("#range-label").textContent = `${clock(a)} – ${clock(b)} (${clock(b - a)} shown)`;
  clearTimeout(CLIP.pending);
  const load = () => {
    const img = $("#detail-img"), url = viewUrl(a, b, widthClass($("#detail").clientWidth || 1000), DETAIL_H);
    if (img.dataset.src === url) return;
    img.dataset.src = url;
    const next = new Image();
    $("#detail").classList.add("loading");
    next.onload = () => { if (img.dataset.src === url) { img.src = url; $("#detail").classList.remove("loading"); } };
    next.onerror = () => $("#detail").classList.remove("loading");
    next.src = url;
  };
  const remember = () => {  // the view in the URL (a reload or a shared link shows it), once the range settles:
    const u = new URL(location.href);  // browsers refuse more than ~100 replaceState calls in 10 s (a drag)
    u.searchParams.set("t", a.toFixed(1));
    u.searchParams.set("span", (b - a).toFixed(0));
    history.replaceState(history.state, "", u);
  };
  if (now) { load(); remember(); } else CLIP.pending = setTimeout(() => { load(); remember(); }, 150);
}

function zoom(factor, centre) {
  const span = CLIP.b - CLIP.a;
  centre = centre === undefined ? (CLIP.a + CLIP.b) / 2 : centre;
  const want = factor < 1 ? Math.max(SPANS[0], [...SPANS].reverse().find((s) => s < span * 0.99) || SPANS[0]) : span * 1.01;
  const [a, b] = snapRange(centre, want);
  setRange(a, b);
}

function pan(dir) {
  const span = CLIP.b - CLIP.a;
  const a = Math.max(0, Math.min(CLIP.dur - span, CLIP.a + dir * span / 2));
  setRange(a, a + span);
}

function playAt(t) {
  const audio = CLIP.audio;
  audio.currentTime = t;
  audio.play().catch(() => {});
  if (t < CLIP.a || t > CLIP.b) { const [a, b] = snapRange(t + (CLIP.b - CLIP.a) / 2 - (CLIP.b - CLIP.a) * 0.1, CLIP.b - CLIP.a); setRange(a, b, true); }
}

function jumpTo(ev) {
  const [a, b] = snapRange((ev.start + ev.end) / 2, Math.max(10, (ev.end - ev.start) * 1.5));
  setRange(a, b, true);
  playAt(ev.start);
}

/* ------------------------------------------------------------------------------------------------- pieces */
function timeAt(el, clientX, a, b) {
  const r = el.getBoundingClientRect();
  return a + (b - a) * Math.min(1, Math.max(0, (clientX - r.left) / r.width));
}

function overview(c) {
  const img = h("img", { id: "ov-img", alt: `Overview of the whole clip (${clock(c.duration)})`, width: 1200, height: OVERVIEW_H });
  img.onload = () => { $("#overview").classList.remove("loading"); };
  const box = h("div", { id: "overview", class: "overview loading", title: "Click or drag to choose what the detail view shows" },
    img, h("div", { id: "ov-window", class: "ov-window" }), h("div", { id: "ov-playhead", class: "ov-playhead" }),
    h("span", { class: "ov-note" }, "drawing the overview…"));
  const move = (e) => {
    const t = timeAt(box, e.clientX, 0, CLIP.dur), span = CLIP.b - CLIP.a;
    const a = Math.max(0, Math.min(CLIP.dur - span, t - span / 2));
    setRange(a, a + span);
  };
  box.addEventListener("pointerdown", (e) => { box.setPointerCapture(e.pointerId); CLIP.drag = "ov"; move(e); });
  box.addEventListener("pointermove", (e) => { if (CLIP.drag === "ov") move(e); });
  box.addEventListener("pointerup", () => { CLIP.drag = null; });
  return box;
}

function timeline(c) {
  if (!c.events.length) return null;
  return h("div", { class: "timeline", role: "group", "aria-label": "Timeline of sound events (the whole clip)" },
    c.events.map((ev) => h("button", { type: "button", title: `${ev.label} ${clock(ev.start)}–${clock(ev.end)} (${pct(ev.prob)})`,
      "aria-label": `${ev.label} at ${clock(ev.start)}`,
      style: { left: `${100 * ev.start / c.duration}%`, width: `${Math.max(0.3, 100 * (ev.end - ev.start) / c.duration)}%`, background: colorFor(ev.label) },
      onclick: () => jumpTo(ev) })));
}

function detail() {
  const img = h("img", { id: "detail-img", alt: "Waveform and spectrogram of the range shown", width: 1200, height: DETAIL_H });
  const box = h("div", { id: "detail", class: "detail", tabindex: "0", "aria-label": "Detail view: drag to move, wheel or +/- to zoom, click to play" },
    img, h("div", { id: "playhead", class: "playhead", hidden: true }));
  let down = null;
  box.addEventListener("pointerdown", (e) => { box.setPointerCapture(e.pointerId); down = { x: e.clientX, a: CLIP.a, b: CLIP.b, moved: false }; });
  box.addEventListener("pointermove", (e) => {
    if (!down) return;
    const dx = e.clientX - down.x;
    if (Math.abs(dx) > 3) down.moved = true;
    if (!down.moved) return;
    const span = down.b - down.a, dt = -dx / box.clientWidth * span;
    const a = Math.max(0, Math.min(CLIP.dur - span, down.a + dt));
    setRange(a, a + span);
  });
  box.addEventListener("pointerup", (e) => {
    if (down && !down.moved) playAt(timeAt(box, e.clientX, CLIP.a, CLIP.b));
    down = null;
  });
  box.addEventListener("wheel", (e) => { e.preventDefault(); zoom(e.deltaY < 0 ? 0.5 : 2, timeAt(box, e.clientX, CLIP.a, CLIP.b)); }, { passive: false });
  box.addEventListener("keydown", (e) => {
    const keys = { "+": () => zoom(0.5), "=": () => zoom(0.5), "-": () => zoom(2), ArrowLeft: () => pan(-1), ArrowRight: () => pan(1) };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });
  return h("div", { class: "detail-wrap" }, box,
    h("div", { id: "detail-events", class: "detail-events", "aria-label": "Events in the range shown" }),
    h("div", { id: "detail-axis", class: "axis", "aria-hidden": "true" }));
}

function controls() {
  const b = (label, title, fn) => h("button", { type: "button", class: "small-btn", title, onclick: fn }, label);
  return h("div", { class: "zoom-controls", role: "toolbar", "aria-label": "Zoom" },
    b("−", "Zoom out (-)", () => zoom(2)), b("+", "Zoom in (+)", () => zoom(0.5)),
    b("←", "Earlier (left arrow)", () => pan(-1)), b("→", "Later (right arrow)", () => pan(1)),
    b("Whole clip", "Show the whole clip", () => setRange(0, CLIP.dur)),
    h("span", { id: "range-label", class: "muted small" }));
}

function eventGroups(c) {
  if (!c.events.length) return null;
  const byLabel = new Map();
  for (const ev of c.events) { if (!byLabel.has(ev.label)) byLabel.set(ev.label, []); byLabel.get(ev.label).push(ev); }
  const few = c.events.length <= 30;
  return h("div", { class: "events event-groups" }, c.event_groups.map((g, gi) => h("details", { open: few || gi === 0 },
    h("summary", {}, h("span", { class: "swatch", style: { background: colorFor(g.label) }, "aria-hidden": "true" }),
      ` ${g.label} `, h("span", { class: "muted small" }, `${g.count} event${g.count > 1 ? "s" : ""} · ${clock(Math.round(g.seconds))}`)),
    h("ol", {}, byLabel.get(g.label).map((ev) => h("li", {},
      h("button", { type: "button", onclick: () => jumpTo(ev), "aria-label": `Play ${ev.label} at ${clock(ev.start)}` },
        `▶ ${clock(ev.start)}–${clock(ev.end)}`),
      h("span", { class: "muted small" }, ` ${pct(ev.prob)}`)))))));
}

async function segmentList(c) {
  // no classifier: no events; the segments instead (at most 500 listed)
  let segs = [];
  try { segs = (await api(`/api/clips/${c.id}`)).segments || []; } catch (e) { return; }
  const more = segs.length > 500;
  $("#event-list").replaceChildren(h("p", { class: "muted" }, "No labelled events (this library has no classifier)."),
    h("ol", { class: "events" }, segs.slice(0, 500).map((s) => h("li", {},
      h("button", { type: "button", onclick: () => playAt(s.start), "aria-label": `Play segment at ${clock(s.start)}` }, `▶ ${clock(s.start)}–${clock(s.end)}`)))),
    more ? h("p", { class: "muted small" }, `${segs.length - 500} more segments: use the detail view.`) : null);
}

function licenceBox(c) {
  return h("div", { class: "card licence" },
    h("p", {}, h("strong", {}, "Licence: "), c.licence || "not recorded: ask the source before re-using this sound"),
    h("p", { class: "small" }, h("strong", {}, "Attribution: "), h("span", { id: "attribution" }, c.attribution)),
    h("p", {}, h("a", { class: "button", href: c.download_url, download: "", id: "download" }, "⤓ Download"),
      " ", h("button", { type: "button", id: "similar-btn", onclick: () => similar(CLIP.a, Math.min(CLIP.b, CLIP.a + 30)) },
        "≈ Similar sounds (range shown, up to 30 s)")));
}

async function similar(a, b) {
  const box = $("#similar");
  box.hidden = false;
  box.replaceChildren(h("h2", {}, "Similar sounds"), h("p", { class: "status" }, `Searching with ${clock(a)}–${clock(b)}…`));
  try {
    const p = new URLSearchParams({ start: a.toFixed(2), end: b.toFixed(2), k: 10 });
    const data = await api(`${CLIP.c.similar_url}?${p}`);
    const list = h("ol", { class: "results", "aria-label": "Similar sounds" }, data.results.map((r, i) => resultItem(r, data, i)));
    box.replaceChildren(h("h2", {}, `Similar sounds to ${clock(a)}–${clock(b)}`),
      data.results.length ? list : h("p", { class: "muted" }, data.notice || "No other clip sounds like this."));
    document.body.dataset.similar = "ready";
  } catch (e) {
    box.replaceChildren(h("h2", {}, "Similar sounds"), h("p", { class: "status error", role: "alert" }, e.message));
  }
}

/* --------------------------------------------------------------------------------------------------- page */
async function initClipPage(id) {
  const root = $("#clip");
  delete document.body.dataset.clip;
  if (document.referrer && new URL(document.referrer).origin === location.origin) {
    $("#back").addEventListener("click", (e) => { e.preventDefault(); history.back(); });
  }
  root.replaceChildren(h("p", { class: "status" }, "Loading…"));
  let c;
  try { c = await api(`/api/clips/${id}?segments=false`); } catch (e) {
    root.replaceChildren(h("p", { class: "status error", role: "alert" }, e.message)); return;
  }
  CLIP.c = c; CLIP.dur = c.duration || 1;
  const q = new URLSearchParams(location.search);
  const t = Number(q.get("t")) || 0, span = Number(q.get("span")) || 0;
  const title = c.title || `Clip ${c.id}`;
  document.title = `${title} · NELS`;
  const audio = h("audio", { controls: true, preload: "metadata", src: `${c.media_url}${t ? `#t=${t}` : ""}`, "aria-label": title, id: "clip-audio" });
  CLIP.audio = audio;
  audio.addEventListener("timeupdate", () => {
    drawPlayhead();
    if (!audio.paused && audio.currentTime > CLIP.b && CLIP.b < CLIP.dur) {  // follow the playback
      const s = CLIP.b - CLIP.a, a = Math.min(CLIP.dur - s, audio.currentTime - s * 0.1);
      setRange(Math.max(0, a), Math.max(0, a) + s, true);
    }
  });
  const meta = h("p", { class: "muted" }, `${clock(CLIP.dur)} · `,
    isHttp(c.source) ? h("a", { href: c.source, target: "_blank", rel: "noopener noreferrer" }, c.source) : (c.source || ""),
    c.uploader ? ` · by ${c.uploader}` : "", ` · ${c.n_segments} segments · ${c.events.length} events`);
  root.replaceChildren(
    h("h1", {}, title), meta,
    overview(c), timeline(c), controls(), detail(),
    h("div", { class: "player" }, audio),
    licenceBox(c),
    h("section", { id: "similar", class: "similar", hidden: true, "aria-live": "polite" }),
    h("h2", {}, "Sound events", c.events.length ? h("span", { class: "muted small" }, ` ${c.events.length} events of ${c.event_groups.length} kinds`) : ""),
    h("div", { id: "event-list" }, eventGroups(c)),
  );
  const [a, b] = span ? snapRange(t + span / 2, span) : t ? snapRange(t + 25, 60) : snapRange(Math.min(30, CLIP.dur / 2), 60);
  setRange(a, b, true);
  $("#ov-img").src = viewUrl(0, CLIP.dur, widthClass($("#overview").clientWidth || 1000), OVERVIEW_H);
  if (!c.events.length) await segmentList(c);
  if (t) audio.addEventListener("loadedmetadata", () => { if (audio.currentTime < t) audio.currentTime = t; }, { once: true });
  const sim = q.get("similar");
  if (sim) {
    const [sa, sb] = sim.split("-").map(Number);
    if (Number.isFinite(sa) && Number.isFinite(sb) && sb > sa) similar(sa, sb);
  }
  document.body.dataset.clip = "ready";
}
window.initClipPage = initClipPage;
