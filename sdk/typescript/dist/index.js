/**
 * `@matchplane/client`: the player's journey on matchplane from TypeScript, in browsers
 * and in Node ≥ 20.
 *
 * - {@link MatchmakingClient}: enqueue, status, cancel, and waiting for an assignment
 *   over the control plane's `/realtime` socket with automatic fallback to polling.
 * - {@link LandConnection} / {@link joinLand}: the game server's WebSocket protocol
 *   (docs/runtime-protocol.md): `join.ok`, a state mirror kept current by RFC 6902
 *   patches (or RFC 7386 merge patches, as JSON or as binary frames), resync on a
 *   sequence gap, actions as promises, events, reconnect within the land's grace.
 *
 * The package is one self-contained ES module without dependencies, so a page can load
 * `dist/index.js` directly (the control plane's play page does). It only uses the
 * platform's `fetch` and `WebSocket`; on Node 20, whose global `WebSocket` is missing,
 * pass a constructor (e.g. the `ws` package's) in the options.
 *
 * @packageDocumentation
 */
/** WebSocket close codes of the game server (docs/runtime-protocol.md, "Close codes"). */
export const CloseCode = {
    /** Land closed (after `land.closed`) or the client left. */
    NORMAL: 1000,
    /** Server shutting down or draining. */
    GOING_AWAY: 1001,
    /** The client did not read fast enough; it may reconnect. */
    SLOW_CONSUMER: 1008,
    MESSAGE_TOO_BIG: 1009,
    MALFORMED: 4400,
    UNAUTHENTICATED: 4401,
    FORBIDDEN: 4403,
    /** Unknown land type, or (error `land_lost`) a token of an earlier server instance. */
    UNKNOWN_LAND_TYPE: 4404,
    LAND_FULL_OR_CLOSED: 4409,
    SESSION_REPLACED: 4410,
    RATE_LIMITED: 4429,
};
/** Protocol version carried in every game-server envelope. */
export const PROTOCOL_VERSION = 1;
/** The server codes whose request may succeed when sent again later. */
const RETRYABLE_CODES = new Set([
    "STORE_UNAVAILABLE",
    "INTERNAL",
    "RATE_LIMITED",
    "TOO_MANY_CONNECTIONS",
]);
/**
 * Every failure of the SDK. Switch on {@link MatchplaneError.kind} and
 * {@link MatchplaneError.code}, never on messages.
 */
export class MatchplaneError extends Error {
    name = "MatchplaneError";
    kind;
    /** The server's code (`TICKET_NOT_FOUND`, `unknown_action`…), `null` when none was given. */
    code;
    /** HTTP status of a refused control-plane request. */
    status;
    /** WebSocket close code, when a socket closure is the failure. */
    closeCode;
    /** How long to wait before the next request (429 `RATE_LIMITED`). */
    retryAfterMs;
    /** The ticket the error is about (ended tickets, `PLAYER_ALREADY_QUEUED`, timeouts). */
    ticketId;
    /** Why a ticket failed (`server_lost`…). */
    reason;
    /** The `land.closed` of a land that ended. */
    landClosed;
    constructor(kind, message, details = {}) {
        super(message, details.cause === undefined ? undefined : { cause: details.cause });
        this.kind = kind;
        this.code = details.code ?? null;
        this.status = details.status ?? null;
        this.closeCode = details.closeCode ?? null;
        this.retryAfterMs = details.retryAfterMs ?? null;
        this.ticketId = details.ticketId ?? null;
        this.reason = details.reason ?? null;
        this.landClosed = details.landClosed ?? null;
    }
    /** Whether the same request may succeed when sent again later. */
    get retryable() {
        switch (this.kind) {
            case "network":
                return true;
            case "http":
            case "realtime":
                return this.code === null ? (this.status ?? 0) >= 500 : RETRYABLE_CODES.has(this.code);
            default:
                return false;
        }
    }
}
/** When a 429 carries no usable `Retry-After`; the control plane never asks for less. */
const DEFAULT_RETRY_AFTER_MS = 1000;
function isRecord(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
}
/** The typed error for a refused control-plane request (status, `Retry-After`, body). */
function refusal(url, status, retryAfter, body) {
    let code = null;
    let message = body.slice(0, 200);
    try {
        const parsed = JSON.parse(body);
        if (isRecord(parsed) && isRecord(parsed.error) && typeof parsed.error.code === "string") {
            code = parsed.error.code;
            message = typeof parsed.error.message === "string" ? parsed.error.message : code;
        }
    }
    catch {
        // A proxy's error page: keep its text as the message.
    }
    const details = { code, status };
    // 429 counts without an envelope too: a proxy's rate limit means the same thing.
    if (status === 429 || code === "RATE_LIMITED") {
        const seconds = retryAfter === null ? Number.NaN : Number(retryAfter.trim());
        details.retryAfterMs = Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : DEFAULT_RETRY_AFTER_MS;
        details.code = code ?? "RATE_LIMITED";
    }
    if (code === "PLAYER_ALREADY_QUEUED") {
        details.ticketId = queuedTicketId(message);
    }
    return new MatchplaneError("http", `${url}: ${status}${code === null ? "" : ` ${code}`}: ${message}`, details);
}
/**
 * The ticket a `PLAYER_ALREADY_QUEUED` message names ("… queued in ticketId <id>; …"):
 * the envelope has no field for it, so this reads the message and gives up quietly
 * when its wording changes.
 */
function queuedTicketId(message) {
    const match = /ticketId ([A-Za-z0-9_.:-]+)/.exec(message);
    const id = match?.[1]?.replace(/[.:]+$/, "");
    return id === undefined || id === "" ? null : id;
}
function describe(error) {
    return error instanceof Error ? error.message : String(error);
}
// ---------------------------------------------------------------------------------------
// URLs: base URLs may carry an LB prefix (`https://lb/match`), so paths and query
// parameters are appended by hand instead of resolved, which would drop the prefix.
// ---------------------------------------------------------------------------------------
/** Percent-encodes everything but RFC 3986 unreserved characters. */
export function percentEncode(text) {
    let encoded;
    try {
        encoded = encodeURIComponent(text);
    }
    catch (error) {
        throw new MatchplaneError("invalidArgument", `cannot encode ${JSON.stringify(text)}: ${describe(error)}`);
    }
    return encoded.replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}
/** `http(s)://` → `ws(s)://`; URLs already in a WebSocket scheme are kept. */
export function toWebSocketUrl(url) {
    if (url.startsWith("https://"))
        return `wss://${url.slice("https://".length)}`;
    if (url.startsWith("http://"))
        return `ws://${url.slice("http://".length)}`;
    return url;
}
function withQuery(url, key, value) {
    return `${url}${url.includes("?") ? "&" : "?"}${key}=${percentEncode(value)}`;
}
/**
 * The URL a player connects to for an assignment: `connectUrl` plus the player's own
 * token (`memberTokens[playerId]`, else the ticket's `matchToken`).
 */
export function assignmentUrl(assignment, playerId) {
    const token = assignment.memberTokens?.[playerId] ?? assignment.matchToken;
    if (!token) {
        throw new MatchplaneError("noToken", `the assignment has no token for player ${playerId}`);
    }
    return withQuery(assignment.connectUrl, "token", token);
}
/**
 * A development URL for a game server started with `--auth none`: the server trusts
 * `playerId`; without `landId` it creates a fresh land.
 */
