// Shoal's web view: one page, redrawn from the model the server streams (Server-Sent Events on /api/stream).
// Every text is set with textContent, never parsed as HTML. Changes are POSTs with the X-Shoal-Web header,
// each confirmed in a dialog first.
"use strict";

const S = { model: null, events: [], route: "overview", arg: "", logs: null, logsFor: "", filter: "" };
const MAX_EVENTS = 500;
const LIVE = ["new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"];

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const short = (id) => (id || "").slice(0, 12);
const nodeName = (id) => { const n = (S.model.nodes || []).find((x) => x.id === id); return n ? n.hostname : short(id); };
const svcName = (id) => { const s = (S.model.services || []).find((x) => x.id === id); return s ? s.name : short(id); };

function bytes(n) {
  if (!n) return "0";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n >= 10 || i === 0 ? 0 : 1)} ${u[i]}`;
}
const cpus = (nano) => (nano / 1e9).toFixed(nano % 1e9 ? 2 : 0);

function ago(iso) {
  if (!iso || iso.startsWith("0001")) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function badge(text, kind) { return h("span", { class: `badge ${kind || text}` }, text); }

function toast(text, bad) {
  const t = h("div", { class: `toast ${bad ? "bad" : "good"}` }, text);
  $("toasts").append(t);
  setTimeout(() => t.remove(), 6000);
}

// --- actions -------------------------------------------------------------------------------------------------

function confirmAction(title, text, field) {
  const dlg = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-field").hidden = !field;
  if (field) { $("confirm-label").textContent = field.label; $("confirm-input").value = field.value; }
  return new Promise((resolve) => {
    const done = (ok) => {
      $("confirm-ok").onclick = null; $("confirm-cancel").onclick = null;
      dlg.close();
      resolve(ok ? (field ? $("confirm-input").value : true) : null);
    };
    $("confirm-ok").onclick = (e) => { e.preventDefault(); done(true); };
    $("confirm-cancel").onclick = () => done(false);
    dlg.oncancel = () => done(false);
    dlg.showModal();
    if (field) $("confirm-input").focus();
  });
}

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Shoal-Web": "1" },
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try { data = await r.json(); } catch (e) { data = {}; }
  if (r.status === 401) { location.href = "/login"; return null; }
  if (!r.ok) { toast(`${r.status}: ${data.message || r.statusText}`, true); return null; }
  return data;
}

async function scaleService(s) {
  const v = await confirmAction(`Scale ${s.name}`, `Set the number of replicas of ${s.name} (now ${s.replicas}).`,
    { label: "replicas", value: s.replicas });
  if (v === null) return;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) { toast("replicas must be a whole number, 0 or more", true); return; }
  const r = await post(`/api/services/${s.id}/scale`, { replicas: n });
  if (r) toast(`${s.name}: ${r.done}`);
}

async function rollbackService(s) {
  if (!(await confirmAction(`Roll back ${s.name}`, `Roll ${s.name} back to its previous spec, as docker service rollback.`))) return;
  const r = await post(`/api/services/${s.id}/rollback`);
  if (r) toast(`${s.name}: ${r.done}`);
}

async function forceUpdate(s) {
  if (!(await confirmAction(`Force update ${s.name}`, `Replace every task of ${s.name}, as docker service update --force.`))) return;
  const r = await post(`/api/services/${s.id}/force-update`);
  if (r) toast(`${s.name}: ${r.done}`);
}

async function runNow(s) {
  if (!(await confirmAction(`Run ${s.name} now`, `Start a run of ${s.name} now, outside its schedule (${s.cron.schedule}).`))) return;
  const r = await post(`/api/services/${s.id}/run-now`);
  if (r) toast(`${s.name}: ${r.done}`);
}

function until(iso) {
  if (!iso || iso.startsWith("0001")) return "";
  const s = (Date.parse(iso) - Date.now()) / 1000;
  if (s < 0) return "due";
  if (s < 60) return `in ${Math.round(s)} s`;
  if (s < 3600) return `in ${Math.round(s / 60)} min`;
  if (s < 86400) return `in ${Math.round(s / 3600)} h`;
  return `in ${Math.round(s / 86400)} d`;
}

async function setAvailability(n, availability) {
  const verb = availability === "drain" ? "Drain" : availability === "pause" ? "Pause" : "Activate";
  const what = availability === "drain" ? "its tasks move to other nodes" : availability === "pause"
    ? "no new tasks are placed on it" : "tasks may be placed on it again";
  if (!(await confirmAction(`${verb} ${n.hostname}`, `${verb} node ${n.hostname}: ${what}.`))) return;
  const r = await post(`/api/nodes/${n.id}/availability`, { availability });
  if (r) toast(`${n.hostname}: ${r.done}`);
}

// --- pages ---------------------------------------------------------------------------------------------------

function table(cls, heads, rows) {
  return h("table", { class: cls }, h("thead", {}, h("tr", {}, heads.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

function nodeRows(nodes, withActions) {
  return nodes.map((n) => h("tr", { "data-node": n.hostname, class: n.state },
    h("td", {}, h("strong", {}, n.hostname), n.leader ? badge("leader", "leader") : null),
    h("td", { class: "role" }, n.role, n.reachability ? ` (${n.reachability})` : ""),
    h("td", { class: "state" }, badge(n.state), n.message ? h("div", { class: "muted small" }, n.message) : null),
    h("td", { class: "availability" }, badge(n.availability)),
    h("td", { class: "heartbeat" }, n.heartbeat_age === null || n.heartbeat_age === undefined ? "–" : `${n.heartbeat_age.toFixed(1)} s`),
    h("td", { class: "tasks" }, String(n.tasks)),
    h("td", {}, `${cpus(n.reserved_nano_cpus)} / ${cpus(n.nano_cpus)} CPU`, h("br"), `${bytes(n.reserved_memory)} / ${bytes(n.memory)}`),
    h("td", { class: "muted small" }, n.addr, h("br"), n.platform, n.engine ? ` · ${n.engine}` : "",
      Object.keys(n.labels).length ? [h("br"), Object.entries(n.labels).map(([k, v]) => `${k}=${v}`).join(", ")] : null),
    withActions ? h("td", { class: "actions" },
      n.availability !== "drain" ? h("button", { class: "act-drain danger", "data-node": n.hostname, onclick: () => setAvailability(n, "drain") }, "Drain") : null,
      n.availability !== "active" ? h("button", { class: "act-activate", "data-node": n.hostname, onclick: () => setAvailability(n, "active") }, "Activate") : null,
      n.availability === "active" ? h("button", { class: "act-pause", "data-node": n.hostname, onclick: () => setAvailability(n, "pause") }, "Pause") : null,
    ) : null));
}

const NODE_HEADS = ["Node", "Role", "State", "Availability", "Heartbeat", "Tasks", "Reserved / total", "Address, platform, labels"];

function updateCell(s) {
  const u = s.update;
  if (!u.state) return "";
  return h("span", { class: "update" }, badge(u.state.replace(/_/g, " "), u.state),
    u.progress ? h("span", { class: "progress" }, ` ${u.progress} replaced`) : null, u.message ? h("div", { class: "muted small" }, u.message) : null);
}

function serviceRows(services) {
  return services.map((s) => h("tr", { "data-service": s.name },
    h("td", {}, h("a", { href: `#/services/${s.id}` }, s.name)),
    h("td", { class: "muted" }, s.stack),
    h("td", {}, s.mode, s.cron ? h("div", { class: "muted small cron", title: s.cron.next_run }, `cron ${s.cron.schedule}, next ${until(s.cron.next_run)}`) : null),
    h("td", { class: `replicas ${s.running >= s.desired ? "ok" : "short"}` }, `${s.running}/${s.desired}`),
    h("td", { class: "image" }, s.image),
    h("td", {}, s.ports.join(", ")),
    h("td", {}, updateCell(s)),
    h("td", { class: "error small" }, s.last_error)));
}

