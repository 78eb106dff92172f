// The binary state frames of `?sync=binary` (docs/runtime-protocol.md, "Binary state
// frames"), decoded by the SDK's own decoder (no processes).
import assert from "node:assert/strict";
import { test } from "node:test";

import { LandConnection, MatchplaneError, applyMergePatch, decodeBinaryState } from "../dist/index.js";

/** Bytes from a hex dump ("01 07 …"). */
function hex(text) {
  return Uint8Array.from(text.trim().split(/\s+/), (pair) => Number.parseInt(pair, 16));
}

/** An unsigned LEB128 varint of a number or BigInt. */
function varint(value) {
  let rest = BigInt(value);
  const bytes = [];
  do {
    const group = Number(rest & 0x7fn);
    rest >>= 7n;
    bytes.push(rest === 0n ? group : group | 0x80);
  } while (rest !== 0n);
  return bytes;
}

function zigzag(value) {
  const n = BigInt(value);
  return varint(n >= 0n ? n << 1n : ((-n) << 1n) - 1n);
}

const utf8 = (text) => [...new TextEncoder().encode(text)];
const inlineKey = (text) => [...varint((utf8(text).length << 2) | 2), ...utf8(text)];
const END = 0x03;

/** A state-merge frame: seq, definitions `[index, name]`, then the members' bytes. */
function frame(seq, definitions, members) {
  const defs = definitions.flatMap(([index, name]) => [...varint(index), ...varint(utf8(name).length), ...utf8(name)]);
  return Uint8Array.from([0x01, ...varint(seq), ...varint(definitions.length), ...defs, ...members, END]);
}

/** The merge patch of a frame holding one member `v` with the value bytes `value`. */
function decodeValue(value, keys = []) {
  return decodeBinaryState(frame(1, [], [...inlineKey("v"), ...value]), keys).merge.v;
}

function assertMalformed(bytes, keys, what) {
  const before = [...keys];
  assert.throws(
    () => decodeBinaryState(bytes, keys),
    (error) => error instanceof MatchplaneError && error.kind === "protocol" && /malformed/.test(error.message),
    what,
  );
  assert.deepEqual(keys, before, `${what}: the key table is left as it was`);
}

test("the golden vector decodes to the protocol's example", () => {
  const keys = ["heroes", "x", "y"];
  const decoded = decodeBinaryState(
    hex("01 07 01 03 04 6c 74 2d 31 00 03 0c 03 04 12 e4 48 08 05 64 03 31 00 03 03"),
    keys,
  );
  assert.equal(decoded.seq, 7);
  assert.deepEqual(decoded.merge, { heroes: { "lt-1": { x: 46.58, y: 50 }, 12: null } });
  assert.deepEqual(keys, ["heroes", "x", "y", "lt-1"]);
  // Applied like a state.merge: "12" is removed, "lt-1" merged in.
  const before = { heroes: { 12: { x: 1, y: 2 }, "lt-1": { x: 0, y: 0, hp: 9 } } };
  assert.deepEqual(applyMergePatch(before, decoded.merge), { heroes: { "lt-1": { x: 46.58, y: 50, hp: 9 } } });
});

test("every value tag decodes", () => {
  assert.equal(decodeValue([0x00]), null);
  assert.equal(decodeValue([0x01]), false);
  assert.equal(decodeValue([0x02]), true);
  assert.deepEqual(decodeValue([0x03, ...inlineKey("a"), 0x02, END]), { a: true });
  assert.deepEqual(decodeValue([0x03, END]), {});
  assert.deepEqual(decodeValue([0x04, 3, 0x00, 0x05, ...zigzag(-3), 0x08, 2, ...utf8("hi")]), [null, -3, "hi"]);
  assert.deepEqual(decodeValue([0x04, 0]), []);
  assert.deepEqual(decodeValue([0x04, 2, 0x04, 1, 0x02, 0x03, END]), [[true], {}]);
  const integers = [0, -1, 1, -2, 63, -64, 64, 1_000_000, -1_000_000, Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER];
  for (const n of integers) {
    assert.equal(decodeValue([0x05, ...zigzag(n)]), n, `zigzag ${n}`);
  }
  assert.equal(decodeValue([0x05, ...zigzag(-(2n ** 63n))]), -(2 ** 63), "i64::MIN");
  assert.equal(decodeValue([0x05, ...zigzag(2n ** 63n - 1n)]), 2 ** 63, "i64::MAX, rounded");
  assert.equal(decodeValue([0x06, ...varint(2n ** 63n)]), 2 ** 63);
  assert.equal(decodeValue([0x06, ...varint(2n ** 64n - 1n)]), 2 ** 64, "u64::MAX, rounded");
  const float = new Uint8Array(8);
  new DataView(float.buffer).setFloat64(0, -1234.5678e-10, true);
  assert.equal(decodeValue([0x07, ...float]), -1234.5678e-10);
  assert.equal(decodeValue([0x08, ...varint(utf8("é ✓ 🦀").length), ...utf8("é ✓ 🦀")]), "é ✓ 🦀");
  assert.equal(decodeValue([0x08, 0]), "");
  assert.equal(decodeValue([0x09, 1], ["a", "b"]), "b");
});

