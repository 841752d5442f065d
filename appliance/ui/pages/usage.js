// Usage and cost (admin): requests, tokens, images, audio seconds and GPU-seconds per model and per
// key, cost at the configured hourly price, per day, and the month projected from the days seen.
import { get } from "../api.js";
import { h, table } from "../dom.js";

const money = (v) => `$${Number(v).toFixed(4)}`;
const FIELDS = ["requests", "errors", "tokens_in", "tokens_out", "images", "audio_s", "gpu_s"];

function sum(rows, by) {
  const out = new Map();
  for (const r of rows) {
    const k = by(r);
    const acc = out.get(k) || Object.fromEntries([...FIELDS, "cost_usd"].map((f) => [f, 0]));
    for (const f of [...FIELDS, "cost_usd"]) acc[f] += Number(r[f] || 0);
    out.set(k, acc);
  }
  return out;
}

const cells = (a) => [a.requests, a.errors, a.tokens_in, a.tokens_out, a.images, a.audio_s.toFixed(1),
  a.gpu_s.toFixed(1), money(a.cost_usd)].map(String);
const HEAD = ["requests", "errors", "tokens in", "tokens out", "images", "audio s", "GPU s", "cost"];

export async function render(root) {
  const [usage, { keys }] = await Promise.all([get("/api/usage?recent=0"), get("/api/keys")]);
  const names = new Map(keys.map((k) => [k.id, k.name]));
  const perModel = sum(usage.totals, (r) => r.model);
  const perKey = sum(usage.totals, (r) => (r.key_id ? names.get(r.key_id) || r.key_id : "(open)"));
  const all = sum(usage.totals, () => "all").get("all");
  const days = usage.days.map((d) => d.day);
  const span = Math.max(1, new Set(days).size);
  const projected = all ? (all.cost_usd / span) * 30 : 0;
  root.append(h("h1", {}, "Usage and cost"),
    h("section", { class: "card", id: "usage-summary" }, h("div", { class: "stats" },
      h("div", { class: "stat" }, h("b", {}, String(all ? all.requests : 0)), "requests"),
      h("div", { class: "stat" }, h("b", {}, all ? all.gpu_s.toFixed(1) : "0"), "GPU-seconds"),
      h("div", { class: "stat" }, h("b", {}, money(all ? all.cost_usd : 0)), "cost so far"),
      h("div", { class: "stat" }, h("b", {}, money(projected)), `projected month (${span} day${span > 1 ? "s" : ""} seen)`),
      h("div", { class: "stat" }, h("b", {}, `$${usage.hourly_price_usd}/h`), "hourly price"))),
    h("section", { class: "card" }, h("h2", {}, "Per model"),
      table(["model", ...HEAD], [...perModel].map(([k, a]) => [k, ...cells(a)]))),
    h("section", { class: "card" }, h("h2", {}, "Per key"),
      table(["key", ...HEAD], [...perKey].map(([k, a]) => [k, ...cells(a)]))),
    h("section", { class: "card" }, h("h2", {}, "Per day"),
      table(["day", "model", ...HEAD], usage.days.map((d) => [d.day, d.model, ...cells({ ...d })]))));
}
