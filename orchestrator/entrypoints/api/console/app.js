// The saga console: a client of the REST API, nothing more. Everything a saga holds came from a
// message anyone on the broker may send, so this file never parses markup: every piece of data
// reaches the page through textContent or an attribute set on an element it created.
import { diagram, movesOf } from "./diagram.js";

const API = location.pathname.replace(/\/console(\/.*)?$/, "");
const TOKEN_KEY = "orchestrator.console.token";
const ACTOR_KEY = "orchestrator.console.actor";
const POLL_MS = 3000;
const STATUSES = ["running", "compensating", "completed", "compensated", "failed"];
const FINISHED = new Set(["completed", "compensated"]);

const session = {
  token: sessionStorage.getItem(TOKEN_KEY),
  actor: sessionStorage.getItem(ACTOR_KEY) || "",
  // "admin" | "operate" | "read" from GET /me; "unknown" when the API has no /me (offer actions);
  // null: not logged in (reads may still be open)
  role: null,
  name: null,
};
const live = { on: true, timer: null, generation: 0 };
let workflowsCache = null;

// ---------------------------------------------------------------------------------------------
// DOM helpers: only textContent and attributes, never markup.
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const main = () => document.getElementById("main");

function announce(text) {
  const region = document.getElementById("announce");
  region.textContent = "";
  setTimeout(() => { region.textContent = text; }, 30);
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toISOString().replace("T", " ").replace(/\.(\d{3})\d*Z$/, ".$1Z");
}

function ago(iso) {
  const ms = Date.now() - new Date(iso).getTime();
  if (Number.isNaN(ms)) return "";
  const s = Math.round(Math.abs(ms) / 1000);
  const text = s < 60 ? `${s} s` : s < 3600 ? `${Math.round(s / 60)} min` : s < 86400 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  return ms >= 0 ? `${text} ago` : `in ${text}`;
}

function time(iso) {
  return h("time", { datetime: iso, title: ago(iso) }, when(iso));
}

function badge(status) {
  return h("span", { class: `badge ${STATUSES.includes(status) ? status : ""}` }, status);
}

function json(value) {
  return h("pre", { class: "mono" }, JSON.stringify(value, null, 2));
}

function table(caption, headers, rows) {
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows));
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter(Boolean).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

// ---------------------------------------------------------------------------------------------
// The API
class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

class LoginNeeded extends Error {}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (method !== "GET") headers["X-Actor"] = session.actor || "console";
  const init = { method, headers, credentials: "omit", cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`${API}${path}`, init);
  } catch (error) {
    throw new ApiError(0, `the service cannot be reached (${error.message})`);
  }
  if (response.status === 401) {
    if (method === "GET") throw new LoginNeeded();
    throw new ApiError(401, await detailOf(response));
  }
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  if (response.status === 204) return null;
  return response.json();
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

const get = (path) => call("GET", path);