test("decimal floats are one division of the mantissa by a power of ten", () => {
  assert.equal(decodeValue([0x11, ...zigzag(-5)]), -0.5);
  assert.equal(decodeValue([0x10, ...zigzag(42)]), 42, "scale 0: an integral float");
  assert.equal(decodeValue([0x12, ...zigzag(4658)]), 46.58);
  assert.equal(decodeValue([0x13, ...zigzag(1)]), 0.001);
  assert.equal(decodeValue([0x1f, ...zigzag(123456789012345)]), 123456789012345 / 1e15);
  assert.equal(decodeValue([0x1f, ...zigzag(1)]), 1e-15);
  assert.equal(decodeValue([0x12, ...zigzag(0)]), 0);
  // The value the server holds, bit for bit, for numbers that need the division's rounding.
  for (const [m, scale] of [[1, 1], [3, 1], [7, 2], [-33333, 4], [2 ** 53 - 1, 15]]) {
    assert.equal(decodeValue([0x10 + scale, ...zigzag(m)]), m / 10 ** scale, `${m} / 10^${scale}`);
  }
});

test("keys come from the table, as integer digits or spelled out", () => {
  const keys = ["alpha"];
  const members = [
    0x00, 0x02, // table entry 0
    ...varint((12 << 2) | 1), 0x01, // "12"
    ...varint((0 << 2) | 1), 0x01, // "0"
    ...varint(12345678901n * 4n + 1n), 0x02, // "12345678901", beyond 32 bits
    ...inlineKey("spelled out ✓"), 0x00,
    ...inlineKey(""), 0x02,
    ...varint((1 << 2) | 0), 0x05, ...zigzag(9), // entry 1, defined by this frame
  ];
  const decoded = decodeBinaryState(frame(3, [[1, "beta"]], members), keys);
  assert.deepEqual(decoded, {
    seq: 3,
    merge: { alpha: true, 12: false, 0: false, 12345678901: true, "spelled out ✓": null, "": true, beta: 9 },
  });
  assert.deepEqual(keys, ["alpha", "beta"]);
  // The digits of a header beyond 2^53 stay exact.
  const huge = decodeBinaryState(frame(1, [], [...varint(((2n ** 62n - 1n) << 2n) | 1n), 0x02]), []);
  assert.deepEqual(Object.keys(huge.merge), [String(2n ** 62n - 1n)]);
});

test("definitions append or overwrite, and are used in the same frame", () => {
  const keys = ["a", "b"];
  const decoded = decodeBinaryState(
    frame(9, [[1, "B"], [2, "c"], [3, "d"]], [0x04, 0x02, 0x08, 0x02, 0x0c, 0x09, 3]),
    keys,
  );
  assert.deepEqual(decoded.merge, { B: true, c: true, d: "d" });
  assert.deepEqual(keys, ["a", "B", "c", "d"]);
});

test("a __proto__ member is plain data", () => {
  const members = [...inlineKey("__proto__"), 0x03, ...inlineKey("polluted"), 0x02, END];
  const decoded = decodeBinaryState(frame(1, [], members), []);
  assert.equal(Object.getPrototypeOf(decoded.merge), Object.prototype);
  assert.deepEqual(Object.keys(decoded.merge), ["__proto__"]);
  assert.equal({}.polluted, undefined);
  const merged = applyMergePatch({}, decoded.merge);
  assert.equal(Object.getPrototypeOf(merged), Object.prototype);
  assert.deepEqual(Object.keys(merged), ["__proto__"]);
});

