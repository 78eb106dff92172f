// The play page: queue into hero-defense, join the land, draw it, act on it. Everything
// goes through the TypeScript SDK, served by this control plane next to the page.
import { MatchmakingClient } from "./play/sdk.js";

// "solo" is a one-hero land; "bots" is the queue `matchplane demo --keep-running`
// watches, sending bots in when a human waits there (keep both in sync with demo.rs).
const QUEUES = { solo: "hero-defense:1", bots: "hero-defense:3" };
const PLAYER_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const WAIT_FOR_MATCH_MS = 10 * 60_000;
// hero-defense holds a dropped player's seat this long; reconnect within it.
const RECONNECT_GRACE_MS = 20_000;
const ACTION_ERROR_SHOWN_MS = 5_000;
// Map size and hero range of hero-defense's tunables; `welcome` corrects the map size.
const DEFAULT_MAP_SIZE = 100;
const HERO_RANGE = 12;

// The API lives where the page does, minus `play`: `/play` → `/`, `/match/play` → `/match/`.
const apiBase = location.origin + location.pathname.replace(/\/play\/?$/, "");
const client = new MatchmakingClient({ baseUrl: apiBase });

const byId = (id) => document.getElementById(id);
const ui = {
  status: byId("status"),
  lobby: byId("lobby"),
  form: byId("queue-form"),
  name: byId("player-name"),
  queueButton: byId("queue-button"),
  cancelButton: byId("cancel-button"),
  lobbyError: byId("lobby-error"),
  game: byId("game"),
  canvas: byId("canvas"),
  landId: byId("land-id"),
  phase: byId("phase"),
  wave: byId("wave"),
  baseHp: byId("base-hp"),
  gold: byId("gold"),
  heroPosition: byId("hero-position"),
  heroKills: byId("hero-kills"),
  heroes: byId("heroes"),
  actionError: byId("action-error"),
  leaveButton: byId("leave-button"),
  endScreen: byId("end-screen"),
  result: byId("result"),
  resultDetail: byId("result-detail"),
  scores: byId("scores"),
  playAgain: byId("play-again"),
  upgrades: [...document.querySelectorAll("button[data-stat]")],
};
const context = ui.canvas.getContext("2d");

/** The current attempt: queueing, then playing. `null` in the lobby and on the end screen. */
let session = null;

function setStatus(text) {
  ui.status.textContent = text;
}

function show(section) {
  for (const candidate of [ui.lobby, ui.game, ui.endScreen]) candidate.hidden = candidate !== section;
}

function describeError(error) {
  const code = error?.code ? `${error.code}: ` : "";
  return `${code}${error?.message ?? String(error)}`;
}

// ---------------------------------------------------------------------------------------
// Lobby and queue
// ---------------------------------------------------------------------------------------

function initialName() {
  const saved = sessionStorage.getItem("matchplane.play.name");
  if (saved && PLAYER_ID.test(saved)) return saved;
  const suffix = Array.from(crypto.getRandomValues(new Uint8Array(2)), (byte) =>
    byte.toString(16).padStart(2, "0"),
  ).join("");
  return `guest-${suffix}`;
}

function selectedMode() {
  return new FormData(ui.form).get("mode") === "bots" ? "bots" : "solo";
}

function setQueueing(queueing) {
  ui.queueButton.disabled = queueing;
  ui.name.disabled = queueing;
  for (const radio of ui.form.querySelectorAll("input[name=mode]")) radio.disabled = queueing;
  ui.cancelButton.hidden = !queueing;
}

/** Enqueues; a ticket left over from an earlier tab or reload is cancelled and replaced. */
async function enqueue(queueKey, player, signal) {
  const request = { queueKey, members: [player] };
  try {
    return (await client.enqueue(request, { signal })).ticketId;
  } catch (error) {
    if (error?.code !== "PLAYER_ALREADY_QUEUED" || !error.ticketId) throw error;
    await client.cancel(error.ticketId, { signal });
    return (await client.enqueue(request, { signal })).ticketId;
  }
}

