// The dashboard: Devices, Commands, Command detail and Send, kept live by the event stream.

import { ApiError, call, loadConfig, query, setApiKey, apiKey } from "./api.js";
import { EventStream } from "./stream.js";

const TERMINAL = ["succeeded", "failed", "timed_out", "expired", "cancelled"];
const STATUSES = ["queued", "sent", "delivered", ...TERMINAL];
const PAGE_SIZE = 25;
const page = document.getElementById("page");
const connection = document.getElementById("connection");
const announcer = document.getElementById("announcer");
let current = null; // { stream, cleanup } of the page shown

// -- small helpers -------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function badge(state) {
  const text = state || "unknown";
  return el("span", { class: `badge st-${text}`, "data-status": text, text });
}

function when(value) {
  if (!value) return "–";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

function announce(text) {
  announcer.textContent = text;
}

function setConnection(state) {
  const texts = {
    live: "Live: updates as they happen",
    reconnecting: "Reconnecting to live updates…",
    gone: "Missed too many updates; reloaded",
    unauthorized: "API key needed",
  };
  connection.textContent = texts[state] || state;
  connection.dataset.state = state;
  if (state === "unauthorized") showKeyPanel("The API refused the key; enter a valid one.");
}

// Follow the events matching ``filters``. ``onLive`` runs each time the stream is (re)opened:
// the server has positioned it by then, so data read afterwards plus the events that follow
// miss nothing.
function live(filters, onEvent, onLive) {
  const stream = new EventStream(filters, onEvent, (state) => {
    setConnection(state);
    if (state === "live" && onLive) onLive();
  }).start();
  current.streams.push(stream);
  return stream;
}

function showError(container, error) {
  if (error instanceof ApiError && error.status === 401) {
    showKeyPanel(apiKey() ? "The API refused the key; enter a valid one." : "");
    return;
  }
  container.replaceChildren(
    el("p", { class: "message error", role: "alert", text: `Could not load: ${error.message}` }),
  );
}

function showKeyPanel(message) {
  const panel = document.getElementById("key-panel");
  panel.hidden = false;
  document.getElementById("api-key-error").textContent = message || "";
  document.getElementById("api-key").focus();
}

// -- Devices -------------------------------------------------------------------------

async function devicesPage() {
  const body = el("tbody");
  const table = el("div", { class: "table-wrap" },
    el("table", {},
      el("caption", { class: "visually-hidden", text: "Devices, updated live" }),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: "Device" }),
        el("th", { scope: "col", text: "Protocol" }),
        el("th", { scope: "col", text: "Presence" }),
        el("th", { scope: "col", text: "Last seen" }),
        el("th", { scope: "col", text: "Pending commands" }))),
      body));
  page.replaceChildren(el("h2", { text: "Devices" }), table);
  const rows = new Map();

  function row(device) {
    const presence = device.online === true ? "online" : device.online === false ? "offline" : "unknown";
    const cells = [
      el("th", { scope: "row" }, el("a", { href: `#/commands?device_id=${encodeURIComponent(device.device_id)}`, text: device.device_id })),
      el("td", { text: device.protocol || "–" }),
      el("td", {}, badge(presence)),
      el("td", { text: when(device.last_seen) }),
      el("td", { text: String(device.pending_commands ?? 0) }),
    ];
    let tr = rows.get(device.device_id);
    if (!tr) {
      tr = el("tr", { "data-device": device.device_id });
      rows.set(device.device_id, tr);
      body.append(tr);
    }
    tr.replaceChildren(...cells);
  }

  async function refresh() {
    try {
      const listing = await call("GET", "/api/v1/devices");
      for (const device of listing.items) row(device);
      if (!listing.items.length && !body.children.length) {
        body.append(el("tr", {}, el("td", { colspan: 5, text: "No device has been heard from yet." })));
      }
    } catch (error) {
      showError(page, error);
    }
  }

  let pending = null;
  live({}, (kind, data) => {
    if (kind === "presence") {
      const known = rows.get(data.device_id);
      if (known) announce(`${data.device_id} is ${data.online ? "online" : "offline"}`);
    }
    clearTimeout(pending); // pending counts change with statuses: refresh, at most 2/s
    pending = setTimeout(refresh, 500);
  }, refresh);
  await refresh();
}