// Live refresh redraws a part only when what the API answered changed.
function changed(holder, data) {
  const seen = JSON.stringify(data);
  if (holder.dataset.seen === seen) return false;
  holder.dataset.seen = seen;
  return true;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function workflows() {
  if (!workflowsCache) {
    const list = await get("/workflows");
    workflowsCache = await Promise.all(list.map((w) => get(`/workflows/${encodeURIComponent(w.name)}`)));
  }
  return workflowsCache;
}

// ---------------------------------------------------------------------------------------------
// Who is logged in
// GET /me: who the token is and its role. Without a token it answers only a service run
// --insecure (everyone is an anonymous admin); 401 then means "reads may still be open, actions
// need a login". An API without /me (404) leaves the role unknown: the actions are offered and
// the API decides.
async function whoAmI() {
  try {
    const me = await call("GET", "/me");
    session.role = me.role;
    session.name = me.name;
  } catch (error) {
    if (error instanceof LoginNeeded) {
      if (session.token) {
        forget();
        showSession();
        return false;
      }
      session.role = null;
      session.name = null;
    } else if (error instanceof ApiError && error.status === 404) {
      session.role = session.token ? "unknown" : null;
      session.name = null;
    } else throw error;
  }
  showSession();
  return true;
}

function forget() {
  session.token = null;
  session.role = null;
  session.name = null;
  sessionStorage.removeItem(TOKEN_KEY);
}

function showSession() {
  const who = document.getElementById("who");
  const loginButton = document.getElementById("login-button");
  const logoutButton = document.getElementById("logout-button");
  if (session.token) {
    who.textContent = session.name ? `${session.name} (${session.role})` : "logged in";
    loginButton.hidden = true;
    logoutButton.hidden = false;
  } else if (session.name) {
    who.textContent = `${session.name} (${session.role}): the service needs no token`;
    loginButton.hidden = true;
    logoutButton.hidden = true;
  } else {
    who.textContent = "not logged in";
    loginButton.hidden = false;
    logoutButton.hidden = true;
  }
}

function mayAct() {
  return session.role !== "read";
}

function loginView(message) {
  stopPolling();
  const root = main();
  root.replaceChildren();
  document.title = "Log in · Saga console";
  const error = h("p", { class: "error", role: "alert", id: "login-error" }, message || "");
  if (!message) error.hidden = true;
  const token = h("input", { type: "password", id: "login-token", name: "token", autocomplete: "current-password", required: true });
  const actor = h("input", { type: "text", id: "login-actor", name: "actor", autocomplete: "username", maxlength: 200, value: session.actor });
  const form = h("form", { class: "login", id: "login-form", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Log in"),
    h("p", {}, "This service needs an API token. The console keeps it in this tab only (session storage) and sends it as a bearer token, never in a URL."),
    error,
    h("div", { class: "field" }, h("label", { for: "login-token" }, "API token"), token),
    h("div", { class: "field" }, h("label", { for: "login-actor" }, "Your name, journaled with your actions when your token has none of its own (optional)"), actor),
    h("div", { class: "buttons" }, h("button", { type: "submit", class: "primary" }, "Log in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.token = token.value.trim();
    session.actor = actor.value.trim().replace(/[^ -~]/g, "");
    if (session.actor) sessionStorage.setItem(ACTOR_KEY, session.actor);
    else sessionStorage.removeItem(ACTOR_KEY);
    sessionStorage.setItem(TOKEN_KEY, session.token);
    let ok;
    try {
      ok = await whoAmI();
    } catch (e) {
      ok = false;
      forget();
      showSession();
      loginView(`Could not log in: ${e.message}`);
      return;
    }
    if (!ok) {
      loginView("The token was refused.");
      return;
    }
    announce("Logged in");
    route();
  });
  root.append(form);
  token.focus();
}

// ---------------------------------------------------------------------------------------------
// Live refresh: one poller at a time, for the page on screen.
function stopPolling() {
  live.generation += 1;
  if (live.timer) clearTimeout(live.timer);
  live.timer = null;
}

function poll(refresh) {
  const generation = live.generation;
  const tick = async () => {
    if (generation !== live.generation) return;
    if (live.on && !document.hidden && !document.getElementById("confirm").open) {
      try {
        await refresh();
        trouble(null);
      } catch (error) {
        if (generation !== live.generation) return;
        // the service restarting or its database away: say so, keep the page and try again
        if (error instanceof ApiError && (error.status === 0 || error.status >= 500)) trouble(error);
        else return failed(error);
      }
    }
    if (generation === live.generation) live.timer = setTimeout(tick, POLL_MS);
  };
  live.timer = setTimeout(tick, POLL_MS);
}

function trouble(error) {
  const old = document.getElementById("trouble");
  if (!error) {
    if (old) old.remove();
    return;
  }
  const text = `Live refresh: ${error.status ? `${error.status} ` : ""}${error.detail}. Trying again every ${POLL_MS / 1000} s; what is shown may be out of date.`;
  if (old) old.textContent = text;
  else main().prepend(h("p", { id: "trouble", class: "error", role: "alert" }, text));
}

function liveToggle() {
  const box = h("input", { type: "checkbox", id: "live", checked: live.on });
  box.addEventListener("change", () => {
    live.on = box.checked;
    announce(live.on ? "Live refresh on" : "Live refresh paused");
  });
  return h("label", { class: "inline", for: "live" }, box, `Live refresh (every ${POLL_MS / 1000} s)`);
}

function failed(error) {
  if (error instanceof LoginNeeded) {
    const had = session.token;
    forget();
    showSession();
    // A page's second request refused after its first already asked for a token: the form on
    // screen stays as it is (with what a refused login said), not drawn anew and blank.
    if (!had && document.getElementById("login-form")) return;
    return loginView(had ? "The token was refused." : "");
  }
  stopPolling();
  const root = main();
  root.replaceChildren(
    h("h1", {}, "Something went wrong"),
    h("p", { class: "error", role: "alert" }, error instanceof ApiError ? `${error.status || ""} ${error.detail}`.trim() : String(error)),
    h("p", {}, h("a", { href: "#/sagas" }, "Back to the sagas")));
}

// ---------------------------------------------------------------------------------------------
// Routing: #/sagas?..., #/sagas/<id>, #/workflows, #/workflows/<name>, #/dead-letters, #/dead-letters/<id>
function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/sagas";
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(search) };
}

async function route() {
  stopPolling();
  const { parts, params } = parseHash();
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === parts[0]) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (parts[0] === "sagas" && parts[1]) await sagaPage(parts[1]);
    else if (parts[0] === "workflows" && parts[1]) await workflowPage(parts[1]);
    else if (parts[0] === "workflows") await workflowsPage();
    else if (parts[0] === "dead-letters" && parts[1]) await deadLetterPage(parts[1]);
    else if (parts[0] === "dead-letters") await deadLettersPage(params);
    else if (parts[0] === "login") loginView();
    else await sagasPage(params);
  } catch (error) {
    failed(error);
  }
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---------------------------------------------------------------------------------------------
// The saga list
async function sagasPage(params) {
  const all = await workflows();
  const filters = {
    workflow: params.get("workflow") || "",
    status: params.get("status") || "",
    state: params.get("state") || "",
    key: params.get("key") || "",
    stuck: params.get("stuck") === "true" ? "true" : "",
    cursor: params.get("cursor") || "",
    limit: /^[1-9][0-9]{0,2}$/.test(params.get("limit") || "") && Number(params.get("limit")) <= 500 ? params.get("limit") : "",
  };
  const listed = () => get(`/sagas${query({ ...filters, limit: filters.limit || 50 })}`);
  const page = await listed();
  document.title = "Sagas · Saga console";
  const select = (id, label, options, value) =>
    h("label", { for: id }, label, h("select", { id, name: id },
      h("option", { value: "" }, "any"),
      options.map((o) => h("option", { value: o, selected: o === value }, o))));
  const states = [...new Set(all.filter((w) => !filters.workflow || w.name === filters.workflow)
    .flatMap((w) => w.states.map((s) => s.name)))].sort();
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter sagas" },
    select("workflow", "Workflow", all.map((w) => w.name), filters.workflow),
    select("status", "Status", STATUSES, filters.status),
    select("state", "State", states, filters.state),
    h("label", { for: "key" }, "Key (exact)", h("input", { id: "key", name: "key", type: "search", value: filters.key, maxlength: 500 })),
    h("label", { class: "inline", for: "stuck" }, h("input", { type: "checkbox", id: "stuck", name: "stuck", checked: filters.stuck === "true" }), "Stuck only"),
    h("label", { for: "limit" }, "Per page", h("select", { id: "limit", name: "limit" },
      [...new Set(["20", "50", "100", "500", filters.limit || "50"])].sort((a, b) => a - b)
        .map((n) => h("option", { value: n, selected: n === (filters.limit || "50") }, n)))),
    h("button", { type: "submit", class: "primary" }, "Filter"),
    h("button", { type: "button", onclick: () => go("#/sagas") }, "Clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    go(`#/sagas${query({
      workflow: data.get("workflow"), status: data.get("status"), state: data.get("state"),
      key: data.get("key"), stuck: data.get("stuck") ? "true" : "", limit: data.get("limit") === "50" ? "" : data.get("limit"),
    })}`);
  });
  form.querySelector("#workflow").addEventListener("change", () => form.requestSubmit());
  const holder = h("div", { id: "saga-table" });
  const fill = (found) => changed(holder, found) && holder.replaceChildren(sagaTable(found, filters));
  fill(page);
  main().replaceChildren(
    h("h1", {}, filters.stuck ? "Stuck sagas" : "Sagas"),
    form,
    h("div", { class: "toolbar" }, liveToggle()),
    holder);
  poll(async () => fill(await listed()));
}

function sagaTable(page, filters) {
  const rows = page.items.map((s) => h("tr", { dataset: { sagaId: s.id } },
    h("th", { scope: "row", class: "text" }, h("a", { href: `#/sagas/${encodeURIComponent(s.id)}` }, s.key)),
    h("td", {}, h("a", { href: `#/workflows/${encodeURIComponent(s.workflow)}` }, s.workflow)),
    h("td", {}, s.state),
    h("td", {}, badge(s.status), filters.stuck ? [" ", h("span", { class: "badge stuck" }, "stuck")] : null),
    h("td", {}, time(s.updated_at)),
    h("td", {}, time(s.created_at)),
    h("td", { class: "text" }, s.last_error || "")));
  const described = Object.entries(filters).filter(([k, v]) => v && k !== "cursor" && k !== "limit").map(([k, v]) => `${k} ${v}`);
  const caption = `${page.items.length} saga${page.items.length === 1 ? "" : "s"}${filters.cursor ? " (an older page)" : ""}, newest first${described.length ? `; ${described.join(", ")}` : ""}`;
  const pager = h("div", { class: "pager" });
  if (filters.cursor) pager.append(h("a", { href: `#/sagas${query({ ...filters, cursor: "" })}` }, "First page"));
  if (page.next_cursor) pager.append(h("a", { href: `#/sagas${query({ ...filters, cursor: page.next_cursor })}` }, "Next page (older)"));
  const empty = page.items.length ? null : h("p", { class: "note" }, "No saga matches.");
  return h("div", {}, table(caption, ["Key", "Workflow", "State", "Status", "Updated", "Started", "Last error"], rows), empty, pager);
}

