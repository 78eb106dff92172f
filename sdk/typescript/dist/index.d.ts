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
/** A JSON value as the wire carries it. */
export type JsonValue = null | boolean | number | string | JsonValue[] | {
    [key: string]: JsonValue;
};
/** A JSON object. */
export type JsonObject = {
    [key: string]: JsonValue;
};
/** `POST /v1/matchmaking/enqueue` body. */
export interface EnqueueRequest {
    /** e.g. `hero-defense:3v3`, `counter:2`. */
    queueKey: string;
    /** Player ids of the party; the first one's token is the assignment's `matchToken`. */
    members: string[];
    groupId?: string;
    groupSize?: number;
    region?: string;
    /** Opaque to the control plane; kept with the ticket. */
    constraints?: JsonValue;
    /** Numeric attributes, e.g. `{ skill: 1500 }`. */
    attributes?: Record<string, number>;
    tags?: string[];
    stringArgs?: Record<string, string>;
    /** Measured latency per region in milliseconds, e.g. `{ eu: 35 }`. */
    latencies?: Record<string, number>;
}
/** Where a ticket is in its life. */
export type TicketStatus = "queued" | "assigned" | "cancelled" | "expired" | "failed";
export interface EnqueueResponse {
    ticketId: string;
    status: TicketStatus;
}
/** Where and how a ticket's players join their match. */
export interface Assignment {
    assignmentId: string;
    /** The first member's token; see `memberTokens` for parties. */
    matchToken: string;
    /** `ws://…/game/{landType}?landId=…`; the player's token is appended to it. */
    connectUrl: string;
    landId: string;
    serverId: string;
    /** RFC 3339 UTC. */
    expiresAt: string;
    /** One token per member, keyed by player id. */
    memberTokens?: Record<string, string>;
    matchId?: string;
    /** 0-based team index of this ticket within the match. */
    team?: number;
}
/** `GET /v1/matchmaking/status/{ticketId}`. */
export interface StatusResponse {
    ticketId: string;
    status: TicketStatus;
    assignment?: Assignment;
    queueKey?: string;
    enqueuedAt?: string;
    /** Why a `failed` ticket failed (e.g. `server_lost`). */
    reason?: string;
}
/** `POST /v1/matchmaking/cancel`: `cancelled: false` when the ticket was no longer queued. */
export interface CancelResponse {
    cancelled: boolean;
    status?: TicketStatus;
}
/** The control plane's stable error codes (`{"error": {"code", "message"}}`). */
export type ErrorCode = "INVALID_REQUEST" | "INVALID_JSON" | "UNSUPPORTED_MEDIA_TYPE" | "PAYLOAD_TOO_LARGE" | "QUEUE_KEY_REQUIRED" | "INVALID_QUEUE_KEY" | "MEMBERS_REQUIRED" | "TOO_MANY_MEMBERS" | "DUPLICATE_MEMBER" | "INVALID_MEMBER" | "GROUP_SIZE_MISMATCH" | "FIELD_TOO_LONG" | "TOO_MANY_FIELDS" | "INVALID_ATTRIBUTE" | "INVALID_LATENCY" | "REGION_REQUIRED" | "TICKET_ID_REQUIRED" | "TICKET_NOT_FOUND" | "TICKET_TOO_LARGE" | "TOO_MANY_SUBSCRIPTIONS" | "SERVER_ID_REQUIRED" | "INVALID_SERVER" | "BACKFILL_DISABLED" | "SERVER_NOT_FOUND" | "NOT_FOUND" | "METHOD_NOT_ALLOWED" | "UNAUTHENTICATED" | "FORBIDDEN" | "RATE_LIMITED" | "TOO_MANY_CONNECTIONS" | "PLAYER_ALREADY_QUEUED" | "QUEUE_NOT_FOUND" | "CONSTRAINTS_TOO_LARGE" | "STORE_UNAVAILABLE" | "INTERNAL";
/**
 * The game server's own codes (`error` frames and failed `action.result`s); lands add
 * their own action codes (`not_enough_gold`, `amount_out_of_range`, …).
 */
