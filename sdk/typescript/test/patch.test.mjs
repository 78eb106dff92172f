// RFC 6902 / RFC 6901 behaviour of the SDK's own patch implementation (no processes).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  JsonPatchError,
  applyMergePatch,
  applyPatch,
  assignmentUrl,
  devLandUrl,
  jsonEqual,
  percentEncode,
} from "../dist/index.js";

test("the RFC 6902 appendix examples apply", () => {
  assert.deepEqual(applyPatch({ foo: "bar" }, [{ op: "add", path: "/baz", value: "qux" }]), { foo: "bar", baz: "qux" });
  assert.deepEqual(applyPatch({ foo: ["bar", "baz"] }, [{ op: "add", path: "/foo/1", value: "qux" }]), {
    foo: ["bar", "qux", "baz"],
  });
  assert.deepEqual(applyPatch({ baz: "qux", foo: "bar" }, [{ op: "remove", path: "/baz" }]), { foo: "bar" });
  assert.deepEqual(applyPatch({ foo: ["bar", "qux", "baz"] }, [{ op: "remove", path: "/foo/1" }]), {
    foo: ["bar", "baz"],
  });
  assert.deepEqual(applyPatch({ baz: "qux", foo: "bar" }, [{ op: "replace", path: "/baz", value: "boo" }]), {
    baz: "boo",
    foo: "bar",
  });
  assert.deepEqual(
    applyPatch({ foo: { bar: "baz", waldo: "fred" }, qux: { corge: "grault" } }, [
      { op: "move", from: "/foo/waldo", path: "/qux/thud" },
    ]),
    { foo: { bar: "baz" }, qux: { corge: "grault", thud: "fred" } },
  );
  const grass = { foo: ["all", "grass", "cows", "eat"] };
  assert.deepEqual(applyPatch(grass, [{ op: "move", from: "/foo/1", path: "/foo/3" }]), {
    foo: ["all", "cows", "eat", "grass"],
  });
  assert.deepEqual(
    applyPatch({ baz: "qux", foo: ["a", 2, "c"] }, [
      { op: "test", path: "/baz", value: "qux" },
      { op: "test", path: "/foo/1", value: 2 },
    ]),
    { baz: "qux", foo: ["a", 2, "c"] },
  );
  assert.deepEqual(applyPatch({ foo: "bar" }, [{ op: "add", path: "/child", value: { grandchild: {} } }]), {
    foo: "bar",
    child: { grandchild: {} },
  });
  assert.deepEqual(applyPatch({ foo: ["bar"] }, [{ op: "add", path: "/foo/-", value: ["abc", "def"] }]), {
    foo: ["bar", ["abc", "def"]],
  });
  assert.deepEqual(applyPatch({ "/": 9, "~1": 10 }, [{ op: "test", path: "/~01", value: 10 }]), { "/": 9, "~1": 10 });
  assert.deepEqual(applyPatch({ "a/b": 1 }, [{ op: "replace", path: "/a~1b", value: 2 }]), { "a/b": 2 });
  assert.deepEqual(applyPatch({ a: 1 }, [{ op: "replace", path: "", value: [1] }]), [1]);
});

test("a copy is independent of its source", () => {
  const patched = applyPatch({ a: { b: 1 } }, [
    { op: "copy", from: "/a", path: "/c" },
    { op: "replace", path: "/c/b", value: 2 },
  ]);
  assert.deepEqual(patched, { a: { b: 1 }, c: { b: 2 } });
});

test("patches that do not apply throw and change nothing", () => {
  const document = { list: [1, 2], nested: { x: 1 } };
  const before = structuredClone(document);
  const failing = [
    [{ op: "remove", path: "/missing" }],
    [{ op: "replace", path: "/list/2", value: 0 }],
    [{ op: "add", path: "/list/3", value: 0 }],
    [{ op: "add", path: "/list/01", value: 0 }],
    [{ op: "add", path: "/nope/x", value: 0 }],
    [{ op: "test", path: "/nested/x", value: 2 }],
    [{ op: "move", from: "/nested", path: "/nested/inner" }],
    [{ op: "add", path: "nested", value: 0 }],
    [{ op: "add", path: "/a~2", value: 0 }],
    [{ op: "jump", path: "/a" }],
    [
      { op: "replace", path: "/nested/x", value: 5 },
      { op: "remove", path: "/list/9" },
    ],
  ];
  for (const patch of failing) {
    assert.throws(() => applyPatch(document, patch), JsonPatchError, JSON.stringify(patch));
  }
  assert.deepEqual(document, before, "the input is never modified");
});

test("the result shares unchanged parts and leaves the input alone", () => {
  const document = { big: { untouched: [1, 2, 3] }, small: { n: 1 } };
  const patched = applyPatch(document, [{ op: "replace", path: "/small/n", value: 2 }]);
  assert.equal(document.small.n, 1);
  assert.equal(patched.small.n, 2);
  assert.equal(patched.big, document.big, "unchanged subtrees are shared");
});

test("a __proto__ member is plain data", () => {
  const patched = applyPatch({}, [{ op: "add", path: "/__proto__", value: { polluted: true } }]);
  assert.equal(Object.getPrototypeOf(patched), Object.prototype);
  assert.deepEqual(Object.keys(patched), ["__proto__"]);
  assert.equal({}.polluted, undefined);
});

test("jsonEqual ignores member order", () => {
  assert.ok(jsonEqual({ a: 1, b: [1, { c: null }] }, { b: [1, { c: null }], a: 1 }));
  assert.ok(!jsonEqual({ a: 1 }, { a: 1, b: 2 }));
  assert.ok(!jsonEqual([1], { 0: 1 }));
});

test("URLs keep prefixes and encode values", () => {
  assert.equal(percentEncode("a-b_c.d~é!"), "a-b_c.d~%C3%A9%21");
  assert.equal(
    devLandUrl("http://127.0.0.1:8080/", "counter", "ann&co", "room 1"),
    "ws://127.0.0.1:8080/game/counter?playerId=ann%26co&landId=room%201",
  );
  const assignment = {
    assignmentId: "a1",
    matchToken: "first.token",
    connectUrl: "ws://127.0.0.1:9/game/hero-defense?landId=hero-defense:x",
    landId: "hero-defense:x",
    serverId: "g",
    expiresAt: "2030-01-01T00:00:00Z",
    memberTokens: { bob: "bob.t+k" },
  };
  assert.equal(assignmentUrl(assignment, "ann"), `${assignment.connectUrl}&token=first.token`);
  assert.ok(assignmentUrl(assignment, "bob").endsWith("&token=bob.t%2Bk"));
});

test("the RFC 7386 appendix examples merge, without touching their inputs", () => {
  const cases = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [document, patch, expected] of cases) {
    const before = JSON.stringify(document);
    assert.deepEqual(applyMergePatch(document, patch), expected, `${before} + ${JSON.stringify(patch)}`);
    assert.equal(JSON.stringify(document), before, "the document is not modified");
  }
  // A "__proto__" member is data, never the object's prototype.
  const merged = applyMergePatch({}, JSON.parse('{"__proto__": {"polluted": true}}'));
  assert.equal(Object.getPrototypeOf(merged), Object.prototype);
  assert.equal({}.polluted, undefined);
  assert.deepEqual(Object.keys(merged), ["__proto__"]);
});
