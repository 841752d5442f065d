// Talking to the daemon: the API key (sessionStorage only, sent only in the Authorization header),
// JSON calls with OpenAI-style errors turned into Error messages, and server-sent events read with
// fetch (EventSource cannot send a header, and the key must never go into a URL).
const KEY = "appliance.key";

export const session = {
  key: () => sessionStorage.getItem(KEY) || "",
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

export function headers(extra = {}) {
  const h = { ...extra };
  const key = session.key();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

async function failure(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  let param = null;
  try {
    const body = await resp.json();
    if (body && body.error) {
      message = body.error.message || message;
      param = body.error.param || null;
    }
  } catch { /* not JSON */ }
  return new ApiError(resp.status, message, param);
}

export async function raw(method, path, body, opts = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
    signal: opts.signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp);
  return resp;
}

export async function call(method, path, body, opts) {
  const resp = await raw(method, path, body, opts);
  return resp.status === 204 ? null : resp.json();
}

export const get = (path, opts) => call("GET", path, undefined, opts);
export const post = (path, body, opts) => call("POST", path, body === undefined ? {} : body, opts);

// Read a text/event-stream body: onEvent(name, data) for each event; resolves when it ends.
export async function readSse(resp, onEvent) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// The daemon's event stream, reconnecting after a drop; returns a function that stops it.
export function events(onEvent, history = 200) {
  const ctl = new AbortController();
  let first = true;
  (async () => {
    while (!ctl.signal.aborted) {
      try {
        const resp = await raw("GET", `/api/events?history=${first ? history : 0}`, undefined,
          { signal: ctl.signal });
        first = false;
        await readSse(resp, (name, data) => onEvent(name, JSON.parse(data)));
      } catch (err) {
        if (ctl.signal.aborted || (err instanceof ApiError && err.status < 500)) return;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  })();
  return () => ctl.abort();
}