export type RuntimeErrorCode = "malformed_message" | "unknown_message" | "unsupported_version" | "message_too_big" | "rate_limited" | "unknown_action" | "invalid_payload" | "unknown_event" | "land_closed" | "land_full" | "server_full" | "land_lost" | "unknown_land_type" | "unauthenticated" | "forbidden" | "draining" | "session_replaced";
/** WebSocket close codes of the game server (docs/runtime-protocol.md, "Close codes"). */
export declare const CloseCode: {
    /** Land closed (after `land.closed`) or the client left. */
    readonly NORMAL: 1000;
    /** Server shutting down or draining. */
    readonly GOING_AWAY: 1001;
    /** The client did not read fast enough; it may reconnect. */
    readonly SLOW_CONSUMER: 1008;
    readonly MESSAGE_TOO_BIG: 1009;
    readonly MALFORMED: 4400;
    readonly UNAUTHENTICATED: 4401;
    readonly FORBIDDEN: 4403;
    /** Unknown land type, or (error `land_lost`) a token of an earlier server instance. */
    readonly UNKNOWN_LAND_TYPE: 4404;
    readonly LAND_FULL_OR_CLOSED: 4409;
    readonly SESSION_REPLACED: 4410;
    readonly RATE_LIMITED: 4429;
};
/** Protocol version carried in every game-server envelope. */
export declare const PROTOCOL_VERSION = 1;
/** `/realtime` events, as the control plane pushes them. */
export type RealtimeEvent = {
    type: "match.assigned";
    data: {
        ticketId: string;
        assignment: Assignment;
    };
} | {
    type: "ticket.cancelled";
    data: {
        ticketId: string;
    };
} | {
    type: "ticket.expired";
    data: {
        ticketId: string;
    };
} | {
    type: "ticket.requeued";
    data: {
        ticketId: string;
        reason: string;
    };
} | {
    type: "match.lost";
    data: {
        ticketId: string;
        landId: string;
        reason: string;
    };
} | {
    type: "ticket.failed";
    data: {
        ticketId: string;
        reason: string;
    };
} | {
    type: "enqueued";
    data: {
        ticketId: string;
        status: TicketStatus;
    };
} | {
    type: "subscribed";
    data: {
        ticketId: string;
        status: TicketStatus;
    };
} | {
    type: "heartbeat";
    data: {
        serverTime: number;
    };
} | {
    type: "error";
    data: {
        code: ErrorCode | (string & {});
        message: string;
        ticketId?: string;
    };
};
/** One RFC 6902 operation. */
export type PatchOperation = {
    op: "add";
    path: string;
    value: JsonValue;
} | {
    op: "remove";
    path: string;
} | {
    op: "replace";
    path: string;
    value: JsonValue;
} | {
    op: "move";
    from: string;
    path: string;
} | {
    op: "copy";
    from: string;
    path: string;
} | {
    op: "test";
    path: string;
    value: JsonValue;
};
/** `{code, message}`: the game server's error shape. */
export interface ErrorBody {
    code: RuntimeErrorCode | (string & {});
    message: string;
}
export interface JoinOk {
    landId: string;
    playerId: string;
    /** The seq of `state`; the next `state.patch` carries `seq + 1`. */
    seq: number;
    state: JsonValue;
    /** Only with `?sync=binary`: the land's key table so far (see {@link decodeBinaryState}). */
    keys?: string[];
}
export interface ActionResult {
    requestId: string;
    ok: boolean;
    result?: JsonValue;
    error?: ErrorBody;
}
/** A named land event (`shouted`, `wave_started`, …). */
export interface LandEventBody {
    name: string;
    payload: JsonValue;
}
/** The land is over; `result` is land-defined. */
export interface LandClosed {
    reason: string;
    result?: JsonValue;
}
/** Everything a game server sends. */
export type ServerMessage = {
    type: "join.ok";
    data: JoinOk;
} | {
    type: "state.patch";
    data: {
        seq: number;
        ops: PatchOperation[];
    };
} | {
    type: "state.merge";
    data: {
        seq: number;
        merge: JsonValue;
    };
} | {
    type: "state.snapshot";
    data: {
        seq: number;
        state: JsonValue;
        keys?: string[];
    };
} | {
    type: "action.result";
    data: ActionResult;
} | {
    type: "event";
    data: LandEventBody;
} | {
    type: "error";
    data: ErrorBody;
} | {
    type: "land.closed";
    data: LandClosed;
} | {
    type: "pong";
    data: {
        t: JsonValue;
    };
};
/**
 * What went wrong, independent of the server's code:
 *
 * - `http`: the control plane answered with an error status (`status`, `code` from its
 *   envelope, `null` when the body was not one, e.g. a proxy's page; `retryAfterMs` on 429).
 * - `network`: nothing answered, or a connection broke.
 * - `protocol`: an answer that is not the contract.
 * - `timeout` / `aborted`: a wait ran out / the caller's `AbortSignal` fired.
 * - `ticketCancelled` / `ticketExpired` / `ticketFailed`: the ticket ended without an
 *   assignment (`ticketId`, and `reason` for `ticketFailed`).
 * - `realtime`: the `/realtime` socket refused a message (`code`).
 * - `noToken`: the assignment carries no token for the player.
 * - `rejected`: the game server refused the join (`code` from its `error` frame,
 *   `closeCode`, e.g. 4401 `unauthenticated`, 4409 `land_full`).
 * - `action`: an action failed (`code`: the land's, e.g. `not_enough_gold`, or the
 *   runtime's, e.g. `unknown_action`, `invalid_payload`).
 * - `disconnected`: the land connection is gone (an action in flight may or may not
 *   have been applied: look at the state).
 * - `landClosed`: the land ended (`landClosed`).
 * - `invalidArgument`: the call itself cannot be made (e.g. no `WebSocket` available).
 */