// ---------------------------------------------------------------------------------------------
// A saga
async function historyOf(id) {
  const items = [];
  let after = 0;
  for (let pages = 0; pages < 50; pages++) {
    const page = await get(`/sagas/${encodeURIComponent(id)}/history${query({ after, limit: 1000 })}`);
    items.push(...page.items);
    if (page.next_after === null) break;
    after = page.next_after;
  }
  return items;
}

function pathOf(history) {
  const path = [];
  for (const entry of history) {
    if (entry.to_state && (entry.outcome === "started" || entry.outcome === "moved" || entry.outcome === "resumed" || entry.from_state !== entry.to_state)) {
      if (entry.from_state && path[path.length - 1] !== entry.from_state) path.push(entry.from_state);
      if (path[path.length - 1] !== entry.to_state) path.push(entry.to_state);
    }
  }
  return path;
}

async function sagaPage(id) {
  const [saga, history, all] = await Promise.all([
    get(`/sagas/${encodeURIComponent(id)}`), historyOf(id), workflows(),
  ]);
  const workflow = all.find((w) => w.name === saga.workflow) || null;
  renderSaga(saga, history, workflow);
  let version = saga.version;
  poll(async () => {
    const now = await get(`/sagas/${encodeURIComponent(id)}`);
    if (now.version !== version) {
      version = now.version;
      renderSaga(now, await historyOf(id), workflow, true);
    } else {
      refreshTimers(now, workflow);
    }
  });
}

