// The gateway dashboard: live breaker state and route rates from /hystrix.stream, topology
// from the admin API. Plain DOM, no build step; bundled into the gateway binary.
"use strict";

const HISTORY = 120; // samples kept per route: 60 s at one frame per 500 ms
const commands = new Map(); // route -> latest HystrixCommand
const pools = new Map(); // cluster -> latest HystrixThreadPool
const history = new Map(); // route -> [{rate, p99}]
let routes = [];
let clusters = [];
let renderQueued = false;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function sparkline(values) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 120 / (HISTORY - 1) : 0;
  const offset = 120 - step * (values.length - 1);
  const points = values
    .map((v, i) => `${(offset + i * step).toFixed(1)},${(23 - (v / max) * 22).toFixed(1)}`)
    .join(" ");
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  const title = document.createElementNS(svgNS, "title");
  title.textContent = `max ${max.toFixed(1)}`;
  svg.append(title);
  return svg;
}

function windowSeconds(cmd) {
  return (cmd.propertyValue_metricsRollingStatisticalWindowInMilliseconds || 10000) / 1000;
}

function onObject(o) {
  if (o.type === "HystrixCommand") {
    commands.set(o.name, o);
    const h = history.get(o.name) || [];
    h.push({ rate: o.requestCount / windowSeconds(o), p99: o.latencyExecute ? o.latencyExecute["99"] : 0 });
    while (h.length > HISTORY) h.shift();
    history.set(o.name, h);
  } else if (o.type === "HystrixThreadPool") {
    pools.set(o.name, o);
  }
  queueRender();
}

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 100);
}

// With [admin] token set, open the dashboard as /dashboard#token=TOKEN: the token is kept in
// this tab's sessionStorage and sent as a bearer token; it never goes into a URL the server sees.
const adminToken = (() => {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("gateway-admin-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("gateway-admin-token");
})();

function authHeaders(extra = {}) {
  return adminToken ? { ...extra, Authorization: `Bearer ${adminToken}` } : extra;
}

function onStreamData(data) {
  try {
    onObject(JSON.parse(data));
  } catch (e) {
    console.error("bad stream object", e);
  }
}

function connect() {
  const status = document.getElementById("stream-status");
  const up = () => {
    status.textContent = "stream: live";
    status.className = "stream up";
  };
  const down = () => {
    status.textContent = "stream: reconnecting";
    status.className = "stream down";
  };
  if (!adminToken) {
    const source = new EventSource("/hystrix.stream");
    source.onopen = up;
    source.onmessage = (ev) => onStreamData(ev.data);
    source.onerror = down;
    return;
  }
  // EventSource cannot send a bearer token: read the event stream with fetch.
  (async () => {
    for (;;) {
      try {
        const r = await fetch("/hystrix.stream", { headers: authHeaders(), cache: "no-store" });
        if (!r.ok || !r.body) throw new Error(`stream ${r.status}`);
        up();
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const event = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            for (const line of event.split("\n")) {
              if (line.startsWith("data:")) onStreamData(line.slice(5).trim());
            }
          }
        }
      } catch (e) {
        console.error("stream", e);
      }
      down();
      await new Promise((res) => setTimeout(res, 2000));
    }
  })();
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store", headers: authHeaders() });
  return r.json();
}

/// Sheds per priority class, lowest first.
function shedText(shed) {
  return `non-critical ${shed.non_critical} · degraded ${shed.degraded} · critical ${shed.critical}`;
}

