// Engines (admin): state, restarts and last error; start, stop and restart; logs with tail and follow
// (follow re-reads the tail every two seconds while ticked).
import { get, post } from "../api.js";
import { errorBox, h, state, table } from "../dom.js";

export async function render(root) {
  const note = h("div", {});
  const list = h("div", {});
  const logs = h("textarea", { class: "mono logs", readonly: true, id: "engine-logs", spellcheck: "false" });
  const pick = h("select", { id: "logs-engine" });
  const tail = h("input", { type: "number", min: 0, max: 5000, value: 200, id: "logs-tail" });
  const follow = h("input", { type: "checkbox", id: "logs-follow" });
  root.append(h("h1", {}, "Engines"), note, h("section", { class: "card" }, list),
    h("section", { class: "card" }, h("h2", {}, "Logs"),
      h("div", { class: "row" }, h("label", {}, "Engine ", pick), h("label", {}, "Tail ", tail),
        h("label", {}, follow, " follow"), h("button", { type: "button", onclick: () => readLogs() }, "Refresh")),
      logs));

  const readLogs = async () => {
    if (!pick.value) return;
    try {
      const body = await get(`/api/engines/${encodeURIComponent(pick.value)}/logs?tail=${Number(tail.value) || 0}`);
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.value = body.lines.join("\n");
      if (atEnd || follow.checked) logs.scrollTop = logs.scrollHeight;
    } catch (e) { logs.value = e.message; }
  };

  const act = async (name, action, button) => {
    note.replaceChildren();
    button.disabled = true;
    try { await post(`/api/engines/${encodeURIComponent(name)}/${action}`); } catch (e) { note.replaceChildren(errorBox(e)); }
    button.disabled = false;
    await draw();
  };

  const draw = async () => {
    const status = await get("/api/status");
    list.replaceChildren(table(["engine", "state", "restarts", "last error", ""], status.engines.map((e) => [
      h("span", { "data-engine": e.name }, e.name, h("div", { class: "muted" }, `${e.kind} · port ${e.port}`)),
      h("span", { "data-engine-state": e.name }, state(e.state)), String(e.restarts), e.last_error || "–",
      h("div", { class: "row" }, ["start", "stop", "restart"].map((a) => h("button", {
        "data-engine-action": `${e.name}:${a}`, onclick: (ev) => act(e.name, a, ev.target) }, a)))])));
    if (!pick.options.length) {
      pick.replaceChildren(...status.engines.map((e) => h("option", { value: e.name }, e.name)));
      readLogs();
    }
  };
  pick.addEventListener("change", readLogs);
  await draw();
  const timer = setInterval(() => { draw().catch(() => {}); if (follow.checked) readLogs(); }, 2000);
  return () => clearInterval(timer);
}