// -- Commands ------------------------------------------------------------------------

async function commandsPage(params) {
  const filters = { device_id: params.get("device_id") || "", status: params.get("status") || "" };
  const cursor = params.get("cursor") || "";
  const devices = el("input", { id: "filter-device", name: "device_id", value: filters.device_id, list: "known-devices", autocomplete: "off" });
  const status = el("select", { id: "filter-status", name: "status" },
    el("option", { value: "", text: "any status" }),
    STATUSES.map((s) => el("option", { value: s, selected: s === filters.status, text: s })));
  const form = el("form", { class: "filters", role: "search", "aria-label": "Filter commands",
    onsubmit: (event) => {
      event.preventDefault();
      location.hash = `#/commands${query({ device_id: devices.value.trim(), status: status.value })}`;
    } },
    el("div", { class: "field" }, el("label", { for: "filter-device", text: "Device" }), devices),
    el("div", { class: "field" }, el("label", { for: "filter-status", text: "Status" }), status),
    el("div", { class: "field" }, el("button", { type: "submit", text: "Filter" })));
  const body = el("tbody");
  const pager = el("div", { class: "pager" });
  page.replaceChildren(el("h2", { text: "Commands" }), form,
    el("div", { class: "table-wrap" }, el("table", {},
      el("caption", { class: "visually-hidden", text: "Commands, newest first" }),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: "Command" }),
        el("th", { scope: "col", text: "Device" }),
        el("th", { scope: "col", text: "Type" }),
        el("th", { scope: "col", text: "Status" }),
        el("th", { scope: "col", class: "hide-narrow", text: "Updated" }))),
      body)),
    pager);
  const rows = new Map();

  function row(item, prepend = false) {
    const cells = [
      el("td", {}, el("a", { class: "mono", href: `#/command/${encodeURIComponent(item.request_id)}`, text: item.request_id.slice(0, 8), "aria-label": `Command ${item.request_id}` })),
      el("td", { text: item.device_id }),
      el("td", { text: item.command_type || "–" }),
      el("td", {}, badge(item.status)),
      el("td", { class: "hide-narrow", text: when(item.updated_at || item.at) }),
    ];
    let tr = rows.get(item.request_id);
    if (!tr) {
      tr = el("tr", { "data-request-id": item.request_id });
      rows.set(item.request_id, tr);
      if (prepend) body.prepend(tr); else body.append(tr);
    }
    tr.replaceChildren(...cells);
  }

  async function load() {
    try {
      const listing = await call("GET", `/api/v1/commands${query({ ...filters, limit: PAGE_SIZE, cursor })}`);
      for (const item of listing.items) row(item);
      pager.replaceChildren();
      if (cursor) pager.append(el("a", { href: `#/commands${query(filters)}`, text: "Newest" }));
      if (listing.next_cursor) {
        pager.append(el("a", { href: `#/commands${query({ ...filters, cursor: listing.next_cursor })}`, text: "Older commands" }));
      }
      body.querySelector("tr.empty")?.remove();
      if (!rows.size) body.append(el("tr", { class: "empty" }, el("td", { colspan: 5, text: "No commands match." })));
    } catch (error) {
      showError(page, error);
    }
  }

  live({ device_id: filters.device_id }, (kind, data) => {
    if (kind !== "status") return;
    const known = rows.has(data.request_id);
    if (!known && (cursor || data.status !== "queued")) return; // only the first page grows
    if (filters.status && data.status !== filters.status && !known) return;
    body.querySelector("tr.empty")?.remove();
    row({ ...data, updated_at: data.at }, !known);
    announce(`Command ${data.request_id.slice(0, 8)} on ${data.device_id}: ${data.status}`);
  }, load);
  await load();
}

// -- Command detail ------------------------------------------------------------------

