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
const digitsKey = (n) => varint((BigInt(n) << 2n) | 1n);
const END = 0x03;
const OBJECT = 0x03;
const ARRAY = 0x04;
const SHAPED = 0x0a;
const TRUE = 0x02;
/** A small integer value. */
const int = (n) => [0x05, ...zigzag(n)];
/** A delta float at `scale` (0–15) by `d` steps. */
const delta = (scale, d) => [0x20 + scale, ...zigzag(d)];
/** A small step (0x40–0x7F) by `d` (−32 … 31) steps of the base's own scale: one tag byte. */
const step = (d) => {
  assert.ok(Number.isInteger(d) && d >= -32 && d <= 31, `small step ${d}`);
  return [0x60 + d];
};

/** A state-merge frame: seq, definitions `[index, name]`, then the members' bytes. */
function frame(seq, definitions, members) {
  const defs = definitions.flatMap(([index, name]) => [...varint(index), ...varint(utf8(name).length), ...utf8(name)]);
  return Uint8Array.from([0x01, ...varint(seq), ...varint(definitions.length), ...defs, ...members, END]);
}

/** The merge patch of a frame holding one member `v` with the value bytes `value`. */
function decodeValue(value, keys = []) {
  return decodeBinaryState(frame(1, [], [...inlineKey("v"), ...value]), keys).merge.v;
}