export type MatchplaneErrorKind = "http" | "network" | "protocol" | "timeout" | "aborted" | "ticketCancelled" | "ticketExpired" | "ticketFailed" | "realtime" | "noToken" | "rejected" | "action" | "disconnected" | "landClosed" | "invalidArgument";
/** Optional details of a {@link MatchplaneError}. */
export interface MatchplaneErrorDetails {
    code?: string | null;
    status?: number | null;
    closeCode?: number | null;
    retryAfterMs?: number | null;
    ticketId?: string | null;
    reason?: string | null;
    landClosed?: LandClosed | null;
    cause?: unknown;
}
/**
 * Every failure of the SDK. Switch on {@link MatchplaneError.kind} and
 * {@link MatchplaneError.code}, never on messages.
 */
export declare class MatchplaneError extends Error {
    readonly name = "MatchplaneError";
    readonly kind: MatchplaneErrorKind;
    /** The server's code (`TICKET_NOT_FOUND`, `unknown_action`…), `null` when none was given. */
    readonly code: ErrorCode | RuntimeErrorCode | (string & {}) | null;
    /** HTTP status of a refused control-plane request. */
    readonly status: number | null;
    /** WebSocket close code, when a socket closure is the failure. */
    readonly closeCode: number | null;
    /** How long to wait before the next request (429 `RATE_LIMITED`). */
    readonly retryAfterMs: number | null;
    /** The ticket the error is about (ended tickets, `PLAYER_ALREADY_QUEUED`, timeouts). */
    readonly ticketId: string | null;
    /** Why a ticket failed (`server_lost`…). */
    readonly reason: string | null;
    /** The `land.closed` of a land that ended. */
    readonly landClosed: LandClosed | null;
    constructor(kind: MatchplaneErrorKind, message: string, details?: MatchplaneErrorDetails);
    /** Whether the same request may succeed when sent again later. */
    get retryable(): boolean;
}
/** Percent-encodes everything but RFC 3986 unreserved characters. */
export declare function percentEncode(text: string): string;
/** `http(s)://` → `ws(s)://`; URLs already in a WebSocket scheme are kept. */
export declare function toWebSocketUrl(url: string): string;
/**
 * The URL a player connects to for an assignment: `connectUrl` plus the player's own
 * token (`memberTokens[playerId]`, else the ticket's `matchToken`).
 */
export declare function assignmentUrl(assignment: Assignment, playerId: string): string;
/**
 * A development URL for a game server started with `--auth none`: the server trusts
 * `playerId`; without `landId` it creates a fresh land.
 */