async function commandPage(requestId) {
  const holder = el("div");
  page.replaceChildren(el("h2", {}, "Command ", el("span", { class: "mono", text: requestId })), holder);

  async function render() {
    let command;
    try {
      command = await call("GET", `/api/v1/commands/${encodeURIComponent(requestId)}/status`);
    } catch (error) {
      showError(holder, error);
      return;
    }
    const cancel = command.status === "queued"
      ? el("button", { type: "button", class: "secondary", id: "cancel", onclick: async (event) => {
          event.target.disabled = true;
          try {
            const answer = await call("DELETE", `/api/v1/commands/${encodeURIComponent(requestId)}`);
            announce(answer.message);
          } catch (error) {
            announce(`Cancel refused: ${error.message}`);
            event.target.disabled = false;
          }
        }, text: "Cancel this command" })
      : null;
    holder.replaceChildren(...[
      el("dl", { class: "facts" },
        el("dt", { text: "Status" }), el("dd", { id: "command-status" }, badge(command.status)),
        el("dt", { text: "Device" }), el("dd", {}, el("a", { href: `#/commands?device_id=${encodeURIComponent(command.device_id)}`, text: command.device_id })),
        el("dt", { text: "Protocol" }), el("dd", { text: command.protocol || "–" }),
        el("dt", { text: "Type" }), el("dd", { text: command.command_type || "–" }),
        el("dt", { text: "Created" }), el("dd", { text: when(command.created_at) }),
        el("dt", { text: "Expires" }), el("dd", { text: when(command.expires_at) }),
        command.detail ? [el("dt", { text: "Detail" }), el("dd", { text: command.detail })] : null),
      cancel,
      el("h3", { text: "Timeline" }),
      el("ol", { class: "timeline", id: "timeline" },
        command.history.map((entry) => el("li", { "data-status": entry.status },
          badge(entry.status), " ", el("time", { datetime: entry.at, text: when(entry.at) }),
          ` — ${entry.source}`, entry.detail ? ` (${entry.detail})` : ""))),
      el("h3", { text: "Result" }),
      command.result === null || command.result === undefined
        ? el("p", { class: "hint", id: "result", text: TERMINAL.includes(command.status) ? "No result." : "No result yet." })
        : el("pre", { id: "result", tabindex: "0", text: JSON.stringify(command.result, null, 2) }),
    ].filter(Boolean));
    return command;
  }

  // The store may apply an event a moment after the stream shows it: never show less than
  // the stream has, and read again until the store has caught up.
  let seen = 0;
  let retries = 0;
  async function follow() {
    const command = await render();
    if (!command) return;
    if (STATUSES.indexOf(command.status) < seen && retries++ < 40) {
      document.getElementById("command-status")?.replaceChildren(badge(STATUSES[seen]));
      setTimeout(follow, 250);
    }
  }
  live({ request_id: requestId }, (kind, data) => {
    announce(`Command is ${data.status}`);
    seen = Math.max(seen, STATUSES.indexOf(data.status));
    retries = 0;
    follow();
  }, follow);
  await follow();
}

// -- Send ----------------------------------------------------------------------------

const SEND_FIELDS = ["device_id", "protocol", "command_type", "payload", "ttl_seconds", "timeout_seconds"];

function field(name, label, control, hint) {
  control.id = `send-${name}`;
  control.name = name;
  control.setAttribute("aria-describedby", `send-${name}-error${hint ? ` send-${name}-hint` : ""}`);
  return el("div", { class: "field" },
    el("label", { for: control.id, text: label }),
    hint ? el("p", { class: "hint", id: `send-${name}-hint`, text: hint }) : null,
    control,
    el("p", { class: "field-error", id: `send-${name}-error`, "aria-live": "polite" }));
}

function fieldError(name, message) {
  const control = document.getElementById(`send-${name}`);
  const slot = document.getElementById(`send-${name}-error`);
  if (!control || !slot) return false;
  slot.textContent = message;
  control.setAttribute("aria-invalid", message ? "true" : "false");
  return true;
}