const SERVICE_HEADS = ["Service", "Stack", "Mode", "Replicas", "Image", "Ports", "Update", "Last error"];

function overview(m) {
  const down = m.nodes.filter((n) => n.state !== "ready").length;
  const short_ = m.services.filter((s) => s.running < s.desired).length;
  const cards = h("div", { class: "cards" },
    h("div", { class: "card" }, h("div", { class: "big" }, String(m.nodes.length)), "nodes", down ? h("div", { class: "bad" }, `${down} not ready`) : null),
    h("div", { class: "card" }, h("div", { class: "big" }, String(m.services.length)), "services", short_ ? h("div", { class: "bad" }, `${short_} converging`) : null),
    h("div", { class: "card" }, h("div", { class: "big" }, String(m.tasks.filter((t) => t.state === "running").length)), "running tasks"),
    h("div", { class: `card ${m.raft.healthy ? "" : "badcard"}` }, h("div", { class: "big" }, `${m.raft.reachable}/${m.raft.managers.length}`),
      "managers reachable", h("div", {}, m.raft.healthy ? "Raft healthy" : "Raft without quorum or leader")));
  return [cards,
    h("h2", {}, "Nodes"), table("nodes", NODE_HEADS, nodeRows(m.nodes, false)),
    h("h2", {}, "Services"), table("services", SERVICE_HEADS, serviceRows(m.services)),
    m.stacks.length ? [h("h2", {}, "Stacks"), table("stacks", ["Stack", "Services", "Tasks"],
      m.stacks.map((st) => h("tr", { "data-stack": st.name }, h("td", {}, st.name), h("td", {}, st.services.join(", ")), h("td", {}, `${st.running}/${st.desired}`))))] : null,
    h("h2", {}, "Recent events"), eventList(S.events.slice(0, 10))];
}

