// Types of the shardcast JavaScript client (shardcast.js).

export declare const VERSION: string;

export type State = "connecting" | "connected" | "disconnected" | "closed";
export type TransportKind = "websocket" | "sse";

export interface BackoffOptions {
  /** Ceiling of the first retry's delay, ms (the delay is random in [0, first)). Default 500. */
  first?: number;
  /** Largest ceiling, ms. Default 20000. */
  cap?: number;
  /** A connection up this long (ms) resets the count to the first retry. Default 10000. */
  resetAfter?: number;
}

export interface TokenRequest {
  /** "connect": no token yet or it expired; "refresh": before `exp`; "expired": after a 4001 or 401. */
  reason: "connect" | "refresh" | "expired";
}

export interface ConnectOptions {
  /** JWT sent as `?token=` (WebSocket) or `Authorization: Bearer` (SSE). */
  token?: string;
  /** Gives a token: before the first connect without `token`, before `exp` (refresh), after 4001. */
  getToken?: (req: TokenRequest) => Promise<string> | string;
  /** Per-connection info (any JSON), shown to other members in presence, join and leave. */
  info?: unknown;
  /** Transports to try, in order. Default ["websocket", "sse"]. */
  transports?: TransportKind[];
  /** Session name (1-64 of A-Z a-z 0-9 _ -), the same on every reconnect. Default: random. */
  session?: string;
  /** Publishes kept while disconnected; beyond, the oldest is rejected with "queue_full". Default 1000. */
  maxQueued?: number;
  backoff?: BackoffOptions;
  /** Milliseconds to wait for `welcome` before an attempt counts as failed. Default 10000. */
  timeout?: number;
  /** An SSE stream silent this long (ms) is taken as dead. 0: never. Default 75000. */
  sseIdleTimeout?: number;
  /** WebSocket constructor (default globalThis.WebSocket; Node 20 has none). */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
  /** fetch for the SSE transport (default globalThis.fetch). */
  fetch?: typeof fetch;
  /** random() in [0, 1) for the backoff jitter (tests pass a seeded one). */
  random?: () => number;
}