function renderSaga(saga, history, workflow, quietly = false) {
  document.title = `${saga.key} · Saga console`;
  const finished = FINISHED.has(saga.status);
  const summary = facts([
    ["Id", h("span", { class: "mono" }, saga.id)],
    ["Workflow", h("a", { href: `#/workflows/${encodeURIComponent(saga.workflow)}` }, `${saga.workflow} (release ${saga.release})`)],
    ["State", h("strong", { id: "saga-state" }, saga.state)],
    ["Status", h("span", { id: "saga-status" }, badge(saga.status))],
    ["Version", String(saga.version)],
    ["Started", time(saga.created_at)],
    ["Updated", h("span", {}, time(saga.updated_at), ` (${ago(saga.updated_at)})`)],
    saga.last_error ? ["Last error", h("span", { class: "error" }, saga.last_error)] : null,
    ["Waiting for", saga.waiting_for.length ? saga.waiting_for.join(", ") : finished ? "nothing: finished" : "an operator (no event moves it on)"],
    ["Awaiting replies to", saga.awaiting.length ? h("ul", {}, saga.awaiting.map((c) => h("li", {}, `${c.type} `, h("span", { class: "mono note" }, c.message_id)))) : "nothing"],
    ["Resends", String(saga.attempt)],
    saga.timed_out.length ? ["Given up on", saga.timed_out.join(", ")] : null,
    saga.parked.length ? ["Parked events", h("ul", {}, saga.parked.map((p) => h("li", {}, `${p.type} `, h("span", { class: "mono note" }, p.message_id))))] : null,
    // a child saga names the saga that started it; a parent, the children its steps started
    saga.parent ? ["Started by", h("a", { id: "saga-parent", class: "mono", href: `#/sagas/${encodeURIComponent(saga.parent)}` }, saga.parent)] : null,
    saga.children && saga.children.length ? ["Child sagas", h("ul", { id: "saga-children" }, saga.children.map((c) => h("li", {},
      h("a", { class: "mono", href: `#/sagas/${encodeURIComponent(c.saga_id)}` }, c.saga_id), ` ${c.workflow}, started by step ${c.step}`)))] : null,
  ]);
  const why = h("p", { id: "saga-why", class: "why" }, whyOf(saga, workflow));
  const path = pathOf(history);
  const picture = workflow
    ? h("div", { class: "diagram", id: "saga-diagram" }, diagram(workflow, {
        current: saga.state, path, label: `${saga.workflow}: the saga is in ${saga.state}; it went ${path.join(" → ")}`,
      }))
    : h("p", { class: "note" }, `Workflow ${saga.workflow} is not loaded by this service.`);
  const legend = h("div", { class: "legend", "aria-hidden": "true" },
    h("span", {}, h("span", { class: "swatch current" }), "current state"),
    h("span", {}, h("span", { class: "swatch visited" }), "the path it took"));
  main().replaceChildren(
    h("p", {}, h("a", { href: "#/sagas" }, "← Sagas")),
    h("h1", {}, h("span", { class: "note" }, `${saga.workflow} `), h("span", { id: "saga-key" }, saga.key)),
    h("div", { class: "toolbar" }, liveToggle()),
    actionsOf(saga, workflow),
    h("section", { "aria-labelledby": "h-diagram" }, h("h2", { id: "h-diagram" }, `Workflow ${saga.workflow}: where the saga is and the way it came`), picture, legend),
    h("div", { class: "grid" },
      h("section", { "aria-labelledby": "h-summary" }, h("h2", { id: "h-summary" }, "Where it stands"), why, summary),
      h("section", { "aria-labelledby": "h-timers" },
        h("h2", { id: "h-timers" }, "Pending timers"), h("div", { id: "saga-timers" }, timersOf(saga)),
        h("h2", {}, "Data"), h("div", { id: "saga-data" }, json(saga.data)))),
    h("section", { "aria-labelledby": "h-timeline" },
      h("h2", { id: "h-timeline" }, `Timeline (${history.length} journal entr${history.length === 1 ? "y" : "ies"}, oldest first)`),
      timeline(history)));
  if (quietly) announce(`The saga changed: now ${saga.state} (${saga.status})`);
}

// Why the saga is where it is, and what will move it: what an operator needs to decide.
function whyOf(saga, workflow) {
  if (FINISHED.has(saga.status)) return `Finished ${saga.status} in ${saga.state}.`;
  const replies = saga.awaiting.length
    ? `the reply to ${saga.awaiting.map((c) => `${c.type} from service ${serviceOf(c.type)}`).join(" and ")}`
    : null;
  const events = saga.waiting_for.length ? saga.waiting_for.join(" or ") : null;
  if (saga.status === "failed") {
    return `Failed in ${saga.state}${saga.last_error ? `: ${saga.last_error}` : ""}. Nothing moves it but an operator: Resume (from a step) or Skip (take an outcome).`;
  }
  const waits = [events, replies].filter(Boolean).join(", ");
  if (saga.timers === null) return `It waits for ${waits || "an operator"}; its timers could not be read.`;
  const deadline = saga.timers.find((t) => t.kind === "deadline");
  const retry = saga.timers.find((t) => t.kind === "retry");
  if (!deadline && !retry) {
    return `Nothing will move this saga on its own: it has no pending deadline or retry, and it waits for ${waits || "nothing an event can give"}. If that never comes, act: Retry sends the command again, Skip takes an outcome, Cancel compensates.`;
  }
  const state = workflow ? workflow.states.find((s) => s.name === saga.state) : null;
  const parts = [`It waits for ${waits || "its timer"}.`];
  if (deadline) parts.push(`Its deadline fires ${ago(deadline.due_at)} (${when(deadline.due_at)})${state && state.on_deadline ? ` and moves it to ${state.on_deadline}` : ""}.`);
  if (retry) parts.push(`Its commands are sent again ${ago(retry.due_at)}.`);
  return parts.join(" ");
}