export declare function devLandUrl(gameServerUrl: string, landType: string, playerId: string, landId?: string): string;
/** A patch that does not apply (missing path, failed `test`, bad pointer…). */
export declare class JsonPatchError extends Error {
    readonly name = "JsonPatchError";
    /** Index of the failing operation in the patch. */
    readonly operationIndex: number;
    constructor(operationIndex: number, message: string);
}
/** Deep equality of JSON values (object member order does not matter). */
export declare function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean;
/**
 * Applies an RFC 7386 JSON Merge Patch and returns the new document: object members are
 * merged one by one, a `null` member removes it, anything else (arrays included)
 * replaces the target whole. `document` is not modified; the result shares unchanged
 * parts with it and with the patch, so treat both as read-only.
 */
export declare function applyMergePatch(document: JsonValue, patch: JsonValue): JsonValue;
/**
 * Applies an RFC 6902 patch (`add`, `remove`, `replace`, `move`, `copy`, `test`) and
 * returns the new document; atomic: on a {@link JsonPatchError} nothing changed.
 *
 * `document` is not modified; the result shares unchanged parts with it and with the
 * operations' values, so treat both as read-only.
 */
export declare function applyPatch(document: JsonValue, operations: readonly PatchOperation[]): JsonValue;
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
export declare function decodeBinaryState(bytes: Uint8Array, keys: string[], base?: JsonValue): {
    seq: number;
    merge: JsonObject;
};
/** The part of the WebSocket API the SDK uses: browsers', Node 22's and the `ws` package's. */
export interface WebSocketLike {
    readonly readyState: number;
    /** Set to `"arraybuffer"` by land connections, which read binary state frames. */
    binaryType?: string;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    addEventListener(type: "open" | "message" | "close" | "error", listener: (event: any) => void): void;
    removeEventListener(type: "open" | "message" | "close" | "error", listener: (event: any) => void): void;
}
/** A `WebSocket` constructor: the global one, or e.g. `import { WebSocket } from "ws"`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;
/** `fetch` as the platform provides it. */
export type FetchFunction = (input: string, init?: RequestInit) => Promise<Response>;
/** How status polling backs off while a ticket stays queued. */
export interface PollBackoff {
    initialMs: number;
    maxMs: number;
    /** Multiplier applied after every poll that found the ticket still queued. */
    factor: number;
}
/** Returns the player's JWT (or nothing); asked before every request and socket. */
export type PlayerTokenProvider = () => string | null | undefined | Promise<string | null | undefined>;
export interface MatchmakingClientOptions {
    /**
     * Where the control plane's routes live: `http://127.0.0.1:3000`, or an LB prefix
     * `https://game.example.com/match`.
     */
    baseUrl: string;
    /**
     * The player's JWT, for a control plane running `--player-auth jwt`: sent as
     * `Authorization: Bearer` on REST calls and as `?access_token=` on `/realtime`
     * (browsers cannot set WebSocket headers).
     */
    playerToken?: string | PlayerTokenProvider;
    /** Defaults to the global `fetch`. */
    fetch?: FetchFunction;
    /** Defaults to the global `WebSocket`; without one, waits poll. */
    WebSocket?: WebSocketConstructor;
    /** Default 100 ms growing ×1.5 to 2 s. */
    pollBackoff?: Partial<PollBackoff>;
    /** `false`: {@link MatchmakingClient.waitForAssignment} polls only. Default `true`. */
    push?: boolean;
    /**
     * How many 429 `RATE_LIMITED` answers in a row `enqueue` and the polling of
     * `waitForAssignment` wait out (each for its `Retry-After`). Default 3; 0 returns the first.
     */
    rateLimitRetries?: number;
    /** Per REST request. Default 30 s. */
    requestTimeoutMs?: number;
}
/** Options of a wait. */
export interface WaitOptions {
    /** Default 60 s. */
    timeoutMs?: number;
    signal?: AbortSignal;
}
/** Options of a single REST call. */
export interface RequestOptions {
    signal?: AbortSignal;
}
/** How an assignment reached the client. */
export type Delivery = "push" | "poll";
/**
 * Client of the control plane's matchmaking API.
 *
 * ```ts
 * const client = new MatchmakingClient({ baseUrl: "http://127.0.0.1:3000" });
 * const { ticketId } = await client.enqueue({ queueKey: "counter:2", members: ["ann"] });
 * const assignment = await client.waitForAssignment(ticketId, { timeoutMs: 60_000 });
 * ```
 */
