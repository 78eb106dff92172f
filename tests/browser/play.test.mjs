// The play page at /play in headless Chromium against real planes: queue, match, join the
// land, move the hero by clicking the canvas, watch the waves, reach the end screen; and
// "with bots" against `matchplane demo --keep-running`, whose bots fill the match.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { launchChromium, newPage, screenshot } from "./browser.mjs";
import { freePort, startNginx } from "./nginx.mjs";
import { api, matchplaneBin, startControlPlane, startGameServer, waitUntil } from "./planes.mjs";

const SERVER_ID = "gs-browser-play";
// A quick game (3 short waves) still takes some seconds of game time.
const GAME_TIMEOUT_MS = 90_000;
const UI_TIMEOUT_MS = 20_000;
const docsScreenshot = resolve(dirname(fileURLToPath(import.meta.url)), "../../docs/screenshots/play.png");

let browser;

before(async () => {
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
});

/** A control plane and a game server whose hero-defense lands play the `quick` preset. */
async function startQuickPlanes() {
  const controlPlane = await startControlPlane();
  let gameServer;
  try {
    gameServer = await startGameServer(controlPlane.http, {
      serverId: SERVER_ID,
      extraArgs: ["--land-config", "hero-defense=quick"],
    });
    await waitUntil(async () => {
      const { json } = await api(controlPlane.http, "/v1/admin/servers");
      return (json?.servers ?? []).some((server) => server.serverId === SERVER_ID && server.state === "live");
    }, `game server ${SERVER_ID} live`);
  } catch (error) {
    await gameServer?.stop();
    await controlPlane.stop();
    throw error;
  }
  return {
    base: controlPlane.http,
    async stop() {
      await gameServer.stop();
      await controlPlane.stop();
    },
  };
}

/** `matchplane demo --bots 0 --keep-running`: resolves with the play URL it prints. */
function startDemo() {
  const child = spawn(matchplaneBin(), ["demo", "--bots", "0", "--keep-running"], {
    env: { ...process.env, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "ignore"],
  });
  const exited = new Promise((resolveExit) => child.once("exit", resolveExit));
  const output = [];
  return new Promise((resolveStart, rejectStart) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      rejectStart(new Error(`the demo printed no play URL: ${output.join("\n")}`));
    }, 30_000);
    createInterface({ input: child.stdout }).on("line", (line) => {
      output.push(line);
      // Printed twice (header and the keep-running block); the second means the filler runs.
      const match = /^\s+play\s+(http:\/\/127\.0\.0\.1:\d+\/play)\s+\(open it/.exec(line);
      if (!match) return;
      clearTimeout(timer);
      resolveStart({
        playUrl: match[1],
        output,
        async stop() {
          if (child.exitCode !== null) return;
          child.kill("SIGTERM");
          const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
          await exited;
          clearTimeout(killer);
        },
      });
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      rejectStart(new Error(`the demo exited (${code}) before printing the play URL: ${output.join("\n")}`));
    });
  });
}

const byTestId = (page, id) => page.locator(`[data-testid="${id}"]`);

async function text(page, id) {
  return ((await byTestId(page, id).textContent()) ?? "").trim();
}

