// The shell: theme, sign-in, navigation between pages (#/name), and who is signed in.
// Admin-only controls carry class "admin-only" (hidden unless body[data-admin=true]); the server
// refuses their routes to a non-admin key anyway (gateway/front.py).
import { ApiError, get, session } from "./api.js";
import { errorBox } from "./dom.js";

const PAGES = {
  dashboard: () => import("./pages/dashboard.js"),
  playground: () => import("./pages/playground.js"),
  models: () => import("./pages/models.js"),
  engines: () => import("./pages/engines.js"),
  keys: () => import("./pages/keys.js"),
  usage: () => import("./pages/usage.js"),
  api: () => import("./pages/api.js"),
};
const ADMIN_PAGES = new Set(["models", "engines", "keys", "usage"]);
const $ = (id) => document.getElementById(id);
let who = null;
let cleanup = null;

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  localStorage.setItem("appliance.theme", theme);
}

function initialTheme() {
  const saved = localStorage.getItem("appliance.theme");
  if (saved === "light" || saved === "dark") return saved;
  return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
}

async function whoami() {
  try {
    return await get("/api/whoami");
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return null;
    throw err;
  }
}

function showSignIn(message = "") {
  who = null;
  document.body.dataset.admin = "false";
  $("signin").hidden = false;
  $("page").replaceChildren();
  $("signout").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = message;
  $("signin-key").focus();
}

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  if (!who) return;
  let name = (location.hash.replace(/^#\/?/, "") || "dashboard").split("?")[0];
  if (!(name in PAGES) || (ADMIN_PAGES.has(name) && !who.admin)) name = "dashboard";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  const root = $("page");
  root.replaceChildren();
  root.dataset.page = name;
  try {
    const mod = await PAGES[name]();
    cleanup = (await mod.render(root, who)) || null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { showSignIn("Your key is no longer accepted."); return; }
    root.append(errorBox(err));
  }
}

async function signedIn(info) {
  who = info;
  document.body.dataset.admin = info.admin ? "true" : "false";
  $("signin").hidden = true;
  $("signout").hidden = info.open;
  $("who").textContent = info.open ? "open (loopback, no keys)" : `${info.name}${info.admin ? " (admin)" : ""}`;
  await route();
}

async function start() {
  applyTheme(initialTheme());
  $("theme").addEventListener("click", () =>
    applyTheme(document.documentElement.dataset.theme === "dark" ? "light" : "dark"));
  $("signout").addEventListener("click", () => { session.clear(); if (cleanup) cleanup(); cleanup = null; showSignIn(); });
  $("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("signin-key");
    session.set(input.value.trim());
    input.value = "";
    const info = await whoami().catch(() => null);
    if (!info) { session.clear(); showSignIn("That key was not accepted."); return; }
    await signedIn(info);
  });
  window.addEventListener("hashchange", route);
  const info = await whoami().catch(() => null);
  if (info) await signedIn(info); else { session.clear(); showSignIn(); }
  document.body.dataset.ready = "true";
}

start();