export function devLandUrl(gameServerUrl, landType, playerId, landId) {
    const base = toWebSocketUrl(gameServerUrl.replace(/\/+$/, ""));
    const url = withQuery(`${base}/game/${percentEncode(landType)}`, "playerId", playerId);
    return landId === undefined ? url : withQuery(url, "landId", landId);
}
// ---------------------------------------------------------------------------------------
// JSON Patch (RFC 6902) over JSON Pointers (RFC 6901)
// ---------------------------------------------------------------------------------------
/** A patch that does not apply (missing path, failed `test`, bad pointer…). */
export class JsonPatchError extends Error {
    name = "JsonPatchError";
    /** Index of the failing operation in the patch. */
    operationIndex;
    constructor(operationIndex, message) {
        super(`operation ${operationIndex}: ${message}`);
        this.operationIndex = operationIndex;
    }
}
function isContainer(value) {
    return typeof value === "object" && value !== null;
}
function parsePointer(pointer) {
    if (typeof pointer !== "string")
        throw new Error("the path is not a string");
    if (pointer === "")
        return [];
    if (!pointer.startsWith("/"))
        throw new Error(`pointer ${JSON.stringify(pointer)} does not start with "/"`);
    return pointer
        .slice(1)
        .split("/")
        .map((token) => {
        if (/~(?![01])/.test(token))
            throw new Error(`pointer ${JSON.stringify(pointer)} has an invalid escape`);
        // ~1 first, so that "~01" becomes "~1" and not "/".
        return token.replace(/~1/g, "/").replace(/~0/g, "~");
    });
}
function arrayIndex(token, length, allowEnd) {
    if (allowEnd && token === "-")
        return length;
    if (!/^(0|[1-9][0-9]*)$/.test(token))
        throw new Error(`${JSON.stringify(token)} is not an array index`);
    const index = Number(token);
    if (index > length || (!allowEnd && index === length))
        throw new Error(`index ${index} is out of bounds`);
    return index;
}
function hasMember(object, key) {
    return Object.prototype.hasOwnProperty.call(object, key);
}
function setMember(object, key, value) {
    // A plain assignment to "__proto__" would change the object's prototype instead.
    Object.defineProperty(object, key, { value, writable: true, enumerable: true, configurable: true });
}
function child(container, token) {
    if (Array.isArray(container)) {
        if (!/^(0|[1-9][0-9]*)$/.test(token))
            return undefined;
        return container[Number(token)];
    }
    return hasMember(container, token) ? container[token] : undefined;
}
/** Deep equality of JSON values (object member order does not matter). */
export function jsonEqual(a, b) {
    if (a === b)
        return true;
    if (!isContainer(a) || !isContainer(b))
        return false;
    if (Array.isArray(a) || Array.isArray(b)) {
        if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length)
            return false;
        return a.every((item, index) => jsonEqual(item, b[index]));
    }
    const keys = Object.keys(a);
    if (keys.length !== Object.keys(b).length)
        return false;
    return keys.every((key) => hasMember(b, key) && jsonEqual(a[key], b[key]));
}
function deepCopy(value) {
    if (!isContainer(value))
        return value;
    if (Array.isArray(value))
        return value.map(deepCopy);
    const copy = {};
    for (const key of Object.keys(value)) {
        const item = value[key];
        if (item !== undefined)
            setMember(copy, key, deepCopy(item));
    }
    return copy;
}
/**
 * One patch application. The input document is never modified: containers on the paths
 * that change are copied once per application (then changed in place), everything else
 * is shared with the input, so consecutive states share their unchanged parts.
 */
class PatchApplication {
    root;
    copies = new WeakSet();
    constructor(root) {
        this.root = root;
    }
    writable(container) {
        if (this.copies.has(container))
            return container;
        const copy = Array.isArray(container) ? container.slice() : { ...container };
        this.copies.add(copy);
        return copy;
    }
    get(tokens) {
        let node = this.root;
        for (const token of tokens) {
            node = isContainer(node) ? child(node, token) : undefined;
            if (node === undefined)
                throw new Error(`path /${tokens.join("/")} does not exist`);
        }
        return node;
    }
    /** The (writable) container holding the last token, copying containers on the way. */
    parentOf(tokens) {
        if (!isContainer(this.root))
            throw new Error("the document is not an object or array");
        let node = this.writable(this.root);
        this.root = node;
        for (let depth = 0; depth < tokens.length - 1; depth += 1) {
            const token = tokens[depth];
            const next = child(node, token);
            if (!isContainer(next))
                throw new Error(`path /${tokens.slice(0, depth + 1).join("/")} is not a container`);
            const copy = this.writable(next);
            if (Array.isArray(node))
                node[Number(token)] = copy;
            else
                setMember(node, token, copy);
            node = copy;
        }
        return [node, tokens[tokens.length - 1]];
    }
    add(tokens, value) {
        if (tokens.length === 0) {
            this.root = value;
            return;
        }
        const [parent, key] = this.parentOf(tokens);
        if (Array.isArray(parent))
            parent.splice(arrayIndex(key, parent.length, true), 0, value);
        else
            setMember(parent, key, value);
    }
    remove(tokens) {
        if (tokens.length === 0)
            throw new Error("cannot remove the whole document");
        const [parent, key] = this.parentOf(tokens);
        if (Array.isArray(parent)) {
            return parent.splice(arrayIndex(key, parent.length, false), 1)[0];
        }
        if (!hasMember(parent, key))
            throw new Error(`member ${JSON.stringify(key)} does not exist`);
        const removed = parent[key];
        delete parent[key];
        return removed;
    }
    replace(tokens, value) {
        if (tokens.length === 0) {
            this.root = value;
            return;
        }
        const [parent, key] = this.parentOf(tokens);
        if (Array.isArray(parent)) {
            parent[arrayIndex(key, parent.length, false)] = value;
        }
        else {
            if (!hasMember(parent, key))
                throw new Error(`member ${JSON.stringify(key)} does not exist`);
            setMember(parent, key, value);
        }
    }
    apply(operation) {
        const path = parsePointer(operation.path);
        switch (operation.op) {
            case "add":
                this.add(path, requireValue(operation));
                break;
            case "remove":
                this.remove(path);
                break;
            case "replace":
                this.replace(path, requireValue(operation));
                break;
            case "move": {
                if (operation.from === operation.path) {
                    this.get(path);
                    break;
                }
                if (operation.path.startsWith(`${operation.from}/`))
                    throw new Error("cannot move a value into itself");
                this.add(path, this.remove(parsePointer(operation.from)));
                break;
            }
            case "copy":
                // A copy must not share containers this application may still change in place.
                this.add(path, deepCopy(this.get(parsePointer(operation.from))));
                break;
            case "test":
                if (!jsonEqual(this.get(path), requireValue(operation))) {
                    throw new Error(`test failed at ${operation.path}`);
                }
                break;
            default:
                throw new Error(`unknown op ${JSON.stringify(operation.op)}`);
        }
    }
}
function requireValue(operation) {
    if (operation.value === undefined)
        throw new Error("the operation has no value");
    return operation.value;
}
/**
 * Applies an RFC 7386 JSON Merge Patch and returns the new document: object members are
 * merged one by one, a `null` member removes it, anything else (arrays included)
 * replaces the target whole. `document` is not modified; the result shares unchanged
 * parts with it and with the patch, so treat both as read-only.
 */
export function applyMergePatch(document, patch) {
    if (!isRecord(patch))
        return patch;
    const target = {};
    if (isRecord(document)) {
        for (const [key, value] of Object.entries(document))
            setMember(target, key, value);
    }
    for (const [key, value] of Object.entries(patch)) {
        if (value === null) {
            delete target[key];
        }
        else {
            setMember(target, key, applyMergePatch(hasMember(target, key) ? target[key] : null, value));
        }
    }
    return target;
}
/**
 * Applies an RFC 6902 patch (`add`, `remove`, `replace`, `move`, `copy`, `test`) and
 * returns the new document; atomic: on a {@link JsonPatchError} nothing changed.
 *
 * `document` is not modified; the result shares unchanged parts with it and with the
 * operations' values, so treat both as read-only.
 */
export function applyPatch(document, operations) {
    if (!Array.isArray(operations))
        throw new JsonPatchError(0, "a patch is an array of operations");
    const application = new PatchApplication(document);
    operations.forEach((operation, index) => {
        try {
            if (!isRecord(operation))
                throw new Error("an operation is an object");
            application.apply(operation);
        }
        catch (error) {
            throw new JsonPatchError(index, describe(error));
        }
    });
    return application.root;
}
// ---------------------------------------------------------------------------------------
// Binary state frames (`?sync=binary`, docs/runtime-protocol.md)
// ---------------------------------------------------------------------------------------
/** The only frame kind so far: a state merge. */
const FRAME_STATE_MERGE = 0x01;
const TAG_NULL = 0x00;
const TAG_FALSE = 0x01;
const TAG_TRUE = 0x02;
const TAG_OBJECT = 0x03;
const TAG_ARRAY = 0x04;
const TAG_ZIGZAG = 0x05;
const TAG_UNSIGNED = 0x06;
const TAG_FLOAT64 = 0x07;
const TAG_STRING = 0x08;
const TAG_TABLE_STRING = 0x09;
const TAG_SHAPED = 0x0a;
const TAG_DECIMAL = 0x10;
const TAG_DECIMAL_LAST = 0x1f;
const TAG_DELTA = 0x20;
const TAG_DELTA_LAST = 0x2f;
/** `TAG_SMALL_STEP_ZERO + d`, d in −32 … 31: a float that moved by d steps of its previous value's own scale. */
const TAG_SMALL_STEP = 0x40;
const TAG_SMALL_STEP_ZERO = 0x60;
const TAG_SMALL_STEP_LAST = 0x7f;
/**
 * Objects and arrays nest at most this deep, counted as the Rust decoder counts them: the
 * frame's own members are at depth 0 and each object or array value adds one, so a frame
 * holds 127 nested objects below its top level but not 128. The explicit limit keeps a
 * hostile frame from reaching the engine's stack limit.
 */
const MAX_DEPTH = 128;
/**
 * 10^0 … 10^15 as literals: each is an exact double, so `m / POWERS_OF_TEN[scale]` is the
 * single correctly rounded division the server's number came from (`**` is not
 * guaranteed exact on every engine).
 */