/// A cluster's concurrency: its adaptive limit (limit, RTTs, sheds) or its bulkhead.
function concurrencyLines(pool) {
  if (!pool) return ["bulkhead", el("b", {}, "-")];
  const cl = pool.concurrencyLimit;
  if (!cl) {
    return ["bulkhead", el("b", {}, `${pool.currentActiveCount} / ${pool.currentMaximumPoolSize} (rejected ${pool.rollingCountCommandRejections})`)];
  }
  const rtt = (ms) => (ms == null ? "-" : `${ms.toFixed(1)} ms`);
  const shedding = cl.shed.non_critical + cl.shed.degraded + cl.shed.critical > 0;
  const lines = [
    "adaptive limit", el("b", { class: "limit" }, `${cl.in_flight} / ${cl.limit}${cl.queued ? ` (+${cl.queued} waiting)` : ""}`),
    "RTT min / sample", el("b", {}, `${rtt(cl.min_rtt_ms)} / ${rtt(cl.sample_rtt_ms)}`),
  ];
  if (cl.origin_utilization != null) {
    const u = cl.origin_utilization;
    lines.push("origin load", el("b", { class: u > 1 ? "error" : "" }, `${(u * 100).toFixed(0)} %`));
  }
  lines.push("shed", el("b", { class: shedding ? "shed error" : "shed" }, shedText(cl.shed)));
  return lines;
}

async function poll() {
  try {
    const [r, c, cfg, ready, fleet, overload] = await Promise.all([
      getJson("/routes"), getJson("/clusters"), getJson("/config"), getJson("/readyz"),
      getJson("/fleet"), getJson("/overload"),
    ]);
    const inbound = document.getElementById("inbound");
    const ib = overload.inbound;
    inbound.textContent = ib ? `${ib.in_flight} / ${ib.limit} (shed ${shedText(ib.shed)})` : "none";
    inbound.className = ib && ib.in_flight >= ib.limit ? "error" : "";
    document.getElementById("fleet-size").textContent = `${fleet.size} (${fleet.source})`;
    const limits = document.getElementById("limits");
    const degraded = fleet.degraded_limits || [];
    if (!fleet.limit_store) {
      limits.textContent = "local";
      limits.className = "";
    } else if (degraded.length) {
      limits.textContent = `degraded: ${degraded.join(", ")} (store ${fleet.limit_store.breaker})`;
      limits.className = "error";
    } else {
      limits.textContent = `cluster-wide (${fleet.limit_store.address})`;
      limits.className = "";
    }
    routes = r.routes || [];
    clusters = c.clusters || [];
    const current = cfg.current || {};
    document.getElementById("generation").textContent = current.generation ?? "-";
    const last = cfg.last_attempt;
    const lastText = last
      ? `${last.result} (${last.source}${last.error ? ": " + last.error : ""})`
      : "none since start";
    const lr = document.getElementById("last-reload");
    lr.textContent = lastText;
    lr.className = last && last.result === "rejected" ? "error" : "";
    document.getElementById("in-flight").textContent =
      `${ready.in_flight}${ready.draining ? " (draining)" : ""}`;
    queueRender();
  } catch (e) {
    console.error("admin poll failed", e);
  }
}

/// The breaker state of a cluster: from the stream when a route of it reports, else from the
/// admin API's last poll.
function clusterState(name) {
  for (const cmd of commands.values()) {
    if (cmd.group === name) return cmd.circuitBreakerState || (cmd.isCircuitBreakerOpen ? "open" : "closed");
  }
  const c = clusters.find((c) => c.name === name);
  return c ? c.breaker : "disabled";
}

async function breakerAction(cluster, action) {
  const r = await fetch(`/breakers/${encodeURIComponent(cluster)}/${action}`, {
    method: "POST",
    headers: authHeaders({ "X-Gateway-Admin": "1" }),
  });
  const body = await r.json();
  if (!r.ok) alert(`${action} failed: ${body.reason || r.status}`);
  poll();
}

