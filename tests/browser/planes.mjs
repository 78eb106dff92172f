// Real `matchplane` processes for the browser tests: each listens on 127.0.0.1 port 0 and
// its bound address is read from its JSON log, as crates/cli/tests/support/mod.rs does.
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ADMIN_TOKEN = "browser-test-admin-token";
export const REGISTRATION_TOKEN = "browser-test-registration-token";

const packageDir = dirname(fileURLToPath(import.meta.url));
const STOP_GRACE_MS = 5_000;

/** The `matchplane` binary: `MATCHPLANE_BIN`, else the workspace's debug build. */
export function matchplaneBin() {
  const bin = process.env.MATCHPLANE_BIN ?? resolve(packageDir, "../../target/debug/matchplane");
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(
      `matchplane binary not found (or not executable) at ${bin}: build it with ` +
        "`cargo build -p matchplane-cli` or point MATCHPLANE_BIN at it",
    );
  }
  return bin;
}

/**
 * Starts `matchplane <args>` and resolves once it logged `listeningMessage` with its `addr`.
 * Both credentials go through the environment, so control plane and game server agree.
 */
export function spawnMatchplane(args, listeningMessage, { timeoutMs = 30_000 } = {}) {
  const child = spawn(matchplaneBin(), ["--log-format", "json", ...args], {
    env: {
      ...process.env,
      RUST_LOG: "info",
      MATCHPLANE_ADMIN_TOKEN: ADMIN_TOKEN,
      MATCHPLANE_REGISTRATION_TOKEN: REGISTRATION_TOKEN,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const logs = [];
  const exited = new Promise((resolveExit) => child.once("exit", () => resolveExit()));

  async function stop() {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const killer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
    await exited;
    clearTimeout(killer);
  }

  return new Promise((resolveStart, rejectStart) => {
    const recentLogs = () => JSON.stringify(logs.slice(-5));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rejectStart(new Error(`no "${listeningMessage}" log line within ${timeoutMs} ms: ${recentLogs()}`));
    }, timeoutMs);
    // Keep draining stderr for the whole life of the process so it never blocks on a full pipe.
    createInterface({ input: child.stderr }).on("line", (line) => {
      let event;
      try {
        event = JSON.parse(line);
      } catch {
        return;
      }
      logs.push(event);
      if (event.message === listeningMessage && typeof event.addr === "string") {
        clearTimeout(timer);
        if (!event.addr.startsWith("127.0.0.1:") || event.addr.endsWith(":0")) {
          child.kill("SIGKILL");
          rejectStart(new Error(`unexpected bound address ${event.addr}`));
          return;
        }
        resolveStart({ child, addr: event.addr, http: `http://${event.addr}`, logs, stop });
      }
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      rejectStart(error);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      rejectStart(new Error(`matchplane exited (${code ?? signal}) before "${listeningMessage}": ${recentLogs()}`));
    });
  });
}

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

/** Polls `check` every 100 ms until it holds, for at most `timeoutMs`. */
export async function waitUntil(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolveSleep) => setTimeout(resolveSleep, 100));
  }
}