function matches(s) {
  const f = S.filter.trim().toLowerCase();
  return !f || [s.name, s.stack, s.image].some((x) => x.toLowerCase().includes(f));
}

function servicesPage(m) {
  const filter = h("input", { id: "filter", type: "search", placeholder: "filter by name, stack or image", value: S.filter,
    oninput: (e) => { S.filter = e.target.value; render(); } });
  return [h("h2", {}, "Services ", filter), table("services", SERVICE_HEADS, serviceRows(m.services.filter(matches))),
    h("h2", {}, "Stacks"), m.stacks.length ? table("stacks", ["Stack", "Services", "Tasks"],
      m.stacks.map((st) => h("tr", { "data-stack": st.name }, h("td", {}, st.name), h("td", {}, st.services.join(", ")), h("td", {}, `${st.running}/${st.desired}`))))
      : h("p", { class: "muted" }, "No stacks.")];
}

function taskChip(t) {
  return h("span", { class: `task ${t.state}`, title: `${svcName(t.service_id)}.${t.slot || short(t.node_id)} ${t.state}${t.error ? ": " + t.error : ""}`, "data-task": t.id },
    t.slot ? `${t.slot}` : "•");
}

function gridPage(m) {
  const nodes = m.nodes;
  const rows = m.services.map((s) => h("tr", { "data-service": s.name },
    h("th", {}, h("a", { href: `#/services/${s.id}` }, s.name), h("div", { class: "muted small" }, s.image)),
    nodes.map((n) => h("td", { "data-service": s.name, "data-node": n.hostname, class: n.state !== "ready" ? "downcell" : "" },
      m.tasks.filter((t) => t.service_id === s.id && t.node_id === n.id && t.desired === "running" && LIVE.includes(t.state)).map(taskChip)))));
  const head = h("tr", {}, h("th", {}, ""), nodes.map((n) => h("th", { "data-node": n.hostname },
    n.hostname, n.leader ? " ★" : "", h("div", { class: "small" }, badge(n.state), " ", badge(n.availability)),
    h("div", { class: "muted small" }, `${n.role} · ${cpus(n.reserved_nano_cpus)}/${cpus(n.nano_cpus)} CPU · ${bytes(n.reserved_memory)}/${bytes(n.memory)}`))));
  return [h("h2", {}, "Tasks by service and node"),
    h("table", { id: "grid", class: "grid" }, h("thead", {}, head), h("tbody", {}, rows)),
    h("p", { class: "muted small" }, "Each chip is a task meant to run, by its slot; its colour is its state.")];
}

function nodesPage(m) {
  return [h("h2", {}, "Nodes"), table("nodes", [...NODE_HEADS, "Actions"], nodeRows(m.nodes, true))];
}