const POWERS_OF_TEN = [1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15];
/** Mantissas of decimal floats stay below 2^53, where every integer is an exact double. */
const MAX_EXACT_MANTISSA = 2 ** 53;
/**
 * Rounds halves away from zero, as Rust's `f64::round` does (`Math.round` rounds them up).
 *
 * The scale search of {@link ownScale} needs exactly the server's rounding: for a negative
 * number with a 16-digit mantissa in [2^51, 2^52), `p × 10^s` can come out as a halfway
 * product, and then the two roundings pick different neighbours of which exactly one
 * divides back to `p` (e.g. −287869588838.4985 has scale 4 for the server, none with
 * `Math.round`; −4.128692848130252 has none for the server, 15 with `Math.round`).
 */
function roundHalfAway(value) {
    return value < 0 ? -Math.round(-value) : Math.round(value);
}
/**
 * A number's own scale (tags 0x40–0x7F): the smallest `s` of 0 … 15 with
 * `round(p × 10^s) ÷ 10^s = p` and `|round(p × 10^s)| < 2^53`, as `[10^s, round(p × 10^s)]`,
 * or `undefined` when it has none (−0 has none either). The same search as the Rust
 * encoder's `decimal`, operation for operation.
 */
function ownScale(p) {
    if (Object.is(p, -0))
        return undefined;
    for (const power of POWERS_OF_TEN) {
        const mantissa = roundHalfAway(p * power);
        // The bound first, as the server checks it: a mantissa past 2^53 that divides back to p is still no scale.
        if (Math.abs(mantissa) >= MAX_EXACT_MANTISSA)
            return undefined;
        if (mantissa / power === p)
            return [power, mantissa];
    }
    return undefined;
}
/** Varints of up to 7 bytes (49 bits) are summed exactly in a double; longer ones go through BigInt. */
const SMALL_VARINT_BYTES = 7;
// Fatal, so that invalid UTF-8 makes the frame malformed instead of turning into U+FFFD.
let strictUtf8;
function decodeUtf8(bytes) {
    strictUtf8 ??= new TextDecoder("utf-8", { fatal: true });
    return strictUtf8.decode(bytes);
}
class MalformedFrame extends Error {
}
/** The member of the same key in the state before the frame, if `base` is an object that has it. */
function priorMember(base, key) {
    return base !== undefined && hasMember(base, key) ? base[key] : undefined;
}
/** A value the members of a new object are decoded against: only a (non-array) object. */
function asBase(value) {
    return isContainer(value) && !Array.isArray(value) ? value : undefined;
}
/** One pass over a frame; table definitions are logged so that a failure can undo them. */
class FrameReader {
    bytes;
    keys;
    base;
    offset = 0;
    view;
    /** `[index, previous entry]` per definition, `undefined` for an appended one. */
    undo = [];
    constructor(bytes, keys, 
    /** The state before the frame, the base of its steps (tags 0x20–0x2F and 0x40–0x7F). */
    base) {
        this.bytes = bytes;
        this.keys = keys;
        this.base = base;
        this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    get position() {
        return this.offset;
    }
    frame() {
        const kind = this.byte();
        if (kind !== FRAME_STATE_MERGE)
            throw new MalformedFrame(`unknown frame kind 0x${hex(kind)}`);
        const seq = this.unsigned();
        if (!Number.isSafeInteger(seq))
            throw new MalformedFrame("seq beyond 2^53 - 1");
        this.definitions();
        const merge = this.object(0, this.base).object;
        if (this.offset !== this.bytes.length) {
            throw new MalformedFrame(`${this.bytes.length - this.offset} bytes left over`);
        }
        return { seq, merge };
    }
    byte() {
        const value = this.bytes[this.offset];
        if (value === undefined)
            throw new MalformedFrame("truncated");
        this.offset += 1;
        return value;
    }
    take(length) {
        if (length > this.bytes.length - this.offset)
            throw new MalformedFrame("truncated");
        const slice = this.bytes.subarray(this.offset, this.offset + length);
        this.offset += length;
        return slice;
    }
    /** An unsigned LEB128 varint: a number while exact, a BigInt when it needs more than 49 bits of bytes. */
    varint() {
        let value = 0;
        let scale = 1;
        for (let index = 0; index < SMALL_VARINT_BYTES; index += 1) {
            const byte = this.byte();
            value += (byte & 0x7f) * scale;
            if (byte < 0x80)
                return value;
            scale *= 0x80;
        }
        let big = BigInt(value);
        for (let index = SMALL_VARINT_BYTES; index < 10; index += 1) {
            const byte = this.byte();
            big |= BigInt(byte & 0x7f) << BigInt(7 * index);
            if (byte < 0x80) {
                if (big >> 64n !== 0n)
                    throw new MalformedFrame("varint beyond 2^64 - 1");
                return big;
            }
        }
        throw new MalformedFrame("varint longer than 10 bytes");
    }
    /** A varint as a number (rounded to the nearest double beyond 2^53). */
    unsigned() {
        const value = this.varint();
        return typeof value === "number" ? value : Number(value);
    }
    /** A zigzag varint: 0, 1, 2, 3 … are 0, −1, 1, −2 … */
    zigzag() {
        const value = this.varint();
        if (typeof value === "number")
            return value % 2 === 0 ? value / 2 : -(value + 1) / 2;
        return Number((value >> 1n) ^ -(value & 1n));
    }
    string(length) {
        try {
            return decodeUtf8(this.take(length));
        }
        catch (error) {
            if (error instanceof MalformedFrame)
                throw error;
            throw new MalformedFrame("invalid UTF-8");
        }
    }
    tableEntry(index) {
        const entry = this.keys[index];
        if (entry === undefined)
            throw new MalformedFrame(`key table index ${index} past its end (${this.keys.length})`);
        return entry;
    }
    definitions() {
        const count = this.unsigned();
        for (let defined = 0; defined < count; defined += 1) {
            const index = this.unsigned();
            const name = this.string(this.unsigned());
            if (index > this.keys.length) {
                throw new MalformedFrame(`key table definition ${index} past its end (${this.keys.length})`);
            }
            this.undo.push([index, this.keys[index]]);
            this.keys[index] = name;
        }
    }
    /** A key, or `null` at the object's END. */
    key() {
        const header = this.varint();
        // h >> 2 and h & 3 without 32-bit bitwise operators, which would cut large headers.
        const kind = typeof header === "number" ? header % 4 : Number(header & 3n);
        const rest = typeof header === "number" ? (header - kind) / 4 : header >> 2n;
        switch (kind) {
            case 0:
                return this.tableEntry(Number(rest));
            case 1:
                // A BigInt keeps the digits of headers beyond 2^53 exact.
                return String(rest);
            case 2:
                return this.string(Number(rest));
            default:
                if (Number(rest) !== 0)
                    throw new MalformedFrame(`key header ${String(header)} is neither a key nor END`);
                return null;
        }
    }
    checkDepth(depth) {
        if (depth >= MAX_DEPTH)
            throw new MalformedFrame(`objects and arrays nest deeper than ${MAX_DEPTH}`);
    }
    /** Members up to END (tag 0x03, or the frame's own); `order` is their keys as the frame lists them. */
    object(depth, base) {
        this.checkDepth(depth);
        const object = {};
        const order = [];
        const enclosing = { lastShape: undefined };
        for (;;) {
            const key = this.key();
            if (key === null)
                return { object, order };
            order.push(key);
            setMember(object, key, this.value(depth, priorMember(base, key), enclosing));
        }
    }
    /** Tag 0x0A: one value per key of `shape`, no END. */
    shaped(depth, base, shape) {
        this.checkDepth(depth);
        const object = {};
        const enclosing = { lastShape: undefined };
        for (const key of shape)
            setMember(object, key, this.value(depth, priorMember(base, key), enclosing));
        return object;
    }
    /**
     * A value at `depth`: `prior` is what its member held before the frame (`undefined`
     * in arrays and where the state has no such member), `enclosing` its object's shape
     * memory (`null` for array items).
     */
    value(depth, prior, enclosing) {
        const at = this.offset;
        const tag = this.byte();
        switch (tag) {
            case TAG_NULL:
                return null;
            case TAG_FALSE:
                return false;
            case TAG_TRUE:
                return true;
            case TAG_OBJECT: {
                const { object, order } = this.object(depth + 1, asBase(prior));
                if (enclosing !== null)
                    enclosing.lastShape = order;
                return object;
            }
            case TAG_SHAPED: {
                const shape = enclosing?.lastShape;
                if (shape === undefined) {
                    this.offset = at;
                    throw new MalformedFrame(enclosing === null ? "a shaped object (0x0a) in an array" : "a shaped object (0x0a) with no object before it");
                }
                // Its keys are the shape it reused, so the next 0x0A reuses that same shape.
                return this.shaped(depth + 1, asBase(prior), shape);
            }
            case TAG_ARRAY: {
                this.checkDepth(depth + 1);
                const count = this.unsigned();
                // Every value takes at least a byte: a count beyond the rest is not allocated.
                if (count > this.bytes.length - this.offset)
                    throw new MalformedFrame("truncated");
                const array = [];
                for (let index = 0; index < count; index += 1)
                    array.push(this.value(depth + 1, undefined, null));
                return array;
            }
            case TAG_ZIGZAG:
                return this.zigzag();
            case TAG_UNSIGNED:
                return this.unsigned();
            case TAG_FLOAT64: {
                this.take(8);
                const float = this.view.getFloat64(at + 1, true);
                // NaN and infinities are no JSON values: the server never holds them.
                if (!Number.isFinite(float))
                    throw new MalformedFrame("a float that is not finite");
                return float;
            }
            case TAG_STRING:
                return this.string(this.unsigned());
            case TAG_TABLE_STRING:
                return this.tableEntry(this.unsigned());
            default:
                if (tag >= TAG_DECIMAL && tag <= TAG_DECIMAL_LAST) {
                    return this.zigzag() / POWERS_OF_TEN[tag - TAG_DECIMAL];
                }
                if (tag >= TAG_DELTA && tag <= TAG_DELTA_LAST) {
                    if (typeof prior !== "number") {
                        this.offset = at;
                        throw new MalformedFrame(`a delta (0x${hex(tag)}) for a member that is not a number in the state`);
                    }
                    const power = POWERS_OF_TEN[tag - TAG_DELTA];
                    const value = (roundHalfAway(prior * power) + this.zigzag()) / power;
                    // A base near the largest doubles can overflow once scaled: no JSON number.
                    if (!Number.isFinite(value))
                        throw new MalformedFrame("a delta whose value is not finite");
                    return value;
                }
                if (tag >= TAG_SMALL_STEP && tag <= TAG_SMALL_STEP_LAST) {
                    // Its base is found exactly like a 0x20–0x2F delta's: the member's number in the state.
                    const scaled = typeof prior === "number" ? ownScale(prior) : undefined;
                    if (scaled === undefined) {
                        this.offset = at;
                        const from = Object.is(prior, -0) ? "-0" : String(prior);
                        throw new MalformedFrame(typeof prior === "number"
                            ? `a small step (0x${hex(tag)}) from ${from}, which has no decimal scale of at most 15`
                            : `a small step (0x${hex(tag)}) for a member that is not a number in the state`);
                    }
                    const [power, mantissa] = scaled;
                    // |mantissa| < 2^53 and the step is −32 … 31: the sum rounds like the server's
                    // `(m + d) as f64`, and the quotient is finite.
                    return (mantissa + (tag - TAG_SMALL_STEP_ZERO)) / power;
                }
                this.offset = at;
                throw new MalformedFrame(`unknown value tag 0x${hex(tag)}`);
        }
    }
}
function hex(byte) {
    return byte.toString(16).padStart(2, "0");
}
/**
 * Decodes one binary state frame of a `?sync=binary` connection (docs/runtime-protocol.md,
 * "Binary state frames"): its `seq` and the RFC 7386 merge patch it carries, to apply
 * with {@link applyMergePatch} like a `state.merge`.
 *
 * `keys` is the land's key table (from the latest `join.ok` / `state.snapshot`); the
 * entries the frame defines are written into it. `base` is the state at `seq - 1` (the
 * mirror the merge patch applies to): floats sent as a change from their previous value
 * (tags 0x20–0x2F and 0x40–0x7F) are decoded against it, and without it such a frame is malformed.
 * Throws a {@link MatchplaneError} of kind `protocol` on a malformed frame, and then
 * `keys` is left as it was.
 */
export function decodeBinaryState(bytes, keys, base) {
    const reader = new FrameReader(bytes, keys, asBase(base));
    try {
        return reader.frame();
    }
    catch (error) {
        for (const [index, previous] of reader.undo.reverse()) {
            if (previous === undefined)
                keys.length = index;
            else
                keys[index] = previous;
        }
        // Anything else thrown is a bug of ours, but for the caller still a frame it cannot use.
        const reason = error instanceof MalformedFrame ? error.message : describe(error);
        throw new MatchplaneError("protocol", `malformed binary state frame at byte ${reader.position}: ${reason}`, {
            cause: error instanceof MalformedFrame ? undefined : error,
        });
    }
}
const OPEN = 1;
function defaultWebSocket() {
    return globalThis.WebSocket;
}
function now() {
    return globalThis.performance?.now() ?? Date.now();
}
function abortedError(signal) {
    return new MatchplaneError("aborted", "the operation was aborted", { cause: signal.reason });
}
/** Resolves after `ms`; rejects with an `aborted` error when `signal` fires first. */
function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
        if (signal?.aborted) {
            reject(abortedError(signal));
            return;
        }
        const onAbort = () => {
            clearTimeout(timer);
            reject(abortedError(signal));
        };
        const timer = setTimeout(() => {
            signal?.removeEventListener("abort", onAbort);
            resolve();
        }, Math.max(0, ms));
        signal?.addEventListener("abort", onAbort, { once: true });
    });
}
/**
 * An `AbortController` that fires when the caller's signal does or when `timeoutMs`
 * runs out, remembering which (so the caller gets `aborted` or `timeout`).
 */
