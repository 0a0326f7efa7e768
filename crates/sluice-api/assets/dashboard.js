// Sluice's dashboard. Every page is drawn here from the engine's API (/api/v1) and
// nothing else; the token travels in the HttpOnly cookie the login form set. Text from
// the API is only ever put in the page as text (textContent), never as markup.
"use strict";

(() => {
  const TERMINAL = ["succeeded", "failed", "timed_out", "cancelled", "abandoned"];
  const STATUSES = ["requested", "scheduling", "scheduled", "running", ...TERMINAL];
  const COLORS = {
    succeeded: "#2e7d32", failed: "#c62828", timed_out: "#8e24aa",
    cancelled: "#b26a00", abandoned: "#6d4c41",
  };

  // ---- building blocks -------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, ...children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    return el;
  }

  function replace(el, ...children) {
    el.replaceChildren();
    return append(el, ...children);
  }

  class Problem extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // Calls the API with the cookie; a request that changes something says it comes from
  // the dashboard, which a page on another site cannot.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-Sluice-Dashboard"] = "1";
    }
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      location.assign("/login?" + new URLSearchParams({ next: location.pathname + location.search }));
      throw new Problem(401, "logged out");
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = text; }
    if (!response.ok) throw new Problem(response.status, (json && json.detail) || response.statusText);
    return json;
  }

  const get = (path) => api("GET", path);
  const post = (path, body) => api("POST", path, body === undefined ? {} : body);

  function status(s) {
    return h("span", { class: "status " + s }, (s || "").replace("_", " "));
  }

  function when(at) {
    if (!at) return "";
    const d = new Date(at);
    return d.toLocaleString(undefined, { hour12: false });
  }

  function seconds(s) {
    if (s === null || s === undefined) return "";
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function between(a, b) {
    if (!a) return null;
    return ((b ? new Date(b) : new Date()) - new Date(a)) / 1000;
  }

  function json(value) {
    return h("pre", {}, JSON.stringify(value, null, 2));
  }

  function bar(value, max, cls) {
    const pct = max > 0 ? Math.min(100, (100 * value) / max) : 0;
    const span = h("span", { class: cls || "" });
    span.style.width = pct + "%";
    return h("div", { class: "bar", role: "img", "aria-label": `${value} of ${max}` }, span);
  }

  function table(headings, rows) {
    return h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, headings.map((t) => (Array.isArray(t)
        ? h("th", { scope: "col", class: t[1] }, t[0])
        : h("th", { scope: "col" }, t))))),
      h("tbody", {}, rows)));
  }

  function note(el, text, isProblem) {
    replace(el, text ? h("p", { class: isProblem ? "problem" : "muted", role: isProblem ? "alert" : null }, text) : null);
  }

  function link(href, text) {
    return h("a", { href }, text);
  }

  function card(label, value, id) {
    return h("div", { class: "card" }, h("div", { class: "n", id: id || null }, value), h("div", { class: "l" }, label));
  }

  // A live connection to `path` that calls `draw` with each snapshot and reconnects.
  function live(path, draw) {
    const source = new EventSource(path, { withCredentials: true });
    source.addEventListener("snapshot", (e) => draw(JSON.parse(e.data)));
    return source;
  }

  // Executions ended per second, from two snapshots' totals.
  function rate(previous, now) {
    if (!previous) return null;
    const sum = (s) => Object.values(s.ended).reduce((a, b) => a + b, 0);
    const dt = (new Date(now.at) - new Date(previous.at)) / 1000;
    return dt > 0 ? Math.max(0, (sum(now) - sum(previous)) / dt) : null;
  }

  let session = { may: { run: false, admin: false } };
  const view = () => document.getElementById("view");

  // ---- overview --------------------------------------------------------------------

  // Executions ended per minute, stacked by status, the last hour right-aligned.
  function chart(minutes) {
    const width = 600, height = 120, slot = width / 60;
    const el = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none",
      role: "img", "aria-label": "Executions ended per minute over the last hour, by status" });
    const totals = minutes.map((m) => Object.values(m.ended).reduce((a, b) => a + b, 0));
    const peak = Math.max(1, ...totals);
    const last = minutes.length ? new Date(minutes[minutes.length - 1].at) : new Date();
    for (const m of minutes) {
      const ago = Math.round((last - new Date(m.at)) / 60000);
      const x = width - (ago + 1) * slot;
      let y = height;
      for (const s of TERMINAL) {
        const n = m.ended[s] || 0;
        if (!n) continue;
        const bh = (n / peak) * height;
        y -= bh;
        const rect = svg("rect", { x: x + 0.5, y, width: slot - 1, height: bh, fill: COLORS[s] });
        const title = svg("title", {});
        title.textContent = `${n} ${s} in the minute from ${when(m.at)}`;
        rect.append(title);
        el.append(rect);
      }
    }
    return h("div", {}, el, h("div", { class: "muted" }, `peak ${peak} a minute · the last 60 minutes, now at the right`));
  }

  function legend() {
    return h("div", { class: "legend" }, TERMINAL.map((s) => {
      const swatch = h("i", {});
      swatch.style.background = COLORS[s];
      return h("span", {}, swatch, s.replace("_", " "));
    }));
  }

  function queueRows(queues) {
    return queues.map((q) => h("tr", {},
      h("td", {}, link("/executions?" + new URLSearchParams({ action: q.action }), q.action)),
      h("td", {}, h("div", {}, `${q.queue_length} queued`), bar(q.queue_length, Math.max(q.queue_length, 10), "queued")),
      h("td", {}, h("div", {}, `${q.active_count} / ${q.max_concurrent ?? "∞"} active`),
        bar(q.active_count, q.max_concurrent || Math.max(q.active_count, 1))),
      h("td", {}, q.oldest_wait_seconds === null ? "" : seconds(q.oldest_wait_seconds)),
      h("td", { class: "hide-narrow" }, (q.keys || []).map((k) =>
        h("div", {}, `${k.key}: ${k.queue_length} queued, ${k.active_count} active`)))));
  }

  function workerRows(workers) {
    return workers.map((w) => h("tr", {},
      h("td", {}, w.name),
      h("td", {}, h("div", {}, `${w.running.length} / ${w.capacity}`), bar(w.running.length, w.capacity)),
      h("td", {}, w.lost ? h("span", { class: "problem" }, "lost") : "live"),
      h("td", {}, when(w.last_heartbeat_at))));
  }

  function overview(main) {
    const cards = h("div", { class: "cards" });
    const graph = h("div", {});
    const queues = h("div", {});
    const workers = h("div", {});
    append(main, h("h1", {}, "Overview"), cards, h("h2", {}, "Executions ended per minute"), graph, legend(),
      h("h2", {}, "Queues"), queues, h("h2", {}, "Workers"), workers);
    let previous = null;
    live("/api/v1/live", (snap) => {
      const r = rate(previous, snap);
      previous = snap;
      const hour = {};
      for (const m of snap.minutes) for (const [s, n] of Object.entries(m.ended)) hour[s] = (hour[s] || 0) + n;
      const queued = snap.queues.reduce((a, q) => a + q.queue_length, 0);
      const active = snap.queues.reduce((a, q) => a + q.active_count, 0);
      const oldest = Math.max(0, ...snap.queues.map((q) => q.oldest_wait_seconds || 0));
      const today = snap.today;
      const plus = today && today.at_least ? "+" : "";
      replace(cards,
        card("executions/s", r === null ? "…" : r.toFixed(1), "rate"),
        card("succeeded, last hour", hour.succeeded || 0),
        card("failed or timed out, last hour", (hour.failed || 0) + (hour.timed_out || 0)),
        card("queued", queued, "queued"),
        card("oldest wait", oldest ? seconds(oldest) : "–"),
        card("running", active),
        card("live workers", snap.workers.filter((w) => !w.lost).length),
        card("rejected events today", today ? today.rejected_events + plus : "…"),
        card("dead letters today", today ? today.dead_letters + plus : "…"));
      replace(graph, chart(snap.minutes));
      replace(queues, table(["action", "queue", "active / limit", "oldest wait", ["per key", "hide-narrow"]], queueRows(snap.queues)));
      replace(workers, snap.workers.length
        ? table(["worker", "load", "state", "last heartbeat"], workerRows(snap.workers))
        : h("p", { class: "muted" }, "No worker has reported yet."));
    });
  }

  // ---- executions ------------------------------------------------------------------

  function executionRow(e) {
    return h("tr", {},
      h("td", {}, link(`/executions/${e.id}`, "#" + e.id)),
      h("td", {}, e.action),
      h("td", {}, status(e.status)),
      h("td", { class: "hide-narrow" }, e.rule || ""),
      h("td", { class: "hide-narrow" }, e.attempt > 1 ? `attempt ${e.attempt}` : ""),
      h("td", { class: "hide-narrow" }, e.worker || ""),
      h("td", {}, when(e.created_at)),
      h("td", {}, e.finished_at ? seconds(between(e.created_at, e.finished_at)) : ""));
  }

  async function executions(main) {
    const params = new URLSearchParams(location.search);
    const actions = await get("/api/v1/actions").catch(() => []);
    const field = (name, input) => h("label", {}, name, input);
    const action = h("select", { name: "action" }, h("option", { value: "" }, "any"),
      actions.map((a) => h("option", { value: a.ref, selected: params.get("action") === a.ref }, a.ref)));
    const state = h("select", { name: "status" }, h("option", { value: "" }, "any"),
      STATUSES.map((s) => h("option", { value: s, selected: params.get("status") === s }, s)));
    const rule = h("input", { name: "rule", value: params.get("rule") || "", placeholder: "pack.rule" });
    const since = h("input", { name: "since", value: params.get("since") || "", placeholder: "1h" });
    const out = h("div", {});
    const rateText = h("span", { class: "muted", id: "list-rate" });
    const said = h("div", {});
    const cancelAll = session.may.run
      ? h("button", { type: "button", class: "danger", onclick: () => bulkCancel() }, "Cancel all matching")
      : null;
    const filters = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); connect(); } },
      field("action", action), field("status", state), field("rule", rule), field("since", since),
      h("button", { type: "submit" }, "Filter"), cancelAll);
    append(main, h("h1", {}, "Executions"), filters, said,
      h("p", {}, rateText, " · newest 50 shown, updated every second"), out);
    let source = null;
    let previous = null;
    function query() {
      const q = new URLSearchParams();
      for (const [k, el] of Object.entries({ action, status: state, rule, since })) if (el.value) q.set(k, el.value);
      return q;
    }
    function connect() {
      if (source) source.close();
      previous = null;
      const q = query();
      history.replaceState(null, "", "/executions" + (q.toString() ? "?" + q : ""));
      q.set("window", "50");
      source = live("/api/v1/live?" + q, (snap) => {
        const r = rate(previous, snap);
        previous = snap;
        rateText.textContent = r === null ? "measuring the rate…" : `${r.toFixed(1)} executions ended per second`;
        replace(out, snap.executions.length
          ? table(["id", "action", "status", ["rule", "hide-narrow"], ["attempt", "hide-narrow"], ["worker", "hide-narrow"], "created", "took"], snap.executions.map(executionRow))
          : h("p", { class: "muted" }, "No execution matches."));
      });
    }
    async function bulkCancel() {
      const q = Object.fromEntries(query());
      if (!Object.keys(q).length) { note(said, "Choose at least one filter to cancel by.", true); return; }
      if (!confirm("Cancel every unfinished execution matching these filters?")) return;
      try {
        const answer = await post("/api/v1/executions/cancel", q);
        note(said, `${answer.matched} matched; cancelling them.`);
      } catch (e) { note(said, e.message, true); }
    }
    connect();
  }

  function timeline(history) {
    const rows = [];
    const start = history.length ? new Date(history[0].at) : null;
    const end = history.length ? new Date(history[history.length - 1].at) : null;
    const span = start && end ? Math.max(1, end - start) : 1;
    history.forEach((entry, i) => {
      const next = history[i + 1];
      const took = next ? (new Date(next.at) - new Date(entry.at)) / 1000 : null;
      const offset = (100 * (new Date(entry.at) - start)) / span;
      const width = next ? Math.max(1, (100 * (new Date(next.at) - new Date(entry.at))) / span) : 1;
      const piece = h("span", {});
      piece.style.left = offset + "%";
      piece.style.width = width + "%";
      rows.push(h("div", {}, status(entry.status), entry.attempt > 1 ? ` #${entry.attempt}` : ""),
        h("div", { class: "bar", title: when(entry.at) }, piece),
        h("div", { class: "muted" }, took === null ? "at " + when(entry.at) : seconds(took)));
    });
    return h("div", { class: "timeline", "aria-label": "Status history" }, rows);
  }

  // A workflow's children on one time axis: items of a `with` task run side by side.
  function children(list, byId) {
    if (!list.length) return null;
    const start = Math.min(...list.map((c) => new Date(c.created_at)));
    const end = Math.max(...list.map((c) => new Date(c.finished_at || Date.now())));
    const span = Math.max(1, end - start);
    return h("div", {}, h("h2", {}, `Tasks on a timeline (${list.length})`),
      h("div", { class: "timeline" }, list.slice().reverse().map((c) => {
        const piece = h("span", {});
        const from = new Date(c.started_at || c.created_at);
        piece.style.left = (100 * (from - start)) / span + "%";
        piece.style.width = Math.max(0.5, (100 * (new Date(c.finished_at || Date.now()) - from)) / span) + "%";
        if (COLORS[c.status]) piece.style.background = COLORS[c.status];
        const task = byId[c.id];
        const label = task ? `${task.task}${task.item >= 0 ? "[" + task.item + "]" : ""}${task.attempt > 1 ? " #" + task.attempt : ""}` : c.action;
        return [h("div", {}, link(`/executions/${c.id}`, `#${c.id} ${label}`)),
          h("div", { class: "bar", title: `${c.action}: ${c.status}` }, piece), h("div", {}, status(c.status))];
      })));
  }

  // How a task's children stand, as one status for its box.
  function taskState(kids) {
    if (!kids.length) return "idle";
    if (kids.some((k) => !TERMINAL.includes(k.status))) return "running";
    if (kids.every((k) => k.status === "succeeded")) return "succeeded";
    return kids.some((k) => k.status === "succeeded") ? "mixed" : kids[kids.length - 1].status;
  }

  // A workflow's tasks as a graph: columns by distance from the start, arrows for the
  // transitions, each box coloured by how its children stand and linked to the newest.
  function graph(spec) {
    const byName = Object.fromEntries(spec.tasks.map((t) => [t.name, t]));
    const depth = {};
    const queue = spec.tasks.filter((t) => t.start).map((t) => [t.name, 0]);
    while (queue.length) {
      const [name, d] = queue.shift();
      if (depth[name] !== undefined && depth[name] >= d) continue;
      if (d > spec.tasks.length) continue;
      depth[name] = d;
      for (const n of byName[name].next) for (const target of n.do) if (byName[target]) queue.push([target, d + 1]);
    }
    for (const t of spec.tasks) if (depth[t.name] === undefined) depth[t.name] = 0;
    const columns = [];
    for (const t of spec.tasks) (columns[depth[t.name]] = columns[depth[t.name]] || []).push(t);
    const boxW = 170, boxH = 46, gapX = 60, gapY = 20;
    const at = {};
    columns.forEach((col, x) => col.forEach((t, y) => { at[t.name] = { x: 10 + x * (boxW + gapX), y: 10 + y * (boxH + gapY) }; }));
    const width = 20 + columns.length * (boxW + gapX) - gapX;
    const height = 20 + Math.max(...columns.map((c) => c.length)) * (boxH + gapY) - gapY;
    const el = svg("svg", { class: "graph", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
      "aria-label": "The workflow's tasks and the transitions between them" });
    const defs = svg("defs", {});
    const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#5b6572" }));
    defs.append(marker);
    el.append(defs);
    for (const t of spec.tasks) for (const n of t.next) for (const target of n.do) {
      if (!at[target]) continue;
      const a = at[t.name], b = at[target];
      const line = svg("line", { x1: a.x + boxW, y1: a.y + boxH / 2, x2: b.x, y2: b.y + boxH / 2,
        stroke: "#5b6572", "stroke-width": 1.5, "marker-end": "url(#arrow)" });
      const title = svg("title", {});
      title.textContent = n.when ? `when ${typeof n.when === "string" ? n.when : JSON.stringify(n.when)}` : "always";
      line.append(title);
      el.append(line);
    }
    for (const t of spec.tasks) {
      const kids = spec.children.filter((c) => c.task === t.name);
      const state = taskState(kids);
      const fill = { succeeded: "#e8f5e9", running: "#e3f2fd", failed: "#ffebee", timed_out: "#f3e5f5", cancelled: "#fff3e0", abandoned: "#efebe9", mixed: "#fff8e1" }[state] || "#f6f7f9";
      const { x, y } = at[t.name];
      const newest = kids.length ? kids[kids.length - 1].execution_id : null;
      const box = newest ? svg("a", { href: `/executions/${newest}` }) : svg("g", {});
      box.append(svg("rect", { x, y, width: boxW, height: boxH, rx: 6, fill, stroke: "#9aa4b1" }));
      const name = svg("text", { x: x + 8, y: y + 18, "font-weight": 600 });
      name.textContent = t.name + (t.with ? ` ×${new Set(kids.map((k) => k.item)).size || "n"}` : "");
      const sub = svg("text", { x: x + 8, y: y + 36, fill: "#5b6572" });
      const done = kids.filter((k) => k.status === "succeeded").length;
      sub.textContent = `${t.action || "no action"} · ${kids.length ? `${done}/${kids.length} ok` : "not run"}`;
      box.append(name, sub);
      el.append(box);
    }
    return h("div", { class: "scroll" }, h("h2", {}, "Workflow"), el);
  }

  // The parameters a re-run changes: those whose value differs from the original's.
  function changed(original, edited) {
    const out = {};
    for (const [k, v] of Object.entries(edited)) {
      if (JSON.stringify(v) !== JSON.stringify(original[k])) out[k] = v;
    }
    return out;
  }

  async function execution(main, id) {
    const head = h("div", {});
    const said = h("div", {});
    const facts = h("div", {});
    const steps = h("div", {});
    const tasks = h("div", {});
    const output = h("pre", { id: "output", "aria-label": "Output" });
    const params = h("div", {});
    const result = h("div", {});
    const rerun = h("div", {});
    append(main, head, said, facts, h("h2", {}, "Status history"), steps, tasks,
      h("h2", {}, "Parameters"), params, h("h2", {}, "Result"), result, h("h2", {}, "Output"), output, rerun);
    let following = false;
    let shown = null;

    async function cancel() {
      try {
        await post(`/api/v1/executions/${id}/cancel`);
        note(said, "Cancel requested.");
        refresh();
      } catch (e) { note(said, e.message, true); }
    }

    function rerunForm(e) {
      const text = h("textarea", { id: "rerun-parameters", "aria-label": "Parameters for the re-run" },
        JSON.stringify(e.parameters, null, 2));
      const problem = h("div", {});
      const form = h("form", { onsubmit: async (ev) => {
        ev.preventDefault();
        let edited;
        try { edited = JSON.parse(text.value); } catch (err) { note(problem, "Not JSON: " + err.message, true); return; }
        try {
          const created = await post(`/api/v1/executions/${id}/re-run`, { parameters: changed(e.parameters, edited) });
          location.assign(`/executions/${created.id}`);
        } catch (err) { note(problem, err.message, true); }
      } }, h("h2", {}, "Re-run"),
      h("p", { class: "muted" }, "Edit the parameters; values shown as ******** stay as they were."),
      text, problem, h("button", { type: "submit", id: "rerun" }, "Re-run with these parameters"));
      replace(rerun, form);
    }

    async function refresh() {
      let e;
      try { e = await get(`/api/v1/executions/${id}`); } catch (err) { note(said, err.message, true); return; }
      const first = shown === null;
      shown = e;
      const done = TERMINAL.includes(e.status);
      replace(head, h("h1", {}, `Execution #${e.id} `, h("span", { class: "muted" }, e.action), " ", status(e.status)),
        h("div", { class: "row" },
          session.may.run && !done ? h("button", { type: "button", class: "danger", id: "cancel", onclick: cancel }, "Cancel") : null,
          session.may.run ? h("button", { type: "button", class: "quiet", id: "show-rerun", onclick: () => rerunForm(e) }, "Re-run…") : null));
      const trace = e.trace_id
        ? (session.jaeger_url ? link(`${session.jaeger_url.replace(/\/$/, "")}/trace/${e.trace_id}`, e.trace_id) : e.trace_id)
        : "";
      const fact = (k, v) => (v === null || v === undefined || v === "" ? null : h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)));
      replace(facts, h("table", {}, h("tbody", {},
        fact("action", e.action),
        fact("rule", e.rule),
        fact("event", e.event_id ? link(`/events/${e.event_id}`, "#" + e.event_id) : null),
        fact("workflow", e.parent_id ? link(`/executions/${e.parent_id}`, "#" + e.parent_id) : null),
        fact("re-run of", e.rerun_of ? link(`/executions/${e.rerun_of}`, "#" + e.rerun_of) : null),
        fact("attempt", e.attempt),
        fact("worker", e.worker),
        fact("created", when(e.created_at)),
        fact("started", when(e.started_at)),
        fact("finished", when(e.finished_at)),
        fact("took", e.finished_at ? seconds(between(e.created_at, e.finished_at)) : null),
        fact("trace", trace))));
      replace(steps, timeline(e.history || []));
      replace(params, json(e.parameters));
      replace(result, e.result === null || e.result === undefined ? h("p", { class: "muted" }, "None yet.") : json(e.result));
      const kids = await get(`/api/v1/executions?parent=${id}&limit=1000`).catch(() => []);
      const spec = kids.length ? await get(`/api/v1/executions/${id}/tasks`).catch(() => null) : null;
      const byId = spec ? Object.fromEntries(spec.children.map((c) => [c.execution_id, c])) : {};
      replace(tasks, spec ? graph(spec) : null, children(kids, byId));
      if (first && !done && !following) follow();
      if (first && done) {
        const kept = await get(`/api/v1/executions/${id}/output`).catch(() => null);
        if (kept) output.textContent = (kept.stdout || "") + (kept.stderr || "") || "(none)";
      }
      if (!done) setTimeout(refresh, 1000);
    }

    function follow() {
      following = true;
      const source = new EventSource(`/api/v1/executions/${id}/output?follow=true`, { withCredentials: true });
      const add = (e) => { output.textContent += JSON.parse(e.data); };
      source.addEventListener("stdout", add);
      source.addEventListener("stderr", add);
      source.addEventListener("end", () => { source.close(); following = false; });
    }
    refresh();
  }

  // ---- actions, rules, events --------------------------------------------------------

  // An action's policy as a sentence.
  function policyWords(a) {
    const p = a.policy || {};
    const words = [];
    const keys = (p.concurrency_key || []).join(", ");
    if (p.max_concurrent) words.push(`at most ${p.max_concurrent} at once${keys ? " per " + keys : ""}`);
    else if (keys) words.push(`one queue per ${keys}`);
    if (p.max_concurrent_total) words.push(`at most ${p.max_concurrent_total} across all keys`);
    if (p.rate_limit) words.push(`at most ${p.rate_limit.count} every ${p.rate_limit.per_seconds} s`);
    if (p.max_queue) words.push(`requests beyond ${p.max_queue} queued fail at once`);
    if (p.max_concurrent && p.on_full && p.on_full !== "enqueue") words.push(`when full: ${p.on_full}`);
    if (a.timeout_secs) words.push(`times out after ${a.timeout_secs} s`);
    if (p.retry) {
      const on = (p.retry.on || ["failure"]).join(" or ");
      words.push(`retried up to ${p.retry.max_retries} times on ${on}` + (p.retry.delay ? `, ${p.retry.delay} s apart` : "") +
        (p.retry.backoff && p.retry.backoff !== 1 ? ` ×${p.retry.backoff}` : ""));
    }
    if (p.retry_on_worker_loss) words.push("run again elsewhere if its worker is lost");
    words.push(words.length ? "in arrival order" : "no limit; in arrival order");
    return words.join("; ");
  }

  async function actionsPage(main) {
    const list = await get("/api/v1/actions");
    const out = h("div", {});
    append(main, h("h1", {}, "Actions"), h("p", { class: "muted" }, "Queues move live."), out);
    live("/api/v1/live", (snap) => {
      const byRef = Object.fromEntries(snap.queues.map((q) => [q.action, q]));
      replace(out, table(["action", ["runner", "hide-narrow"], "policy", "queue", "active / limit", "oldest wait"], list.map((a) => {
        const q = byRef[a.ref] || { queue_length: 0, active_count: 0, max_concurrent: null, oldest_wait_seconds: null, keys: [] };
        return h("tr", { "data-action": a.ref },
          h("td", {}, link("/executions?" + new URLSearchParams({ action: a.ref }), a.ref)),
          h("td", { class: "hide-narrow" }, a.runner || ""),
          h("td", {}, policyWords(a)),
          h("td", {}, h("div", {}, `${q.queue_length}`), bar(q.queue_length, Math.max(q.queue_length, 10), "queued"),
            (q.keys || []).map((k) => h("div", { class: "muted" }, `${k.key}: ${k.queue_length} queued, ${k.active_count} active`))),
          h("td", {}, h("div", {}, `${q.active_count} / ${q.max_concurrent ?? "∞"}`), bar(q.active_count, q.max_concurrent || Math.max(q.active_count, 1))),
          h("td", {}, q.oldest_wait_seconds === null ? "" : seconds(q.oldest_wait_seconds)));
      })));
    });
  }

  function mismatchWords(m) {
    if (!m) return "";
    const seen = m.seen === null || m.seen === undefined ? "nothing" : JSON.stringify(m.seen);
    return `${m.key} ${m.type} ${JSON.stringify(m.pattern)} failed: it was ${seen}`;
  }

  async function rulesPage(main) {
    const said = h("div", {});
    const out = h("div", {});
    const pick = h("select", { id: "test-rule", "aria-label": "Rule to test" });
    const payload = h("textarea", { id: "test-payload", "aria-label": "Payload" }, "{}");
    const verdict = h("div", { id: "test-verdict", "aria-live": "polite" });
    const tester = h("form", { onsubmit: async (e) => {
      e.preventDefault();
      let body;
      try { body = JSON.parse(payload.value); } catch (err) { note(verdict, "Not JSON: " + err.message, true); return; }
      try {
        const t = await post(`/api/v1/rules/${encodeURIComponent(pick.value)}/test`, { payload: body });
        if (t.payload_error) note(verdict, "The payload does not fit the trigger: " + t.payload_error, true);
        else if (t.matched) replace(verdict, h("p", {}, "Matches: it would run ", h("strong", {}, t.action || ""), " with"), json(t.parameters || {}));
        else note(verdict, "Does not match: " + mismatchWords(t.mismatch));
      } catch (err) { note(verdict, err.message, true); }
    } }, h("h2", {}, "Test a rule with a payload"), h("div", { class: "row" }, pick), payload,
    h("button", { type: "submit" }, "Test (fires nothing)"), verdict);
    append(main, h("h1", {}, "Rules"), said, out, tester);

    async function switchRule(ref, on) {
      try {
        await post(`/api/v1/rules/${encodeURIComponent(ref)}/${on ? "enable" : "disable"}`);
        note(said, `${ref} ${on ? "enabled" : "disabled"}.`);
        draw();
      } catch (e) { note(said, e.message, true); }
    }
    async function draw() {
      const rules = await get("/api/v1/rules");
      const keep = pick.value;
      replace(pick, rules.map((r) => h("option", { value: r.ref, selected: r.ref === keep }, r.ref)));
      replace(out, table(["rule", "trigger", "action", "state", ""], rules.map((r) => h("tr", { "data-rule": r.ref },
        h("td", {}, r.ref, r.description ? h("div", { class: "muted" }, r.description) : null),
        h("td", {}, r.trigger.type),
        h("td", {}, r.action.ref),
        h("td", {}, r.enabled ? "enabled" : h("span", { class: "problem" }, "disabled")),
        h("td", {}, session.may.admin
          ? h("button", { type: "button", class: "quiet", onclick: () => switchRule(r.ref, !r.enabled) }, r.enabled ? "Disable" : "Enable")
          : null)))));
    }
    draw();
  }

  async function eventsPage(main) {
    const out = h("div", {});
    append(main, h("h1", {}, "Events"), h("p", { class: "muted" }, "The newest 50, updated every two seconds."), out);
    async function draw() {
      const events = await get("/api/v1/events?limit=50").catch(() => null);
      if (events) replace(out, table(["id", "trigger", "status", "received"], events.map((e) => h("tr", {},
        h("td", {}, link(`/events/${e.id}`, "#" + e.id)),
        h("td", {}, e.trigger),
        h("td", {}, e.status === "rejected" ? h("span", { class: "problem" }, "rejected: " + (e.reason || "")) : e.status),
        h("td", {}, when(e.created_at))))));
      setTimeout(draw, 2000);
    }
    draw();
  }

  function verdictWords(v) {
    if (v.execution) return [h("span", {}, "matched → "), link(`/executions/${v.execution}`, "execution #" + v.execution)];
    if (!v.enabled) return h("span", { class: "problem" }, "rule disabled" + (v.matched ? " (its criteria match)" : ""));
    if (v.matched) return "matched (fired nothing when the event arrived)";
    return "did not match: " + mismatchWords(v.mismatch);
  }

  async function eventPage(main, id) {
    const e = await get(`/api/v1/events/${id}`);
    append(main, h("h1", {}, `Event #${e.id} `, h("span", { class: "muted" }, e.trigger)),
      h("p", {}, e.status === "rejected" ? h("span", { class: "problem" }, "Rejected: " + (e.reason || "")) : "Accepted", " · ", when(e.created_at)),
      h("h2", {}, "What each rule made of it"),
      e.rules.length
        ? table(["rule", "verdict"], e.rules.map((v) => h("tr", { "data-rule": v.rule }, h("td", {}, v.rule), h("td", { class: "verdict" }, verdictWords(v)))))
        : h("p", { class: "muted" }, "No rule is on this trigger."),
      h("h2", {}, "Payload"), json(e.payload));
  }

  // ---- the actor tree, and the plainer lists --------------------------------------------

  async function actorsPage(main) {
    const out = h("div", {});
    const open = new Set(["engine"]);
    append(main, h("h1", {}, "Actor tree"), h("p", { class: "muted" }, "Read from the live supervision tree every two seconds."), out);
    function count(node) { return 1 + node.children.reduce((a, c) => a + count(c), 0); }
    function node(n) {
      const facts = [];
      if (n.queue_length !== undefined) facts.push(`${n.queue_length} queued, ${n.active_count} active`);
      if (n.status) facts.push(n.status);
      if (n.worker && typeof n.worker === "string") facts.push("on " + n.worker);
      if (n.in_flight !== undefined) facts.push(`${n.in_flight}/${n.capacity}`);
      const summary = h("summary", {}, n.name, " ", h("span", { class: "kind" }, n.kind,
        n.children.length ? ` · ${count(n) - 1} below` : "", facts.length ? " · " + facts.join(", ") : ""));
      const d = h("details", { class: "node", open: open.has(n.name) }, summary, n.children.map(node));
      d.addEventListener("toggle", () => (d.open ? open.add(n.name) : open.delete(n.name)));
      return d;
    }
    async function draw() {
      const tree = await get("/api/v1/actors").catch(() => null);
      if (tree) replace(out, node(tree));
      setTimeout(draw, 2000);
    }
    draw();
  }

  async function listPage(main, title, path, columns, empty) {
    const out = h("div", {});
    append(main, h("h1", {}, title), out);
    const rows = await get(path);
    replace(out, rows.length
      ? table(columns.map((c) => c[0]), rows.map((r) => h("tr", {}, columns.map((c) => h("td", {}, c[1](r))))))
      : h("p", { class: "muted" }, empty));
  }

  async function tokensPage(main) {
    const said = h("div", {});
    const out = h("div", {});
    const name = h("input", { name: "name", required: true });
    const scope = h("select", { name: "scope" }, ["read", "run", "admin"].map((s) => h("option", { value: s }, s)));
    const expires = h("input", { name: "expires", placeholder: "30d" });
    const form = h("form", { class: "filters", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const body = { name: name.value, scope: scope.value };
        if (expires.value) body.expires = expires.value;
        const t = await post("/api/v1/tokens", body);
        replace(said, h("p", {}, "Copy it now; it is not shown again: "), h("pre", {}, t.token));
        draw();
      } catch (err) { note(said, err.message, true); }
    } }, h("label", {}, "name", name), h("label", {}, "scope", scope), h("label", {}, "expires", expires),
    h("button", { type: "submit" }, "Create token"));
    append(main, h("h1", {}, "Tokens"), form, said, out);
    async function draw() {
      const tokens = await get("/api/v1/tokens");
      replace(out, table(["id", "name", "scope", "created", "expires", "last used", ""], tokens.map((t) => h("tr", {},
        h("td", {}, t.id), h("td", {}, t.name), h("td", {}, t.scope), h("td", {}, when(t.created_at)),
        h("td", {}, when(t.expires_at)), h("td", {}, when(t.last_used_at)),
        h("td", {}, t.revoked_at ? "revoked" : h("button", { type: "button", class: "danger", onclick: async () => {
          if (!confirm(`Revoke ${t.name}?`)) return;
          try { await api("DELETE", `/api/v1/tokens/${t.id}`); draw(); } catch (err) { note(said, err.message, true); }
        } }, "Revoke"))))));
    }
    draw();
  }

  // ---- the page --------------------------------------------------------------------

  const pages = [
    [/^\/$/, overview],
    [/^\/executions$/, executions],
    [/^\/executions\/(\d+)$/, execution],
    [/^\/actions$/, actionsPage],
    [/^\/rules$/, rulesPage],
    [/^\/events$/, eventsPage],
    [/^\/events\/(\d+)$/, eventPage],
    [/^\/actors$/, actorsPage],
    [/^\/timers$/, (m) => listPage(m, "Timers", "/api/v1/timers", [
      ["rule", (t) => t.rule], ["trigger", (t) => t.trigger], ["schedule", (t) => JSON.stringify(t.schedule)],
      ["next tick", (t) => when(t.next_fire)], ["last tick", (t) => when(t.last_fire)],
      ["catch-up", (t) => t.catchup], ["state", (t) => (t.enabled ? "enabled" : "paused")]], "No timer rule.")],
    [/^\/workers$/, (m) => listPage(m, "Workers", "/api/v1/workers", [
      ["worker", (w) => w.name], ["load", (w) => `${w.running.length} / ${w.capacity}`],
      ["running", (w) => w.running.map((id) => [link(`/executions/${id}`, "#" + id), " "])],
      ["state", (w) => (w.lost ? "lost" : "live")], ["last heartbeat", (w) => when(w.last_heartbeat_at)]], "No worker has reported yet.")],
    [/^\/dead-letters$/, (m) => listPage(m, "Dead letters", "/api/v1/dead-letters?limit=200", [
      ["id", (d) => d.id], ["stream", (d) => d.stream], ["subject", (d) => d.subject], ["why", (d) => d.reason],
      ["deliveries", (d) => d.deliveries], ["when", (d) => when(d.created_at)]], "No message was given up on.")],
    [/^\/keys$/, (m) => listPage(m, "Datastore keys", "/api/v1/keys", [
      ["key", (k) => k.key], ["value", (k) => (typeof k.value === "string" ? k.value : JSON.stringify(k.value))],
      ["secret", (k) => (k.secret ? "secret" : "")], ["expires", (k) => when(k.expires_at)]], "No key.")],
    [/^\/packs$/, (m) => listPage(m, "Packs", "/api/v1/packs", [
      ["pack", (p) => p.name], ["version", (p) => p.version ?? ""],
      ["state", (p) => (p.loaded === false ? h("span", { class: "problem" }, "not loaded") : "loaded")],
      ["problems", (p) => (p.errors || []).map((e) => h("div", {}, `${e.file}: ${e.field ? e.field + ": " : ""}${e.message}`))]], "No pack.")],
    [/^\/tokens$/, tokensPage],
  ];

  function loginPage() {
    const params = new URLSearchParams(location.search);
    document.getElementById("next").value = params.get("next") || "/";
    document.getElementById("failed").hidden = !params.get("failed");
  }

  async function start() {
    if (document.body.classList.contains("login")) return loginPage();
    for (const a of document.querySelectorAll("nav a")) {
      const href = a.getAttribute("href");
      const here = href === "/" ? location.pathname === "/" : location.pathname.startsWith(href);
      if (here) a.setAttribute("aria-current", "page");
    }
    const main = view();
    try {
      session = await get("/api/v1/session");
    } catch (e) {
      note(main, e.message, true);
      return;
    }
    document.getElementById("who").textContent = `${session.token} (${session.scope})`;
    for (const el of document.querySelectorAll("[data-needs=admin]")) el.hidden = !session.may.admin;
    document.body.dataset.scope = session.scope;
    for (const [pattern, draw] of pages) {
      const found = location.pathname.match(pattern);
      if (found) {
        try { await draw(main, found[1]); } catch (e) { note(main, e.message, true); }
        return;
      }
    }
    note(main, "No such page.", true);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
