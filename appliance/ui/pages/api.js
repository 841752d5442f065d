// API reference: every route of /api/openapi.json (the /v1 routes included) with its request and
// response bodies, rendered here from the schema; /api/docs has the interactive Swagger UI (offline).
import { get } from "../api.js";
import { h } from "../dom.js";

const METHODS = ["get", "post", "put", "patch", "delete"];

function schemaText(s) {
  return s ? JSON.stringify(s, null, 2) : "";
}

function bodyOf(content) {
  if (!content) return null;
  const [ctype, media] = Object.entries(content)[0];
  return { ctype, schema: media.schema };
}

export async function render(root) {
  const spec = await get("/api/openapi.json");
  const schemas = (spec.components && spec.components.schemas) || {};
  const resolve = (s) => (s && s.$ref ? { name: s.$ref.split("/").pop(), body: schemas[s.$ref.split("/").pop()] } : { name: "", body: s });
  const filter = h("input", { placeholder: "filter routes", id: "api-filter", "aria-label": "filter routes" });
  const list = h("div", { id: "api-routes" });
  const routes = [];
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const m of METHODS) {
      if (!item[m]) continue;
      const op = item[m];
      const req = bodyOf(op.requestBody && op.requestBody.content);
      const okCode = Object.keys(op.responses || {}).find((c) => c.startsWith("2"));
      const res = okCode ? bodyOf(op.responses[okCode].content) : null;
      const rq = req ? resolve(req.schema) : null;
      const rs = res ? resolve(res.schema) : null;
      routes.push(h("div", { class: "route", "data-route": `${m.toUpperCase()} ${path}` },
        h("span", { class: "method" }, m.toUpperCase()), h("code", {}, path),
        h("span", { class: "muted" }, op.summary || ""),
        (rq || rs) ? h("details", { style: "width:100%" }, h("summary", {}, "bodies"),
          rq ? h("div", {}, h("b", {}, `request ${rq.name} (${req.ctype})`), h("pre", {}, schemaText(rq.body))) : null,
          rs ? h("div", {}, h("b", {}, `response ${okCode} ${rs.name} (${res.ctype})`), h("pre", {}, schemaText(rs.body))) : null)
          : null));
    }
  }
  list.append(...routes);
  filter.addEventListener("input", () => {
    const q = filter.value.toLowerCase();
    for (const r of routes) r.hidden = q && !r.dataset.route.toLowerCase().includes(q);
  });
  root.append(h("h1", {}, "API reference"),
    h("p", {}, `${routes.length} routes. `, h("a", { href: "/api/docs", target: "_blank" }, "Interactive reference"),
      " (Swagger UI, served offline) · ", h("a", { href: "/api/openapi.json", target: "_blank" }, "OpenAPI JSON")),
    h("section", { class: "card" }, filter, list));
}