class Deadline {
    parent;
    controller = new AbortController();
    timedOut = false;
    timer;
    onAbort = () => this.controller.abort();
    constructor(timeoutMs, parent) {
        this.parent = parent;
        if (timeoutMs !== undefined && Number.isFinite(timeoutMs)) {
            this.timer = setTimeout(() => {
                this.timedOut = true;
                this.controller.abort();
            }, Math.max(0, timeoutMs));
        }
        if (parent?.aborted)
            this.controller.abort();
        else
            parent?.addEventListener("abort", this.onAbort, { once: true });
    }
    get signal() {
        return this.controller.signal;
    }
    dispose() {
        clearTimeout(this.timer);
        this.parent?.removeEventListener("abort", this.onAbort);
    }
}
/** Typed listeners; a throwing listener is reported asynchronously, never breaks the SDK. */
class Emitter {
    listeners = new Map();
    on(type, listener) {
        let set = this.listeners.get(type);
        if (set === undefined) {
            set = new Set();
            this.listeners.set(type, set);
        }
        set.add(listener);
        return () => {
            set?.delete(listener);
        };
    }
    emit(type, value) {
        for (const listener of [...(this.listeners.get(type) ?? [])]) {
            try {
                listener(value);
            }
            catch (error) {
                queueMicrotask(() => {
                    throw error;
                });
            }
        }
    }
}
function messageText(event) {
    return typeof event.data === "string" ? event.data : null;
}
/**
 * A frame's text, or the bytes of a binary frame in whichever shape the socket hands
 * them over: an `ArrayBuffer` (browsers, Node's `WebSocket`, `ws` with `binaryType =
 * "arraybuffer"`), a `Buffer` or other view (`ws`'s default), or `Buffer` fragments.
 */
function messageData(event) {
    const data = event.data;
    if (typeof data === "string")
        return data;
    // The tag also recognises buffers of another realm (an iframe, a test DOM).
    if (data instanceof ArrayBuffer || Object.prototype.toString.call(data) === "[object ArrayBuffer]") {
        return new Uint8Array(data);
    }
    if (ArrayBuffer.isView(data))
        return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (Array.isArray(data) && data.every((part) => ArrayBuffer.isView(part))) {
        const parts = data;
        const joined = new Uint8Array(parts.reduce((total, part) => total + part.byteLength, 0));
        let offset = 0;
        for (const part of parts) {
            joined.set(new Uint8Array(part.buffer, part.byteOffset, part.byteLength), offset);
            offset += part.byteLength;
        }
        return joined;
    }
    // A Blob could only be read asynchronously, out of order with the text frames:
    // `binaryType = "arraybuffer"` keeps them from arriving.
    return null;
}
/**
 * Client of the control plane's matchmaking API.
 *
 * ```ts
 * const client = new MatchmakingClient({ baseUrl: "http://127.0.0.1:3000" });
 * const { ticketId } = await client.enqueue({ queueKey: "counter:2", members: ["ann"] });
 * const assignment = await client.waitForAssignment(ticketId, { timeoutMs: 60_000 });
 * ```
 */
