"use strict";
// The matchplane admin dashboard: polls the admin API every two seconds and
// redraws. Everything shown comes from the server as data and is inserted as
// text (never as HTML): queue keys and player ids are client input.
(() => {
  const TOKEN_KEY = "matchplane.adminToken";
  const REFRESH_MS = 2000;
  const RECENT_SHOWN = 20;
  const QUEUES_SHOWN = 24;
  // Relative URLs, so the page also works behind a proxy that mounts the control plane under a prefix.
  const API = {
    health: "health",
    jwks: ".well-known/jwks.json",
    servers: "v1/admin/servers",
    summary: "v1/admin/queue/summary",
    history: "v1/admin/queue/history",
    recent: "v1/admin/matches/recent",
    cluster: "v1/admin/cluster",
  };
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  // el("td", {class: "x", "data-testid": "y"}, "text", childNode, …)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function getJson(path, withToken) {
    const headers = { Accept: "application/json" };
    if (withToken) headers.Authorization = "Bearer " + token();
    let response;
    try {
      response = await fetch(path, { headers, cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "UNREACHABLE", "the control plane did not answer");
    }
    if (!response.ok) {
      let code = "HTTP_" + response.status;
      let message = response.statusText || "request failed";
      try {
        const body = await response.json();
        if (body && body.error) {
          code = body.error.code || code;
          message = body.error.message || message;
        }
      } catch (err) {
        // Not JSON: keep the status line.
      }
      throw new ApiError(response.status, code, message);
    }
    return response.json();
  }

  // ---- formatting -------------------------------------------------------

  function fmtMs(ms) {
    if (ms === undefined || ms === null) return "–";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    const minutes = Math.floor(ms / 60000);
    return minutes + " min " + Math.round((ms % 60000) / 1000) + " s";
  }

  function fmtRate(perSec) {
    if (!perSec) return "0";
    return perSec >= 10 ? perSec.toFixed(0) : perSec.toFixed(2);
  }

  function fmtClock(atMs) {
    return new Date(atMs).toLocaleTimeString([], { hour12: false });
  }

  function setStatus(text, problem) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("problem", Boolean(problem));
  }

  // ---- sparklines -------------------------------------------------------

  // values: one per sample slot, oldest first, `null` for a gap; drawn
  // right-aligned on `slots` positions so the chart fills as time passes.
  function sparkline(values, slots, className, title) {
    const width = 200;
    const height = 40;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("class", className);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", title);
    const label = document.createElementNS(SVG_NS, "title");
    label.textContent = title;
    svg.append(label);
    const defined = values.filter((v) => v !== null && v !== undefined);
    if (defined.length === 0) return svg;
    const max = Math.max(1, ...defined);
    const span = Math.max(1, slots - 1);
    const offset = Math.max(0, slots - values.length);
    const x = (i) => ((offset + i) / span) * width;
    const y = (v) => height - 2 - (v / max) * (height - 4);
    // Runs of consecutive defined values; a gap breaks the line.
    let run = [];
    const runs = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        if (run.length) runs.push(run);
        run = [];
      } else {
        run.push([x(i), y(v)]);
      }
    });
    if (run.length) runs.push(run);
    for (const points of runs) {
      if (points.length === 1) {
        const dot = document.createElementNS(SVG_NS, "circle");
        dot.setAttribute("cx", points[0][0]);
        dot.setAttribute("cy", points[0][1]);
        dot.setAttribute("r", 1.5);
        dot.setAttribute("class", "line");
        svg.append(dot);
        continue;
      }
      const line = points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ");
      const area = document.createElementNS(SVG_NS, "polygon");
      const first = points[0][0].toFixed(1);
      const last = points[points.length - 1][0].toFixed(1);
      area.setAttribute("points", `${first},${height} ${line} ${last},${height}`);
      area.setAttribute("class", "area");
      const polyline = document.createElementNS(SVG_NS, "polyline");
      polyline.setAttribute("points", line);
      polyline.setAttribute("class", "line");
      svg.append(area, polyline);
    }
    return svg;
  }

  // ---- rendering --------------------------------------------------------

  function metric(value, label, testid) {
    return el("div", { class: "metric" },
      el("span", { class: "value", "data-testid": testid }, value),
      el("span", { class: "label" }, label));
  }

  // Matches per second over the last 30 s of samples.
  function recentRate(samples, sampleEveryMs) {
    const tail = samples.slice(-Math.max(1, Math.round(30000 / Math.max(1, sampleEveryMs))));
    if (tail.length === 0) return 0;
    const matches = tail.reduce((sum, s) => sum + s.matches, 0);
    return matches / ((tail.length * sampleEveryMs) / 1000);
  }

  function renderQueues(summary, history) {
    const series = new Map((history ? history.queues : []).map((q) => [q.queueKey, q.samples]));
    const sampleEveryMs = history ? history.sampleEveryMs : REFRESH_MS;
    const slots = history ? Math.max(2, Math.round(history.windowMs / history.sampleEveryMs)) : 2;
    const minutes = history ? Math.round(history.windowMs / 60000) : 0;
    const queues = [...summary.queues].sort(
      (a, b) => b.queued - a.queued || a.queueKey.localeCompare(b.queueKey));
    const cards = queues.slice(0, QUEUES_SHOWN).map((queue) => {
      const samples = series.get(queue.queueKey) || [];
      const ttm = queue.timeToMatch;
      const card = el("article", { class: "card", "data-testid": "queue-card", "data-queue": queue.queueKey },
        el("h3", { title: queue.queueKey }, queue.queueKey),
        el("div", { class: "metrics" },
          metric(queue.queued, `queued tickets (${queue.queuedPlayers} players)`, "queue-queued"),
          metric(ttm.samples ? fmtMs(ttm.p50Ms) : "–", "time to match p50", "queue-ttm-p50"),
          metric(ttm.samples ? fmtMs(ttm.p99Ms) : "–", "time to match p99", "queue-ttm-p99"),
          metric(fmtRate(recentRate(samples, sampleEveryMs)), "matches/s (30 s)", "queue-rate")),
        el("div", { class: "sparks" },
          el("div", { class: "spark" },
            el("span", { class: "label" }, `queued, last ${minutes} min`),
            sparkline(samples.map((s) => s.queued), slots, "depth", "queued tickets over time")),
          el("div", { class: "spark" },
            el("span", { class: "label" }, `time to match p50, last ${minutes} min`),
            sparkline(samples.map((s) => s.timeToMatchP50Ms ?? null), slots, "ttm",
              "time to match (p50 per sample) over time"))),
        el("footer", {},
          `assigned ${queue.assigned} · cancelled ${queue.cancelled} · expired ${queue.expired}` +
          ` · failed ${queue.failed} · oldest wait ${fmtMs(queue.oldestWaitMs)}` +
          ` · p50/p99 over the last ${ttm.samples} matched tickets`));
      return card;
    });
    $("queues").replaceChildren(...cards);
    $("queues-empty").hidden = queues.length > 0;
    $("queues-note").textContent = queues.length > QUEUES_SHOWN
      ? `(busiest ${QUEUES_SHOWN} of ${queues.length})` : "";
  }

  function capacityCell(used, max) {
    if (!max) return el("td", {}, used === undefined ? "–" : `${used} / –`);
    const share = Math.min(100, Math.round((used / max) * 100));
    const fill = el("span");
    // Through the CSSOM: the page's content security policy refuses style attributes.
    fill.style.width = `${share}%`;
    return el("td", { title: `${share}% of capacity` },
      el("span", { class: "bar" }, fill), `${used} / ${max}`);
  }

  function renderServers(list) {
    const servers = [...list.servers].sort((a, b) => a.serverId.localeCompare(b.serverId));
    const rows = servers.map((server) => {
      const load = server.load || {};
      const capacity = server.capacity || {};
      return el("tr", { "data-testid": "server-row", "data-server-id": server.serverId },
        el("td", { title: server.landTypes.join(", ") },
          el("strong", {}, server.serverId),
          server.region ? el("span", { class: "muted" }, " " + server.region) : null),
        el("td", {}, el("span", { class: "badge " + server.state, "data-testid": "server-state" }, server.state)),
        capacityCell(load.lands ?? 0, capacity.maxLands),
        capacityCell(load.players ?? 0, capacity.maxPlayers),
        el("td", { title: server.pendingLandIds.join("\n") }, server.allocatedSinceHeartbeat),
        el("td", { "data-testid": "server-abandoned" }, server.abandonedLands),
        el("td", { title: server.lastSeenAt }, fmtMs(server.lastSeenAgoMs) + " ago"),
        el("td", {}, el("code", {}, server.connectBaseUrl)));
    });
    $("servers-body").replaceChildren(...rows);
    $("servers-empty").hidden = servers.length > 0;
  }

  function renderRecent(recent) {
    const items = recent.matches.slice(0, RECENT_SHOWN).map((match) => {
      const teams = match.teams.map((team) => team.join(", ")).join("  vs  ");
      return el("li", { "data-testid": "recent-match", "data-match-id": match.matchId || match.landId },
        el("time", { datetime: match.matchedAt, title: match.matchedAt }, fmtClock(match.matchedAtMs)),
        el("strong", {}, match.queueKey),
        el("span", { class: "teams" }, teams || "–"),
        el("span", { class: "where" },
          `land ${match.landId} on ${match.serverId} · ${match.tickets} ticket(s)` +
          ` · longest wait ${fmtMs(match.longestWaitMs)}`));
    });
    $("recent-matches").replaceChildren(...items);
    $("recent-empty").hidden = items.length > 0;
    $("recent-note").textContent = recent.replicaId
      ? `(formed by replica ${recent.replicaId}; each replica lists its own)` : "";
  }

  function renderJwks(jwks, health) {
    const current = health ? health.currentKid : null;
    const items = jwks.keys.map((key) =>
      el("li", { "data-testid": "jwks-kid", "data-kid": key.kid },
        key.kid,
        el("span", { class: "muted" }, ` ${key.alg || ""} ${key.kty}${key.crv ? " " + key.crv : ""}`),
        key.kid === current ? el("span", { class: "tag" }, "signing now") : null));
    $("jwks-kids").replaceChildren(...items);
  }

  function table(headers, rows) {
    return el("div", { class: "scroll" },
      el("table", {},
        el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c)))))));
  }

  function renderCluster(cluster) {
    const box = $("cluster");
    if (!cluster.redis) {
      box.replaceChildren(el("p", { class: "empty" },
        "One box: the embedded store, no other replicas and no matcher leases."));
      return;
    }
    box.replaceChildren(
      el("p", {},
        "Redis ", el("code", {}, cluster.redis.url), " · ",
        cluster.redis.connected ? "connected" : el("strong", { class: "error" }, "disconnected"),
        ` · answered by ${cluster.replicaId}`),
      el("h3", { class: "muted" }, `Replicas (${cluster.replicas.length})`),
      table(["Replica", "Role", "Address", "Last seen"], cluster.replicas.map((r) =>
        [r.id, r.role, r.address, fmtMs(r.lastSeenAgoMs) + " ago"])),
      el("h3", { class: "muted" }, `Matcher leases (${cluster.leases.length})`),
      table(["Queue", "Holder", "Epoch", "Expires in"], cluster.leases.map((l) =>
        [l.queueKey, l.holder, l.epoch, fmtMs(l.expiresInMs)])));
  }

  function renderHealth(health) {
    const parts = [`v${health.version}`, `store ${health.store}`, `role ${health.role}`,
      `up ${fmtMs(health.uptimeMs)}`];
    if (health.replicaId) parts.push(`replica ${health.replicaId}`);
    $("plane-info").textContent = parts.join(" · ");
  }

  // ---- the loop ---------------------------------------------------------

  function showLogin(message) {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    const error = $("token-error");
    error.textContent = message || "";
    error.hidden = !message;
    setStatus(message ? "admin token refused" : "waiting for the admin token", Boolean(message));
    $("token-input").focus();
  }

  function stop() {
    generation += 1;
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  async function refresh(mine) {
    const requests = {
      servers: getJson(API.servers, true),
      summary: getJson(API.summary, true),
      history: getJson(API.history, true),
      recent: getJson(API.recent, true),
      cluster: getJson(API.cluster, true),
      jwks: getJson(API.jwks, false),
      health: getJson(API.health, false),
    };
    const names = Object.keys(requests);
    const settled = await Promise.allSettled(Object.values(requests));
    if (mine !== generation) return;
    const data = {};
    const problems = [];
    for (const [index, outcome] of settled.entries()) {
      const name = names[index];
      if (outcome.status === "fulfilled") {
        data[name] = outcome.value;
        continue;
      }
      const err = outcome.reason;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        showLogin(`The control plane refused this token (${err.status} ${err.code}: ${err.message}). ` +
          "Check it and enter it again.");
        return;
      }
      // `/health` answers 503 with a body when the store is down; still worth showing.
      problems.push(`${name}: ${err.code || ""} ${err.message}`);
    }
    $("login").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    const draw = [
      ["health", () => renderHealth(data.health)],
      ["summary", () => renderQueues(data.summary, data.history)],
      ["servers", () => renderServers(data.servers)],
      ["recent", () => renderRecent(data.recent)],
      ["jwks", () => renderJwks(data.jwks, data.health)],
      ["cluster", () => renderCluster(data.cluster)],
    ];
    for (const [name, render] of draw) {
      if (!data[name]) continue;
      try {
        render();
      } catch (err) {
        problems.push(`${name}: cannot draw (${err.message})`);
      }
    }
    setStatus(problems.length
      ? `updated ${fmtClock(Date.now())} · some data unavailable: ${problems.join("; ")}`
      : `updated ${fmtClock(Date.now())} · every ${REFRESH_MS / 1000} s`, problems.length > 0);
    timer = setTimeout(() => refresh(mine), REFRESH_MS);
  }

  function start() {
    stop();
    setStatus("loading…");
    refresh(generation);
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) {
      showLogin("Enter the admin token.");
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("token-error").hidden = true;
    start();
  });

  $("sign-out").addEventListener("click", () => showLogin(""));

  if (token()) start();
  else showLogin("");
})();
