// The statemachine run viewer: plain JS, no build step. Polls the JSON API every second.
"use strict";

const POLL_MS = 1000;
const PAGE = 100;  // threads or checkpoints per page
const state = { info: null, view: null, threadId: null, version: null, selected: null,
                followLatest: true, timer: null, token: null,
                rows: new Map(), latest: null, etag: null, before: null,  // the thread shown
                list: { status: null, rows: new Map(), cursor: null, etag: null, more: false,
                        total: 0 } };

const $ = (id) => document.getElementById(id);

// A viewer listening beyond loopback with actions on prints its URL with ?token=...: keep the
// token for this tab (sent on actions only) and take it out of the address bar.
function actionToken() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem("statemachine-token", params.get("token"));
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
  }
  return sessionStorage.getItem("statemachine-token");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

// The JSON answer of `path`; null for 304 (a poll whose answer has not changed).
async function api(path, options = {}) {
  const response = await fetch(path, { cache: "no-store", ...options });
  if (response.status === 304) return null;
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw Object.assign(new Error(body.error || response.statusText),
                                        { status: response.status });
  return body;
}

function showError(error) {
  const banner = $("error-banner");
  banner.hidden = !error;
  banner.textContent = error ? String(error.message || error) : "";
}

function statusBadge(status, busy) {
  return el("span", { class: `status status-${status}` }, status + (busy ? " (live run)" : ""));
}

function firstLine(text, limit = 120) {
  if (!text) return "";
  const line = text.split("\n")[0];
  return line.length > limit ? line.slice(0, limit - 1) + "…" : line;
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 60) return `${value.toFixed(2)} s`;
  return `${Math.floor(value / 60)}:${String(Math.floor(value % 60)).padStart(2, "0")} min`;
}

// -- routing ---------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/thread\/(.+)$/);
  clearTimeout(state.timer);
  showError(null);
  const memory = location.hash.match(/^#\/memory(?:\/(.*))?$/);
  if (memory) {
    let namespace = [];
    try {
      namespace = memory[1] ? JSON.parse(decodeURIComponent(memory[1])) : [];
      if (!Array.isArray(namespace) || !namespace.every((x) => typeof x === "string")) {
        namespace = [];
      }
    } catch {
      namespace = [];
    }
    state.threadId = null;
    showView("memory");
    loadMemory(namespace, 0);
    return;
  }
  let id = null;
  try {
    id = match ? decodeURIComponent(match[1]) : null;
  } catch {  // a malformed %-escape names no thread: drop it and show the list
    history.replaceState(null, "", location.pathname + location.search);
  }
  if (id !== null) {
    if (state.threadId !== id) {
      Object.assign(state, { threadId: id, version: null, selected: null, followLatest: true,
                             rows: new Map(), latest: null, etag: null, before: null });
      // nothing of the previous thread stays, its action buttons least of all, until this
      // one has loaded: they would act on a thread other than the one shown
      $("actions").hidden = true;
      $("thread-title").textContent = `thread ${id}`;
      $("thread-status").replaceChildren();
      $("thread-error").hidden = true;
      $("diagram").replaceChildren();
      $("timeline").tBodies[0].replaceChildren();
    }
    showView("thread");
    pollThread();
  } else {
    state.threadId = null;
    showView("list");
    pollList();
  }
}

function showView(name) {
  state.view = name;
  $("list-view").hidden = name !== "list";
  $("thread-view").hidden = name !== "thread";
  $("memory-view").hidden = name !== "memory";
}

// -- the long-term store (read-only) -----------------------------------------------------------

function memoryHref(namespace) {
  return namespace.length ? `#/memory/${encodeURIComponent(JSON.stringify(namespace))}`
                          : "#/memory";
}

async function loadMemory(namespace, offset) {
  const query = new URLSearchParams({ namespace: JSON.stringify(namespace), limit: PAGE,
                                      offset });
  let data;
  try {
    data = await api(`/api/memory?${query}`);
  } catch (error) {
    showError(error);
    return;
  }
  const path = $("memory-path");
  path.replaceChildren(el("a", { href: "#/memory" }, "(all)"));
  namespace.forEach((label, i) => {
    path.append(" / ", el("a", { href: memoryHref(namespace.slice(0, i + 1)) }, label));
  });
  const list = $("memory-namespaces");
  list.replaceChildren(...data.namespaces.map((ns) =>
    el("li", {}, el("a", { href: memoryHref(ns), class: "namespace" }, ns.join(" / ")))));
  $("no-namespaces").hidden = data.namespaces.length > 0;
  const body = $("memory-items").tBodies[0];
  if (offset === 0) body.replaceChildren();
  for (const item of data.items) {
    body.append(el("tr", { "data-key": item.key },
      el("td", {}, item.namespace.join(" / ")), el("td", {}, item.key),
      el("td", {}, new Date(item.updated_at * 1000).toLocaleString()),
      el("td", {}, el("pre", { class: "value" }, JSON.stringify(item.value, null, 2)))));
  }
  $("no-items").hidden = body.rows.length > 0;
  const more = $("more-items");
  more.hidden = !data.more;
  more.onclick = () => loadMemory(namespace, offset + data.items.length);
}