export class MatchmakingClient {
    baseUrl;
    playerToken;
    fetchImpl;
    webSocket;
    poll;
    push;
    rateLimitRetries;
    requestTimeoutMs;
    constructor(options) {
        const settings = typeof options === "string" ? { baseUrl: options } : options;
        this.baseUrl = settings.baseUrl.replace(/\/+$/, "");
        this.playerToken = settings.playerToken;
        const platformFetch = globalThis.fetch?.bind(globalThis);
        const fetchImpl = settings.fetch ?? platformFetch;
        if (fetchImpl === undefined) {
            throw new MatchplaneError("invalidArgument", "no fetch available: pass options.fetch");
        }
        this.fetchImpl = fetchImpl;
        this.webSocket = settings.WebSocket ?? defaultWebSocket();
        this.poll = {
            initialMs: settings.pollBackoff?.initialMs ?? 100,
            maxMs: settings.pollBackoff?.maxMs ?? 2000,
            factor: settings.pollBackoff?.factor ?? 1.5,
        };
        this.push = settings.push ?? true;
        this.rateLimitRetries = settings.rateLimitRetries ?? 3;
        this.requestTimeoutMs = settings.requestTimeoutMs ?? 30_000;
    }
    /** Replaces the player token (or provider); `undefined` stops sending one. */
    setPlayerToken(token) {
        this.playerToken = token;
    }
    /** `ws(s)://…/realtime` under the same base (and prefix) as the REST calls. */
    realtimeUrl() {
        return `${toWebSocketUrl(this.baseUrl)}/realtime`;
    }
    async token() {
        const token = typeof this.playerToken === "function" ? await this.playerToken() : this.playerToken;
        return token ? token : null;
    }
    async call(method, path, body, signal) {
        const url = `${this.baseUrl}${path}`;
        const headers = { accept: "application/json" };
        if (body !== undefined)
            headers["content-type"] = "application/json";
        const token = await this.token();
        if (token !== null)
            headers.authorization = `Bearer ${token}`;
        const deadline = new Deadline(this.requestTimeoutMs, signal);
        try {
            let response;
            let text;
            try {
                const init = { method, headers, signal: deadline.signal };
                if (body !== undefined)
                    init.body = JSON.stringify(body);
                response = await this.fetchImpl(url, init);
                text = await response.text();
            }
            catch (error) {
                if (signal?.aborted)
                    throw abortedError(signal);
                if (deadline.timedOut) {
                    throw new MatchplaneError("timeout", `${url}: no answer within ${this.requestTimeoutMs} ms`);
                }
                throw new MatchplaneError("network", `control plane unreachable at ${url}: ${describe(error)}`, {
                    cause: error,
                });
            }
            if (!response.ok)
                throw refusal(url, response.status, response.headers.get("retry-after"), text);
            try {
                return JSON.parse(text);
            }
            catch (error) {
                throw new MatchplaneError("protocol", `${url}: the answer is not JSON: ${describe(error)}`, {
                    status: response.status,
                });
            }
        }
        finally {
            deadline.dispose();
        }
    }
    /**
     * `POST /v1/matchmaking/enqueue`; the answer means the ticket is durably stored.
     * A 429 is waited out and the enqueue sent again, up to `rateLimitRetries` times.
     */
    async enqueue(request, options = {}) {
        for (let refusals = 0;; refusals += 1) {
            try {
                return await this.call("POST", "/v1/matchmaking/enqueue", request, options.signal);
            }
            catch (error) {
                if (!isRateLimited(error) || refusals >= this.rateLimitRetries)
                    throw error;
                await sleep(error.retryAfterMs ?? DEFAULT_RETRY_AFTER_MS, options.signal);
            }
        }
    }
    /** `GET /v1/matchmaking/status/{ticketId}`. */
    status(ticketId, options = {}) {
        return this.call("GET", `/v1/matchmaking/status/${percentEncode(ticketId)}`, undefined, options.signal);
    }
    /** `POST /v1/matchmaking/cancel`: `cancelled: false` (with the status) when no longer queued. */
    cancel(ticketId, options = {}) {
        return this.call("POST", "/v1/matchmaking/cancel", { ticketId }, options.signal);
    }
    /** Opens a `/realtime` socket that can watch up to 32 tickets and enqueue over the socket. */
    async watch(options = {}) {
        const url = await this.authorizedRealtimeUrl(null);
        return RealtimeWatch.open(this.requireWebSocket(), url, options.signal);
    }
    /**
     * Waits until the ticket is assigned: push over `/realtime` first; if the socket
     * cannot connect, drops, or reports a server-side problem, status polling with
     * backoff takes over until the same deadline.
     *
     * Rejects with `ticketCancelled` / `ticketExpired` / `ticketFailed`, `timeout`,
     * `aborted`, or the `http` error polling got (e.g. `UNAUTHENTICATED`, `TICKET_NOT_FOUND`).
     */
    async waitForAssignment(ticketId, options = {}) {
        return (await this.waitForAssignmentVia(ticketId, options)).assignment;
    }
    /** Like {@link waitForAssignment}, also saying whether push or polling found it. */
    async waitForAssignmentVia(ticketId, options = {}) {
        const timeoutMs = options.timeoutMs ?? 60_000;
        const deadline = new Deadline(timeoutMs, options.signal);
        try {
            if (this.push && this.webSocket !== undefined) {
                const outcome = await this.waitPush(ticketId, deadline.signal);
                if (outcome.kind === "assigned")
                    return { assignment: outcome.assignment, delivery: "push" };
            }
            return { assignment: await this.pollUntilAssigned(ticketId, deadline.signal), delivery: "poll" };
        }
        catch (error) {
            if (deadline.timedOut) {
                throw new MatchplaneError("timeout", `ticket ${ticketId} was not assigned within ${timeoutMs} ms`, {
                    ticketId,
                });
            }
            if (options.signal?.aborted)
                throw abortedError(options.signal);
            throw error;
        }
        finally {
            deadline.dispose();
        }
    }
    /** Joins the land of an assignment with this client's `WebSocket` (see {@link joinLand}). */
    joinLand(assignment, playerId, options = {}) {
        return joinLand(assignment, playerId, { WebSocket: this.webSocket, ...options });
    }
    requireWebSocket() {
        if (this.webSocket === undefined) {
            throw new MatchplaneError("invalidArgument", "no WebSocket available: pass options.WebSocket (e.g. the `ws` package's) on Node < 22");
        }
        return this.webSocket;
    }
    async authorizedRealtimeUrl(ticketId) {
        let url = this.realtimeUrl();
        if (ticketId !== null)
            url = withQuery(url, "ticketId", ticketId);
        const token = await this.token();
        return token === null ? url : withQuery(url, "access_token", token);
    }
    async waitPush(ticketId, signal) {
        const url = await this.authorizedRealtimeUrl(ticketId);
        const Socket = this.requireWebSocket();
        return new Promise((resolve, reject) => {
            let settled = false;
            let socket;
            const finish = (outcome) => {
                if (settled)
                    return;
                settled = true;
                signal.removeEventListener("abort", onAbort);
                try {
                    socket.close(1000);
                }
                catch {
                    // Already closed.
                }
                if (outcome instanceof MatchplaneError)
                    reject(outcome);
                else
                    resolve(outcome);
            };
            const onAbort = () => finish(abortedError(signal));
            if (signal.aborted) {
                reject(abortedError(signal));
                return;
            }
            try {
                socket = new Socket(url);
            }
            catch (error) {
                resolve({ kind: "unavailable", reason: `cannot open ${this.realtimeUrl()}: ${describe(error)}` });
                return;
            }
            signal.addEventListener("abort", onAbort, { once: true });
            socket.addEventListener("close", (event) => finish({ kind: "unavailable", reason: `socket closed (${event.code ?? "no code"})` }));
            socket.addEventListener("error", () => finish({ kind: "unavailable", reason: "socket error" }));
            socket.addEventListener("message", (event) => {
                const outcome = pushOutcome(ticketId, messageText(event));
                if (outcome !== null)
                    finish(outcome);
            });
        });
    }
    async pollUntilAssigned(ticketId, signal) {
        let delay = this.poll.initialMs;
        let refusals = 0;
        for (;;) {
            let status = null;
            try {
                status = await this.status(ticketId, { signal });
                refusals = 0;
            }
            catch (error) {
                if (isRateLimited(error)) {
                    if (refusals >= this.rateLimitRetries)
                        throw error;
                    refusals += 1;
                    await sleep(Math.max(error.retryAfterMs ?? DEFAULT_RETRY_AFTER_MS, delay), signal);
                    continue;
                }
                if (!(error instanceof MatchplaneError) || !error.retryable)
                    throw error;
            }
            if (status !== null) {
                const ended = endedTicket(ticketId, status.status, status.reason);
                if (ended !== null)
                    throw ended;
                if (status.status === "assigned" && status.assignment !== undefined)
                    return status.assignment;
            }
            await sleep(delay, signal);
            delay = Math.min(delay * Math.max(this.poll.factor, 1), this.poll.maxMs);
        }
    }
}
function isRateLimited(error) {
    return error instanceof MatchplaneError && error.kind === "http" && error.code === "RATE_LIMITED";
}
function endedTicket(ticketId, status, reason) {
    switch (status) {
        case "cancelled":
            return new MatchplaneError("ticketCancelled", `ticket ${ticketId} was cancelled`, { ticketId });
        case "expired":
            return new MatchplaneError("ticketExpired", `ticket ${ticketId} expired before a match was found`, {
                ticketId,
            });
        case "failed":
            return new MatchplaneError("ticketFailed", `ticket ${ticketId} failed: ${reason ?? ""}`, {
                ticketId,
                reason: reason ?? "",
            });
        default:
            return null;
    }
}
function decodeRealtime(text) {
    if (text === null)
        return null;
    try {
        const parsed = JSON.parse(text);
        if (isRecord(parsed) && typeof parsed.type === "string" && isRecord(parsed.data)) {
            return parsed;
        }
    }
    catch {
        // Not JSON: not a realtime event.
    }
    return null;
}
/** What one push message means for a waited ticket; `null`: keep waiting. */
function pushOutcome(ticketId, text) {
    const event = decodeRealtime(text);
    if (event === null)
        return { kind: "unavailable", reason: "undecodable realtime message" };
    if (event.type === "error") {
        if (event.data.code === "TICKET_NOT_FOUND") {
            return new MatchplaneError("http", event.data.message, { code: event.data.code, status: 404, ticketId });
        }
        return { kind: "unavailable", reason: `realtime error ${event.data.code}: ${event.data.message}` };
    }
    if (!("ticketId" in event.data) || event.data.ticketId !== ticketId)
        return null;
    switch (event.type) {
        case "match.assigned":
            return { kind: "assigned", assignment: event.data.assignment };
        case "ticket.cancelled":
            return endedTicket(ticketId, "cancelled");
        case "ticket.expired":
            return endedTicket(ticketId, "expired");
        case "ticket.failed":
            return endedTicket(ticketId, "failed", event.data.reason);
        // `ticket.requeued` / `match.lost`: queued again, the next `match.assigned` follows.
        default:
            return null;
    }
}
/**
 * One `/realtime` socket watching up to 32 tickets. Events arrive on
 * {@link RealtimeWatch.on}, {@link RealtimeWatch.next} or `for await (const event of watch)`.
 */