async function findMatch() {
  const player = ui.name.value.trim();
  if (!PLAYER_ID.test(player)) {
    ui.lobbyError.textContent = "A name is 1–64 letters, digits, '_', '.' or '-'.";
    ui.lobbyError.hidden = false;
    return;
  }
  sessionStorage.setItem("matchplane.play.name", player);
  const mode = selectedMode();
  const queueKey = QUEUES[mode];
  const abort = new AbortController();
  const current = { abort, player, mode, ticketId: null, land: null, timer: null };
  session = current;
  ui.lobbyError.hidden = true;
  show(ui.lobby);
  setQueueing(true);
  setStatus(`queueing into ${queueKey}…`);
  try {
    current.ticketId = await enqueue(queueKey, player, abort.signal);
    const queuedAt = performance.now();
    const tick = () => {
      const seconds = Math.floor((performance.now() - queuedAt) / 1000);
      const hint = mode === "bots" ? " — waiting for bots" : "";
      setStatus(`queued… (${seconds}s)${hint}`);
    };
    tick();
    current.timer = setInterval(tick, 250);
    const assignment = await client.waitForAssignment(current.ticketId, {
      timeoutMs: WAIT_FOR_MATCH_MS,
      signal: abort.signal,
    });
    clearInterval(current.timer);
    setStatus(`match found: land ${assignment.landId}`);
    const land = await client.joinLand(assignment, player, {
      reconnect: { graceMs: RECONNECT_GRACE_MS },
      signal: abort.signal,
      // Binary merge patches: about a sixth of the bytes of JSON Patch for a moving game.
      sync: "binary",
    });
    if (session !== current) {
      await land.leave();
      return;
    }
    current.land = land;
    enterGame(current, assignment, land);
  } catch (error) {
    clearInterval(current.timer);
    if (session !== current) return;
    session = null;
    setQueueing(false);
    if (abort.signal.aborted) {
      setStatus("cancelled");
      return;
    }
    setStatus("not matched");
    ui.lobbyError.textContent = describeError(error);
    ui.lobbyError.hidden = false;
  }
}

async function cancelQueue() {
  const current = session;
  if (!current || current.land) return;
  session = null;
  clearInterval(current.timer);
  current.abort.abort();
  setQueueing(false);
  setStatus("cancelled");
  if (current.ticketId) {
    try {
      await client.cancel(current.ticketId);
    } catch (error) {
      ui.lobbyError.textContent = describeError(error);
      ui.lobbyError.hidden = false;
    }
  }
}

// ---------------------------------------------------------------------------------------
// The game
// ---------------------------------------------------------------------------------------

let mapSize = DEFAULT_MAP_SIZE;
let moveTarget = null;
let actionErrorTimer = null;

function enterGame(current, assignment, land) {
  mapSize = DEFAULT_MAP_SIZE;
  moveTarget = null;
  ui.landId.textContent = assignment.landId;
  ui.actionError.hidden = true;
  setQueueing(false);
  show(ui.game);
  setStatus(`playing in land ${assignment.landId}`);
  land.on("state", () => render(current));
  land.on("event", (event) => onLandEvent(event));
  land.on("disconnected", ({ willReconnect }) => {
    if (willReconnect) setStatus("connection lost, reconnecting…");
  });
  land.on("reconnected", () => setStatus(`playing in land ${assignment.landId}`));
  land.onClose((end) => showEnd(current, end));
  render(current);
}

function onLandEvent({ name, payload }) {
  switch (name) {
    case "welcome":
      if (typeof payload?.mapSize === "number" && payload.mapSize > 0) mapSize = payload.mapSize;
      break;
    case "wave_started":
      setStatus(`wave ${payload.wave}: ${payload.enemies} enemies incoming`);
      break;
    case "wave_cleared":
      setStatus(`wave ${payload.wave} cleared`);
      break;
    case "base_hit":
      setStatus(`the base was hit! ${payload.hp} HP left`);
      break;
    default:
      break;
  }
}