function taskHistory(tasks) {
  return table("history", ["Task", "Node", "Desired", "State", "When", "Error"],
    tasks.slice().sort((a, b) => (b.timestamp > a.timestamp ? 1 : -1)).map((t) => h("tr", { class: t.error ? "failed" : "", "data-task": t.id },
      h("td", {}, `${svcName(t.service_id)}.${t.slot || short(t.node_id)}`, h("div", { class: "muted small" }, short(t.id))),
      h("td", {}, nodeName(t.node_id)),
      h("td", {}, t.desired),
      h("td", {}, badge(t.state), t.message ? h("div", { class: "muted small" }, t.message) : null,
        t.moved ? h("div", { class: "muted small" }, `moved here by ${t.moved}`) : null),
      h("td", { class: "small", title: t.timestamp }, ago(t.timestamp)),
      h("td", { class: "error small" }, t.error,
        t.exit_code && !t.error.includes(`(${t.exit_code})`) ? ` (exit ${t.exit_code})` : ""))));
}

function servicePage(m, id) {
  const s = m.services.find((x) => x.id === id || x.name === id);
  if (!s) return [h("p", {}, "No such service (it may have been removed). "), h("a", { href: "#/services" }, "All services")];
  const tasks = m.tasks.filter((t) => t.service_id === s.id);
  return [h("h2", { id: "service-name", "data-service": s.name }, s.name, " ", h("span", { class: "muted" }, s.stack ? `stack ${s.stack}` : "")),
    h("div", { class: "actionbar" },
      s.mode.startsWith("replicated") ? h("button", { id: "act-scale", onclick: () => scaleService(s) }, "Scale…") : null,
      h("button", { id: "act-rollback", class: "danger", disabled: !s.can_rollback, onclick: () => rollbackService(s) }, "Roll back"),
      h("button", { id: "act-force", class: "danger", onclick: () => forceUpdate(s) }, "Force update"),
      s.cron ? h("button", { id: "act-run-now", onclick: () => runNow(s) }, "Run now") : null),
    h("dl", { class: "facts" },
      h("dt", {}, "Replicas"), h("dd", { id: "service-replicas", class: s.running >= s.desired ? "ok" : "short" }, `${s.running}/${s.desired}`),
      h("dt", {}, "Mode"), h("dd", {}, s.mode),
      s.cron ? [h("dt", {}, "Schedule"), h("dd", { id: "service-schedule" }, `${s.cron.schedule} (${s.cron.timezone})${s.cron.skip_running ? ", skip running" : ""}`),
        h("dt", {}, "Next run"), h("dd", { id: "service-next-run", title: s.cron.next_run }, s.cron.next_run ? `${s.cron.next_run} (${until(s.cron.next_run)})` : "–"),
        h("dt", {}, "Last run"), h("dd", { title: s.cron.last_run }, s.cron.last_run ? ago(s.cron.last_run) : "never")] : null,
      h("dt", {}, "Image"), h("dd", { id: "service-image" }, s.image),
      h("dt", {}, "Ports"), h("dd", {}, s.ports.join(", ") || "–"),
      h("dt", {}, "Update"), h("dd", { id: "service-update" }, updateCell(s) || "–"),
      h("dt", {}, "Last error"), h("dd", { class: "error" }, s.last_error || "–"),
      h("dt", {}, "Created"), h("dd", { title: s.created }, ago(s.created)),
      h("dt", {}, "Updated"), h("dd", { title: s.updated }, ago(s.updated))),
    h("h3", {}, "Spec"), specFacts(s.spec),
    h("h3", {}, "Task history"), taskHistory(tasks)];
}

function specFacts(sp) {
  const row = (label, value, id) => {
    const v = Array.isArray(value) ? value.join(", ") : typeof value === "object" ? Object.entries(value).map(([k, x]) => `${k}=${x}`).join(", ") : value;
    return v ? [h("dt", {}, label), h("dd", { id }, String(v))] : [];
  };
  const rows = [row("Constraints", sp.constraints, "spec-constraints"), row("Max per node", sp.max_replicas_per_node || ""),
    row("Reservations", sp.reservations), row("Limits", sp.limits), row("Restart", sp.restart),
    row("Update config", sp.update), row("Rollback config", sp.rollback), row("Networks", sp.networks, "spec-networks"),
    row("Secrets", sp.secrets, "spec-secrets"), row("Configs", sp.configs), row("Mounts", sp.mounts), row("Labels", sp.labels)].flat();
  return rows.length ? h("dl", { class: "facts spec" }, rows) : h("p", { class: "muted" }, "Defaults only.");
}