function timersOf(saga) {
  if (!saga.timers || !saga.timers.length) return h("p", { class: "note" }, saga.timers === null ? "Could not be read." : "None.");
  return table("Deadline and retry, soonest first", ["Kind", "State", "Due", ""],
    saga.timers.map((t) => h("tr", {}, h("td", {}, t.kind), h("td", {}, t.state), h("td", {}, time(t.due_at)), h("td", { class: "note" }, ago(t.due_at)))));
}

function refreshTimers(saga, workflow) {
  const holder = document.getElementById("saga-timers");
  if (holder) holder.replaceChildren(timersOf(saga));
  const why = document.getElementById("saga-why");
  if (why) why.textContent = whyOf(saga, workflow);
}

function describeEntry(entry) {
  const type = entry.message.type;
  if (entry.kind === "operator" && type.startsWith("operator.")) return `Operator: ${type.slice("operator.".length)}`;
  if (entry.kind === "operator") return `Started by operator (${type})`;
  if (entry.kind === "deadline") return `Deadline fired (${type})`;
  if (entry.kind === "retry") return `Retry timer fired (${type})`;
  return `Message ${type}`;
}

function timeline(history) {
  if (!history.length) return h("p", { class: "note" }, "No journal entries.");
  return h("ol", { class: "timeline", id: "timeline" }, history.map((entry) => {
    const d = entry.decision || {};
    const moved = entry.from_state && entry.to_state && entry.from_state !== entry.to_state
      ? `${entry.from_state} → ${entry.to_state}` : entry.to_state ? `in ${entry.to_state}` : "";
    const lines = [];
    lines.push(h("li", {}, "Decided: ", h("strong", {}, entry.outcome || "?"), moved ? ` (${moved}, ${entry.status})` : ""));
    if (entry.reason) lines.push(h("li", {}, `Reason: ${entry.reason}`));
    if (entry.kind === "operator" && entry.message.payload && entry.message.payload.reason) lines.push(h("li", {}, `Operator's reason: ${entry.message.payload.reason}`));
    for (const c of entry.commands) {
      lines.push(h("li", {}, "Sent ", h("strong", {}, c.type), " ", h("span", { class: "mono note" }, c.message_id),
        c.payload ? h("details", {}, h("summary", {}, "payload"), json(c.payload)) : null));
    }
    if (d.deadline && d.deadline.due_at) lines.push(h("li", {}, `Deadline set for ${d.deadline.state}, due `, time(d.deadline.due_at)));
    if (d.retry && d.retry.due_at) lines.push(h("li", {}, `Retry set for ${d.retry.state || ""}, due `, time(d.retry.due_at)));
    if (d.applied_parked && d.applied_parked.length) lines.push(h("li", {}, `Applied parked events: ${d.applied_parked.length}`));
    return h("li", { class: `${entry.kind} ${entry.outcome === "failed" ? "failed" : ""}`, dataset: { seq: String(entry.seq) } },
      h("div", { class: "entry-head" },
        h("span", { class: "note" }, `#${entry.seq}`),
        time(entry.recorded_at),
        h("span", { class: "what" }, describeEntry(entry)),
        entry.actor ? h("span", {}, `by ${entry.actor}`) : null,
        h("span", { class: "mono note" }, entry.message.message_id)),
      h("ul", { class: "entry-body" }, lines),
      h("details", {}, h("summary", {}, "message payload and raw decision"),
        json({ payload: entry.message.payload, schema_version: entry.message.schema_version, decision: entry.decision })));
  }));
}

// ---------------------------------------------------------------------------------------------
// Operator actions
function serviceOf(type) {
  return type.includes(".") ? type.split(".")[0] : type;
}

