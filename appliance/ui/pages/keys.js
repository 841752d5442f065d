// Keys (admin): create (the key is shown once, here, and kept nowhere), list, revoke.
import { get, post } from "../api.js";
import { errorBox, h, table, when } from "../dom.js";

export async function render(root) {
  const note = h("div", {});
  const list = h("div", {});
  const shown = h("div", { id: "new-key" });
  const form = h("form", { id: "key-form", class: "row" },
    h("input", { name: "name", placeholder: "name", required: true, "aria-label": "key name" }),
    h("label", {}, h("input", { type: "checkbox", name: "admin" }), " admin"),
    h("button", { type: "submit" }, "Create key"));
  root.append(h("h1", {}, "API keys"), note, h("section", { class: "card" }, form, shown),
    h("section", { class: "card" }, list));

  const draw = async () => {
    const { keys } = await get("/api/keys");
    list.replaceChildren(table(["name", "id", "scope", "created", "state", ""], keys.map((k) => [
      k.name, h("code", {}, k.id), k.admin ? "admin" : "user", when(k.created),
      k.revoked ? `revoked ${when(k.revoked)}` : "active",
      k.revoked ? "" : h("button", { class: "danger", "data-revoke": k.name, onclick: async () => {
        if (!confirm(`Revoke the key ${k.name}? Clients using it are refused from now on.`)) return;
        try { await post(`/api/keys/${encodeURIComponent(k.id)}/revoke`); } catch (e) { note.replaceChildren(errorBox(e)); }
        await draw();
      } }, "Revoke")])));
  };

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    note.replaceChildren();
    try {
      const made = await post("/api/keys", { name: form.elements.name.value, admin: form.elements.admin.checked });
      form.reset();
      const secret = h("code", { id: "new-key-secret" }, made.key);
      shown.replaceChildren(h("p", { class: "secret" }, "Copy this key now; it is not shown again: ", secret),
        h("button", { type: "button", onclick: () => shown.replaceChildren() }, "Done"));
    } catch (e) { note.replaceChildren(errorBox(e)); }
    await draw();
  });
  await draw();
  return () => shown.replaceChildren();
}