/** The part of the browser's WebSocket the client uses. */
export interface WebSocketLike {
  readyState: number;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface StateDetail {
  /** connected: the connection id. */
  conn?: number;
  /** connecting, connected: the transport. */
  transport?: TransportKind;
  /** disconnected, closed: close code (1006 when the connection failed or never opened). */
  code?: number;
  reason?: string;
  /** SSE: HTTP status of a refused stream (401, 429, 503...). */
  status?: number;
  /** disconnected: milliseconds until the next attempt. */
  delay?: number | null;
}

export interface Message<T = unknown> {
  room: string;
  seq: number;
  /** The publishing connection's id; null for the HTTP API and raw clients. */
  from: number | null;
  /** Bytes (`enc: "base64"` on the wire) come as a Uint8Array. */
  data: T;
  /** The server dropped some of the room's messages before this one (a discontinuity came first). */
  gap?: true;
}

export interface PresenceEvent {
  room: string;
  conn: number;
  user?: string;
  info: unknown;
}

export interface Subscribed {
  room: string;
  seq: number;
  epoch: number;
  recovered: boolean;
}

export interface Discontinuity {
  room: string;
  /** The last seq known before the loss (null if none was). */
  lastSeq: number | null;
  /** The room's epoch now. */
  epoch: number | null;
  reason: "not_recovered" | "gap";
}

/** An Error with the server's error code (or queue_full, closed, disconnected). */
export interface ShardcastError extends Error {
  code: string;
  reason?: string;
  retryAfterMs?: number;
}

export interface SubscriptionEvents {
  message: (m: Message) => void;
  join: (p: PresenceEvent) => void;
  leave: (p: PresenceEvent) => void;
  subscribed: (s: Subscribed) => void;
  discontinuity: (d: Discontinuity) => void;
  /** The server ended the subscription (reason "forbidden" after a refresh). */
  unsubscribed: (u: { room: string; reason: string }) => void;
  /** The subscribe was refused (forbidden, bad_room, room_full...); the subscription is over. */
  error: (e: ShardcastError) => void;
}

export declare class Subscription {
  readonly room: string;
  readonly presence: boolean;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  /** Last seq delivered (or from subscribed), null before the first answer of a fresh one. */
  readonly seq: number | null;
  readonly epoch: number | null;
  on<E extends keyof SubscriptionEvents>(event: E, fn: SubscriptionEvents[E]): this;
  once<E extends keyof SubscriptionEvents>(event: E, fn: SubscriptionEvents[E]): this;
  off<E extends keyof SubscriptionEvents>(event: E, fn: SubscriptionEvents[E]): this;
  unsubscribe(): Promise<void>;
}

export interface ClientEvents {
  state: (state: State, detail: StateDetail) => void;
  /** The server announced a drain: this connection closes (1012) in about afterMs. */
  reconnect: (hint: { afterMs: number }) => void;
  /** A refresh was accepted: the connection now expires at exp (Unix seconds). */
  refreshed: (r: { exp: number | null }) => void;
  /** A server error not tied to a request, or a failed refresh. */
  error: (e: ShardcastError) => void;
}

export interface SubscribeOptions {
  /** Receive join and leave events. */
  presence?: boolean;
  /** Resume after this seq (with its epoch). */
  since?: number;
  epoch?: number;
}

export interface PresenceMember {
  conn?: number;
  user?: string | null;
  connections?: number;
  info: unknown;
}

export interface HistoryPage {
  room: string;
  epoch: number;
  /** false when messages after `since` are no longer kept. */
  complete: boolean;
  messages: Message[];
}

export declare class Client {
  readonly state: State;
  /** The connection id while connected, else null. */
  readonly conn: number | null;
  /** The transport of the current (or last) connection. */
  readonly transport: TransportKind | null;
  readonly session: string;
  /** From welcome when connected with a token. */
  readonly user: string | null;
  readonly exp: number | null;
  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  once<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  off<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): this;
  /** Throws (code "already_subscribed") when the room has a subscription on this client. */
  subscribe(room: string, opts?: SubscribeOptions): Subscription;
  /** Resolves with the message's seq (from the ack). Uint8Array/ArrayBuffer data goes as bytes. */
  publish(room: string, data: unknown): Promise<number>;
  presence(room: string, opts?: { by?: "conn" | "user" }): Promise<PresenceMember[]>;
  history(room: string, opts?: { since?: number; limit?: number }): Promise<HistoryPage>;
  close(): void;
}

export declare function connect(url: string, opts?: ConnectOptions): Client;
export default connect;

// Pure parts, exported for tests.
export declare const DEFAULT_BACKOFF: Readonly<Required<BackoffOptions>>;
export declare function seededRandom(seed: number): () => number;
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;
export declare class Backoff {
  constructor(opts?: BackoffOptions, random?: () => number);
  attempt: number;
  connected(now: number): void;
  hint(afterMs: number, now: number): void;
  next(arg?: { now?: number; retryAfterMs?: number }): number;
}
export declare function parseRetryAfter(value: string | null | undefined, now?: number): number;
export declare class RoomPosition {
  constructor(room: string, opts?: { since?: number | null; epoch?: number | null });
  room: string;
  seq: number | null;
  epoch: number | null;
  request(): { since?: number; epoch?: number };
  subscribed(frame: { seq: number; epoch: number; recovered: boolean }): Discontinuity | null;
  message(m: { seq: number; gap?: boolean }): { deliver: boolean; discontinuity: Discontinuity | null };
}
export declare class PublishQueue<T = unknown> {
  constructor(max?: number);
  readonly max: number;
  readonly length: number;
  push(item: T): T[];
  remove(item: T): boolean;
  drain(): T[];
}
export declare function sseParser(
  onEvent: (e: { data: string; id: string | null; event: string | null }) => void,
  onComment?: (text: string) => void,
): (chunk: string) => void;
export declare function sseQuery(
  subs: { room: string; since?: number | null; epoch?: number | null; presence?: boolean }[],
): string;
export declare function endpoints(url: string, base?: string): { ws: string; sse: string };
export declare function randomSession(n?: number): string;