export class RealtimeWatch {
    socket;
    emitter = new Emitter();
    buffered = [];
    waiters = [];
    closed = false;
    constructor(socket) {
        this.socket = socket;
        socket.addEventListener("message", (event) => {
            const decoded = decodeRealtime(messageText(event));
            if (decoded === null)
                return;
            this.emitter.emit("event", decoded);
            const waiter = this.waiters.shift();
            if (waiter !== undefined)
                waiter(decoded);
            else
                this.buffered.push(decoded);
        });
        socket.addEventListener("close", (event) => {
            this.closed = true;
            for (const waiter of this.waiters.splice(0))
                waiter(undefined);
            this.emitter.emit("close", { code: event.code ?? 1005 });
        });
    }
    /** @internal Opens the socket and resolves once it is open. */
    static open(Socket, url, signal) {
        return new Promise((resolve, reject) => {
            if (signal?.aborted) {
                reject(abortedError(signal));
                return;
            }
            let socket;
            try {
                socket = new Socket(url);
            }
            catch (error) {
                reject(new MatchplaneError("network", `cannot open ${url.split("?")[0]}: ${describe(error)}`));
                return;
            }
            let settled = false;
            const fail = (error) => {
                if (settled)
                    return;
                settled = true;
                reject(error);
            };
            const onAbort = () => {
                fail(abortedError(signal));
                socket.close(1000);
            };
            signal?.addEventListener("abort", onAbort, { once: true });
            socket.addEventListener("open", () => {
                if (settled)
                    return;
                settled = true;
                signal?.removeEventListener("abort", onAbort);
                resolve(new RealtimeWatch(socket));
            });
            socket.addEventListener("close", (event) => fail(new MatchplaneError("network", `the realtime socket closed before it opened (${event.code ?? "no code"})`, {
                closeCode: event.code ?? null,
            })));
            socket.addEventListener("error", () => fail(new MatchplaneError("network", `cannot open ${url.split("?")[0]}`)));
        });
    }
    send(message) {
        if (this.closed || this.socket.readyState !== OPEN) {
            throw new MatchplaneError("network", "the realtime socket is closed");
        }
        this.socket.send(JSON.stringify(message));
    }
    /** Watches a ticket: `subscribed` while queued, or its final event at once. */
    subscribe(ticketId) {
        this.send({ action: "subscribe", ticketId });
    }
    /** Enqueues over the socket; answered by `enqueued`, after which the ticket is watched. */
    enqueue(request) {
        this.send({ ...request, action: "enqueue" });
    }
    /** Answered by `heartbeat {serverTime}`. */
    heartbeat() {
        this.send({ action: "heartbeat" });
    }
    /** Whether the socket is still open. */
    get isOpen() {
        return !this.closed;
    }
    /** Calls `listener` for every event; returns the unsubscribe function. */
    on(listener) {
        return this.emitter.on("event", listener);
    }
    /** Calls `listener` once the socket closed. */
    onClose(listener) {
        return this.emitter.on("close", listener);
    }
    /** The next event not yet taken; `undefined` once the socket closed. */
    next() {
        const event = this.buffered.shift();
        if (event !== undefined)
            return Promise.resolve(event);
        if (this.closed)
            return Promise.resolve(undefined);
        return new Promise((resolve) => this.waiters.push(resolve));
    }
    async *[Symbol.asyncIterator]() {
        for (;;) {
            const event = await this.next();
            if (event === undefined)
                return;
            yield event;
        }
    }
    /** Closes the socket. */
    close() {
        this.socket.close(1000);
    }
}
/** A `keys` member of `join.ok` / `state.snapshot` as a table of our own (it is extended in place). */
function keyTable(keys) {
    if (!Array.isArray(keys))
        return [];
    const entries = keys;
    return entries.every((key) => typeof key === "string") ? entries.slice() : [];
}
/** Abrupt drops and "you were slow": a reconnect can succeed. Anything else is a decision. */
function reconnectable(code) {
    return code === null || [1005, 1006, 1008, 1011, 1012, 1013, 1014].includes(code);
}
function decodeServerMessage(text) {
    if (text === null)
        return null;
    let parsed;
    try {
        parsed = JSON.parse(text);
    }
    catch {
        return null;
    }
    if (!isRecord(parsed) || typeof parsed.type !== "string" || parsed.v !== PROTOCOL_VERSION)
        return null;
    const data = parsed.data;
    if (!isRecord(data))
        return null;
    switch (parsed.type) {
        case "join.ok":
            return typeof data.seq === "number" && typeof data.landId === "string" && typeof data.playerId === "string"
                ? parsed
                : null;
        case "state.patch":
            return typeof data.seq === "number" && Array.isArray(data.ops) ? parsed : null;
        case "state.merge":
            return typeof data.seq === "number" && "merge" in data ? parsed : null;
        case "state.snapshot":
            return typeof data.seq === "number" && "state" in data ? parsed : null;
        case "action.result":
            return typeof data.requestId === "string" ? parsed : null;
        case "event":
        case "error":
        case "land.closed":
        case "pong":
            return parsed;
        default:
            return null;
    }
}
/**
 * Connects and resolves at `join.ok`. An `error` frame and a close before it are a
 * `rejected` error; a connection that fails or breaks without a word is `network`.
 */
function openLand(Socket, url, timeoutMs, signal, intercept) {
    return new Promise((resolve, reject) => {
        if (signal?.aborted) {
            reject(abortedError(signal));
            return;
        }
        let socket;
        try {
            socket = new Socket(url);
        }
        catch (error) {
            reject(new MatchplaneError("network", `cannot connect to ${redactToken(url)}: ${describe(error)}`));
            return;
        }
        try {
            // Binary state frames are decoded as they arrive, in order with the text frames;
            // a Blob (the browsers' default) could only be read asynchronously.
            socket.binaryType = "arraybuffer";
        }
        catch {
            // A socket without the setting delivers Buffers or views, which are read too.
        }
        let opened = false;
        let settled = false;
        let joined = false;
        let refusal = null;
        let receiver = null;
        const backlog = [];
        const deliver = (item) => {
            if (receiver === null)
                backlog.push(item);
            else if ("data" in item)
                receiver.message(item.data);
            else
                receiver.close(item.closeCode);
        };
        const handOver = (next) => {
            receiver = next;
            for (const item of backlog.splice(0))
                deliver(item);
        };
        const settle = (outcome) => {
            if (settled)
                return;
            settled = true;
            clearTimeout(timer);
            signal?.removeEventListener("abort", onAbort);
            socket.removeEventListener("open", onOpen);
            if (outcome instanceof MatchplaneError) {
                socket.removeEventListener("message", onMessage);
                socket.removeEventListener("close", onClose);
                try {
                    socket.close(1000);
                }
                catch {
                    // Already closing.
                }
                reject(outcome);
            }
            else {
                resolve(outcome);
            }
        };
        const onAbort = () => settle(abortedError(signal));
        const onOpen = () => {
            opened = true;
        };
        const onMessage = (event) => {
            if (joined) {
                deliver({ data: messageData(event) });
                return;
            }
            // Binary frames before join.ok carry nothing a client without the key table can use.
            const message = decodeServerMessage(messageText(event));
            if (message === null || intercept?.(message) === false)
                return;
            if (message.type === "join.ok") {
                joined = true;
                settle({ socket, join: message.data, handOver });
            }
            else if (message.type === "error") {
                refusal = message.data;
            }
        };
        const onClose = (event) => {
            const closeCode = event.code ?? null;
            if (joined) {
                deliver({ closeCode });
                return;
            }
            if (refusal !== null || (opened && !reconnectable(closeCode))) {
                const body = refusal ?? { code: "closed", message: "the server closed the connection before join.ok" };
                settle(new MatchplaneError("rejected", `refused by the game server (${closeCode} ${body.code}): ${body.message}`, {
                    code: body.code,
                    closeCode,
                }));
            }
            else {
                settle(new MatchplaneError("network", `cannot connect to ${redactToken(url)} (${closeCode ?? "no close code"})`, {
                    closeCode,
                }));
            }
        };
        const timer = setTimeout(() => settle(new MatchplaneError("timeout", `no join.ok within ${timeoutMs} ms`)), Math.max(0, timeoutMs));
        signal?.addEventListener("abort", onAbort, { once: true });
        socket.addEventListener("open", onOpen);
        socket.addEventListener("message", onMessage);
        socket.addEventListener("close", onClose);
        // `error` is always followed by `close`, which decides; a listener keeps Node's `ws`
        // from treating the error as unhandled.
        socket.addEventListener("error", () => undefined);
    });
}
/** Keeps match tokens out of error messages, which end up in logs. */
function redactToken(url) {
    return url.replace(/([?&]token=)[^&]*/, "$1<redacted>");
}
/**
 * A player's connection to a land: the state mirror, actions, events, reconnects.
 *
 * ```ts
 * const land = await joinLand(assignment, "ann");
 * land.on("event", (event) => console.log(event.name, event.payload));
 * await land.action("add", { amount: 5 }); // the mirror already shows the change
 * console.log(land.state);
 * ```
 */
