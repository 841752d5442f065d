// Playground: try every model through /v1 exactly as a client would: chat (streaming, with stop),
// completions, images (shown), speech (played, voice picker) and the similarity of two embeddings.
// Model pickers come from /v1/models with each model's tier and the expected wait before it answers.
import { get, raw, readSse } from "../api.js";
import { errorBox, h, secs } from "../dom.js";

function expectedWait(model, residency) {
  if (model.tier === "vram") return "ready";
  const r = (residency && residency.models && residency.models[model.id]) || {};
  const t = r.transitions_s || {};
  const keys = model.tier === "host" ? ["wake", "load"] : ["start", "load", "wake"];
  const known = keys.map((k) => t[k]).filter((v) => typeof v === "number");
  return known.length ? `~${secs(Math.max(...known))} to load` : "load time not measured yet";
}

function picker(models, modality, residency, id) {
  const mine = models.filter((m) => m.modality === modality);
  return h("label", {}, "Model", h("select", { id, name: "model" }, mine.map((m) =>
    h("option", { value: m.id }, `${m.id} (${m.tier}, ${expectedWait(m, residency)})`))),
  mine.length ? null : h("span", { class: "muted" }, `no ${modality} model configured`));
}

const val = (form, name) => form.elements[name].value;

function chatCard(models, residency) {
  const log = h("div", { class: "chat-log", id: "chat-log", "aria-live": "polite" });
  const stop = h("button", { type: "button", id: "chat-stop", disabled: true }, "Stop");
  const err = h("div", {});
  const history = [];
  let ctl = null;
  stop.addEventListener("click", () => ctl && ctl.abort());
  const form = h("form", { id: "chat-form" }, picker(models, "text", residency, "chat-model"),
    h("label", {}, "Message", h("textarea", { name: "prompt", id: "chat-prompt", required: true })),
    h("div", { class: "row" }, h("button", { type: "submit", id: "chat-send" }, "Send"), stop,
      h("button", { type: "button", onclick: () => { history.length = 0; log.replaceChildren(); } }, "Clear")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.replaceChildren();
    const text = val(form, "prompt");
    history.push({ role: "user", content: text });
    log.append(h("div", { class: "user" }, `> ${text}`));
    const out = h("div", { class: "assistant", "data-state": "streaming" });
    log.append(out);
    form.elements.prompt.value = "";
    ctl = new AbortController();
    stop.disabled = false;
    let reply = "";
    try {
      const resp = await raw("POST", "/v1/chat/completions", { model: val(form, "model"), messages: history,
        stream: true }, { signal: ctl.signal });
      await readSse(resp, (_name, data) => {
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && delta.content) { reply += delta.content; out.textContent = reply; log.scrollTop = log.scrollHeight; }
      });
      out.dataset.state = "done";
    } catch (e) {
      out.dataset.state = ctl.signal.aborted ? "stopped" : "failed";
      if (ctl.signal.aborted) out.append(h("span", { class: "muted" }, " [stopped]")); else err.append(errorBox(e));
    }
    history.push({ role: "assistant", content: reply });
    stop.disabled = true;
  });
  return h("section", { class: "card", id: "chat" }, h("h2", {}, "Chat"), log, form, err);
}

function completionCard(models, residency) {
  const out = h("pre", { id: "completion-out" });
  const form = h("form", {}, picker(models, "text", residency, "completion-model"),
    h("label", {}, "Prompt", h("textarea", { name: "prompt", required: true })),
    h("label", {}, "Max tokens", h("input", { name: "max_tokens", type: "number", min: 1, value: 32 })),
    h("button", { type: "submit" }, "Complete"), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    out.textContent = "…";
    try {
      const resp = await raw("POST", "/v1/completions", { model: val(form, "model"), prompt: val(form, "prompt"),
        max_tokens: Number(val(form, "max_tokens")) });
      const body = await resp.json();
      out.textContent = body.choices[0].text;
    } catch (e) { out.textContent = e.message; }
  });
  return h("section", { class: "card", id: "completion" }, h("h2", {}, "Completion"), form);
}