function breakerCard(name) {
  const cmds = [...commands.values()].filter((c) => c.group === name);
  const requests = cmds.reduce((n, c) => n + c.requestCount, 0);
  const errors = cmds.reduce((n, c) => n + c.errorCount, 0);
  const shorted = cmds.reduce((n, c) => n + c.rollingCountShortCircuited, 0);
  const fallbacks = cmds.reduce((n, c) => n + c.rollingCountFallbackSuccess, 0);
  const pool = pools.get(name);
  const state = clusterState(name);
  const win = cmds.length ? windowSeconds(cmds[0]) : 10;
  const errPct = requests ? Math.round((errors * 100) / requests) : 0;
  const rate = (requests + shorted) / win;
  const p99 = cmds.length ? Math.max(...cmds.map((c) => c.latencyExecute["99"])) : 0;
  const id = `breaker-${name}`;
  const buttons = state === "disabled" ? null : el("div", { class: "buttons" },
    el("button", { "data-action": "force_open", onclick: () => breakerAction(name, "force_open") }, "Force open"),
    el("button", { "data-action": "force_closed", onclick: () => breakerAction(name, "force_closed") }, "Force close"),
    el("button", { "data-action": "reset", onclick: () => breakerAction(name, "reset") }, "Reset"));
  return el("div", { class: "card breaker", id, "data-cluster": name },
    el("h3", {}, name, el("span", { class: "state", "data-state": state }, state.replace("_", " ").toUpperCase())),
    el("div", { class: "numbers" },
      "error rate", el("b", { class: "error-rate" }, `${errPct} %`),
      "requests in window", el("b", {}, `${requests} (${rate.toFixed(1)}/s)`),
      "short-circuited", el("b", {}, shorted),
      "fallbacks", el("b", {}, fallbacks),
      "p99", el("b", {}, `${p99} ms`),
      ...concurrencyLines(pool)),
    buttons);
}

function render() {
  const names = new Set(clusters.map((c) => c.name));
  for (const cmd of commands.values()) names.add(cmd.group);
  const breakers = document.getElementById("breakers");
  breakers.replaceChildren(...[...names].sort().map(breakerCard));

  const body = document.querySelector("#routes tbody");
  const routeNames = routes.length ? routes.map((r) => r.name) : [...commands.keys()];
  body.replaceChildren(...routeNames.map((name) => {
    const r = routes.find((x) => x.name === name) || { cluster: "", filters: [] };
    const cmd = commands.get(name);
    const h = history.get(name) || [];
    const match = [r.host, r.path, r.methods ? r.methods.join(",") : null].filter(Boolean).join(" ") || "any";
    return el("tr", { "data-route": name },
      el("td", {}, name), el("td", {}, match), el("td", {}, r.cluster || (cmd && cmd.group)),
      el("td", {}, (r.filters || []).join(", ")),
      el("td", { class: "priority" }, (r.priority || "").replace("_", "-")),
      el("td", {}, cmd ? (cmd.requestCount / windowSeconds(cmd)).toFixed(1) : "-"),
      el("td", {}, cmd ? `${cmd.errorPercentage} %` : "-"),
      el("td", {}, cmd ? cmd.currentConcurrentExecutionCount : "-"),
      el("td", {}, sparkline(h.map((x) => x.rate))),
      el("td", {}, sparkline(h.map((x) => x.p99))));
  }));

  const cl = document.getElementById("clusters");
  cl.replaceChildren(...clusters.map((c) => el("div", { class: "card cluster", "data-cluster": c.name },
    el("h3", {}, c.name, el("span", {}, `${c.discovery.source}${c.discovery.stale ? " (stale)" : ""}`)),
    el("div", { class: "numbers" },
      "balancing", el("b", {}, c.load_balancing),
      "protocol", el("b", {}, c.protocol),
      "ready", el("b", {}, c.ready ? "yes" : "no")),
    el("table", {},
      el("thead", {}, el("tr", {}, el("th", {}, "endpoint"), el("th", {}, "health"), el("th", {}, "in flight"), el("th", {}, "requests"), el("th", {}, "failures"))),
      el("tbody", {}, ...c.endpoints.map((e) => el("tr", {},
        el("td", {}, e.address),
        el("td", { class: e.ejected ? "ejected" : "" }, e.ejected ? "ejected" : "serving"),
        el("td", {}, e.in_flight), el("td", {}, e.requests), el("td", {}, e.failures))))))));
}

connect();
poll();
setInterval(poll, 2000);
