// Dashboard: the GPU and who holds its memory, each model's tier and queue, each engine's state,
// and the last hour's residency timeline (which model held the card when, each swap and its cost),
// live from /api/events (replayed on connect; `gpu.sample` brings the GPU and the queues every
// sample interval), with /api/status re-read after each change (and every 2 s for a user key, which
// may not read the event stream).
import { events, get } from "../api.js";
import { bytes, h, secs, state, table, tier, when } from "../dom.js";

const HOUR = 3600;
const COLORS = ["#1f6feb", "#8250df", "#bf3989", "#1a7f37", "#9a6700", "#cf222e", "#0a7ea4"];
const ENTER = new Set(["start", "wake"]);
const LEAVE = new Set(["sleep", "unload", "stop", "forcestop"]);

function gpuCard(gpu, engines) {
  const total = gpu.total_bytes || 1;
  const byPid = new Map(engines.filter((e) => e.pid).map((e) => [e.pid, e.name]));
  const procs = (gpu.processes || []).filter((p) => p.used_bytes > 0);
  const named = procs.reduce((s, p) => s + p.used_bytes, 0);
  const other = Math.max(0, (gpu.used_bytes || 0) - named);
  const parts = procs.map((p, i) => ({ label: byPid.get(p.pid) || p.name || `pid ${p.pid}`, bytes: p.used_bytes,
    color: COLORS[i % COLORS.length] }));
  if (other > 0) parts.push({ label: "other", bytes: other, color: "var(--disk)" });
  const pct = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)}`);
  return h("section", { class: "card", id: "gpu" },
    h("h2", {}, "GPU ", h("span", { class: "muted" }, gpu.name || gpu.kind || "")),
    h("div", { class: "muted" }, `${bytes(gpu.used_bytes)} used of ${bytes(gpu.total_bytes)}`),
    h("div", { class: "bar", role: "img", "aria-label": "GPU memory by process" },
      parts.map((p) => h("span", { title: `${p.label}: ${bytes(p.bytes)}`,
        style: `width:${(100 * p.bytes / total).toFixed(2)}%;background:${p.color}` }))),
    h("div", { class: "legend" }, parts.map((p) => h("span", {}, h("span", { class: "dot",
      style: `background:${p.color}` }), `${p.label} ${bytes(p.bytes)}`))),
    h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", {}, `${pct(gpu.utilization_pct)} %`), "utilisation"),
      h("div", { class: "stat" }, h("b", {}, `${pct(gpu.temperature_c)} °C`), "temperature"),
      h("div", { class: "stat" }, h("b", {}, `${pct(gpu.power_w)} W`), "power")),
    gpu.note ? h("p", { class: "muted" }, gpu.note) : null);
}

function modelsCard(status) {
  const res = (status.residency && status.residency.models) || {};
  const rows = status.models.map((m) => {
    const r = res[m.id] || {};
    return h("tr", { "data-model": m.id, "data-tier": m.tier },
      h("td", {}, m.id, h("div", { class: "muted" }, `${m.modality} · ${m.engine}`)),
      h("td", {}, tier(m.tier)),
      h("td", { class: "num" }, r.footprint_bytes ? bytes(r.footprint_bytes) : "–",
        r.measured ? "" : h("span", { class: "muted", title: "estimated, not yet measured" }, " ~")),
      h("td", { class: "num hide-phone" }, r.host_bytes ? bytes(r.host_bytes) : "–"),
      h("td", { class: "num" }, String(r.queued ?? 0), r.in_flight ? h("span", { class: "muted" },
        ` +${r.in_flight} running`) : ""),
      h("td", { class: "num" }, r.oldest_wait_s === null || r.oldest_wait_s === undefined ? "–" : secs(r.oldest_wait_s)));
  });
  const vram = status.residency || {};
  return h("section", { class: "card", id: "models" },
    h("h2", {}, "Models"),
    vram.vram_budget_bytes ? h("div", { class: "muted" },
      `VRAM ${bytes(vram.vram_used_bytes)} of ${bytes(vram.vram_budget_bytes)} budget · host RAM `
      + `${bytes(vram.host_used_bytes)} of ${bytes(vram.host_budget_bytes)}`
      + (vram.switching_to ? ` · switching to ${vram.switching_to}` : "")) : null,
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["model", "tier", "footprint", "host copy", "queue", "oldest wait"].map((c, i) =>
        h("th", { class: i === 3 ? "hide-phone" : "" }, c)))),
      h("tbody", {}, rows))));
}

function enginesCard(engines) {
  return h("section", { class: "card", id: "engines" }, h("h2", {}, "Engines"),
    table(["engine", "state", "restarts", "last error"], engines.map((e) => [
      h("span", { "data-engine": e.name }, e.name, h("div", { class: "muted" }, e.kind)),
      h("span", { "data-engine-state": e.name }, state(e.state)),
      String(e.restarts), e.last_error ? h("span", { class: "error" }, e.last_error) : "–"])));
}

// Which model held the card when: from residency.action events; swaps from residency.swap events.
export function residencyTimeline(evs, now) {
  const since = now - HOUR;
  const open = new Map();
  const segs = [];
  const swaps = [];
  const lastAction = new Map();
  for (const ev of evs) {
    if (ev.kind === "residency.action") {
      const act = ev.data.action;
      lastAction.set(ev.subject, act + (ev.data.reason ? `: ${ev.data.reason}` : ""));
      if (ENTER.has(act) && !open.has(ev.subject)) open.set(ev.subject, ev.at);
      if (LEAVE.has(act) && open.has(ev.subject)) {
        segs.push({ model: ev.subject, from: open.get(ev.subject), to: ev.at });
        open.delete(ev.subject);
      }
    } else if (ev.kind === "residency.swap") {
      swaps.push({ model: ev.subject, at: ev.at, seconds: ev.data.seconds, transition: ev.data.transition,
        cause: lastAction.get(ev.subject) || "" });
    }
  }
  for (const [model, from] of open) segs.push({ model, from, to: now });
  return { since, segs: segs.filter((s) => s.to >= since), swaps: swaps.filter((s) => s.at >= since) };
}

function timelineCard(evs) {
  const now = Date.now() / 1000;
  const { since, segs, swaps } = residencyTimeline(evs, now);
  const models = [...new Set(segs.map((s) => s.model))];
  const pos = (t) => `${(100 * (Math.max(t, since) - since) / HOUR).toFixed(2)}%`;
  return h("section", { class: "card admin-only", id: "timeline" },
    h("h2", {}, "Residency, last hour"),
    models.length ? h("div", { class: "timeline" }, models.map((m) => h("div", { class: "lane" },
      h("span", { title: m }, m),
      h("div", { class: "track" }, segs.filter((s) => s.model === m).map((s) => h("span", { class: "seg",
        title: `${m}: ${when(s.from)} – ${when(s.to)}`,
        style: `left:${pos(s.from)};width:calc(${pos(s.to)} - ${pos(s.from)})` }))))))
      : h("p", { class: "muted" }, "No model has taken the GPU in the last hour."),
    h("h2", { style: "margin-top:.75rem" }, "Swaps"),
    swaps.length ? h("div", { class: "swaps", id: "swaps" }, table(["time", "model", "transition", "took", "cause"],
      swaps.slice(-50).reverse().map((s) => [when(s.at), s.model, s.transition,
        h("span", { "data-swap-seconds": String(s.seconds) }, secs(s.seconds)), s.cause])))
      : h("p", { class: "muted", id: "swaps" }, "No swap yet."));
}

export async function render(root, who) {
  const evs = [];
  let status = await get("/api/status");
  let dirty = true;
  const view = h("div", {});
  root.append(h("h1", {}, "Dashboard"), view);
  const draw = () => {
    if (!dirty) return;
    dirty = false;
    view.replaceChildren(h("div", { class: "grid" }, gpuCard(status.gpu, status.engines), enginesCard(status.engines)),
      modelsCard(status), who.admin ? timelineCard(evs) : null);
  };
  draw();
  performance.mark("dashboard-rendered");
  let refreshing = false;
  const refresh = async () => {
    if (refreshing) return;
    refreshing = true;
    try { status = await get("/api/status"); dirty = true; draw(); } catch { /* shown on the next try */ }
    refreshing = false;
  };
  const timer = setInterval(refresh, who.admin ? 15000 : 2000);
  let soon = null;
  const stop = who.admin ? events((kind, ev) => {
    if (kind === "gpu.sample") {
      const { models: queues, ...gpu } = ev.data;
      status.gpu = { ...status.gpu, ...gpu };
      const res = (status.residency && status.residency.models) || {};
      for (const [id, q] of Object.entries(queues || {})) if (res[id]) Object.assign(res[id], q);
      dirty = true;
      draw();
      return;
    }
    evs.push(ev);
    if (evs.length > 2000) evs.splice(0, evs.length - 2000);
    dirty = true;
    if (!soon) soon = setTimeout(() => { soon = null; refresh(); }, 150);
  }) : () => {};
  return () => { clearInterval(timer); clearTimeout(soon); stop(); };
}