function eventText(e) {
  const a = e.attributes || {};
  const bits = [];
  for (const k of ["replicas", "image", "updatestate", "availability", "state", "role"]) {
    if (a[`${k}.new`] !== undefined) bits.push(`${k} ${a[`${k}.old`] || "∅"} → ${a[`${k}.new`]}`);
  }
  return bits.join(", ");
}

function eventList(events) {
  if (!events.length) return h("p", { class: "muted" }, "No events yet.");
  return h("ul", { class: "events" }, events.map((e) => h("li", { "data-type": e.type, "data-action": e.action },
    h("time", {}, new Date(e.time / 1e6).toLocaleTimeString()), " ", badge(e.type, "type"), " ", h("strong", {}, e.action), " ",
    e.attributes.name || short(e.id), " ", h("span", { class: "muted" }, eventText(e)))));
}

function eventsPage() {
  return [h("h2", {}, "Events (live)"), h("div", { id: "events" }, eventList(S.events))];
}

function objectsPage(m) {
  const meta = (list, kind) => list.length ? table(kind, ["Name", "ID", "Created", "Updated", "Labels", "Driver"],
    list.map((o) => h("tr", { "data-name": o.name }, h("td", {}, o.name), h("td", { class: "muted" }, short(o.id)),
      h("td", { title: o.created }, ago(o.created)), h("td", { title: o.updated }, ago(o.updated)),
      h("td", { class: "small" }, Object.entries(o.labels).map(([k, v]) => `${k}=${v}`).join(", ")),
      h("td", {}, o.driver || o.templating || "")))) : h("p", { class: "muted" }, `No ${kind}.`);
  return [h("h2", {}, "Secrets"), h("p", { class: "muted small" }, "Metadata only: no payload is ever sent to this page."), meta(m.secrets, "secrets"),
    h("h2", {}, "Configs"), meta(m.configs, "configs"),
    h("h2", {}, "Networks"), table("networks", ["Name", "Driver", "Scope", "Subnets", "Flags"],
      m.networks.map((n) => h("tr", { "data-name": n.name }, h("td", {}, n.name), h("td", {}, n.driver), h("td", {}, n.scope),
        h("td", {}, n.subnets.map((c) => c.subnet + (c.gateway ? ` via ${c.gateway}` : "")).join(", ")),
        h("td", {}, [n.ingress && "ingress", n.attachable && "attachable", n.internal && "internal"].filter(Boolean).join(", ")))))];
}

function raftPage(m) {
  const r = m.raft, me = r.member || {};
  return [h("h2", {}, "Raft"),
    h("p", { id: "raft-health", class: r.healthy ? "ok" : "bad" }, r.healthy
      ? `Healthy: ${r.reachable} of ${r.managers.length} managers reachable (quorum ${r.quorum}), a leader elected.`
      : `Unhealthy: ${r.reachable} of ${r.managers.length} managers reachable (quorum ${r.quorum}).`),
    table("managers", ["Manager", "Address", "Leader", "Reachability"], r.managers.map((x) => h("tr", { "data-node": x.hostname },
      h("td", {}, x.hostname), h("td", {}, x.addr), h("td", {}, x.leader ? "leader" : ""), h("td", {}, badge(x.reachability || "unknown"))))),
    h("h3", {}, "This manager's member"),
    h("dl", { class: "facts" }, Object.entries(me).map(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")),
      h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]))];
}

// --- drawing -------------------------------------------------------------------------------------------------