function actionsOf(saga, workflow) {
  const box = h("section", { class: "actions", "aria-label": "Operator actions", id: "actions" });
  if (FINISHED.has(saga.status)) {
    box.append(h("p", { class: "note" }, `Finished (${saga.status}): no operator action applies.`));
    return box;
  }
  if (!mayAct()) {
    box.append(h("p", { class: "note" }, "Your token may read only: operator actions need the operate role."));
    return box;
  }
  const finished = FINISHED.has(saga.status);
  const failed = saga.status === "failed";
  const state = workflow ? workflow.states.find((s) => s.name === saga.state) : null;
  const rulesHere = workflow ? workflow.rules.filter((r) => r.source === saga.state) : [];
  const cancelTo = rulesHere.find((r) => r.event === "saga.CancelRequested");
  const who = `saga ${saga.key} (${saga.workflow}, ${saga.id})`;
  const awaited = saga.awaiting.map((c) => `${c.type} to service ${serviceOf(c.type)}`).join(", ");
  const deadline = (saga.timers || []).find((t) => t.kind === "deadline");

  const button = (label, action, enabled, what, fields = () => [], body = () => ({})) => {
    const b = h("button", { type: "button", dataset: { action }, disabled: !enabled }, label);
    b.addEventListener("click", () => confirmAction({
      title: `${label}: ${saga.key}`, what: `${what} This acts on ${who}.`, fields,
      run: (form) => call("POST", `/sagas/${encodeURIComponent(saga.id)}/${action}`, body(form)),
      done: (after) => `${label} done: ${saga.key} is now in ${after.state} (${after.status}).`,
      then: () => route(),
    }));
    return b;
  };
  const reason = () => [h("div", { class: "field" }, h("label", { for: "action-reason" }, "Reason (kept in the journal)"),
    h("input", { type: "text", id: "action-reason", name: "reason", maxlength: 2000 }))];
  const withReason = (form) => {
    const r = form.querySelector("#action-reason").value.trim();
    return r ? { reason: r } : {};
  };
  const newAttempt = () => h("label", { class: "inline", for: "action-new-attempt" },
    h("input", { type: "checkbox", id: "action-new-attempt", name: "new_attempt" }), " Send with new message ids (a new attempt)");

  box.append(button("Retry", "retry", !finished,
    saga.awaiting.length
      ? `Retry sends the command${saga.awaiting.length === 1 ? "" : "s"} of step ${saga.state} again now: ${awaited}, with the same message ids unless you ask for new ones.`
      : `Retry would send the commands step ${saga.state} waits on again, but it waits on none: the service will refuse it.`,
    () => [...reason(), newAttempt()],
    (form) => ({ ...withReason(form), new_attempt: form.querySelector("#action-new-attempt").checked })));

  box.append(button("Cancel saga", "cancel", !finished,
    `Cancel gives up on the saga: it compensates what was done, newest first${cancelTo ? `, moving from ${saga.state} to ${cancelTo.dest}` : ""}.`,
    reason, withReason));

  box.append(button("Fire deadline", "fire-deadline", !finished,
    state && state.deadline_seconds
      ? `Fire deadline fires the deadline of state ${saga.state} now${deadline ? ` (due ${when(deadline.due_at)})` : ""}, as if its time had come: the saga moves to ${state.on_deadline}.`
      : `State ${saga.state} has no deadline: the service will refuse it.`,
    reason, withReason));

  const steps = workflow ? workflow.states.filter((s) => !s.final).map((s) => s.name) : [];
  box.append(button("Resume", "resume", failed,
    `Resume takes the failed saga up again from the step you choose (default: where it failed${saga.timed_out.length ? `, ${saga.timed_out[saga.timed_out.length - 1]}` : ""}): that step's commands are sent again and its deadline starts afresh.`,
    () => [h("div", { class: "field" }, h("label", { for: "action-step" }, "From step"),
      h("select", { id: "action-step", name: "step" }, h("option", { value: "" }, "where it failed"), steps.map((s) => h("option", { value: s }, s)))),
      ...reason(), newAttempt()],
    (form) => {
      const step = form.querySelector("#action-step").value;
      return { ...withReason(form), ...(step ? { step } : {}), new_attempt: form.querySelector("#action-new-attempt").checked };
    }));

  const outcomes = rulesHere.filter((r) => !r.event.startsWith("saga.")).map((r) => r.event);
  if (failed && saga.timed_out.length && workflow) {
    const comp = saga.timed_out[saga.timed_out.length - 1];
    for (const r of workflow.rules) if (r.source === comp && !r.event.startsWith("saga.") && !outcomes.includes(r.event)) outcomes.push(r.event);
  }
  box.append(button("Skip step", "skip", !finished && outcomes.length > 0,
    `Skip takes the outcome you choose as the result of step ${saga.state}, as if its participant had sent it (the saga moves where that event leads), without waiting for ${saga.waiting_for.length ? saga.waiting_for.join(" or ") : "a reply"}.`,
    () => [h("div", { class: "field" }, h("label", { for: "action-outcome" }, "Outcome (an event type)"),
      h("select", { id: "action-outcome", name: "outcome", required: true }, outcomes.map((o) => h("option", { value: o }, o)))),
      h("div", { class: "field" }, h("label", { for: "action-data" }, "That event's fields, as JSON (optional)"),
        h("textarea", { id: "action-data", name: "data", spellcheck: "false" }, "{}")),
      ...reason()],
    (form) => {
      const text = form.querySelector("#action-data").value.trim() || "{}";
      let data;
      try { data = JSON.parse(text); } catch (e) { throw new ApiError(0, `the fields are not valid JSON: ${e.message}`); }
      return { ...withReason(form), outcome: form.querySelector("#action-outcome").value, data };
    }));
  return box;
}

// The confirmation: says what will happen and to which saga (or dead letter); on a refusal the
// API's detail is shown as it is and the dialog stays open.
function confirmAction({ title, what, fields, run, done, then }) {
  const dialog = document.getElementById("confirm");
  const form = document.getElementById("confirm-form");
  const error = document.getElementById("confirm-error");
  const ok = document.getElementById("confirm-ok");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-what").textContent = what;
  document.getElementById("confirm-fields").replaceChildren(...fields());
  error.hidden = true;
  error.textContent = "";
  ok.disabled = false;
  const opener = document.activeElement;
  const close = () => {
    form.onsubmit = null;
    dialog.close();
    if (opener && opener.isConnected) opener.focus();
  };
  document.getElementById("confirm-cancel").onclick = close;
  form.onsubmit = async (event) => {
    event.preventDefault();
    ok.disabled = true;
    try {
      const answer = await run(form);
      close();
      announce(done(answer));
      showFlash(done(answer));
      await then();
      showFlash(done(answer));
    } catch (e) {
      ok.disabled = false;
      if (e instanceof LoginNeeded || (e instanceof ApiError && e.status === 401)) {
        close();
        forget();
        showSession();
        loginView("The service wants a valid token for this action. Log in, then try again.");
        return;
      }
      error.textContent = e instanceof ApiError ? `Refused${e.status ? ` (${e.status})` : ""}: ${e.detail}` : String(e);
      error.hidden = false;
    }
  };
  dialog.showModal();
  const first = dialog.querySelector("#confirm-fields input, #confirm-fields select");
  (first || ok).focus();
}

