// The SDK against real `matchplane` processes: a control plane and a game server hosting
// `counter`, both on 127.0.0.1 port 0. Node 20 has no global WebSocket, so the `ws`
// package's constructor is passed in, as a Node 20 application would.
import assert from "node:assert/strict";
import { test } from "node:test";

import { WebSocket } from "ws";

import { LandConnection, MatchmakingClient, MatchplaneError, devLandUrl, joinLand } from "../dist/index.js";
import { spawnMatchplane, startCuttingProxy, startPlanes, waitUntil, within } from "./support.mjs";

const QUEUE = "counter:2";

/** Two players matched into one counter land, with their assignments. */
async function matchPair(client, [first, second]) {
  const ticketA = await client.enqueue({ queueKey: QUEUE, members: [first] });
  const ticketB = await client.enqueue({ queueKey: QUEUE, members: [second] });
  const [assignmentA, assignmentB] = await Promise.all([
    client.waitForAssignment(ticketA.ticketId, { timeoutMs: 30_000 }),
    client.waitForAssignment(ticketB.ticketId, { timeoutMs: 30_000 }),
  ]);
  assert.equal(assignmentA.landId, assignmentB.landId, "one match, one land");
  return [assignmentA, assignmentB];
}

/** Runs `body` with live planes and stops them (and leaves every land) afterwards. */
function withPlanes(name, body) {
  test(name, { timeout: 120_000 }, async () => {
    const planes = await startPlanes();
    const lands = [];
    const track = (land) => {
      lands.push(land);
      return land;
    };
    try {
      await body({ planes, track, client: new MatchmakingClient({ baseUrl: planes.controlPlane.http, WebSocket }) });
    } finally {
      await Promise.all(lands.map((land) => land.leave()));
      await planes.stop();
    }
  });
}

async function rejection(promise) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof MatchplaneError, `a MatchplaneError, not ${error}`);
    return error;
  }
  assert.fail("expected a rejection");
}

const JOURNEY = "journey: two players queue, get match.assigned, join one land, mirror the state";
withPlanes(JOURNEY, async ({ planes, client, track }) => {
  const pollingClient = new MatchmakingClient({ baseUrl: planes.controlPlane.http, push: false });
  const alice = await client.enqueue({ queueKey: QUEUE, members: ["alice"] });
  assert.equal(alice.status, "queued");
  // Alice waits on the /realtime push; Bob polls.
  const alicePushed = client.waitForAssignmentVia(alice.ticketId, { timeoutMs: 30_000 });
  const bob = await pollingClient.enqueue({ queueKey: QUEUE, members: ["bob"] });
  const bobPolled = pollingClient.waitForAssignmentVia(bob.ticketId, { timeoutMs: 30_000 });
  const [forAlice, forBob] = await Promise.all([alicePushed, bobPolled]);
  assert.equal(forAlice.delivery, "push");
  assert.equal(forBob.delivery, "poll");
  assert.equal(forAlice.assignment.landId, forBob.assignment.landId);
  assert.equal(forAlice.assignment.serverId, "gs-1");
  assert.ok(forAlice.assignment.connectUrl.startsWith(`ws://${planes.gameServer.addr}/game/counter?landId=`));
  assert.equal((await client.status(alice.ticketId)).status, "assigned");

  const aliceLand = track(await joinLand(forAlice.assignment, "alice", { WebSocket }));
  const bobLand = track(await client.joinLand(forBob.assignment, "bob"));
  assert.equal(aliceLand.playerId, "alice", "the player id comes from the token");
  assert.equal(bobLand.playerId, "bob");
  assert.equal(aliceLand.landId, forAlice.assignment.landId);
  await aliceLand.waitForState((state) => state.players?.bob === 0);

  const result = await aliceLand.action("increment");
  assert.deepEqual(result, { count: 1 });
  assert.equal(aliceLand.state.count, 1, "the action's patch is applied before its result resolves");
  await bobLand.waitForState((state) => state.count === 1);
  assert.deepEqual(bobLand.state, { count: 1, players: { alice: 1, bob: 0 } });
  assert.deepEqual(aliceLand.state, bobLand.state);
  assert.ok(aliceLand.stats.patchesApplied >= 1);

  const shouted = new Promise((resolve) => bobLand.on("event", resolve));
  aliceLand.sendEvent("shout", { text: "hi" });
  assert.deepEqual(await within(shouted, "the shouted event"), {
    name: "shouted",
    payload: { from: "alice", text: "hi" },
  });

  const lands = await planes.lands();
  assert.equal(lands.length, 1);
  assert.equal(lands[0].players, 2);

  const left = await bobLand.leave();
  assert.equal(left.reason, "left");
  await aliceLand.waitForState((state) => !("bob" in state.players));

  // The game server shuts down: land.closed, then a close by decision (no reconnect).
  const closedEvent = new Promise((resolve) => aliceLand.on("landClosed", resolve));
  await planes.gameServer.stop();
  const end = await within(aliceLand.ended, "the end of Alice's connection");
  assert.equal(end.reason, "landClosed");
  assert.equal(end.closeCode, 1001, "going away");
  assert.equal(end.landClosed.reason, (await closedEvent).reason);
  assert.equal(aliceLand.stats.reconnects, 0);
  const late = await rejection(aliceLand.action("increment"));
  assert.equal(late.kind, "landClosed");
});