function schedule(fn) {
  clearTimeout(state.timer);
  state.timer = setTimeout(fn, POLL_MS);
}

// -- the thread list -------------------------------------------------------------------------

// The first page comes whole; polls ask only for the threads changed since the last answer's
// cursor, and get 304 (no body) while nothing changed at all.
async function pollList() {
  const status = $("status-filter").value;
  const list = state.list;
  try {
    if (list.status !== status) Object.assign(list, { status, rows: new Map(), cursor: null,
                                                      etag: null });
    const query = new URLSearchParams(status ? { status } : {});
    let body;
    if (list.cursor === null) {
      query.set("limit", PAGE);
      body = await api(`/api/threads?${query}`);
      if (state.view !== "list" || list.status !== status) return;
      list.rows = new Map(body.threads.map((row) => [row.thread_id, row]));
      list.more = body.more;
    } else {
      query.set("since", list.cursor);
      body = await api(`/api/threads?${query}`, { headers: { "If-None-Match": list.etag } });
      if (state.view !== "list" || list.status !== status) return;
      for (const row of body ? body.threads : []) {
        if (!status || row.status === status) list.rows.set(row.thread_id, row);
        else list.rows.delete(row.thread_id);
      }
    }
    if (body) {
      Object.assign(list, { cursor: body.cursor, etag: `"${body.version}"`, total: body.total });
      const busy = new Set(body.busy);
      for (const row of list.rows.values()) row.busy = busy.has(row.thread_id);
      renderList();
    }
    showError(null);
  } catch (error) {
    showError(error);
  }
  if (state.view === "list") schedule(pollList);
}

async function olderThreads() {
  const list = state.list;
  const query = new URLSearchParams(list.status ? { status: list.status } : {});
  query.set("limit", PAGE);
  query.set("offset", list.rows.size);
  try {
    const body = await api(`/api/threads?${query}`);
    for (const row of body.threads) {
      if (!list.rows.has(row.thread_id)) list.rows.set(row.thread_id, row);
    }
    list.more = body.more;
    renderList();
  } catch (error) {
    showError(error);
  }
}

function renderList() {
  const list = state.list;
  const rows = [...list.rows.values()].sort((a, b) => b.updated_at - a.updated_at ||
    (a.thread_id < b.thread_id ? -1 : 1));
  const body = $("threads").tBodies[0];
  body.replaceChildren(...rows.map((row) => {
    const link = el("a", { href: `#/thread/${encodeURIComponent(row.thread_id)}` }, row.thread_id);
    return el("tr", { class: "thread-row", "data-thread": row.thread_id, "data-status": row.status },
      el("td", {}, link), el("td", {}, statusBadge(row.status, row.busy)),
      el("td", { class: "num" }, row.step), el("td", {}, row.time),
      el("td", { class: "error-cell", title: row.error || "" }, firstLine(row.error)));
  }));
  $("no-threads").hidden = rows.length > 0;
  $("older-threads").hidden = !list.more;
  const total = Math.max(list.total, rows.length);
  $("thread-count").textContent = rows.length < total
    ? `${rows.length} of ${total} threads` : `${total} thread${total === 1 ? "" : "s"}`;
}

// -- one thread ------------------------------------------------------------------------------

// The first page of checkpoints comes whole, older pages on demand; polls ask only for the
// checkpoints from the latest one on, and get 304 (no body) while the thread is unchanged.
async function pollThread() {
  const id = state.threadId;
  const path = `/api/threads/${encodeURIComponent(id)}`;
  try {
    let data;
    if (state.latest === null) {
      data = await api(`${path}?limit=${PAGE}`);
      if (state.threadId !== id) return;
      Object.assign(state, { rows: new Map(), before: data.before });
    } else {
      data = await api(`${path}?limit=${PAGE}&since=${state.latest}`,
        { headers: { "If-None-Match": state.etag || "" } });
      if (state.threadId !== id) return;
      if (data && data.gap) {  // more new checkpoints than a page: start over
        state.latest = null;
        pollThread();
        return;
      }
    }
    if (data) {
      for (const row of data.checkpoints) state.rows.set(row.checkpoint_id, row);
      Object.assign(state, { latest: data.latest, etag: `"${data.version}"` });
      if (data.version !== state.version) {
        state.version = data.version;
        await renderThread(data);
      }
    }
    showError(null);
  } catch (error) {
    showError(error);
  }
  if (state.view === "thread" && state.threadId === id) schedule(pollThread);
}

