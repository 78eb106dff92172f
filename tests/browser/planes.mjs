// Real `matchplane` processes for the browser tests: each listens on 127.0.0.1 port 0 and
// its bound address is read from its JSON log, as crates/cli/tests/support/mod.rs does.
// The process harness (binary lookup, spawning on port 0, reading the bound address from
// the JSON log, credentials, polling) is the TypeScript SDK's test harness, shared.
import { ADMIN_TOKEN, REGISTRATION_TOKEN, matchplaneBin, spawnMatchplane, waitUntil } from "../../sdk/typescript/test/support.mjs";

export { ADMIN_TOKEN, REGISTRATION_TOKEN, matchplaneBin, spawnMatchplane, waitUntil };

/** A control plane with an in-memory store and no rate limits (a test enqueues in bursts). */
export function startControlPlane(extraArgs = []) {
  return spawnMatchplane(
    ["control-plane", "--ephemeral", "--port", "0", "--rate-limit", "off", ...extraArgs],
    "control plane listening",
  );
}

/** A game server hosting hero-defense and counter, registered with `controlPlaneUrl`. */
export function startGameServer(controlPlaneUrl, { serverId, extraArgs = [] } = {}) {
  const args = [
    "game-server",
    "--port",
    "0",
    "--control-plane-url",
    controlPlaneUrl,
    "--heartbeat-interval",
    "1s",
    "--lands",
    "hero-defense,counter",
    // On SIGTERM, close running lands after a second instead of letting them play on.
    "--drain-timeout",
    "1s",
  ];
  if (serverId) args.push("--server-id", serverId);
  return spawnMatchplane([...args, ...extraArgs], "game server listening");
}

/** `GET` or `POST` on the control plane's JSON API, with the admin token unless told otherwise. */
export async function api(base, path, { method = "GET", body, token = ADMIN_TOKEN } = {}) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(new URL(path, base), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: the caller sees `json: null` and the raw text.
  }
  return { status: response.status, json, text };
}

/** Enqueues one solo ticket for `playerId` and fails unless the control plane answered 201. */
export async function enqueueSolo(base, queueKey, playerId) {
  const { status, text } = await api(base, "/v1/matchmaking/enqueue", {
    method: "POST",
    body: { queueKey, members: [playerId] },
    token: null,
  });
  if (status !== 201) throw new Error(`enqueue ${playerId} into ${queueKey}: ${status} ${text}`);
}

/**
 * A control plane and one game server registered and `live` with it. `stop()` ends both,
 * the game server first so it deregisters while the control plane still answers.
 */
export async function startPlanes({ serverId = "gs-browser-1" } = {}) {
  const controlPlane = await startControlPlane();
  let gameServer;
  try {
    gameServer = await startGameServer(controlPlane.http, { serverId });
    await waitUntil(async () => {
      const { json } = await api(controlPlane.http, "/v1/admin/servers");
      return (json?.servers ?? []).some((server) => server.serverId === serverId && server.state === "live");
    }, `game server ${serverId} live`);
  } catch (error) {
    await gameServer?.stop();
    await controlPlane.stop();
    throw error;
  }
  return {
    controlPlane,
    gameServer,
    serverId,
    async stop() {
      await gameServer.stop();
      await controlPlane.stop();
    },
  };
}