function render() {
  const main = $("main");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.route === S.route);
  const m = S.model;
  if (!m) return;
  if (m.error) {
    const me = m.raft_member;
    main.replaceChildren(h("div", { class: "errorbox", id: "model-error" }, m.error),
      ...(me ? [h("h2", {}, "This manager's Raft member"), h("dl", { class: "facts" }, Object.entries(me).map(([k, v]) =>
        [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, typeof v === "object" ? JSON.stringify(v) : String(v))]))] : []));
    return;
  }
  $("who").textContent = `${m.self.hostname} · swarm ${short(m.self.cluster_id)}`;
  const page = { overview, services: servicesPage, grid: gridPage, nodes: nodesPage, events: eventsPage, objects: objectsPage, raft: raftPage }[S.route];
  const y = window.scrollY;
  const active = document.activeElement, focusId = active && main.contains(active) ? active.id : "";
  const caret = focusId && active.selectionStart !== undefined ? active.selectionStart : null;
  main.replaceChildren(...[S.route === "service" ? servicePage(m, S.arg) : page(m)].flat(Infinity).filter(Boolean));
  if (focusId && $(focusId)) { // a redraw keeps the field being typed in
    $(focusId).focus();
    if (caret !== null) $(focusId).setSelectionRange(caret, caret);
  }
  window.scrollTo(0, y);
  document.body.dataset.page = S.route;
}

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  if (parts[0] === "services" && parts[1]) { S.route = "service"; S.arg = decodeURIComponent(parts[1]); }
  else { S.route = parts[0] || "overview"; S.arg = ""; }
  if (!["overview", "services", "grid", "nodes", "events", "objects", "raft", "service"].includes(S.route)) S.route = "overview";
  followLogs(S.route === "service" ? S.arg : "");
  render();
}

function followLogs(service) {
  if (S.logsFor === service) return;
  if (S.logs) { S.logs.close(); S.logs = null; }
  S.logsFor = service;
  $("logs").textContent = "";
  $("logs-panel").hidden = !service;
  if (!service) return;
  const name = S.model && (S.model.services.find((s) => s.id === service) || {}).name;
  $("logs-service").textContent = name || short(service);
  const follow = $("logs-follow").checked ? 1 : 0;
  const es = new EventSource(`/api/services/${encodeURIComponent(service)}/logs?follow=${follow}&tail=200`);
  S.logs = es;
  const pre = $("logs");
  es.addEventListener("log", (ev) => {
    const d = JSON.parse(ev.data);
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    const task = (S.model && S.model.tasks.find((t) => t.id === d.task)) || null;
    const who = task ? `${svcName(task.service_id)}.${task.slot || short(task.node_id)}@${nodeName(task.node_id)}` : short(d.task);
    pre.append(h("span", { class: d.stream }, h("span", { class: "logmeta" }, `${d.time.slice(11, 23)} ${who} | `), d.line + "\n"));
    while (pre.childNodes.length > 2000) pre.firstChild.remove();
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  es.addEventListener("end", () => es.close());
  es.addEventListener("failed", (ev) => { pre.append(h("span", { class: "stderr" }, JSON.parse(ev.data).message + "\n")); es.close(); });
}

function connect() {
  const es = new EventSource("/api/stream");
  const live = $("live");
  es.addEventListener("open", () => {
    live.textContent = "live"; live.className = "live on";
    S.events = []; // each connection starts with the last hour's events again
  });
  es.addEventListener("error", () => {
    live.textContent = "reconnecting"; live.className = "live off";
    fetch("/api/state", { credentials: "same-origin" }).then((r) => { if (r.status === 401) location.href = "/login"; }).catch(() => {});
  });
  es.addEventListener("state", (ev) => { S.model = JSON.parse(ev.data); render(); if (S.logsFor && !$("logs-service").textContent) followLogs(S.logsFor); });
  es.addEventListener("event", (ev) => {
    S.events.unshift(JSON.parse(ev.data));
    if (S.events.length > MAX_EVENTS) S.events.length = MAX_EVENTS;
    if (S.route === "events") render();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST", credentials: "same-origin", headers: { "X-Shoal-Web": "1" } });
    location.href = "/login";
  });
  $("logs-clear").addEventListener("click", () => { $("logs").textContent = ""; });
  $("logs-follow").addEventListener("change", () => { const s = S.logsFor; S.logsFor = ""; followLogs(s); });
  window.addEventListener("hashchange", route);
  route();
  connect();
});
