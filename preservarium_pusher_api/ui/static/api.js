// The API as the dashboard uses it: JSON routes with the key header, errors in one shape.

const KEY_STORAGE = "pusher.apiKey";
let config = { api_key_header: "X-API-Key", auth: false, retry_ms: 3000 };

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.type = body?.type || null;
    this.details = Array.isArray(body?.details) ? body.details : [];
  }
}

export async function loadConfig() {
  const response = await fetch("/ui/config.json", { headers: { Accept: "application/json" } });
  if (response.ok) config = await response.json();
  return config;
}

export function settings() {
  return config;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) all[config.api_key_header] = key;
  return all;
}

export async function call(method, path, body) {
  const options = { method, headers: headers() };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const item of [].concat(value)) {
      if (item !== undefined && item !== null && item !== "") search.append(name, item);
    }
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