function showFlash(text) {
  const old = document.getElementById("flash");
  if (old) old.remove();
  const note = h("p", { id: "flash", class: "note", role: "status" }, text);
  main().prepend(note);
}

// ---------------------------------------------------------------------------------------------
// Workflows
async function workflowsPage() {
  const list = await get("/workflows");
  document.title = "Workflows · Saga console";
  const fill = (items) => table("The workflows this service runs, with their sagas per status now",
    ["Workflow", "Starts on", "Key", ...STATUSES],
    items.map((w) => h("tr", {},
      h("th", { scope: "row" }, h("a", { href: `#/workflows/${encodeURIComponent(w.name)}` }, w.name), h("div", { class: "note" }, w.description)),
      h("td", {}, w.starts_on), h("td", {}, w.key),
      STATUSES.map((s) => h("td", {}, h("a", { href: `#/sagas${query({ workflow: w.name, status: s })}` }, String(w.sagas[s] || 0)))))));
  const holder = h("div", {}, fill(list));
  changed(holder, list);
  main().replaceChildren(h("h1", {}, "Workflows"), h("div", { class: "toolbar" }, liveToggle()), holder);
  poll(async () => {
    const now = await get("/workflows");
    if (changed(holder, now)) holder.replaceChildren(fill(now));
  });
}

async function workflowPage(name) {
  const render = async (quietly) => {
    const workflow = await get(`/workflows/${encodeURIComponent(name)}${query({ window: 3600 })}`);
    const activity = workflow.activity || { window_seconds: 3600, started: 0, finished: {}, stuck: 0 };
    const span = activity.window_seconds === 3600 ? "last hour" : `last ${Math.round(activity.window_seconds / 60)} min`;
    const counts = {};
    for (const s of workflow.states) counts[s.name] = s.sagas;
    const holder = document.getElementById("workflow-body");
    if (quietly && holder && !changed(holder, workflow)) return;
    const count = (label, value, href) => h("div", { class: "count" }, h("strong", {}, href ? h("a", { href }, value) : value), label);
    const body = [
      h("p", { class: "note" }, workflow.description),
      h("div", { class: "counts", id: "workflow-counts" },
        count("stuck now", String(activity.stuck), `#/sagas${query({ workflow: name, stuck: "true" })}`),
        count("failed now", String(workflow.sagas.failed || 0), `#/sagas${query({ workflow: name, status: "failed" })}`),
        count("running", String(workflow.sagas.running || 0), `#/sagas${query({ workflow: name, status: "running" })}`),
        count("compensating", String(workflow.sagas.compensating || 0), `#/sagas${query({ workflow: name, status: "compensating" })}`),
        count(`started, ${span}`, String(activity.started)),
        ...["completed", "compensated", "failed"].map((status) => count(`${status}, ${span}`, String(activity.finished[status] || 0)))),
      h("h2", {}, "Sagas per state now"),
      h("div", { class: "diagram", id: "workflow-diagram" }, diagram(workflow, { counts, label: `${name}: its states with the sagas in each now` })),
      h("h2", {}, "Releases"),
      table("Each release loaded here or that sagas in flight are on", ["Release", "Current", "Loaded", "In flight", "Per state", "First run"],
        workflow.releases.map((r) => h("tr", {},
          h("th", { scope: "row" }, r.release), h("td", {}, r.current ? "yes" : "no"), h("td", {}, r.loaded ? "yes" : "no"),
          h("td", {}, String(r.in_flight)),
          h("td", {}, Object.entries(r.states).map(([s, n]) => `${s}: ${n}`).join(", ") || "none"),
          h("td", {}, r.first_run_at ? time(r.first_run_at) : "")))),
      h("h2", {}, "States"),
      table("Each state: what it sends, its deadline, the sagas in it", ["State", "Status", "Sends", "Deadline", "Sagas"],
        workflow.states.map((s) => h("tr", {},
          h("th", { scope: "row" }, h("a", { href: `#/sagas${query({ workflow: name, state: s.name })}` }, s.name)),
          h("td", {}, badge(s.status)), h("td", {}, s.sends.join(", ")),
          h("td", {}, s.deadline_seconds ? `${s.deadline_seconds} s → ${s.on_deadline}` : ""), h("td", {}, String(s.sagas))))),
      h("h2", {}, "Moves"),
      table("Which event moves a saga from which state to which", ["From", "Event", "To"],
        movesOf(workflow).map((m) => h("tr", {}, h("td", {}, m.source), h("td", {}, m.events.join(", ")), h("td", {}, m.dest)))),
    ];
    document.title = `${name} · Saga console`;
    if (quietly) {
      holder.replaceChildren(...body);
      return;
    }
    const fresh = h("div", { id: "workflow-body" }, body);
    changed(fresh, workflow);
    main().replaceChildren(
      h("p", {}, h("a", { href: "#/workflows" }, "← Workflows")),
      h("h1", {}, `Workflow ${name}`),
      h("div", { class: "toolbar" }, liveToggle()),
      fresh,
      h("details", {}, h("summary", {}, "Mermaid source (to copy)"), h("pre", { id: "mermaid" }, workflow.mermaid)));
  };
  await render(false);
  poll(() => render(true));
}