export class LandConnection {
    url;
    Socket;
    options;
    emitter = new Emitter();
    pending = new Map();
    /** Messages sent while reconnecting, delivered after the fresh `join.ok`. */
    held = [];
    counters = {
        patchesApplied: 0,
        binaryFrames: 0,
        gaps: 0,
        resyncs: 0,
        reconnects: 0,
    };
    reconnectPolicy;
    actionTimeoutMs;
    joinTimeoutMs;
    stopReconnecting = new AbortController();
    socket;
    mirror;
    mirrorSeq;
    /** The land's key table for binary state frames, as of the mirror's `join.ok` / snapshot. */
    keys;
    awaitingSnapshot = false;
    connected = true;
    leaving = false;
    nextRequestId = 1;
    closedLand = null;
    end = null;
    resolveEnded = () => undefined;
    /** Resolves once the connection ended for good (never rejects). */
    ended;
    /** The land's id, from `join.ok`. */
    landId;
    /** This player's id, from `join.ok` (the token's subject). */
    playerId;
    constructor(url, Socket, options, opened) {
        this.url = url;
        this.Socket = Socket;
        this.options = options;
        this.socket = opened.socket;
        this.mirror = opened.join.state;
        this.mirrorSeq = opened.join.seq;
        this.keys = keyTable(opened.join.keys);
        this.landId = opened.join.landId;
        this.playerId = opened.join.playerId;
        this.actionTimeoutMs = options.actionTimeoutMs ?? 10_000;
        this.joinTimeoutMs = options.joinTimeoutMs ?? 10_000;
        const reconnect = options.reconnect === false ? null : (options.reconnect ?? {});
        this.reconnectPolicy =
            reconnect === null
                ? null
                : {
                    graceMs: reconnect.graceMs ?? 15_000,
                    initialBackoffMs: reconnect.initialBackoffMs ?? 100,
                    maxBackoffMs: reconnect.maxBackoffMs ?? 2000,
                };
        this.ended = new Promise((resolve) => {
            this.resolveEnded = resolve;
        });
        // On the next task, so that listeners registered right after `await connect()` also
        // see what arrived just after `join.ok`.
        setTimeout(() => this.attach(opened), 0);
    }
    /**
     * Joins through any game-server URL (e.g. {@link devLandUrl} for a `--auth none`
     * server); resolves at `join.ok`, rejects with `rejected` (the server's `code` and
     * `closeCode`), `network`, `timeout` or `aborted`.
     */
    static async connect(url, options = {}) {
        const Socket = options.WebSocket ?? defaultWebSocket();
        if (Socket === undefined) {
            throw new MatchplaneError("invalidArgument", "no WebSocket available: pass options.WebSocket (e.g. the `ws` package's) on Node < 22");
        }
        const sync = options.sync ?? "patch";
        if (sync !== "patch" && sync !== "merge" && sync !== "binary") {
            throw new MatchplaneError("invalidArgument", `sync must be "patch", "merge" or "binary", got ${String(sync)}`);
        }
        // `patch` is the server's default: its URL stays as it was.
        const syncUrl = sync === "patch" ? url : withQuery(url, "sync", sync);
        const opened = await openLand(Socket, syncUrl, options.joinTimeoutMs ?? 10_000, options.signal, options.interceptMessage);
        return new LandConnection(syncUrl, Socket, options, opened);
    }
    /** The mirrored state: the player's view (shared state plus `me`). Read-only. */
    get state() {
        return this.mirror;
    }
    /** Sequence number of the mirrored state. */
    get seq() {
        return this.mirrorSeq;
    }
    /** Whether the socket is up right now (false while reconnecting and after the end). */
    get isConnected() {
        return this.connected;
    }
    /** Whether the connection has ended for good. */
    get isEnded() {
        return this.end !== null;
    }
    /** The `land.closed` the server sent, if the land ended. */
    get landClosed() {
        return this.closedLand;
    }
    get stats() {
        return { ...this.counters };
    }
    /** Listens to an event; returns the unsubscribe function. */
    on(type, listener) {
        return this.emitter.on(type, listener);
    }
    /** Calls `listener` once the connection ended for good (at once if it already has). */
    onClose(listener) {
        if (this.end !== null) {
            const end = this.end;
            queueMicrotask(() => listener(end));
            return () => undefined;
        }
        return this.emitter.on("end", listener);
    }
    /**
     * Sends an action and resolves with its `action.result`'s `result`; the patch
     * carrying its effects is already applied to the mirror then. Rejects with
     * `action` (the land's or runtime's `code`), `timeout`, `disconnected` (the socket
     * dropped while it was in flight) or `landClosed`.
     */
    action(name, payload, options = {}) {
        const requestId = String(this.nextRequestId++);
        const data = { requestId, name };
        if (payload !== undefined)
            data.payload = payload;
        return new Promise((resolve, reject) => {
            const timeoutMs = options.timeoutMs ?? this.actionTimeoutMs;
            const signal = options.signal;
            const finish = () => {
                clearTimeout(timer);
                signal?.removeEventListener("abort", onAbort);
                this.pending.delete(requestId);
            };
            const onAbort = () => {
                finish();
                reject(abortedError(signal));
            };
            const timer = setTimeout(() => {
                finish();
                reject(new MatchplaneError("timeout", `no action.result for ${name} within ${timeoutMs} ms`));
            }, timeoutMs);
            this.pending.set(requestId, {
                resolve: (value) => {
                    finish();
                    resolve(value);
                },
                reject: (error) => {
                    finish();
                    reject(error);
                },
                timer,
            });
            if (signal?.aborted) {
                onAbort();
                return;
            }
            signal?.addEventListener("abort", onAbort, { once: true });
            try {
                this.send({ type: "action", v: PROTOCOL_VERSION, data });
            }
            catch (error) {
                finish();
                reject(error);
            }
        });
    }
    /** Fire-and-forget input (`shout`, `emote`…). Throws once the connection ended. */
    sendEvent(name, payload = null) {
        this.send({ type: "event", v: PROTOCOL_VERSION, data: { name, payload } });
    }
    /** Asks for a full `state.snapshot` (done automatically on a gap). */
    requestSync() {
        this.send({ type: "sync.request", v: PROTOCOL_VERSION, data: {} });
    }
    /** Resolves with the state once `predicate` holds on the mirror. */
    waitForState(predicate, options = {}) {
        if (predicate(this.mirror))
            return Promise.resolve(this.mirror);
        const timeoutMs = options.timeoutMs ?? 10_000;
        return new Promise((resolve, reject) => {
            const deadline = new Deadline(timeoutMs, options.signal);
            const stop = () => {
                offState();
                offEnd();
                deadline.dispose();
            };
            const offState = this.on("state", ({ state }) => {
                if (predicate(state)) {
                    stop();
                    resolve(state);
                }
            });
            const offEnd = this.on("end", () => {
                stop();
                reject(this.endedError());
            });
            deadline.signal.addEventListener("abort", () => {
                stop();
                reject(deadline.timedOut
                    ? new MatchplaneError("timeout", `the state did not reach the condition within ${timeoutMs} ms`)
                    : abortedError(options.signal));
            });
        });
    }
    /**
     * Leaves the land (close 1000: the seat is released at once) and resolves once the
     * socket closed (at most about 2 s).
     */
    async leave() {
        if (this.end !== null)
            return this.end;
        this.leaving = true;
        this.stopReconnecting.abort();
        if (this.connected) {
            try {
                this.socket.close(1000, "left");
            }
            catch {
                // Already closing: the close event ends the connection.
            }
            const forced = setTimeout(() => this.finish({ reason: "left", closeCode: null, landClosed: null, error: null }), 2000);
            const end = await this.ended;
            clearTimeout(forced);
            return end;
        }
        this.finish({ reason: "left", closeCode: null, landClosed: this.closedLand, error: null });
        return this.ended;
    }
    send(message) {
        if (this.end !== null)
            throw this.endedError();
        const text = JSON.stringify(message);
        if (this.connected && this.socket.readyState === OPEN) {
            this.socket.send(text);
        }
        else {
            this.held.push(text);
        }
    }
    endedError() {
        if (this.closedLand !== null) {
            return new MatchplaneError("landClosed", `the land closed (${this.closedLand.reason})`, {
                landClosed: this.closedLand,
            });
        }
        return new MatchplaneError("disconnected", "disconnected from the land", {
            closeCode: this.end?.closeCode ?? null,
        });
    }
    attach(opened) {
        const socket = opened.socket;
        opened.handOver({
            message: (data) => {
                if (socket !== this.socket)
                    return;
                if (data instanceof Uint8Array)
                    this.onServerBinary(data);
                else
                    this.onServerText(data);
            },
            close: (code) => {
                if (socket === this.socket)
                    this.onSocketClosed(code);
            },
        });
    }
    onServerText(text) {
        const message = decodeServerMessage(text);
        if (message === null || this.options.interceptMessage?.(message) === false)
            return;
        this.onServerMessage(message);
    }
    /** A binary state frame: decoded, then handled as the `state.merge` it stands for. */
    onServerBinary(bytes) {
        this.counters.binaryFrames += 1;
        let decoded;
        try {
            // The mirror is the base of the next frame in sequence only: a frame out of
            // sequence may fail here instead of at the seq check, a gap all the same.
            decoded = decodeBinaryState(bytes, this.keys, this.mirror);
        }
        catch {
            // Like a patch that does not apply: its seq cannot be trusted, so no staleness check.
            if (!this.awaitingSnapshot)
                this.requestResync();
            return;
        }
        const message = {
            type: "state.merge",
            v: PROTOCOL_VERSION,
            data: { seq: decoded.seq, merge: decoded.merge },
        };
        if (this.options.interceptMessage?.(message) === false)
            return;
        this.onServerMessage(message);
    }
    onServerMessage(message) {
        switch (message.type) {
            case "join.ok":
                this.install(message.data);
                break;
            case "state.patch": {
                const ops = message.data.ops;
                this.applyIncoming(message.data.seq, (mirror) => applyPatch(mirror, ops));
                break;
            }
            case "state.merge": {
                const merge = message.data.merge;
                this.applyIncoming(message.data.seq, (mirror) => applyMergePatch(mirror, merge));
                break;
            }
            case "state.snapshot": {
                const resynced = this.awaitingSnapshot;
                this.mirror = message.data.state;
                this.mirrorSeq = message.data.seq;
                this.keys = keyTable(message.data.keys);
                this.awaitingSnapshot = false;
                this.counters.resyncs += 1;
                this.emitter.emit("state", { state: this.mirror, seq: this.mirrorSeq });
                if (resynced)
                    this.emitter.emit("resynced", { seq: this.mirrorSeq });
                break;
            }
            case "action.result": {
                const waiter = this.pending.get(message.data.requestId);
                if (waiter === undefined)
                    break;
                if (message.data.ok) {
                    waiter.resolve(message.data.result ?? null);
                }
                else {
                    const error = message.data.error ?? { code: "unknown", message: "the server gave no reason" };
                    const text = `action failed (${error.code}): ${error.message}`;
                    waiter.reject(new MatchplaneError("action", text, { code: error.code }));
                }
                break;
            }
            case "event":
                this.emitter.emit("event", { name: message.data.name, payload: message.data.payload ?? null });
                break;
            case "error":
                this.emitter.emit("error", message.data);
                break;
            case "land.closed":
                this.closedLand = message.data;
                this.emitter.emit("landClosed", message.data);
                break;
            case "pong":
                break;
        }
    }
    install(join) {
        this.mirror = join.state;
        this.mirrorSeq = join.seq;
        // A fresh join.ok (after a reconnect too) brings the whole table: nothing is kept.
        this.keys = keyTable(join.keys);
        this.awaitingSnapshot = false;
        this.connected = true;
        this.emitter.emit("state", { state: this.mirror, seq: this.mirrorSeq });
    }
    /** Applies the change to `seq` (`apply` throws when it does not apply). */
    applyIncoming(seq, apply) {
        // Before the snapshot arrives patches are meaningless; older ones are stale.
        if (this.awaitingSnapshot || seq <= this.mirrorSeq)
            return;
        if (seq === this.mirrorSeq + 1) {
            try {
                this.mirror = apply(this.mirror);
                this.mirrorSeq = seq;
                this.counters.patchesApplied += 1;
                this.emitter.emit("state", { state: this.mirror, seq });
                return;
            }
            catch {
                // Does not apply to our copy: repaired by a snapshot like a gap.
            }
        }
        this.requestResync();
    }
    /** Ignores changes until the `state.snapshot` that `sync.request` asks for. */
    requestResync() {
        this.awaitingSnapshot = true;
        this.counters.gaps += 1;
        try {
            this.send({ type: "sync.request", v: PROTOCOL_VERSION, data: {} });
        }
        catch {
            // The connection ended meanwhile; nothing left to repair.
        }
    }
    failPending() {
        const error = this.closedLand !== null
            ? this.endedError()
            : new MatchplaneError("disconnected", "the connection dropped before the action.result arrived");
        for (const waiter of [...this.pending.values()])
            waiter.reject(error);
    }
    onSocketClosed(closeCode) {
        this.connected = false;
        this.failPending();
        if (this.leaving) {
            this.finish({ reason: "left", closeCode, landClosed: this.closedLand, error: null });
            return;
        }
        if (this.closedLand !== null) {
            this.finish({ reason: "landClosed", closeCode, landClosed: this.closedLand, error: null });
            return;
        }
        const willReconnect = this.reconnectPolicy !== null && reconnectable(closeCode);
        this.emitter.emit("disconnected", { closeCode, willReconnect });
        if (!willReconnect || this.reconnectPolicy === null) {
            this.finish({ reason: "closed", closeCode, landClosed: null, error: null });
            return;
        }
        void this.reconnect(this.reconnectPolicy, closeCode);
    }
    /** Tries to get the seat back within the grace (same URL, same token). */
    async reconnect(policy, closeCode) {
        const signal = this.stopReconnecting.signal;
        const deadline = now() + policy.graceMs;
        let backoff = policy.initialBackoffMs;
        let lastError = new MatchplaneError("disconnected", "disconnected from the land", { closeCode });
        for (;;) {
            const remaining = deadline - now();
            if (signal.aborted)
                return;
            if (remaining <= 0)
                break;
            try {
                const opened = await openLand(this.Socket, this.url, Math.min(this.joinTimeoutMs, remaining), signal, this.options.interceptMessage);
                this.socket = opened.socket;
                this.install(opened.join);
                this.counters.reconnects += 1;
                this.emitter.emit("reconnected", { seq: this.mirrorSeq });
                while (this.held.length > 0 && opened.socket.readyState === OPEN) {
                    opened.socket.send(this.held.shift());
                }
                // After the held messages: frames that arrived meanwhile are newer than join.ok.
                this.attach(opened);
                return;
            }
            catch (error) {
                if (signal.aborted)
                    return;
                const failure = error instanceof MatchplaneError ? error : new MatchplaneError("network", describe(error));
                // The server answered: this seat is not coming back (closed land, expired token…).
                if (failure.kind === "rejected") {
                    lastError = failure;
                    break;
                }
                lastError = failure;
            }
            try {
                await sleep(Math.min(backoff, Math.max(0, deadline - now())), signal);
            }
            catch {
                return;
            }
            backoff = Math.min(backoff * 2, policy.maxBackoffMs);
        }
        this.held.length = 0;
        this.finish({ reason: "reconnectFailed", closeCode, landClosed: null, error: lastError });
    }
    finish(end) {
        if (this.end !== null)
            return;
        this.end = end;
        this.connected = false;
        this.failPending();
        this.emitter.emit("end", end);
        this.resolveEnded(end);
    }
}
/**
 * Joins the land of `assignment` as `playerId`: connects to `connectUrl` with the
 * player's token (`memberTokens[playerId]`, else `matchToken`) and resolves at `join.ok`.
 */
export function joinLand(assignment, playerId, options = {}) {
    let url;
    try {
        url = assignmentUrl(assignment, playerId);
    }
    catch (error) {
        return Promise.reject(error);
    }
    return LandConnection.connect(url, options);
}