/**
 * Alice (on `sync`) and Bob (on patches) increment a counter five times each; both
 * mirrors must show the same state. Returns the lands, Bob's assignment and the kinds
 * of message Alice's hook saw.
 */
async function countTogether(client, track, sync) {
  const [forAlice, forBob] = await matchPair(client, ["alice", "bob"]);
  const kinds = [];
  const aliceLand = track(
    await joinLand(forAlice, "alice", {
      WebSocket,
      sync,
      interceptMessage: (message) => {
        kinds.push(message.type);
        return true;
      },
    }),
  );
  const bobLand = track(await joinLand(forBob, "bob", { WebSocket }));
  for (let i = 0; i < 5; i += 1) {
    await aliceLand.action("increment");
    await bobLand.action("increment");
  }
  await aliceLand.waitForState((state) => state.count === 10);
  await bobLand.waitForState((state) => state.count === 10);
  assert.deepEqual(aliceLand.state, { count: 10, players: { alice: 5, bob: 5 } });
  assert.deepEqual(aliceLand.state, bobLand.state);
  assert.ok(kinds.includes("state.merge"), `merges arrived: ${kinds}`);
  assert.ok(!kinds.includes("state.patch"), `no patch was needed: ${kinds}`);
  assert.equal(aliceLand.stats.gaps, 0);
  const refused = await rejection(joinLand(forBob, "bob", { WebSocket, sync: "zip" }));
  assert.equal(refused.kind, "invalidArgument");
  assert.match(refused.message, /"patch", "merge" or "binary"/);
  return { aliceLand, bobLand, forBob, kinds };
}

withPlanes("sync: merge mirrors the same state as patches, in state.merge frames", async ({ client, track }) => {
  const { aliceLand } = await countTogether(client, track, "merge");
  assert.equal(aliceLand.stats.binaryFrames, 0);
});

withPlanes("sync: binary mirrors the same state as patches, in binary frames", async ({ client, track }) => {
  const { aliceLand, bobLand, forBob, kinds } = await countTogether(client, track, "binary");
  // Binary frames are presented to the hook as the state.merge they stand for.
  assert.ok(aliceLand.stats.binaryFrames > 0, "binary frames arrived");
  const merges = kinds.filter((kind) => kind === "state.merge").length;
  assert.equal(merges, aliceLand.stats.binaryFrames, "every merge came as a binary frame");
  assert.equal(bobLand.stats.binaryFrames, 0, "only a binary connection gets binary frames");

  // A fresh join (taking Bob's seat over, binary too) sees what Alice's mirror shows.
  const freshBob = track(await joinLand(forBob, "bob", { WebSocket, sync: "binary" }));
  assert.deepEqual(freshBob.state, aliceLand.state);
  await freshBob.action("add", { amount: 3 });
  await aliceLand.waitForState((state) => state.count === 13);
  assert.deepEqual(aliceLand.state, freshBob.state);
  assert.equal(aliceLand.stats.gaps + freshBob.stats.gaps, 0);
});