async function olderCheckpoints() {
  const id = state.threadId;
  try {
    const data = await api(
      `/api/threads/${encodeURIComponent(id)}?limit=${PAGE}&before=${state.before}`);
    if (state.threadId !== id) return;
    for (const row of data.checkpoints) state.rows.set(row.checkpoint_id, row);
    state.before = data.before;
    renderTimeline(checkpoints());
    markSelected();
  } catch (error) {
    showError(error);
  }
}

function checkpoints() {
  return [...state.rows.values()].sort((a, b) => Number(b.checkpoint_id) - Number(a.checkpoint_id));
}

async function renderThread(data) {
  const head = data.thread || {};
  const rows = checkpoints();
  const latest = rows[0];
  $("thread-title").textContent = `thread ${state.threadId}`;
  $("thread-status").replaceChildren(statusBadge(head.status || latest.status, head.busy));
  $("thread-view").dataset.status = head.status || latest.status;
  const error = head.error || latest.error;
  $("thread-error").hidden = !error;
  $("thread-error").textContent = error || "";
  $("actions").hidden = !data.allow_actions;
  renderTimeline(rows);
  if (state.followLatest || !state.rows.has(state.selected)) {
    state.selected = latest.checkpoint_id;
  }
  markSelected();
  await Promise.all([renderDiagram(data), renderCheckpoint(state.selected)]);
}

async function renderDiagram(data) {
  const box = $("diagram");
  if (!data.graph) {
    box.replaceChildren(el("p", { class: "note", id: "diagram-note" }, data.graph_note ||
      "No diagram: pass --graph MODULE:ATTRIBUTE to `statemachine ui` to see the diagram " +
      "with this run's path (diagrams need the graph; the rest of this page reads only the " +
      "database)."));
    return;
  }
  const version = state.version;
  try {
    const response = await fetch(`/api/threads/${encodeURIComponent(state.threadId)}/diagram.svg`);
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || response.statusText);
    }
    const text = await response.text();
    if (state.version !== version) return;  // a newer render is on its way
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    const svg = doc.documentElement;
    if (svg.nodeName !== "svg") throw new Error("the diagram is not SVG");
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    box.replaceChildren(document.importNode(svg, true));
  } catch (error) {
    box.replaceChildren(el("p", { class: "note error" }, `diagram unavailable: ${error.message}`));
  }
}

function renderTimeline(checkpoints) {
  const body = $("timeline").tBodies[0];
  $("older-checkpoints").hidden = !state.before;
  body.replaceChildren(...checkpoints.map((cp, index) => {
    // the nodes whose writes made the checkpoint ran at the step before its own
    let nodes = cp.nodes.length ? `${cp.nodes.join(", ")} (step ${cp.nodes_step})` : "";
    if (!nodes) nodes = cp.compensates ? `↩ ${cp.compensates}` : `(${cp.kind})`;
    let status = cp.status;
    if (cp.status === "failed" && (cp.failed_nodes || []).length) {
      status += ` in ${cp.failed_nodes.join(", ")}`;
    }
    if (cp.waits_for.length) status += ` (waits for ${cp.waits_for.join(", ")})`;
    const retries = Object.entries(cp.attempts || {})
      .map(([node, attempts]) => `${node}: ${attempts} attempts`).join(", ");
    const row = el("tr", { class: "checkpoint", "data-checkpoint": cp.checkpoint_id,
                           "data-status": cp.status },
      el("td", { class: "num" }, cp.checkpoint_id), el("td", { class: "num" }, cp.step),
      el("td", {}, cp.kind), el("td", { class: "nodes" }, nodes),
      el("td", {}, statusBadge(cp.status)), el("td", { class: "num" }, seconds(cp.duration)),
      el("td", {}, retries), el("td", {}, (cp.cache_hits || []).join(", ")),
      el("td", {}, cp.time));
    row.querySelector(".status").textContent = status;
    row.addEventListener("click", () => {
      state.selected = cp.checkpoint_id;
      state.followLatest = index === 0;
      markSelected();
      renderCheckpoint(cp.checkpoint_id);
    });
    return row;
  }));
}