function myView(current) {
  const state = current.land?.state ?? {};
  return {
    state,
    hero: state.heroes?.[current.player] ?? null,
    me: state.me ?? null,
  };
}

function render(current) {
  if (session !== current || !current.land) return;
  const { state, hero, me } = myView(current);
  ui.phase.textContent = state.phase ?? "";
  ui.wave.textContent = `${state.wave ?? 0} / ${state.waves ?? "?"}`;
  ui.baseHp.textContent = state.base ? `${state.base.hp} / ${state.base.maxHp}` : "";
  ui.gold.textContent = String(me?.gold ?? 0);
  ui.heroPosition.textContent = hero ? `(${hero.x.toFixed(1)}, ${hero.y.toFixed(1)})` : "—";
  ui.heroKills.textContent = String(hero?.kills ?? 0);
  ui.heroes.textContent = Object.keys(state.heroes ?? {}).join(", ");
  const over = state.phase === "victory" || state.phase === "defeat";
  for (const button of ui.upgrades) {
    const stat = button.dataset.stat;
    const cost = me?.[`${stat}UpgradeCost`] ?? null;
    button.querySelector("[data-level]").textContent = String(hero?.[`${stat}Level`] ?? 0);
    button.querySelector("[data-cost]").textContent = cost === null ? "max level" : `${cost} gold`;
    button.disabled = over || !hero || cost === null || (me?.gold ?? 0) < cost;
  }
  draw(state, current.player);
}

function draw(state, player) {
  const size = ui.canvas.width;
  const scale = size / mapSize;
  const at = (value) => value * scale;
  context.clearRect(0, 0, size, size);
  context.strokeStyle = "#1f2c3a";
  context.lineWidth = 1;
  for (let line = 0; line <= mapSize; line += 10) {
    context.beginPath();
    context.moveTo(at(line), 0);
    context.lineTo(at(line), size);
    context.moveTo(0, at(line));
    context.lineTo(size, at(line));
    context.stroke();
  }
  const base = state.base;
  if (base) {
    context.fillStyle = "#3b82c4";
    context.beginPath();
    context.arc(at(base.x), at(base.y), at(3), 0, Math.PI * 2);
    context.fill();
    bar(at(base.x) - 30, at(base.y) - at(3) - 12, 60, 6, base.hp / Math.max(base.maxHp, 1), "#5fd38d");
    label(String(base.hp), at(base.x), at(base.y) + 4);
  }
  if (moveTarget) {
    context.strokeStyle = "#f2c14e";
    context.setLineDash([4, 4]);
    context.beginPath();
    context.arc(at(moveTarget.x), at(moveTarget.y), 6, 0, Math.PI * 2);
    context.stroke();
    context.setLineDash([]);
  }
  for (const enemy of Object.values(state.enemies ?? {})) {
    context.fillStyle = "#ef6461";
    context.fillRect(at(enemy.x) - 6, at(enemy.y) - 6, 12, 12);
    bar(at(enemy.x) - 8, at(enemy.y) - 11, 16, 3, enemy.hp / Math.max(enemy.maxHp, 1), "#ef6461");
  }
  for (const [index, [id, hero]] of Object.entries(state.heroes ?? {}).entries()) {
    const mine = id === player;
    if (mine) {
      context.strokeStyle = "rgba(242, 193, 78, 0.35)";
      context.beginPath();
      context.arc(at(hero.x), at(hero.y), at(HERO_RANGE * (1 + 0.2 * hero.rangeLevel)), 0, Math.PI * 2);
      context.stroke();
    }
    context.fillStyle = hero.online ? (mine ? "#f2c14e" : "#b794f6") : "#666";
    context.beginPath();
    context.arc(at(hero.x), at(hero.y), mine ? 9 : 7, 0, Math.PI * 2);
    context.fill();
    if (mine) {
      context.strokeStyle = "#fff";
      context.lineWidth = 2;
      context.stroke();
      context.lineWidth = 1;
    }
    // Heroes stand close together: only yours is named (the side panel lists all), and
    // the others' levels alternate above and below so they stay legible.
    const levels = `D${hero.damageLevel} R${hero.rangeLevel}`;
    if (mine) label(`you · ${levels}`, at(hero.x), at(hero.y) - 14);
    else label(levels, at(hero.x), at(hero.y) + (index % 2 === 0 ? -11 : 19));
  }
  context.fillStyle = "#e4e9f2";
  context.font = "bold 16px system-ui, sans-serif";
  context.textAlign = "left";
  context.fillText(`wave ${state.wave ?? 0}/${state.waves ?? "?"} · ${state.phase ?? ""}`, 10, 22);
}