test("sync: binary, merge and patch mirror a hero-defense game to the same end", { timeout: 120_000 }, async () => {
  const server = await spawnMatchplane(
    [
      "game-server",
      "--port",
      "0",
      "--auth",
      "none",
      "--lands",
      "hero-defense",
      // Two short waves: a whole game (spawns, walks, kills, a break, the end) in seconds.
      "--land-config",
      'hero-defense={"waves":2,"firstWaveDelaySecs":0.5,"waveBreakSecs":0.5,"enemiesFirstWave":3,' +
        '"enemiesGrowthPerWave":1,"spawnIntervalSecs":0.3,"enemyHp":20,"enemySpeed":10}',
    ],
    "game server listening",
  );
  const lands = [];
  try {
    const landId = "binary-journey";
    // Ann loses one binary frame mid-game: the snapshot repairing it brings a fresh key table.
    let dropped = null;
    const dropOne = (message) => {
      if (dropped === null && message.type === "state.merge" && message.data.seq >= 40) {
        dropped = message.data.seq;
        return false;
      }
      return true;
    };
    const join = async (playerId, sync) => {
      const land = await LandConnection.connect(devLandUrl(server.http, "hero-defense", playerId, landId), {
        WebSocket,
        sync,
        reconnect: false,
        interceptMessage: playerId === "ann" ? dropOne : undefined,
      });
      lands.push(land);
      return land;
    };
    const [ann, bea, cid] = [await join("ann", "binary"), await join("bea", "merge"), await join("cid", "patch")];
    // Keep the heroes walking, so that every tick changes floats of every view.
    const spots = [[30, 30], [70, 30], [70, 70], [30, 70], [50, 52.5]];
    let step = 0;
    const walking = setInterval(() => {
      step += 1;
      for (const [index, land] of [ann, bea, cid].entries()) {
        const [x, y] = spots[(step + index) % spots.length];
        land.action("move", { x, y }).catch(() => undefined);
      }
    }, 150);
    let ends;
    try {
      ends = await within(Promise.all([ann.ended, bea.ended, cid.ended]), "the end of the game", 90_000);
    } finally {
      clearInterval(walking);
    }
    for (const end of ends) assert.equal(end.reason, "landClosed", JSON.stringify(end));
    assert.ok(["victory", "defeat"].includes(ann.landClosed.reason), ann.landClosed.reason);

    const shared = ({ me, ...rest }) => rest;
    assert.deepEqual(shared(ann.state), shared(cid.state), "binary and patch mirrors end alike");
    assert.deepEqual(shared(bea.state), shared(cid.state), "merge and patch mirrors end alike");
    assert.ok(ann.state.me !== undefined && typeof ann.state.me.gold === "number", JSON.stringify(ann.state.me));
    assert.deepEqual(Object.keys(ann.state.heroes).sort(), ["ann", "bea", "cid"]);
    assert.ok(ann.stats.binaryFrames >= 50, `binary frames: ${ann.stats.binaryFrames}`);
    assert.equal(bea.stats.binaryFrames + cid.stats.binaryFrames, 0);
    assert.ok(dropped !== null, "a binary frame was dropped");
    assert.equal(ann.stats.gaps, 1, "the dropped frame was one gap");
    assert.ok(ann.stats.resyncs >= 1);
    for (const land of [bea, cid]) assert.equal(land.stats.gaps, 0, `${land.playerId}: no gap`);
  } finally {
    await Promise.all(lands.map((land) => land.leave()));
    await server.stop();
  }
});