function assertMalformed(bytes, keys, what, base) {
  const before = [...keys];
  assert.throws(
    () => decodeBinaryState(bytes, keys, base),
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

test("the golden vector with a shaped object and deltas decodes to the protocol's example", () => {
  const keys = ["heroes", "x", "y", "lt-1"];
  const base = { heroes: { "lt-1": { x: 46.58, y: 50 }, "lt-2": { x: 1.5, y: 2 } } };
  const bytes = hex("01 08 01 04 04 6c 74 2d 32 00 03 0c 03 04 22 4a 03 10 0a 22 31 03 03");
  const decoded = decodeBinaryState(bytes, keys, base);
  assert.equal(decoded.seq, 8);
  assert.deepEqual(decoded.merge, { heroes: { "lt-1": { x: 46.95 }, "lt-2": { x: 1.25 } } });
  assert.deepEqual(keys, ["heroes", "x", "y", "lt-1", "lt-2"]);
  assert.deepEqual(base, { heroes: { "lt-1": { x: 46.58, y: 50 }, "lt-2": { x: 1.5, y: 2 } } }, "the base is not modified");
  assert.deepEqual(applyMergePatch(base, decoded.merge), {
    heroes: { "lt-1": { x: 46.95, y: 50 }, "lt-2": { x: 1.25, y: 2 } },
  });
  // Its deltas need the state the frame follows.
  assertMalformed(bytes, ["heroes", "x", "y", "lt-1"], "without a base");
  assertMalformed(bytes, ["heroes", "x", "y", "lt-1"], "with a base lacking lt-2", { heroes: { "lt-1": { x: 1 } } });
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
  for (const tag of [0x0b, 0x0f, 0x30, 0x3f, 0x80, 0xff]) {
    assertMalformed(frame(2, [[1, "b"]], [0x04, tag]), keys, `unknown tag 0x${tag.toString(16)}`);
  }
  assertMalformed(frame(2, [[1, "b"]], [0x04, SHAPED]), keys, "0x0a with no object before it");
  assertMalformed(frame(2, [[1, "b"]], [0x04, ...delta(0, 1)]), keys, "a delta without a base");
  assertMalformed(frame(2, [[1, "b"]], [0x04, ...step(1)]), keys, "a small step without a base");
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
  assertMalformed(frame(2, [[1, "b"]], [0x04, SHAPED]), keys, "0x0a with a base", { b: { x: 1 } });
  assertMalformed(frame(2, [[1, "b"]], [0x04, ...delta(2, 1)]), keys, "a delta for a missing member", { a: 1 });
  assertMalformed(frame(2, [[1, "b"]], [0x04, ...step(1)]), keys, "a small step for a missing member", { a: 1 });
  assertMalformed(frame(2, [[1, "b"]], [0x04, ...step(1)]), keys, "a small step from a number with no scale", { b: 0.1 + 0.2 });
  // Absurd nesting is refused, not a crash.
  const nested = Array(200_000).fill([0x04, 0x01]).flat();
  assertMalformed(Uint8Array.from([0x01, 0x02, 0x00, 0x00, ...nested]), keys, "nesting");
});

test("a shaped object (0x0a) takes the keys of the previous object among its siblings", () => {
  const keys = ["x", "y"];
  const xy = [OBJECT, 0x00, ...int(1), 0x04, ...int(2), END];
  // A shape reused several times: a 0x0a object hands its shape on to the next one.
  assert.deepEqual(
    decodeBinaryState(frame(1, [], [...inlineKey("a"), ...xy, ...inlineKey("b"), SHAPED, ...int(3), ...int(4),
      ...inlineKey("c"), SHAPED, ...int(5), TRUE]), keys).merge,
    { a: { x: 1, y: 2 }, b: { x: 3, y: 4 }, c: { x: 5, y: true } },
  );
  // The keys in the frame's order, not in JS property order (which puts "3" before "12").
  const numbered = decodeBinaryState(
    frame(1, [], [
      ...inlineKey("a"), OBJECT, ...digitsKey(12), ...int(1), ...inlineKey("b"), ...int(2), ...digitsKey(3), ...int(3), END,
      ...inlineKey("c"), SHAPED, ...int(10), ...int(20), ...int(30),
    ]),
    [],
  ).merge;
  assert.deepEqual(numbered, { a: { 12: 1, b: 2, 3: 3 }, c: { 12: 10, b: 20, 3: 30 } });
  // Non-object members in between leave the shape alone; the latest object sets it.
  assert.deepEqual(
    decodeBinaryState(frame(1, [], [
      ...inlineKey("a"), ...xy, ...inlineKey("n"), ...int(7), ...inlineKey("s"), 0x08, 1, ...utf8("z"),
      ...inlineKey("l"), ARRAY, 1, OBJECT, ...inlineKey("q"), TRUE, END, ...inlineKey("nil"), 0x00,
      ...inlineKey("b"), SHAPED, ...int(3), ...int(4),
      ...inlineKey("c"), OBJECT, ...inlineKey("only"), TRUE, END, ...inlineKey("d"), SHAPED, 0x01,
    ]), keys).merge,
    { a: { x: 1, y: 2 }, n: 7, s: "z", l: [{ q: true }], nil: null, b: { x: 3, y: 4 }, c: { only: true }, d: { only: false } },
  );
  // An empty object is a shape too (of no values).
  assert.deepEqual(
    decodeBinaryState(frame(1, [], [...inlineKey("a"), OBJECT, END, ...inlineKey("b"), SHAPED, ...inlineKey("c"), TRUE]), [])
      .merge,
    { a: {}, b: {}, c: true },
  );
  // A "__proto__" key of a shape is plain data too.
  const proto = decodeBinaryState(
    frame(1, [], [...inlineKey("a"), OBJECT, ...inlineKey("__proto__"), ...int(1), END, ...inlineKey("b"), SHAPED, OBJECT,
      ...inlineKey("polluted"), TRUE, END]),
    [],
  ).merge;
  assert.deepEqual(Object.keys(proto.b), ["__proto__"]);
  assert.equal(Object.getPrototypeOf(proto.b), Object.prototype);
  assert.equal({}.polluted, undefined);
});

test("shapes belong to their enclosing object", () => {
  const keys = ["x"];
  // a's own member "inner" does not make {x} the shape of the top level: b has a's keys.
  const nested = [...inlineKey("a"), OBJECT, ...inlineKey("inner"), OBJECT, 0x00, TRUE, END, END];
  assert.deepEqual(
    decodeBinaryState(frame(1, [], [...nested, ...inlineKey("b"), SHAPED, ...int(7)]), keys).merge,
    { a: { inner: { x: true } }, b: { inner: 7 } },
  );
  // Nor does it reach into a sibling's members, nor into the members of a shaped object.
  assertMalformed(frame(1, [], [...nested, ...inlineKey("b"), OBJECT, ...inlineKey("q"), SHAPED, TRUE, END]), keys,
    "0x0a first in a sibling object");
  assertMalformed(frame(1, [], [...nested, ...inlineKey("b"), SHAPED, SHAPED, TRUE]), keys,
    "0x0a first in a shaped object");
  // A shaped object's members take shapes from one another.
  assert.deepEqual(
    decodeBinaryState(frame(1, [], [
      ...inlineKey("a"), OBJECT, ...inlineKey("p"), OBJECT, 0x00, ...int(1), END, ...inlineKey("q"), SHAPED, ...int(2), END,
      ...inlineKey("b"), SHAPED, OBJECT, 0x00, ...int(3), END, SHAPED, ...int(4),
    ]), keys).merge,
    { a: { p: { x: 1 }, q: { x: 2 } }, b: { p: { x: 3 }, q: { x: 4 } } },
  );
  // Array items have no enclosing object: not even the object around the array lends its shape.
  assertMalformed(frame(1, [], [...nested, ...inlineKey("l"), ARRAY, 1, SHAPED, TRUE]), keys, "0x0a in an array");
  assertMalformed(frame(1, [], [...inlineKey("l"), ARRAY, 2, OBJECT, 0x00, TRUE, END, SHAPED, TRUE]), keys,
    "0x0a after an object in an array");
  assertMalformed(frame(1, [], [...inlineKey("a"), SHAPED]), keys, "0x0a first at the top level");
});

test("a delta float (0x20 + scale) is a decimal step from the member's number in the base", () => {
  const decodeDelta = (base, scale, d) => decodeBinaryState(frame(1, [], [0x00, ...delta(scale, d)]), ["v"], base).merge.v;
  assert.equal(decodeDelta({ v: 46.58 }, 2, 37), 46.95, "positive, scale 2");
  assert.equal(decodeDelta({ v: 1.5 }, 2, -25), 1.25, "negative, scale 2");
  assert.equal(decodeDelta({ v: 10 }, 0, -3), 7, "scale 0, from an integer");
  assert.equal(decodeDelta({ v: 10.5 }, 0, 2), 13, "scale 0 rounds the base first");
  assert.equal(decodeDelta({ v: 0.001 }, 3, 1234), 1.235, "scale 3");
  assert.equal(decodeDelta({ v: -2.25 }, 3, -1), -2.251, "negative base, scale 3");
  assert.equal(decodeDelta({ v: 0.1 }, 1, 0), 0.1, "no step");
  assert.equal(decodeDelta({ v: 0.1 }, 15, 1), (1e14 + 1) / 1e15, "scale 15");
  // Bit for bit the documented arithmetic (halves away from zero), for bases that are
  // not exact at the scale too.
  const roundHalfAway = (x) => (x < 0 ? -Math.round(-x) : Math.round(x));
  for (const p of [46.58, -3.07, 0.1 + 0.2, 1e-7, 123456.789, -0.004]) {
    for (const [scale, d] of [[0, 5], [2, -37], [3, 1], [6, -123456]]) {
      assert.equal(decodeDelta({ v: p }, scale, d), (roundHalfAway(p * 10 ** scale) + d) / 10 ** scale, `${p} ${scale} ${d}`);
    }
  }
  // A negative base whose scaled value lands exactly on a half (-2878695888384984.5):
  // the server rounds it away from zero, to -2878695888384985, so +1 is ...4984;
  // Math.round would have given ...4983.
  assert.equal(decodeDelta({ v: -287869588838.4985 }, 4, 1), -287869588838.4984, "halfway base");

  // The base is walked along the members' path, shaped objects included.
  const base = { h: { a: { x: 1.5, y: -1 }, b: { x: 3, y: 4.25 } }, n: 2 };
  const members = [
    ...inlineKey("h"), OBJECT,
    ...inlineKey("a"), OBJECT, ...inlineKey("x"), ...delta(1, 3), ...inlineKey("y"), ...delta(0, -1), END,
    ...inlineKey("b"), SHAPED, ...delta(2, 10), ...delta(2, -25),
    END,
    ...inlineKey("n"), ...delta(0, 1),
  ];
  assert.deepEqual(decodeBinaryState(frame(1, [], members), [], base).merge, {
    h: { a: { x: 1.8, y: -2 }, b: { x: 3.1, y: 4 } },
    n: 3,
  });
  // A base member named "__proto__" is found as data, and not on the prototype.
  const protoFrame = frame(1, [], [...inlineKey("__proto__"), OBJECT, ...inlineKey("x"), ...delta(0, 1), END]);
  assert.deepEqual(decodeBinaryState(protoFrame, [], JSON.parse('{"__proto__": {"x": 1}}')).merge.__proto__, { x: 2 });
  assertMalformed(protoFrame, [], "no __proto__ member in the base", {});
});

test("a delta without a number to step from is malformed", () => {
  const keys = ["v"];
  const top = frame(1, [], [0x00, ...delta(2, 1)]);
  assertMalformed(top, keys, "no base");
  for (const base of [{}, { v: "1.5" }, { v: null }, { v: true }, { v: { x: 1 } }, { v: [1.5] }, [1.5], 1.5, null]) {
    assertMalformed(top, keys, `base ${JSON.stringify(base)}`, base);
  }
  // Nor in an array, whatever the base holds at that index.
  assertMalformed(frame(1, [], [0x00, ARRAY, 1, ...delta(2, 1)]), keys, "a delta in an array", { v: [1.5] });
  assertMalformed(frame(1, [], [0x00, ARRAY, 1, OBJECT, ...inlineKey("x"), ...delta(2, 1), END]), keys,
    "a delta in an object in an array", { v: [{ x: 1.5 }] });
  // Nor in a new object replacing a member that is not an object.
  const inObject = frame(1, [], [0x00, OBJECT, ...inlineKey("0"), ...delta(2, 1), END]);
  for (const base of [{ v: 1.5 }, { v: [1.5] }, { v: "x" }, { v: null }, {}]) {
    assertMalformed(inObject, keys, `a delta in an object replacing ${JSON.stringify(base.v)}`, base);
  }
  const inShaped = frame(1, [], [
    ...inlineKey("a"), OBJECT, ...inlineKey("x"), ...delta(1, 1), END, ...inlineKey("b"), SHAPED, ...delta(1, 1),
  ]);
  assert.deepEqual(decodeBinaryState(inShaped, [], { a: { x: 1 }, b: { x: 2 } }).merge, { a: { x: 1.1 }, b: { x: 2.1 } });
  assertMalformed(inShaped, [], "a delta in a shaped object replacing a number", { a: { x: 1 }, b: 2 });
  assertMalformed(inShaped, [], "a delta in a shaped object of a new member", { a: { x: 1 } });
  // Nor where the step leaves the doubles.
  assertMalformed(frame(1, [], [0x00, ...delta(15, 1)]), keys, "an infinite result", { v: 1e300 });
});

/** A number's own scale as the Rust encoder's `decimal` finds it (halves rounded away from zero). */
function ownScale(p) {
  if (Object.is(p, -0)) return undefined;
  const round = (x) => (x < 0 ? -Math.round(-x) : Math.round(x));
  const powers = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
  for (let scale = 0; scale < powers.length; scale += 1) {
    const m = round(p * powers[scale]);
    if (Math.abs(m) >= 2 ** 53) return undefined;
    if (m / powers[scale] === p) return { scale, m, power: powers[scale] };
  }
  return undefined;
}

test("the small-step vector from the protocol's value table decodes", () => {
  // seq 5, no definitions, key entry 0 ("v"), tag 0x79 = 0x60 + 25: 4658 + 25 hundredths.
  const keys = ["v"];
  const decoded = decodeBinaryState(hex("01 05 00 00 79 03"), keys, { v: 46.58 });
  assert.deepEqual(decoded, { seq: 5, merge: { v: 46.83 } });
  assert.deepEqual(keys, ["v"]);
  assertMalformed(hex("01 05 00 00 79 03"), keys, "without a base");
});

test("a small step (0x40–0x7F) moves a float by tag − 0x60 steps of its own scale", () => {
  const decodeStep = (base, d) => decodeBinaryState(frame(1, [], [0x00, ...step(d)]), ["v"], base).merge.v;
  // Scale 2.
  assert.equal(decodeStep({ v: 46.58 }, 25), 46.83, "up, scale 2");
  assert.equal(decodeStep({ v: 46.58 }, 0), 46.58, "no step");
  assert.equal(decodeStep({ v: 46.58 }, -1), 46.57, "down by one, scale 2");
  assert.equal(decodeStep({ v: 46.58 }, -32), 46.26, "the lowest tag, 0x40");
  assert.equal(decodeStep({ v: 46.58 }, 31), 46.89, "the highest tag, 0x7f");
  assert.equal(decodeStep({ v: 1.25 }, -25), 1, "down to an integral float, scale 2");
  // Scale 0: integers and integral floats.
  assert.equal(decodeStep({ v: 7 }, 31), 38, "scale 0");
  assert.equal(decodeStep({ v: 7 }, -32), -25, "scale 0, below zero");
  assert.equal(decodeStep({ v: 0 }, -1), -1, "from zero");
  assert.ok(Object.is(decodeStep({ v: 1 }, -1), 0), "to +0");
  assert.ok(Object.is(decodeStep({ v: -0.01 }, 1), 0), "to +0 from below");
  // Scale 1.
  assert.equal(decodeStep({ v: -0.5 }, -30), -3.5, "negative, scale 1");
  assert.equal(decodeStep({ v: -0.5 }, 5), 0, "across zero, scale 1");
  assert.equal(decodeStep({ v: 0.1 }, 1), 0.2, "scale 1");
  // Scale 3.
  assert.equal(decodeStep({ v: 2.125 }, -1), 2.124, "scale 3");
  assert.equal(decodeStep({ v: 0.001 }, -32), -0.031, "scale 3, across zero");
  // The scale is the base's own, whatever the step makes of it: 0.75 + 25 hundredths is 1.
  assert.equal(decodeStep({ v: 0.75 }, 25), 1, "scale 2 to an integral float");
  assert.equal(decodeStep({ v: 1e-15 }, 31), 32e-15, "scale 15");
  assert.equal(decodeStep({ v: 2 ** 53 - 1 }, -1), 2 ** 53 - 2, "the largest mantissa");
  // The server's rounding in the scale search (halves away from zero, like Rust's f64::round):
  // −287869588838.4985 × 10^4 is −2878695888384984.5, whose mantissa is …985 (…984 with Math.round).
  assert.equal(decodeStep({ v: -287869588838.4985 }, 1), -287869588838.4984, "a halfway product, scale 4");

  // Bit for bit the documented arithmetic: (round(p × 10^s) + d) ÷ 10^s at p's own scale s.
  const bases = [46.58, -3.07, 1e-7, 123456.789, -0.004, 0.3, 9007199254740.991, -1.5, 1e15, 2 ** 53 - 1, -(2 ** 53 - 1)];
  for (const p of bases) {
    const own = ownScale(p);
    assert.ok(own !== undefined, `${p} has a scale`);
    for (const d of [-32, -17, -1, 0, 1, 9, 31]) {
      const expected = (own.m + d) / own.power;
      const value = decodeStep({ v: p }, d);
      assert.ok(Object.is(value, expected), `${p} by ${d}: ${value} is ${expected}`);
    }
  }

  // The base is walked along the members' path like a delta's, shaped objects included.
  const base = { h: { a: { x: 1.5, y: -1 }, b: { x: 3, y: 4.25 } }, n: 2 };
  const members = [
    ...inlineKey("h"), OBJECT,
    ...inlineKey("a"), OBJECT, ...inlineKey("x"), ...step(3), ...inlineKey("y"), ...step(-1), END,
    ...inlineKey("b"), SHAPED, ...step(-32), ...delta(2, -25),
    END,
    ...inlineKey("n"), ...step(31),
  ];
  assert.deepEqual(decodeBinaryState(frame(1, [], members), [], base).merge, {
    h: { a: { x: 1.8, y: -2 }, b: { x: -29, y: 4 } },
    n: 33,
  });
});

test("a small step without a number of scale 0 … 15 to step from is malformed", () => {
  const keys = ["v"];
  const top = frame(1, [], [0x00, ...step(1)]);
  assertMalformed(top, keys, "no base");
  for (const base of [{}, { v: "1.5" }, { v: null }, { v: true }, { v: { x: 1 } }, { v: [1.5] }, [1.5], 1.5, null]) {
    assertMalformed(top, keys, `base ${JSON.stringify(base)}`, base);
  }
  // Numbers without a scale: exact only at scale 17, −0, mantissas of 2^53 or more, tiny ones.
  assert.equal(ownScale(0.1 + 0.2), undefined);
  for (const v of [0.1 + 0.2, -0, 2 ** 53, -(2 ** 53), 1e300, 1e-16, 5e-324, 4503599627370495.5, 98765.43210987654]) {
    assert.equal(ownScale(v), undefined, `${v} has no scale`);
    const p = Object.is(v, -0) ? "-0" : v;
    for (const d of [-32, 0, 31]) assertMalformed(frame(1, [], [0x00, ...step(d)]), keys, `p = ${p}, d = ${d}`, { v });
  }
  // The server's rounding again: −4.128692848130252 × 10^15 is −4128692848130252.5, whose
  // mantissa rounded away from zero does not divide back (Math.round's would).
  assertMalformed(top, keys, "a halfway product with no scale", { v: -4.128692848130252 });
  // Nor in an array, whatever the base holds at that index.
  assertMalformed(frame(1, [], [0x00, ARRAY, 1, ...step(1)]), keys, "a small step in an array", { v: [1.5] });
  assertMalformed(frame(1, [], [0x00, ARRAY, 1, OBJECT, ...inlineKey("x"), ...step(1), END]), keys,
    "a small step in an object in an array", { v: [{ x: 1.5 }] });
  // Nor in a new object replacing a member that is not an object.
  const inObject = frame(1, [], [0x00, OBJECT, ...inlineKey("0"), ...step(1), END]);
  for (const base of [{ v: 1.5 }, { v: [1.5] }, { v: "x" }, { v: null }, {}]) {
    assertMalformed(inObject, keys, `a small step in an object replacing ${JSON.stringify(base.v)}`, base);
  }
  // The key table is left as it was when a small step fails after a definition.
  assertMalformed(frame(1, [[1, "w"]], [0x04, ...step(1)]), keys, "after a definition", { v: 1, w: 0.1 + 0.2 });
});

test("objects and arrays nest at most 128 deep, the top level's members at depth 0", () => {
  const key = inlineKey("k");
  const objects = (n) => [...key, ...Array(n).fill([OBJECT, ...key]).flat(), TRUE, ...Array(n).fill(END)];
  const arrays = (n) => [...key, ...Array(n).fill([ARRAY, 1]).flat(), TRUE];
  const mixed = (n) => {
    const open = [];
    const close = [];
    for (let level = 0; level < n; level += 1) {
      if (level % 2 === 0) {
        open.push(OBJECT, ...key);
        close.unshift(END);
      } else {
        open.push(ARRAY, 1);
      }
    }
    return [...key, ...open, TRUE, ...close];
  };
  for (const [what, nest] of [["objects", objects], ["arrays", arrays], ["objects in arrays", mixed]]) {
    let value = decodeBinaryState(frame(1, [], nest(127)), []).merge.k;
    for (let level = 0; level < 127; level += 1) value = Array.isArray(value) ? value[0] : value.k;
    assert.equal(value, true, `127 ${what}`);
    assertMalformed(frame(1, [], nest(128)), [], `128 ${what}`);
  }
  // Shaped objects count like any object: a shape at depth 127 decodes.
  const deepest = [...inlineKey("a"), OBJECT, ...key, TRUE, END, ...inlineKey("b"), SHAPED, 0x01];
  const shaped = [...key, ...Array(125).fill([OBJECT, ...key]).flat(), OBJECT, ...deepest, END, ...Array(125).fill(END)];
  let value = decodeBinaryState(frame(1, [], shaped), []).merge.k;
  for (let level = 0; level < 125; level += 1) value = value.k;
  assert.deepEqual(value, { a: { k: true }, b: { k: false } });
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
  first.binary(frame(3, [], [0x00, 0x0b]));
  assert.equal(land.stats.gaps, 1);
  assert.equal(first.syncRequests(), 1);
  first.binary(frame(4, [], [0x00, 0x05, ...zigzag(9)]));
  first.binary(frame(4, [], [0x00, 0x0b]));
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

test("a binary connection decodes deltas against its mirror, and a gap makes them a resync", async () => {
  ScriptedSocket.instances.length = 0;
  const intercepted = [];
  const connecting = LandConnection.connect("ws://gs/game/hero-defense?playerId=ann", {
    WebSocket: ScriptedSocket,
    sync: "binary",
    reconnect: false,
    interceptMessage: (message) => {
      intercepted.push(message);
      return true;
    },
  });
  const socket = ScriptedSocket.instances[0];
  await nextTask();
  const keys = ["heroes", "x", "y"];
  socket.text("join.ok", { landId: "l", playerId: "ann", seq: 0, state: { heroes: { ann: { x: 1.5, y: 2 } } }, keys });
  const land = await connecting;
  await nextTask();

  // heroes: { ann: { x: +0.25 } }, then a new hero shaped like ann's, then ann again.
  const ann = [...inlineKey("ann"), OBJECT, 0x04, ...delta(2, 25), END];
  socket.binary(frame(1, [], [0x00, OBJECT, ...ann, END]));
  assert.deepEqual(land.state, { heroes: { ann: { x: 1.75, y: 2 } } });
  assert.deepEqual(intercepted.at(-1).data, { seq: 1, merge: { heroes: { ann: { x: 1.75 } } } }, "presented decoded");
  socket.binary(frame(2, [[3, "bea"]], [
    0x00, OBJECT, ...inlineKey("ann"), OBJECT, 0x04, ...delta(2, 25), 0x08, ...delta(0, -2), END,
    0x0c, SHAPED, ...int(5), ...int(6), END,
  ]));
  assert.deepEqual(land.state, { heroes: { ann: { x: 2, y: 0 }, bea: { x: 5, y: 6 } } });
  socket.binary(frame(3, [], [0x00, OBJECT, 0x0c, OBJECT, 0x04, ...delta(1, 5), END, END]));
  assert.deepEqual(land.state.heroes.bea, { x: 5.5, y: 6 });
  assert.equal(land.stats.gaps, 0);

  // Frame 4 is lost; frame 5 steps from a member the mirror lacks: malformed, one gap.
  socket.binary(frame(5, [], [0x00, OBJECT, ...inlineKey("cid"), OBJECT, 0x04, ...delta(0, 1), END, END]));
  assert.equal(land.stats.gaps, 1);
  assert.equal(socket.syncRequests(), 1);
  socket.binary(frame(6, [], [0x00, OBJECT, ...inlineKey("cid"), OBJECT, 0x04, ...delta(0, 1), END, END]));
  assert.equal(land.stats.gaps, 1, "one repair at a time");
  assert.equal(land.seq, 3);
  socket.text("state.snapshot", { seq: 6, state: { heroes: { cid: { x: 8 } } }, keys: ["heroes", "x"] });
  socket.binary(frame(7, [], [0x00, OBJECT, ...inlineKey("cid"), OBJECT, 0x04, ...delta(0, 1), END, END]));
  assert.deepEqual(land.state, { heroes: { cid: { x: 9 } } });
  assert.equal(land.seq, 7);
  // A small step (tag 0x5d: −3 of scale 0) from the mirror's 9.
  socket.binary(frame(8, [], [0x00, OBJECT, ...inlineKey("cid"), OBJECT, 0x04, ...step(-3), END, END]));
  assert.deepEqual(land.state, { heroes: { cid: { x: 6 } } });
  assert.equal(land.stats.gaps, 1);
  await land.leave();
});