async function sendPage() {
  const datalist = el("datalist", { id: "known-devices" });
  const outcome = el("div", { id: "send-outcome", role: "status", "aria-live": "polite" });
  const form = el("form", { id: "send-form", novalidate: true },
    field("device_id", "Device", el("input", { list: "known-devices", required: true, autocomplete: "off" })),
    field("protocol", "Protocol", el("select", {}, ["mqtt", "http", "coap"].map((p) => el("option", { value: p, text: p })))),
    field("command_type", "Command type", el("input", { required: true, value: "control_led" })),
    field("payload", "Payload (JSON object)", el("textarea", { spellcheck: "false", text: '{"pin": 25, "state": true}' }), "Parameters for the device, e.g. {\"pin\": 25, \"state\": true}"),
    field("ttl_seconds", "TTL (seconds, optional)", el("input", { type: "number", min: "1", step: "1", inputmode: "numeric" }), "Expire if not sent by then"),
    field("timeout_seconds", "Timeout (seconds, optional)", el("input", { type: "number", min: "0.1", step: "any", inputmode: "decimal" }), "How long the device may take to answer"),
    el("button", { type: "submit", id: "send-submit", text: "Send command" }),
    datalist);
  page.replaceChildren(el("h2", { text: "Send a command" }), outcome, form);
  call("GET", "/api/v1/devices").then((listing) => {
    for (const device of listing.items) datalist.append(el("option", { value: device.device_id }));
  }).catch(() => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    for (const name of SEND_FIELDS) fieldError(name, "");
    outcome.replaceChildren();
    const values = Object.fromEntries(new FormData(form).entries());
    const body = { device_id: values.device_id.trim(), protocol: values.protocol, command_type: values.command_type.trim() };
    try {
      const payload = values.payload.trim() ? JSON.parse(values.payload) : {};
      if (payload === null || typeof payload !== "object" || Array.isArray(payload)) throw new Error("not an object");
      body.payload = payload;
    } catch {
      fieldError("payload", "The payload must be a JSON object, e.g. {\"pin\": 25}.");
      document.getElementById("send-payload").focus();
      return;
    }
    if (values.ttl_seconds) body.ttl_seconds = Number(values.ttl_seconds);
    if (values.timeout_seconds) body.timeout_seconds = Number(values.timeout_seconds);
    const button = document.getElementById("send-submit");
    button.disabled = true;
    try {
      const accepted = await call("POST", "/api/v1/commands", body);
      announce(`Command ${accepted.request_id} accepted`);
      location.hash = `#/command/${encodeURIComponent(accepted.request_id)}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) { showError(outcome, error); return; }
      let placed = false;
      for (const detail of error.details || []) {
        const loc = detail.loc || [];
        const name = loc[0] === "body" ? loc[1] : null;
        if (name && fieldError(String(name), detail.msg || error.message)) placed = true;
      }
      outcome.replaceChildren(el("p", { class: "message error", role: "alert",
        text: placed ? `Not sent: ${error.message}. See the fields marked below.` : `Not sent: ${error.message}` }));
      const invalid = form.querySelector('[aria-invalid="true"]');
      if (invalid) invalid.focus();
    } finally {
      button.disabled = false;
    }
  });
}

// -- routing -------------------------------------------------------------------------

async function route() {
  if (current) for (const stream of current.streams) stream.close();
  current = { streams: [] };
  const [path, search] = (location.hash.slice(1) || "/devices").split("?");
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "devices";
  for (const link of document.querySelectorAll("nav a")) {
    const active = link.dataset.page === name || (name === "command" && link.dataset.page === "commands");
    if (active) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  const titles = { devices: "Devices", commands: "Commands", command: "Command", send: "Send" };
  document.title = `${titles[name] || "Devices"} · Preservarium Pusher`;
  if (name === "commands") await commandsPage(params);
  else if (name === "command" && parts[1]) await commandPage(decodeURIComponent(parts[1]));
  else if (name === "send") await sendPage();
  else await devicesPage();
  page.dataset.ready = name;
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey(document.getElementById("api-key").value.trim());
  document.getElementById("key-panel").hidden = true;
  route();
});

window.addEventListener("hashchange", () => {
  route();
  document.getElementById("main").focus({ preventScroll: true });
});

loadConfig().then(route);