withPlanes("matchmaking errors and ticket ends are typed", async ({ planes, client }) => {
  const missing = await rejection(client.status("no-such-ticket"));
  assert.equal(missing.kind, "http");
  assert.equal(missing.status, 404);
  assert.equal(missing.code, "TICKET_NOT_FOUND");

  const noMembers = await rejection(client.enqueue({ queueKey: QUEUE, members: [] }));
  assert.equal(noMembers.status, 400);
  assert.equal(noMembers.code, "MEMBERS_REQUIRED");

  const carol = await client.enqueue({ queueKey: QUEUE, members: ["carol"] });
  const twice = await rejection(client.enqueue({ queueKey: QUEUE, members: ["carol"] }));
  assert.equal(twice.status, 409);
  assert.equal(twice.code, "PLAYER_ALREADY_QUEUED");

  const waiting = rejection(client.waitForAssignment(carol.ticketId, { timeoutMs: 30_000 }));
  // The push socket is subscribed before the cancel lands or reads the final state.
  const cancelled = await client.cancel(carol.ticketId);
  assert.equal(cancelled.cancelled, true);
  const ended = await within(waiting, "the cancelled wait");
  assert.equal(ended.kind, "ticketCancelled");
  assert.equal(ended.ticketId, carol.ticketId);

  const dave = await client.enqueue({ queueKey: QUEUE, members: ["dave"] });
  const timedOut = await rejection(client.waitForAssignment(dave.ticketId, { timeoutMs: 300 }));
  assert.equal(timedOut.kind, "timeout");
  const controller = new AbortController();
  const aborted = rejection(client.waitForAssignment(dave.ticketId, { signal: controller.signal }));
  controller.abort();
  assert.equal((await aborted).kind, "aborted");

  // A socket that cannot connect (nothing listens on port 1) hands over to polling.
  class UnreachableWebSocket extends WebSocket {
    constructor() {
      super("ws://127.0.0.1:1/realtime");
    }
  }
  const fallback = new MatchmakingClient({ baseUrl: planes.controlPlane.http, WebSocket: UnreachableWebSocket });
  const waitingDave = fallback.waitForAssignmentVia(dave.ticketId, { timeoutMs: 30_000 });
  await client.enqueue({ queueKey: QUEUE, members: ["erin"] });
  const { delivery, assignment } = await waitingDave;
  assert.equal(delivery, "poll");
  assert.ok(assignment.landId.startsWith("counter"));

  const unreachable = new MatchmakingClient({ baseUrl: "http://127.0.0.1:1", WebSocket });
  const down = await rejection(unreachable.status("x"));
  assert.equal(down.kind, "network");
  assert.ok(down.retryable);
});

withPlanes("a seq gap makes the mirror resync to the server's state", async ({ client, track }) => {
  const [forAlice, forBob] = await matchPair(client, ["alice", "bob"]);
  let dropNextPatch = false;
  let dropped;
  const droppedPatch = new Promise((resolve) => {
    dropped = resolve;
  });
  const aliceLand = track(
    await joinLand(forAlice, "alice", {
      WebSocket,
      // The test hook: lose one patch on the way in, as a buggy network layer would.
      interceptMessage: (message) => {
        if (dropNextPatch && message.type === "state.patch") {
          dropNextPatch = false;
          dropped(message.data.seq);
          return false;
        }
        return true;
      },
    }),
  );
  const bobLand = track(await joinLand(forBob, "bob", { WebSocket }));
  await aliceLand.waitForState((state) => state.players?.bob === 0);
  const resynced = new Promise((resolve) => aliceLand.on("resynced", resolve));

  dropNextPatch = true;
  await bobLand.action("add", { amount: 7 });
  const lostSeq = await within(droppedPatch, "the dropped patch");
  assert.equal(aliceLand.state.count, 0, "the dropped patch did not reach the mirror");
  assert.equal(aliceLand.stats.gaps, 0);

  // The next patch skips a seq: the SDK asks for a snapshot and replaces its mirror.
  await bobLand.action("add", { amount: 5 });
  const { seq } = await within(resynced, "the resync");
  assert.ok(seq > lostSeq, `resynced at ${seq}, after the lost ${lostSeq}`);
  assert.equal(aliceLand.stats.gaps, 1);
  assert.ok(aliceLand.stats.resyncs >= 1);
  await aliceLand.waitForState((state) => state.count === 12);
  assert.deepEqual(aliceLand.state, { count: 12, players: { alice: 0, bob: 2 } });
  assert.deepEqual(aliceLand.state, bobLand.state, "the mirror equals the server's state again");

  // Patches continue from the snapshot's seq.
  await aliceLand.action("increment");
  assert.equal(aliceLand.state.count, 13);
  await bobLand.waitForState((state) => state.count === 13);
  assert.equal(aliceLand.stats.gaps, 1);
});