export declare class MatchmakingClient {
    readonly baseUrl: string;
    private playerToken;
    private readonly fetchImpl;
    private readonly webSocket;
    private readonly poll;
    private readonly push;
    private readonly rateLimitRetries;
    private readonly requestTimeoutMs;
    constructor(options: MatchmakingClientOptions | string);
    /** Replaces the player token (or provider); `undefined` stops sending one. */
    setPlayerToken(token: string | PlayerTokenProvider | undefined): void;
    /** `ws(s)://…/realtime` under the same base (and prefix) as the REST calls. */
    realtimeUrl(): string;
    private token;
    private call;
    /**
     * `POST /v1/matchmaking/enqueue`; the answer means the ticket is durably stored.
     * A 429 is waited out and the enqueue sent again, up to `rateLimitRetries` times.
     */
    enqueue(request: EnqueueRequest, options?: RequestOptions): Promise<EnqueueResponse>;
    /** `GET /v1/matchmaking/status/{ticketId}`. */
    status(ticketId: string, options?: RequestOptions): Promise<StatusResponse>;
    /** `POST /v1/matchmaking/cancel`: `cancelled: false` (with the status) when no longer queued. */
    cancel(ticketId: string, options?: RequestOptions): Promise<CancelResponse>;
    /** Opens a `/realtime` socket that can watch up to 32 tickets and enqueue over the socket. */
    watch(options?: RequestOptions): Promise<RealtimeWatch>;
    /**
     * Waits until the ticket is assigned: push over `/realtime` first; if the socket
     * cannot connect, drops, or reports a server-side problem, status polling with
     * backoff takes over until the same deadline.
     *
     * Rejects with `ticketCancelled` / `ticketExpired` / `ticketFailed`, `timeout`,
     * `aborted`, or the `http` error polling got (e.g. `UNAUTHENTICATED`, `TICKET_NOT_FOUND`).
     */
    waitForAssignment(ticketId: string, options?: WaitOptions): Promise<Assignment>;
    /** Like {@link waitForAssignment}, also saying whether push or polling found it. */
    waitForAssignmentVia(ticketId: string, options?: WaitOptions): Promise<{
        assignment: Assignment;
        delivery: Delivery;
    }>;
    /** Joins the land of an assignment with this client's `WebSocket` (see {@link joinLand}). */
    joinLand(assignment: Assignment, playerId: string, options?: LandConnectOptions): Promise<LandConnection>;
    private requireWebSocket;
    private authorizedRealtimeUrl;
    private waitPush;
    private pollUntilAssigned;
}
/**
 * One `/realtime` socket watching up to 32 tickets. Events arrive on
 * {@link RealtimeWatch.on}, {@link RealtimeWatch.next} or `for await (const event of watch)`.
 */