test("malformed frames throw and leave the key table alone", () => {
  const keys = ["a"];
  const valid = [...frame(2, [[1, "b"]], [0x04, 0x02])];
  assert.deepEqual(decodeBinaryState(Uint8Array.from(valid), [...keys]).merge, { b: true });
  for (let length = 0; length < valid.length; length += 1) {
    assertMalformed(Uint8Array.from(valid.slice(0, length)), keys, `truncated to ${length} bytes`);
  }
  assertMalformed(Uint8Array.from([...valid, 0x00]), keys, "a byte left over");
  assertMalformed(Uint8Array.from([0x02, ...valid.slice(1)]), keys, "unknown frame kind");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x0a]), keys, "unknown tag 0x0a");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x20]), keys, "unknown tag 0x20");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0xff]), keys, "unknown tag 0xff");
  assertMalformed(frame(2, [[1, "b"]], [0x08, 0x02]), keys, "table index past the end (key)");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x09, 0x02]), keys, "table index past the end (string)");
  assertMalformed(frame(2, [[2, "c"]], []), keys, "definition past the end");
  assertMalformed(frame(2, [[1, "b"], [3, "d"]], []), keys, "second definition past the end");
  assertMalformed(frame(2, [[1, "b"]], [0x07, 0x02]), keys, "END misused: h = 7");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x03, 0x0b, END]), keys, "END misused in an object: h = 11");
  assertMalformed(Uint8Array.from([0x01, 0x02, 0x00]), keys, "no END");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x04, 0x05, 0x00]), keys, "array count past the frame");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x08, 0x09, 0x61]), keys, "string length past the frame");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x07, 0, 0, 0, 0]), keys, "truncated float64");
  assertMalformed(frame(2, [[1, "b"]], [0x04, 0x08, 0x02, 0xc3, 0x28]), keys, "invalid UTF-8 in a string");
  assertMalformed(frame(2, [[1, "b"]], [0x06, 0xff, 0x04, 0x02]), keys, "invalid UTF-8 in a key");
  assertMalformed(
    Uint8Array.from([0x01, 0x02, 0x01, 0x01, 0x02, 0xed, 0xa0, 0x00, END]),
    keys,
    "invalid UTF-8 (a surrogate) in a definition",
  );
  assertMalformed(Uint8Array.from([0x01, ...varint(2n ** 53n), 0x00, END]), keys, "seq beyond 2^53 - 1");
  assertMalformed(Uint8Array.from([0x01, ...varint(2n ** 64n), 0x00, END]), keys, "varint beyond 2^64 - 1");
  assertMalformed(Uint8Array.from([0x01, ...Array(10).fill(0x80), 0x00, 0x00, END]), keys, "varint of 11 bytes");
  const nan = new Uint8Array(8);
  new DataView(nan.buffer).setFloat64(0, Number.NaN, true);
  assertMalformed(frame(2, [], [0x00, 0x07, ...nan]), keys, "a NaN float");
  // Absurd nesting is refused, not a crash.
  const nested = Array(200_000).fill([0x04, 0x01]).flat();
  assertMalformed(Uint8Array.from([0x01, 0x02, 0x00, 0x00, ...nested]), keys, "nesting");
});

test("views into larger buffers decode at their offset", () => {
  const bytes = frame(5, [], [...inlineKey("a"), 0x05, ...zigzag(-7)]);
  const padded = new Uint8Array(bytes.length + 6);
  padded.set(bytes, 3);
  assert.deepEqual(decodeBinaryState(padded.subarray(3, 3 + bytes.length), []), { seq: 5, merge: { a: -7 } });
  const float = new Uint8Array(8);
  new DataView(float.buffer).setFloat64(0, 0.1, true);
  const unaligned = Buffer.concat([Buffer.from([9]), Buffer.from(frame(1, [], [0x00, 0x07, ...float]))]).subarray(1);
  assert.deepEqual(decodeBinaryState(unaligned, ["x"]).merge, { x: 0.1 });
});

/**
 * A socket the test scripts: it opens at once, records what the client sends and
 * delivers the frames the test hands it.
 */
class ScriptedSocket {
  static instances = [];
  readyState = 0;
  binaryType = "blob";
  sent = [];
  listeners = new Map();

  constructor(url) {
    this.url = url;
    ScriptedSocket.instances.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.emit("open", {});
    });
  }

  addEventListener(type, listener) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(listener);
  }

  removeEventListener(type, listener) {
    this.listeners.get(type)?.delete(listener);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code = 1005) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    queueMicrotask(() => this.emit("close", { code }));
  }

  emit(type, event) {
    for (const listener of [...(this.listeners.get(type) ?? [])]) listener(event);
  }

  text(type, data) {
    this.emit("message", { data: JSON.stringify({ type, v: 1, data }) });
  }

  /** A binary frame, as an ArrayBuffer (what `binaryType = "arraybuffer"` delivers). */
  binary(bytes) {
    this.emit("message", { data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) });
  }

  syncRequests() {
    return this.sent.filter((message) => message.type === "sync.request").length;
  }
}

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 5));

async function waitFor(check, what) {
  for (let attempt = 0; attempt < 400; attempt += 1) {
    if (check()) return;
    await nextTask();
  }
  assert.fail(`timed out waiting for ${what}`);
}