withPlanes("a dropped connection reconnects within the grace to the same seat", async ({ planes, client, track }) => {
  const [forAlice, forBob] = await matchPair(client, ["alice", "bob"]);
  const proxy = await startCuttingProxy(planes.gameServer.addr);
  try {
    const throughProxy = { ...forAlice, connectUrl: forAlice.connectUrl.replace(planes.gameServer.addr, proxy.addr) };
    const aliceLand = track(await joinLand(throughProxy, "alice", { WebSocket }));
    const bobLand = track(await joinLand(forBob, "bob", { WebSocket }));
    await aliceLand.action("add", { amount: 3 });
    await bobLand.waitForState((state) => state.count === 3);

    const disconnected = new Promise((resolve) => aliceLand.on("disconnected", resolve));
    const reconnected = new Promise((resolve) => aliceLand.on("reconnected", resolve));
    proxy.cut();
    const drop = await within(disconnected, "the disconnect");
    assert.equal(drop.willReconnect, true);
    assert.equal(drop.closeCode, 1006, "an abrupt drop, no close frame");
    assert.equal(aliceLand.isConnected, false);
    // Sent while disconnected: held, and delivered after the fresh join.ok.
    const heldAction = aliceLand.action("add", { amount: 4 });

    await within(reconnected, "the reconnect");
    assert.equal(await heldAction.then((result) => result.count), 7);
    assert.equal(aliceLand.isConnected, true);
    assert.equal(aliceLand.playerId, "alice");
    assert.equal(aliceLand.stats.reconnects, 1);
    assert.equal(proxy.connections, 2, "one reconnect through the same URL");
    assert.deepEqual(aliceLand.state.players, { alice: 2, bob: 0 }, "the same seat, with its history");
    await bobLand.waitForState((state) => state.count === 7);

    const lands = await planes.lands();
    assert.equal(lands.length, 1);
    assert.equal(lands[0].players, 2, "still two seats");
    assert.equal(lands[0].connected, 2);
    assert.equal(aliceLand.isEnded, false);
  } finally {
    await proxy.close();
  }
});

withPlanes("action and join errors carry the server's codes", async ({ planes, client, track }) => {
  const [forAlice, forBob] = await matchPair(client, ["alice", "bob"]);
  const aliceLand = track(await joinLand(forAlice, "alice", { WebSocket }));

  const outOfRange = await rejection(aliceLand.action("add", { amount: 5000 }));
  assert.equal(outOfRange.kind, "action");
  assert.equal(outOfRange.code, "amount_out_of_range");
  const unknown = await rejection(aliceLand.action("explode"));
  assert.equal(unknown.code, "unknown_action");
  const badPayload = await rejection(aliceLand.action("add", { amount: "lots" }));
  assert.equal(badPayload.code, "invalid_payload");
  assert.equal(aliceLand.state.count, 0, "refused actions changed nothing");
  assert.deepEqual(await aliceLand.action("add", { amount: -2 }), { count: -2 });

  const forgedAssignment = { ...forBob, matchToken: "not.a.jwt", memberTokens: {} };
  const forged = await rejection(joinLand(forgedAssignment, "bob", { WebSocket }));
  assert.equal(forged.kind, "rejected");
  assert.equal(forged.closeCode, 4401);
  assert.equal(forged.code, "unauthenticated");
  const noToken = await rejection(joinLand({ ...forBob, matchToken: "", memberTokens: {} }, "bob", { WebSocket }));
  assert.equal(noToken.kind, "noToken");

  // A second connection with the same token takes the seat over; the first one ends.
  const bobLand = await joinLand(forBob, "bob", { WebSocket });
  const bobEnded = bobLand.ended;
  track(await joinLand(forBob, "bob", { WebSocket }));
  const end = await within(bobEnded, "the replaced connection's end");
  assert.equal(end.reason, "closed");
  assert.equal(end.closeCode, 4410);
  const afterEnd = await rejection(bobLand.action("increment"));
  assert.equal(afterEnd.kind, "disconnected");
  await waitUntil(async () => (await planes.lands())[0]?.connected === 2, "two connected seats");
});