// ---------------------------------------------------------------------------------------------
// Dead letters
async function deadLettersPage(params) {
  const filters = {
    reason: params.get("reason") || "",
    source: params.get("source") || "",
    replayed: params.get("replayed") || "",
    cursor: params.get("cursor") || "",
  };
  const page = await get(`/dead-letters${query({ ...filters, limit: 50 })}`);
  document.title = "Dead letters · Saga console";
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter dead letters" },
    h("label", { for: "dl-reason" }, "Reason code", h("input", { id: "dl-reason", name: "reason", value: filters.reason, maxlength: 100 })),
    h("label", { for: "dl-source" }, "Source", h("select", { id: "dl-source", name: "source" },
      ["", "orchestrator", "broker"].map((s) => h("option", { value: s, selected: s === filters.source }, s || "any")))),
    h("label", { for: "dl-replayed" }, "Replayed", h("select", { id: "dl-replayed", name: "replayed" },
      [["", "any"], ["false", "not yet"], ["true", "replayed"]].map(([v, t]) => h("option", { value: v, selected: v === filters.replayed }, t)))),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    go(`#/dead-letters${query({ reason: data.get("reason"), source: data.get("source"), replayed: data.get("replayed") })}`);
  });
  const fill = (found) => {
    const rows = found.items.map((d) => h("tr", {},
      h("th", { scope: "row" }, h("a", { href: `#/dead-letters/${d.id}` }, String(d.id))),
      h("td", {}, time(d.dead_at)), h("td", {}, d.source), h("td", {}, h("code", {}, d.reason)),
      h("td", { class: "text" }, d.message_type || ""), h("td", { class: "text" }, d.detail),
      h("td", {}, d.replayed_at ? h("span", {}, time(d.replayed_at), ` by ${d.replayed_by || "?"}`) : "no")));
    const pager = h("div", { class: "pager" });
    if (filters.cursor) pager.append(h("a", { href: `#/dead-letters${query({ ...filters, cursor: "" })}` }, "First page"));
    if (found.next_cursor) pager.append(h("a", { href: `#/dead-letters${query({ ...filters, cursor: found.next_cursor })}` }, "Next page (older)"));
    return h("div", {}, table(`${found.items.length} dead letter${found.items.length === 1 ? "" : "s"}, newest first`,
      ["Id", "Dead at", "Source", "Reason", "Type", "Detail", "Replayed"], rows),
    found.items.length ? null : h("p", { class: "note" }, "None."), pager);
  };
  const holder = h("div", {}, fill(page));
  main().replaceChildren(h("h1", {}, "Dead letters"), form, h("div", { class: "toolbar" }, liveToggle()), holder);
  changed(holder, page);
  poll(async () => {
    const now = await get(`/dead-letters${query({ ...filters, limit: 50 })}`);
    if (changed(holder, now)) holder.replaceChildren(fill(now));
  });
}

async function deadLetterPage(id) {
  const d = await get(`/dead-letters/${encodeURIComponent(id)}`);
  document.title = `Dead letter ${d.id} · Saga console`;
  const replay = h("button", { type: "button", id: "replay", disabled: !mayAct() || (!d.replayable && !d.replayed_at) }, d.replayed_at ? "Replay again" : "Replay");
  replay.addEventListener("click", () => confirmAction({
    title: `Replay dead letter ${d.id}`,
    what: `Replay publishes this ${d.message_type || "message"} (message id ${d.message_id || "none"}) again to exchange ${d.exchange} with routing key ${d.routing_key}; it then goes through the same checks as any message, and if it is still bad it becomes a new dead letter.`,
    fields: () => [],
    run: () => call("POST", `/dead-letters/${encodeURIComponent(d.id)}/replay${d.replayed_at ? "?again=true" : ""}`),
    done: () => `Dead letter ${d.id} replayed.`,
    then: () => route(),
  }));
  main().replaceChildren(
    h("p", {}, h("a", { href: "#/dead-letters" }, "← Dead letters")),
    h("h1", {}, `Dead letter ${d.id}`),
    h("div", { class: "actions" }, replay, d.replayable ? null : h("span", { class: "note" }, `Not replayable: ${d.not_replayable_because}`)),
    facts([
      ["Reason", h("code", {}, d.reason)], ["Detail", d.detail], ["Dead at", time(d.dead_at)], ["Source", d.source],
      ["Type", d.message_type || ""], ["Message id", d.message_id || ""], ["Correlation id", d.correlation_id || ""],
      ["Exchange", d.exchange], ["Routing key", d.routing_key], ["Body", `${d.body_size} bytes (${d.body_stored} stored)`],
      ["Replayed", h("span", { id: "dl-replayed" }, d.replayed_at ? [time(d.replayed_at), ` by ${d.replayed_by || "?"}`] : "no")],
    ]),
    h("h2", {}, "Body"), h("pre", { id: "dl-body" }, d.body_text !== null ? d.body_text : `base64: ${d.body_base64}`),
    h("h2", {}, "Properties"), json(d.properties));
}

// ---------------------------------------------------------------------------------------------
async function start() {
  document.getElementById("login-button").addEventListener("click", () => loginView());
  document.getElementById("logout-button").addEventListener("click", () => {
    forget();
    showSession();
    workflowsCache = null;
    loginView("Logged out.");
    announce("Logged out");
  });
  window.addEventListener("hashchange", route);
  try {
    if (!(await whoAmI())) return loginView("The token kept in this tab was refused.");
  } catch (error) {
    return failed(error);
  }
  route();
}

start();