test("a binary connection mirrors frames, resyncs on malformed ones, and renews its table", async () => {
  ScriptedSocket.instances.length = 0;
  const intercepted = [];
  let dropSeq = null;
  const connecting = LandConnection.connect("ws://gs/game/counter?playerId=ann", {
    WebSocket: ScriptedSocket,
    sync: "binary",
    reconnect: { graceMs: 5000, initialBackoffMs: 1 },
    interceptMessage: (message) => {
      intercepted.push(message);
      return message.data.seq !== dropSeq;
    },
  });
  const first = ScriptedSocket.instances[0];
  assert.equal(first.url, "ws://gs/game/counter?playerId=ann&sync=binary");
  assert.equal(first.binaryType, "arraybuffer");
  await nextTask();
  // Before join.ok there is no table: a binary frame is ignored, not a failure.
  first.binary(frame(1, [], [0x00, 0x02]));
  const state = { count: 0, players: { ann: 0 } };
  first.text("join.ok", { landId: "l", playerId: "ann", seq: 0, state, keys: ["count", "players"] });
  const land = await connecting;
  await nextTask();

  // Defines "ann" as entry 2 and uses it; as a Buffer (`ws`'s default shape) this time.
  first.emit("message", {
    data: Buffer.from(frame(1, [[2, "ann"]], [0x00, 0x05, ...zigzag(5), 0x04, 0x03, 0x08, 0x05, ...zigzag(5), END])),
  });
  assert.deepEqual(land.state, { count: 5, players: { ann: 5 } });
  assert.equal(land.seq, 1);
  const merge = intercepted.at(-1);
  assert.deepEqual(merge, { type: "state.merge", v: 1, data: { seq: 1, merge: { count: 5, players: { ann: 5 } } } });

  // A JSON patch still applies in between (a change a merge patch cannot say).
  first.text("state.patch", { seq: 2, ops: [{ op: "add", path: "/flag", value: null }] });
  assert.deepEqual(land.state, { count: 5, players: { ann: 5 }, flag: null });

  // A malformed frame (unknown tag) is a gap: sync.request, later frames wait for the snapshot.
  first.binary(frame(3, [], [0x00, 0x0a]));
  assert.equal(land.stats.gaps, 1);
  assert.equal(first.syncRequests(), 1);
  first.binary(frame(4, [], [0x00, 0x05, ...zigzag(9)]));
  first.binary(frame(4, [], [0x00, 0x0a]));
  assert.equal(land.state.count, 5, "ignored until the snapshot");
  assert.equal(land.stats.gaps, 1, "one repair at a time");
  const keys = ["count", "players", "ann", "zz"];
  first.text("state.snapshot", { seq: 4, state: { count: 9, players: { ann: 9 } }, keys });
  assert.equal(land.stats.resyncs, 1);
  first.emit("message", { data: frame(5, [], [0x0c, 0x02]) }); // entry 3 of the snapshot's table; a Uint8Array
  assert.deepEqual(land.state, { count: 9, players: { ann: 9 }, zz: true });

  // A binary frame dropped by the hook is lost like a state.merge: the next one is a gap.
  dropSeq = 6;
  first.binary(frame(6, [], [0x0c, 0x01]));
  first.binary(frame(7, [], [0x0c, 0x00]));
  assert.equal(land.stats.gaps, 2);
  assert.equal(first.syncRequests(), 2);
  first.text("state.snapshot", { seq: 7, state: { count: 9 }, keys: ["count"] });
  assert.deepEqual(land.state, { count: 9 });
  assert.equal(land.stats.binaryFrames, 7, "after join.ok, malformed ones included");
  assert.equal(land.stats.patchesApplied, 3);

  // A reconnect drops the table: the fresh join.ok brings a new one.
  first.close(1006);
  await waitFor(() => ScriptedSocket.instances.length === 2, "the reconnect");
  const second = ScriptedSocket.instances[1];
  assert.equal(second.url, first.url);
  await nextTask();
  second.text("join.ok", { landId: "l", playerId: "ann", seq: 20, state: { count: 9 }, keys: ["other"] });
  await waitFor(() => land.stats.reconnects === 1, "the fresh join.ok");
  await nextTask();
  second.binary(frame(21, [], [0x00, 0x08, 1, ...utf8("x")]));
  assert.deepEqual(land.state, { count: 9, other: "x" });
  // An entry the old table had, but the new one has not, is malformed now.
  second.binary(frame(22, [], [0x04, 0x02]));
  assert.equal(land.stats.gaps, 3);
  assert.equal(second.syncRequests(), 1);
  await land.leave();
});
