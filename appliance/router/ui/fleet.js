// The fleet page: GET /api/fleet every 2 s with the admin key (sessionStorage only, sent only in the
// Authorization header) and a drain button per box (POST /api/fleet/boxes/{id}/drain).
const KEY = "appliance.fleet.key";
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function call(path, method = "GET") {
  const res = await fetch(path, { method, headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body?.error?.message || `HTTP ${res.status}`), { status: res.status });
  return body;
}

const gb = (n) => (n == null ? "-" : `${(n / 2 ** 30).toFixed(1)}G`);

function render(doc) {
  const reg = doc.registry;
  $("registry").textContent = reg.readable
    ? `Registry read ${reg.read_age_s ?? "-"} s ago; box API version ${doc.api_version}.`
    : `Registry unreachable (${reg.error}): routing from the last map.`;
  const skew = [];
  if (doc.versions.length > 1) skew.push(`versions ${doc.versions.join(", ")}`);
  if (doc.api_versions.length > 1) skew.push(`box API versions ${doc.api_versions.join(", ")}`);
  if (doc.incompatible.length) skew.push(`not routed to (box API outside ${doc.min_api_version}..${doc.api_version}): ${doc.incompatible.join(", ")}`);
  $("skew").textContent = doc.version_skew || doc.incompatible.length ? `Version skew: ${skew.join("; ")} (rolling upgrade in progress?)` : "";
  const servers = doc.haproxy.servers || {};
  $("boxes").replaceChildren(...doc.boxes.map((b) => {
    const models = el("td");
    for (const [m, v] of Object.entries(b.models)) models.append(el("span", { class: `pill tier-${v.tier}` }, `${m}: ${v.tier}`), " ");
    const drain = el("button", { type: "button" }, "Drain");
    drain.disabled = b.state !== "ready" || b.drained_by_router;
    drain.addEventListener("click", async () => {
      if (!confirm(`Drain ${b.box_id}? It stops taking new work.`)) return;
      try { await call(`/api/fleet/boxes/${encodeURIComponent(b.box_id)}/drain`, "POST"); } catch (e) { $("error").textContent = e.message; }
    });
    return el("tr", {}, el("td", {}, b.box_id, el("br"), el("span", { class: "muted" }, b.url)),
      el("td", { class: `state-${b.state}` }, b.state + (b.drained_by_router ? " (drained)" : "")),
      el("td", {}, (b.slot && servers[`boxes/${b.slot}`]) || "-"), el("td", {}, b.version),
      el("td", { class: b.compatibility === "incompatible" ? "error" : "" }, `${b.api_version} (${b.compatibility})`), el("td", { class: "num" }, `${b.heartbeat_age_s} s`),
      el("td", { class: "num" }, `${gb(b.free_vram_bytes)} / ${gb(b.total_vram_bytes)}`), models, el("td", {}, drain));
  }));
  const map = doc.haproxy.map || {};
  $("routes").replaceChildren(...Object.entries(doc.routes).map(([m, ids]) => el("tr", {}, el("td", {}, m),
    el("td", {}, ids.join(", ")), el("td", {}, doc.resident_only.includes(m) ? "resident-only" : "may load"),
    el("td", {}, map[m] || "-"))));
  $("fallback").textContent = `Models in no route go to ${doc.fallback || "no box"} (most free VRAM).`;
  $("error").textContent = doc.haproxy.error || "";
}

async function refresh() {
  try {
    render(await call("/api/fleet"));
    $("signin").hidden = true; $("fleet").hidden = false; $("signout").hidden = false;
  } catch (e) {
    if (e.status === 401 || e.status === 403) { signOut(e.message); return; }
    $("error").textContent = e.message;
  }
  setTimeout(refresh, 2000);
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  $("fleet").hidden = true; $("signout").hidden = true; $("signin").hidden = false;
  $("signin-error").textContent = message;
}

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("signin-key").value.trim());
  $("signin-key").value = "";
  refresh();
});
$("signout").addEventListener("click", () => signOut());
if (sessionStorage.getItem(KEY)) refresh(); else signOut();