function markSelected() {
  for (const row of $("timeline").tBodies[0].rows) {
    row.classList.toggle("selected", row.dataset.checkpoint === state.selected);
  }
}

async function renderCheckpoint(checkpointId) {
  const id = state.threadId;
  let data;
  try {
    data = await api(`/api/threads/${encodeURIComponent(id)}/checkpoints/${checkpointId}`);
  } catch (error) {
    showError(error);
    return;
  }
  if (state.threadId !== id || state.selected !== checkpointId) return;
  $("state-checkpoint").textContent = `${data.checkpoint_id} (step ${data.step})`;
  const note = $("state-note");
  note.hidden = data.exact;
  note.textContent = data.exact ? "" : "This checkpoint stores no snapshot, and without " +
    "--graph its writes cannot be merged (that needs the state's reducers): shown are the " +
    "nearest stored state and the raw writes since. Pass --graph for the exact state.";
  $("state").textContent = JSON.stringify(data.state, null, 2);
  $("writes").textContent = data.writes.length
    ? data.writes.map(([node, index, update]) =>
      `${node}${index ? `[${index}]` : ""}: ${JSON.stringify(update)}`).join("\n")
    : "(none)";
  const diff = $("diff");
  if (data.diff === null) {
    diff.replaceChildren(el("li", { class: "muted" }, data.parent_id === null
      ? "first checkpoint: nothing before it" : "no exact diff (see the writes below)"));
  } else if (!data.diff.length) {
    diff.replaceChildren(el("li", { class: "muted" }, "no change"));
  } else {
    diff.replaceChildren(...data.diff.map((change) => {
      const text = change.op === "added" ? `+ ${change.path} = ${JSON.stringify(change.after)}`
        : change.op === "removed" ? `- ${change.path} (was ${JSON.stringify(change.before)})`
          : `~ ${change.path}: ${JSON.stringify(change.before)} → ${JSON.stringify(change.after)}`;
      return el("li", { class: `diff-${change.op}`, "data-path": change.path }, text);
    }));
  }
}

async function act(name, payload) {
  const result = $("action-result");
  result.textContent = `${name}…`;
  for (const button of $("actions").querySelectorAll("button")) button.disabled = true;
  try {
    const headers = { "X-Statemachine-Action": "1" };
    if (state.token) headers["X-Statemachine-Token"] = state.token;
    const options = { method: "POST", headers };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(payload);
    }
    const body = await api(`/api/threads/${encodeURIComponent(state.threadId)}/${name}`,
      options);
    if (name === "delete") {
      result.textContent = `deleted: ${body.checkpoints} checkpoints of ${body.threads.length} ` +
        "thread(s)";
      location.hash = "#/";
      return;
    }
    result.textContent = `${name}: ${body.status} at step ${body.step}, checkpoint ` +
      `${body.checkpoint_id}` + (body.error ? ` (${firstLine(body.error)})` : "");
    Object.assign(state, { followLatest: true, version: null, etag: null });
  } catch (error) {
    result.textContent = `${name} failed: ${error.message}`;
  } finally {
    for (const button of $("actions").querySelectorAll("button")) button.disabled = false;
  }
  pollThread();
}

// -- start -----------------------------------------------------------------------------------

async function start() {
  state.token = actionToken();
  try {
    state.info = await api("/api/info");
    $("db-info").textContent = state.info.db + (state.info.graph ? ` · ${state.info.graph}` : "");
    $("mode").textContent = state.info.read_only ? "read-only" : "actions allowed";
  } catch (error) {
    showError(error);
  }
  $("status-filter").addEventListener("change", () => { clearTimeout(state.timer); pollList(); });
  $("older-threads").addEventListener("click", olderThreads);
  $("older-checkpoints").addEventListener("click", olderCheckpoints);
  $("resume").addEventListener("click", () => act("resume"));
  $("rollback").addEventListener("click", () => act("rollback"));
  $("delete").addEventListener("click", () => {
    const question = `Delete thread ${state.threadId} and every checkpoint of it? ` +
      "This cannot be undone.";
    if (confirm(question)) act("delete");
  });
  $("fork").addEventListener("click", () => {
    if (state.selected) act("fork", { checkpoint: state.selected });
    else $("action-result").textContent = "select a checkpoint in the timeline first";
  });
  $("apply-edit").addEventListener("click", () => {
    let values;
    try {
      values = JSON.parse($("edit-values").value);
    } catch (error) {
      $("action-result").textContent = `the values are not JSON: ${error.message}`;
      return;
    }
    const asNode = $("edit-as-node").value.trim();
    act("update", asNode ? { values, as_node: asNode } : { values });
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
