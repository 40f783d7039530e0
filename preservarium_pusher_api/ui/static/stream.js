// The event stream read with fetch (EventSource cannot send the key header), resumed with
// Last-Event-ID after a drop, like any SSE client.

import { headers, settings, query } from "./api.js";

export class EventStream {
  constructor(filters, onEvent, onState) {
    this.filters = filters;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.lastId = null;
    this.controller = null;
    this.closed = false;
    this.retryMs = settings().retry_ms || 3000;
  }

  start() {
    this.loop();
    return this;
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
  }

  async loop() {
    while (!this.closed) {
      this.controller = new AbortController();
      try {
        const extra = { Accept: "text/event-stream" };
        if (this.lastId) extra["Last-Event-ID"] = this.lastId;
        const response = await fetch(`/api/v1/events${query(this.filters)}`, {
          headers: headers(extra), signal: this.controller.signal, cache: "no-store",
        });
        if (response.status === 401) { this.onState("unauthorized"); return; }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        this.onState("live");
        await this.read(response.body.getReader());
      } catch (error) {
        if (this.closed) return;
        if (error && error.gone) { this.onState("gone"); this.lastId = null; }
      }
      if (this.closed) return;
      this.onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, this.retryMs));
    }
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buffer = "";
    let fields = { data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") { this.dispatch(fields); fields = { data: [] }; continue; }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? "" : line.slice(colon + 1);
        if (text.startsWith(" ")) text = text.slice(1);
        if (name === "data") fields.data.push(text);
        else if (name === "retry" && /^\d+$/.test(text)) this.retryMs = Number(text);
        else fields[name] = text;
      }
    }
  }

  dispatch(fields) {
    if (fields.id !== undefined) this.lastId = fields.id;
    if (!fields.data.length) return;
    const data = JSON.parse(fields.data.join("\n"));
    if (fields.event === "error") {
      const gone = new Error(data.error || "stream gone");
      gone.gone = true;
      throw gone;
    }
    this.onEvent(fields.event || "message", data);
  }
}