function bar(x, y, width, height, fraction, color) {
  context.fillStyle = "#333";
  context.fillRect(x, y, width, height);
  context.fillStyle = color;
  context.fillRect(x, y, width * Math.min(Math.max(fraction, 0), 1), height);
}

function label(text, x, y) {
  context.fillStyle = "#e4e9f2";
  context.font = "12px system-ui, sans-serif";
  context.textAlign = "center";
  context.fillText(text, x, y);
}

function showActionError(error) {
  ui.actionError.textContent = describeError(error);
  ui.actionError.hidden = false;
  clearTimeout(actionErrorTimer);
  actionErrorTimer = setTimeout(() => {
    ui.actionError.hidden = true;
  }, ACTION_ERROR_SHOWN_MS);
}

async function act(name, payload) {
  const land = session?.land;
  if (!land || land.isEnded) return;
  try {
    await land.action(name, payload);
  } catch (error) {
    showActionError(error);
  }
}

function onCanvasClick(event) {
  const box = ui.canvas.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * mapSize;
  const y = ((event.clientY - box.top) / box.height) * mapSize;
  moveTarget = { x, y };
  act("move", { x, y });
}

function upgrade(stat) {
  const button = ui.upgrades.find((candidate) => candidate.dataset.stat === stat);
  if (button && !button.disabled) act("upgrade", { stat });
}

// ---------------------------------------------------------------------------------------
// The end
// ---------------------------------------------------------------------------------------

function showEnd(current, end) {
  if (session !== current) return;
  session = null;
  const result = end.landClosed?.result ?? null;
  const outcome = result?.outcome ?? end.landClosed?.reason ?? null;
  ui.result.className = outcome === "victory" || outcome === "defeat" ? outcome : "";
  if (outcome === "victory") ui.result.textContent = "Victory!";
  else if (outcome === "defeat") ui.result.textContent = "Defeat";
  else if (end.reason === "left") ui.result.textContent = "You left the game";
  else ui.result.textContent = `Game over (${outcome ?? end.reason})`;
  ui.resultDetail.textContent = result
    ? `Wave ${result.wave} of ${result.waves} · ${result.kills} kills · base HP ${result.baseHp}`
    : end.error
      ? describeError(end.error)
      : "";
  ui.scores.replaceChildren(
    ...Object.entries(result?.players ?? {}).map(([id, score]) => {
      const row = document.createElement("tr");
      for (const text of [id === current.player ? `${id} (you)` : id, score.kills, score.gold]) {
        const cell = document.createElement("td");
        cell.textContent = String(text);
        row.append(cell);
      }
      return row;
    }),
  );
  show(ui.endScreen);
  setStatus("game over");
}

// ---------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------

ui.name.value = initialName();
ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  findMatch();
});
ui.cancelButton.addEventListener("click", () => cancelQueue());
ui.canvas.addEventListener("click", onCanvasClick);
for (const button of ui.upgrades) button.addEventListener("click", () => upgrade(button.dataset.stat));
document.addEventListener("keydown", (event) => {
  if (!session?.land || event.target instanceof HTMLInputElement) return;
  if (event.key === "1" || event.key === "d") upgrade("damage");
  if (event.key === "2" || event.key === "r") upgrade("range");
});
ui.leaveButton.addEventListener("click", () => session?.land?.leave());
ui.playAgain.addEventListener("click", () => findMatch());
show(ui.lobby);
setStatus("ready");
