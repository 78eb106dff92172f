// Harness for the SDK's tests: real `matchplane` processes on 127.0.0.1 port 0, their
// bound addresses read from the JSON log (as crates/cli/tests/support/mod.rs does).
import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";
import net from "node:net";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const ADMIN_TOKEN = "test-admin-token";
export const REGISTRATION_TOKEN = "test-registration-token";

const packageDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");

/** The `matchplane` binary: `MATCHPLANE_BIN`, else the workspace's debug build. */
export function matchplaneBin() {
  const bin = process.env.MATCHPLANE_BIN ?? resolve(packageDir, "../../target/debug/matchplane");
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(
      `matchplane binary not found at ${bin}: build it with \`cargo build -p matchplane-cli\` ` +
        "or point MATCHPLANE_BIN at it",
    );
  }
  return bin;
}

/** Starts `matchplane <args>` and resolves once it logged `listeningMessage` with its `addr`. */
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
  const exited = new Promise((resolveExit) => child.once("exit", (code, signal) => resolveExit({ code, signal })));
  return new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      const recent = JSON.stringify(logs.slice(-5));
      rejectStart(new Error(`no "${listeningMessage}" log line within ${timeoutMs} ms: ${recent}`));
    }, timeoutMs);
    // Keep draining stderr so the child never blocks on a full pipe.
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
        resolveStart({
          child,
          addr: event.addr,
          http: `http://${event.addr}`,
          logs,
          /** SIGTERM, then SIGKILL if it has not exited within 10 s. */
          async stop() {
            if (child.exitCode !== null || child.signalCode !== null) return;
            child.kill("SIGTERM");
            const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
            await exited;
            clearTimeout(killer);
          },
        });
      }
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      rejectStart(error);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      const recent = JSON.stringify(logs.slice(-5));
      rejectStart(new Error(`matchplane exited (${code ?? signal}) before "${listeningMessage}": ${recent}`));
    });
  });
}

async function adminGet(url) {
  const response = await fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  return { status: response.status, body: await response.json() };
}

/**
 * A control plane and one game server hosting `counter`, registered and live. `stop()`
 * ends both (game server first, so it deregisters while the control plane still answers).
 */
export async function startPlanes({ serverId = "gs-1" } = {}) {
  const controlPlane = await spawnMatchplane(
    ["control-plane", "--ephemeral", "--port", "0"],
    "control plane listening",
  );
  let gameServer;
  try {
    gameServer = await spawnMatchplane(
      [
        "game-server",
        "--port",
        "0",
        "--control-plane-url",
        controlPlane.http,
        "--heartbeat-interval",
        "1s",
        "--server-id",
        serverId,
        "--lands",
        "counter",
        // On SIGTERM, close running lands (land.closed + 1001) after a second instead of
        // letting them play on for the default 30 s.
        "--drain-timeout",
        "1s",
      ],
      "game server listening",
    );
    await waitUntil(async () => {
      const { body } = await adminGet(`${controlPlane.http}/v1/admin/servers`);
      return (body.servers ?? []).some((server) => server.serverId === serverId && server.state === "live");
    }, `game server ${serverId} live`);
  } catch (error) {
    await gameServer?.stop();
    await controlPlane.stop();
    throw error;
  }
  return {
    controlPlane,
    gameServer,
    async lands() {
      const { status, body } = await adminGet(`${gameServer.http}/admin/lands`);
      if (status !== 200) throw new Error(`GET /admin/lands: ${status}`);
      return body.lands;
    },
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

/**
 * A TCP proxy on 127.0.0.1 that can cut every live connection at once without a close
 * frame, as a lost network does; new connections go through again.
 */
export async function startCuttingProxy(targetAddr) {
  const colon = targetAddr.lastIndexOf(":");
  const [host, port] = [targetAddr.slice(0, colon), Number(targetAddr.slice(colon + 1))];
  const sockets = new Set();
  let connections = 0;
  const server = net.createServer((client) => {
    connections += 1;
    const upstream = net.connect(port, host);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => undefined);
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise((resolveListen) => server.listen(0, "127.0.0.1", resolveListen));
  return {
    addr: `127.0.0.1:${server.address().port}`,
    get connections() {
      return connections;
    },
    /** Resets every live connection (the client sees 1006, no close frame). */
    cut() {
      for (const socket of sockets) socket.resetAndDestroy?.() ?? socket.destroy();
    },
    close() {
      this.cut();
      return new Promise((resolveClose) => server.close(() => resolveClose()));
    },
  };
}

/** `promise`, or a failure naming `what` if it has not settled within `timeoutMs`. */
export function within(promise, what, timeoutMs = 20_000) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}