export declare class RealtimeWatch {
    private readonly socket;
    private readonly emitter;
    private readonly buffered;
    private readonly waiters;
    private closed;
    private constructor();
    /** @internal Opens the socket and resolves once it is open. */
    static open(Socket: WebSocketConstructor, url: string, signal?: AbortSignal): Promise<RealtimeWatch>;
    private send;
    /** Watches a ticket: `subscribed` while queued, or its final event at once. */
    subscribe(ticketId: string): void;
    /** Enqueues over the socket; answered by `enqueued`, after which the ticket is watched. */
    enqueue(request: EnqueueRequest): void;
    /** Answered by `heartbeat {serverTime}`. */
    heartbeat(): void;
    /** Whether the socket is still open. */
    get isOpen(): boolean;
    /** Calls `listener` for every event; returns the unsubscribe function. */
    on(listener: (event: RealtimeEvent) => void): () => void;
    /** Calls `listener` once the socket closed. */
    onClose(listener: (info: {
        code: number;
    }) => void): () => void;
    /** The next event not yet taken; `undefined` once the socket closed. */
    next(): Promise<RealtimeEvent | undefined>;
    [Symbol.asyncIterator](): AsyncIterator<RealtimeEvent>;
    /** Closes the socket. */
    close(): void;
}
/** How a dropped land connection is re-established. */
export interface ReconnectPolicy {
    /** How long to keep trying; match the land's reconnect grace (hero-defense 20 s, counter 15 s). Default 15 s. */
    graceMs?: number;
    /** Default 100 ms, doubling. */
    initialBackoffMs?: number;
    /** Default 2 s. */
    maxBackoffMs?: number;
}
export interface LandConnectOptions {
    /** Defaults to the global `WebSocket`. */
    WebSocket?: WebSocketConstructor | undefined;
    /** Connect + handshake + `join.ok`. Default 10 s. */
    joinTimeoutMs?: number;
    /** How long {@link LandConnection.action} waits for its `action.result`. Default 10 s. */
    actionTimeoutMs?: number;
    /** `false` ends the connection on the first drop. Default: reconnect for 15 s. */
    reconnect?: ReconnectPolicy | false;
    /** Aborts the join (not the connection once joined: use {@link LandConnection.leave}). */
    signal?: AbortSignal;
    /**
     * How state changes arrive: `patch` (RFC 6902 `state.patch`, the default), `merge`
     * (RFC 7386 `state.merge`, fewer bytes; changes a merge patch cannot say still come
     * as `state.patch`) or `binary` (the same merge patches in compact binary frames,
     * see {@link decodeBinaryState}; fewer bytes again).
     */
    sync?: "patch" | "merge" | "binary";
    /**
     * Sees every decoded server message before the SDK does; returning `false` drops it.
     * For tests and diagnostics (e.g. dropping a `state.patch` to exercise the resync).
     * A binary state frame is presented decoded, as the `state.merge` it stands for
     * (`{type: "state.merge", v: 1, data: {seq, merge}}`); dropping it drops its merge
     * patch, while the key-table entries it defined are kept. Malformed binary frames
     * are not presented (they count as a gap), nor are binary frames before `join.ok`.
     */
    interceptMessage?: (message: ServerMessage) => boolean;
}
/** Why a connection ended for good. */
export interface ConnectionEnd {
    /**
     * `left`: {@link LandConnection.leave}; `landClosed`: the land ended (`landClosed`);
     * `closed`: the server closed it by decision (`closeCode`: 1001 draining, 4410
     * replaced…); `reconnectFailed`: the grace ran out or the server refused the seat (`error`).
     */
    reason: "left" | "landClosed" | "closed" | "reconnectFailed";
    closeCode: number | null;
    landClosed: LandClosed | null;
    error: MatchplaneError | null;
}
/** Counters of one connection, for diagnostics and tests. */
export interface ConnectionStats {
    /** `state.patch`, `state.merge` and binary state frames applied to the mirror. */
    patchesApplied: number;
    /** Binary state frames received after `join.ok` (`sync: "binary"`), malformed ones included. */
    binaryFrames: number;
    gaps: number;
    resyncs: number;
    reconnects: number;
}
/** Events of a {@link LandConnection}. */
export interface LandConnectionEvents {
    /** The mirror changed (join, patch, snapshot). */
    state: {
        state: JsonValue;
        seq: number;
    };
    /** A land event (`shouted`, `wave_started`, …). */
    event: LandEventBody;
    /** The server refused one of this client's messages. */
    error: ErrorBody;
    /** A sequence gap or a patch that did not apply was repaired by a snapshot. */
    resynced: {
        seq: number;
    };
    /** The socket dropped; `willReconnect` says whether the SDK tries again. */
    disconnected: {
        closeCode: number | null;
        willReconnect: boolean;
    };
    /** Back within the grace; the mirror was replaced by the fresh `join.ok`. */
    reconnected: {
        seq: number;
    };
    /** The land ended (`victory`, `defeat`, `server_shutdown`…); the socket closes next. */
    landClosed: LandClosed;
    /** The connection ended for good. */
    end: ConnectionEnd;
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
export declare class LandConnection {
    private readonly url;
    private readonly Socket;
    private readonly options;
    private readonly emitter;
    private readonly pending;
    /** Messages sent while reconnecting, delivered after the fresh `join.ok`. */
    private readonly held;
    private readonly counters;
    private readonly reconnectPolicy;
    private readonly actionTimeoutMs;
    private readonly joinTimeoutMs;
    private readonly stopReconnecting;
    private socket;
    private mirror;
    private mirrorSeq;
    /** The land's key table for binary state frames, as of the mirror's `join.ok` / snapshot. */
    private keys;
    private awaitingSnapshot;
    private connected;
    private leaving;
    private nextRequestId;
    private closedLand;
    private end;
    private resolveEnded;
    /** Resolves once the connection ended for good (never rejects). */
    readonly ended: Promise<ConnectionEnd>;
    /** The land's id, from `join.ok`. */
    readonly landId: string;
    /** This player's id, from `join.ok` (the token's subject). */
    readonly playerId: string;
    private constructor();
    /**
     * Joins through any game-server URL (e.g. {@link devLandUrl} for a `--auth none`
     * server); resolves at `join.ok`, rejects with `rejected` (the server's `code` and
     * `closeCode`), `network`, `timeout` or `aborted`.
     */
    static connect(url: string, options?: LandConnectOptions): Promise<LandConnection>;
    /** The mirrored state: the player's view (shared state plus `me`). Read-only. */
    get state(): JsonValue;
    /** Sequence number of the mirrored state. */
    get seq(): number;
    /** Whether the socket is up right now (false while reconnecting and after the end). */
    get isConnected(): boolean;
    /** Whether the connection has ended for good. */
    get isEnded(): boolean;
    /** The `land.closed` the server sent, if the land ended. */
    get landClosed(): LandClosed | null;
    get stats(): ConnectionStats;
    /** Listens to an event; returns the unsubscribe function. */
    on<K extends keyof LandConnectionEvents>(type: K, listener: (value: LandConnectionEvents[K]) => void): () => void;
    /** Calls `listener` once the connection ended for good (at once if it already has). */
    onClose(listener: (end: ConnectionEnd) => void): () => void;
    /**
     * Sends an action and resolves with its `action.result`'s `result`; the patch
     * carrying its effects is already applied to the mirror then. Rejects with
     * `action` (the land's or runtime's `code`), `timeout`, `disconnected` (the socket
     * dropped while it was in flight) or `landClosed`.
     */
    action(name: string, payload?: JsonValue, options?: {
        timeoutMs?: number;
        signal?: AbortSignal;
    }): Promise<JsonValue>;
    /** Fire-and-forget input (`shout`, `emote`…). Throws once the connection ended. */
    sendEvent(name: string, payload?: JsonValue): void;
    /** Asks for a full `state.snapshot` (done automatically on a gap). */
    requestSync(): void;
    /** Resolves with the state once `predicate` holds on the mirror. */
    waitForState(predicate: (state: JsonValue) => boolean, options?: {
        timeoutMs?: number;
        signal?: AbortSignal;
    }): Promise<JsonValue>;
    /**
     * Leaves the land (close 1000: the seat is released at once) and resolves once the
     * socket closed (at most about 2 s).
     */
    leave(): Promise<ConnectionEnd>;
    private send;
    private endedError;
    private attach;
    private onServerText;
    /** A binary state frame: decoded, then handled as the `state.merge` it stands for. */
    private onServerBinary;
    private onServerMessage;
    private install;
    /** Applies the change to `seq` (`apply` throws when it does not apply). */
    private applyIncoming;
    /** Ignores changes until the `state.snapshot` that `sync.request` asks for. */
    private requestResync;
    private failPending;
    private onSocketClosed;
    /** Tries to get the seat back within the grace (same URL, same token). */
    private reconnect;
    private finish;
}
/**
 * Joins the land of `assignment` as `playerId`: connects to `connectUrl` with the
 * player's token (`memberTokens[playerId]`, else `matchToken`) and resolves at `join.ok`.
 */
export declare function joinLand(assignment: Assignment, playerId: string, options?: LandConnectOptions): Promise<LandConnection>;