function imageCard(models, residency) {
  const shown = h("div", { class: "images row", id: "image-out" });
  const form = h("form", { id: "image-form" }, picker(models, "image", residency, "image-model"),
    h("label", {}, "Prompt", h("textarea", { name: "prompt", required: true })),
    h("label", {}, "Size", h("input", { name: "size", value: "512x512", pattern: "\\d+x\\d+" })),
    h("button", { type: "submit" }, "Generate"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    shown.replaceChildren(h("span", { class: "muted" }, "generating…"));
    try {
      const resp = await raw("POST", "/v1/images/generations", { model: val(form, "model"),
        prompt: val(form, "prompt"), size: val(form, "size"), response_format: "b64_json" });
      const body = await resp.json();
      shown.replaceChildren(...body.data.map((d) => h("img", { alt: val(form, "prompt"),
        src: d.b64_json ? `data:image/png;base64,${d.b64_json}` : d.url })));
    } catch (e) { shown.replaceChildren(errorBox(e)); }
  });
  return h("section", { class: "card", id: "image" }, h("h2", {}, "Image"), form, shown);
}

function speechCard(models, residency) {
  const out = h("div", { id: "speech-out" });
  const voice = h("select", { name: "voice", id: "speech-voice" });
  const speech = models.filter((m) => m.modality === "speech");
  const setVoices = (id) => {
    const m = speech.find((x) => x.id === id);
    voice.replaceChildren(h("option", { value: "" }, "default"),
      ...((m && m.voices) || []).map((v) => h("option", { value: v }, v)));
  };
  const form = h("form", { id: "speech-form" }, picker(models, "speech", residency, "speech-model"),
    h("label", {}, "Voice", voice),
    h("label", {}, "Text", h("textarea", { name: "input", required: true })),
    h("button", { type: "submit" }, "Speak"), out);
  form.elements.model.addEventListener("change", (ev) => setVoices(ev.target.value));
  if (speech.length) setVoices(speech[0].id);
  let url = null;
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    out.replaceChildren(h("span", { class: "muted" }, "speaking…"));
    try {
      const body = { model: val(form, "model"), input: val(form, "input"), response_format: "wav" };
      if (voice.value) body.voice = voice.value;
      const resp = await raw("POST", "/v1/audio/speech", body);
      if (url) URL.revokeObjectURL(url);
      url = URL.createObjectURL(await resp.blob());
      out.replaceChildren(h("audio", { controls: true, src: url, id: "speech-audio" }));
    } catch (e) { out.replaceChildren(errorBox(e)); }
  });
  return h("section", { class: "card", id: "speech" }, h("h2", {}, "Speech"), form);
}

export function cosine(a, b) {
  let dot = 0; let na = 0; let nb = 0;
  for (let i = 0; i < a.length; i += 1) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / (Math.sqrt(na) * Math.sqrt(nb) || 1);
}

function embeddingCard(models, residency) {
  const out = h("p", { id: "similarity-out" });
  const form = h("form", {}, picker(models, "embedding", residency, "embed-model"),
    h("label", {}, "First text", h("input", { name: "a", required: true })),
    h("label", {}, "Second text", h("input", { name: "b", required: true })),
    h("button", { type: "submit" }, "Compare"), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    out.textContent = "…";
    try {
      const resp = await raw("POST", "/v1/embeddings", { model: val(form, "model"), input: [val(form, "a"), val(form, "b")] });
      const body = await resp.json();
      const sim = cosine(body.data[0].embedding, body.data[1].embedding);
      out.textContent = `cosine similarity ${sim.toFixed(3)} (${body.data[0].embedding.length} dimensions)`;
    } catch (e) { out.textContent = e.message; }
  });
  return h("section", { class: "card", id: "embeddings" }, h("h2", {}, "Embeddings similarity"), form);
}

export async function render(root) {
  const [models, status] = await Promise.all([get("/v1/models"), get("/api/status").catch(() => ({}))]);
  const residency = status.residency || {};
  const list = models.data;
  root.append(h("h1", {}, "Playground"), h("div", { class: "grid" }, chatCard(list, residency),
    completionCard(list, residency), imageCard(list, residency), speechCard(list, residency),
    embeddingCard(list, residency)));
}