/** Polls `[data-testid=id]`'s text until `accept(text)` holds; fails with the last text seen. */
async function waitForText(page, id, accept, what, timeoutMs = UI_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    last = await text(page, id);
    if (accept(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; ${id} shows ${JSON.stringify(last)}`);
    await new Promise((resolveSleep) => setTimeout(resolveSleep, 100));
  }
}

function position(readout) {
  const match = /\(([-\d.]+), ([-\d.]+)\)/.exec(readout);
  assert.ok(match, `no position in ${JSON.stringify(readout)}`);
  return { x: Number(match[1]), y: Number(match[2]) };
}

/** Lobby → queued → joined: returns the land id shown. */
async function queueAndJoin(page, { name, mode }) {
  await byTestId(page, "queue-button").waitFor({ state: "visible" });
  assert.match(await byTestId(page, "player-name").inputValue(), /^guest-[0-9a-f]{4}$/);
  await byTestId(page, "player-name").fill(name);
  await byTestId(page, `mode-${mode}`).check();
  await byTestId(page, "queue-button").click();
  await byTestId(page, "canvas").waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
  const landId = await waitForText(page, "land-id", (shown) => shown.length > 0, "the land id");
  assert.match(await text(page, "status"), /land|wave/);
  return landId;
}

test("play solo: queue, join, move the hero, waves, the end screen, play again", async () => {
  const planes = await startQuickPlanes();
  const { context, page, pageErrors, consoleErrors } = await newPage(browser);
  // The page asks for binary state frames; count what the land's socket receives.
  const landFrames = { binary: 0, text: 0 };
  page.on("websocket", (socket) => {
    if (!socket.url().includes("/game/")) return;
    socket.on("framereceived", ({ payload }) => {
      if (typeof payload === "string") landFrames.text += 1;
      else landFrames.binary += 1;
    });
  });
  try {
    await page.goto(`${planes.base}/play`);
    await queueAndJoin(page, { name: "tester", mode: "solo" });
    assert.equal(await text(page, "heroes"), "tester");
    assert.equal(await text(page, "gold"), "0");
    assert.match(await text(page, "base-hp"), /^\d+ \/ \d+$/);
    // No gold yet: both upgrades are out of reach.
    assert.equal(await byTestId(page, "upgrade-damage").isDisabled(), true);
    assert.equal(await byTestId(page, "upgrade-range").isDisabled(), true);

    // A click on the canvas's top-left area sends `move`; the hero walks there.
    const start = position(await text(page, "hero-position"));
    const canvas = byTestId(page, "canvas");
    const box = await canvas.boundingBox();
    await canvas.click({ position: { x: box.width * 0.3, y: box.height * 0.3 } });
    await waitForText(
      page,
      "hero-position",
      (shown) => {
        const now = position(shown);
        return now.x < start.x - 3 && now.y < start.y - 3;
      },
      "the hero to walk towards the click",
    );
    assert.equal(await byTestId(page, "action-error").isVisible(), false);

    // The waves come; the readout follows the land's state.
    await waitForText(page, "wave", (shown) => /^[1-9]\d* \/ 3$/.test(shown), "the first wave", GAME_TIMEOUT_MS);
    await screenshot(page, "play");

    await byTestId(page, "end-screen").waitFor({ state: "visible", timeout: GAME_TIMEOUT_MS });
    assert.match(await text(page, "result"), /^(Victory!|Defeat)$/);
    assert.match(await text(page, "result-detail"), /^Wave \d+ of 3 · \d+ kills · base HP \d+$/);
    assert.match(await text(page, "scores"), /tester \(you\)/);
    assert.equal(await text(page, "status"), "game over");
    await screenshot(page, "play-end");
    // The whole game was mirrored from binary frames (join.ok, results and events are text).
    assert.ok(landFrames.binary > 50 && landFrames.binary > landFrames.text, JSON.stringify(landFrames));

    // Play again queues straight away with the same name and mode.
    await byTestId(page, "play-again").click();
    await byTestId(page, "canvas").waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    await waitForText(page, "heroes", (shown) => shown === "tester", "the second land");
    await byTestId(page, "leave-button").click();
    await byTestId(page, "end-screen").waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
    assert.equal(await text(page, "result"), "You left the game");

    assert.deepEqual(pageErrors, []);
    assert.deepEqual(consoleErrors, []);
  } finally {
    await context.close();
    await planes.stop();
  }
});

test("play with bots: the demo's bots fill the match", async () => {
  const demo = await startDemo();
  const { context, page, pageErrors, consoleErrors } = await newPage(browser);
  try {
    await page.goto(demo.playUrl);
    await queueAndJoin(page, { name: "human", mode: "bots" });
    const heroes = await waitForText(
      page,
      "heroes",
      (shown) => shown.split(", ").length === 3,
      "three heroes in the land",
    );
    assert.match(heroes, /human/);
    assert.equal(heroes.match(/fill-bot-\d+/g)?.length, 2, heroes);
    // Walk out to meet the enemies, so the screenshot shows heroes apart.
    const canvas = byTestId(page, "canvas");
    const box = await canvas.boundingBox();
    await canvas.click({ position: { x: box.width * 0.7, y: box.height * 0.3 } });
    // Mid-game with three heroes is what docs/ shows of the page.
    await waitForText(page, "wave", (shown) => /^[2-9] \/ 3$/.test(shown), "the second wave", GAME_TIMEOUT_MS);
    const shot = await screenshot(page, "play-with-bots");
    // The docs' picture is refreshed on request only: a test run leaves the tree as it was.
    if (process.env.MATCHPLANE_UPDATE_DOCS_SCREENSHOTS === "1") {
      mkdirSync(dirname(docsScreenshot), { recursive: true });
      copyFileSync(shot, docsScreenshot);
    }
    await byTestId(page, "end-screen").waitFor({ state: "visible", timeout: GAME_TIMEOUT_MS });
    assert.match(await text(page, "result"), /^(Victory!|Defeat)$/);
    assert.equal((await text(page, "scores")).match(/fill-bot/g)?.length, 2);
    await screenshot(page, "play-with-bots-end");
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(consoleErrors, []);
  } finally {
    await context.close();
    await demo.stop();
  }
});

test("play through the nginx single entry: the page at /match/play, the land at /game/", async () => {
  const controlPlane = await startControlPlane();
  const lbPort = await freePort();
  let gameServer;
  let lb;
  try {
    // connectUrl names the entry, as in production behind a load balancer.
    gameServer = await startGameServer(controlPlane.http, {
      serverId: "gs-behind-nginx",
      extraArgs: ["--land-config", "hero-defense=quick", "--connect-host", "127.0.0.1", "--connect-port", String(lbPort)],
    });
    lb = await startNginx({ port: lbPort, controlPlane: controlPlane.addr, gameServer: gameServer.addr });
    await waitUntil(async () => {
      const { json } = await api(controlPlane.http, "/v1/admin/servers");
      return (json?.servers ?? []).some((server) => server.serverId === "gs-behind-nginx" && server.state === "live");
    }, "the game server live");

    const { context, page, pageErrors, consoleErrors } = await newPage(browser);
    const requests = [];
    const sockets = [];
    page.on("request", (request) => requests.push(request.url()));
    page.on("websocket", (socket) => sockets.push(socket.url()));
    try {
      await page.goto(`${lb.base}/match/play`);
      await queueAndJoin(page, { name: "via-lb", mode: "solo" });
      const start = position(await text(page, "hero-position"));
      const canvas = byTestId(page, "canvas");
      const box = await canvas.boundingBox();
      await canvas.click({ position: { x: box.width * 0.8, y: box.height * 0.8 } });
      await waitForText(
        page,
        "hero-position",
        (shown) => {
          const now = position(shown);
          return now.x > start.x + 3 && now.y > start.y + 3;
        },
        "the hero to walk towards the click",
      );
      await screenshot(page, "play-through-nginx");
      // Everything went through the entry: the page, its SDK, the API under
      // /match/, the push socket and the land's socket under /game/.
      const entry = `127.0.0.1:${lbPort}`;
      assert.ok(requests.length > 0);
      for (const url of [...requests, ...sockets]) {
        assert.equal(new URL(url).host, entry, url);
      }
      assert.ok(requests.some((url) => new URL(url).pathname === "/match/play/sdk.js"), requests.join("\n"));
      assert.ok(
        sockets.some((url) => new URL(url).pathname.startsWith("/game/hero-defense")),
        `no land socket through the entry: ${sockets.join(", ")}`,
      );
      await byTestId(page, "leave-button").click();
      await byTestId(page, "end-screen").waitFor({ state: "visible", timeout: UI_TIMEOUT_MS });
      assert.deepEqual(pageErrors, []);
      assert.deepEqual(consoleErrors, []);
    } finally {
      await context.close();
    }
  } finally {
    await lb?.stop();
    await gameServer?.stop();
    await controlPlane.stop();
  }
});
