// Models (admin): the catalog with download state and licence, pull with a progress bar (download.*
// events), and for the models this box serves: their tier, load, release, pin and unpin (the residency
// manager decides; these only ask).
import { events, get, post } from "../api.js";
import { bytes, errorBox, h, tier } from "../dom.js";

function progressOf(d) {
  if (!d) return null;
  const pct = d.total_bytes ? Math.floor((100 * d.done_bytes) / d.total_bytes) : 0;
  return h("div", {}, h("progress", { max: 100, value: d.state === "done" ? 100 : pct, "data-pull": d.model }),
    h("span", { class: "muted", "data-pull-state": d.model }, `${d.state} ${d.state === "done" ? 100 : pct}%`
      + (d.message ? ` · ${d.message}` : "")));
}

export async function render(root) {
  const note = h("div", {});
  const catalog = h("div", {});
  const served = h("div", {});
  root.append(h("h1", {}, "Models"), note, h("section", { class: "card" }, h("h2", {}, "On this box"), served),
    h("section", { class: "card" }, h("h2", {}, "Catalog"), catalog));
  let rows = [];
  let status = null;
  const pulls = new Map();

  const act = async (path, body) => {
    note.replaceChildren();
    try { await post(path, body); } catch (e) { note.replaceChildren(errorBox(e)); }
    await load();
  };

  const drawServed = () => {
    const res = (status.residency && status.residency.models) || {};
    served.replaceChildren(h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["model", "tier", "pinned", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, status.models.map((m) => {
        const r = res[m.id] || {};
        const base = `/api/models/${encodeURIComponent(m.id)}`;
        return h("tr", { "data-model": m.id, "data-tier": m.tier },
          h("td", {}, m.id, h("div", { class: "muted" }, `${m.modality} · ${m.engine}`)),
          h("td", {}, tier(m.tier)), h("td", {}, r.pinned ? "yes" : "no"),
          h("td", { class: "row" },
            h("button", { "data-action": "load", onclick: () => act(`${base}/load`) }, "Load"),
            h("button", { "data-action": "release", onclick: () => act(`${base}/release`) }, "Release"),
            r.pinned ? h("button", { "data-action": "unpin", onclick: () => act(`${base}/unpin`) }, "Unpin")
              : h("button", { "data-action": "pin", onclick: () => act(`${base}/pin`) }, "Pin")));
      })))));
  };

  const drawCatalog = () => {
    catalog.replaceChildren(h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["model", "licence", "size", "state", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((m) => {
        const d = pulls.get(m.id) || m.download;
        const needsOk = m.licence_acceptance && !m.licence_accepted;
        return h("tr", { "data-catalog": m.id },
          h("td", {}, m.name || m.id, h("div", { class: "muted" }, `${m.id} · ${m.modality} · ${m.engine}`)),
          h("td", {}, m.licence_url ? h("a", { href: m.licence_url, rel: "noreferrer", target: "_blank" }, m.licence)
            : m.licence, needsOk ? h("div", { class: "muted" }, "acceptance required") : null),
          h("td", { class: "num" }, bytes(m.disk_bytes)),
          h("td", {}, m.on_disk ? "on disk" : "not downloaded", progressOf(d)),
          h("td", {}, h("button", { "data-pull-button": m.id, disabled: d && !["done", "failed"].includes(d.state),
            onclick: () => {
              if (needsOk && !confirm(`Accept the licence ${m.licence} of ${m.id}?`)) return;
              act(`/api/models/${encodeURIComponent(m.id)}/pull${needsOk ? "?accept_licence=true" : ""}`);
            } }, m.on_disk ? "Pull again" : "Pull")));
      })))));
  };

  const load = async () => {
    [status, { models: rows }] = await Promise.all([get("/api/status"), get("/api/models")]);
    drawServed();
    drawCatalog();
  };
  await load();
  let soon = null;
  const stop = events((kind, ev) => {
    if (kind.startsWith("download.")) {
      const cur = pulls.get(ev.subject) || { model: ev.subject, done_bytes: 0, total_bytes: 0 };
      const stage = kind.slice("download.".length);
      pulls.set(ev.subject, { ...cur, state: stage === "done" || stage === "failed" ? stage : "running",
        done_bytes: ev.data.done_bytes ?? cur.done_bytes, total_bytes: ev.data.total_bytes ?? cur.total_bytes,
        message: ev.data.message || "" });
      drawCatalog();
      if (stage === "done" && !soon) soon = setTimeout(() => { soon = null; load(); }, 200);
    } else if (kind.startsWith("residency.") && !soon) {
      soon = setTimeout(() => { soon = null; load(); }, 200);
    }
  }, 0);
  return () => { stop(); clearTimeout(soon); };
}
