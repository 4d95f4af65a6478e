// Type declarations of the missionstream JavaScript package (src/index.js).

/** The protocol version spoken (docs/PROTOCOL.md). */
export const PROTOCOL_VERSION: "10";
export const MAX_NAME: number;
export const MAX_SECRET: number;
export const MAX_STATE: number;

/** Status codes: the names and values of `ms_status` in missionstream.h. */
export declare const Status: Readonly<{
  MS_OK: 0;
  MS_ERR_INVALID_ARGUMENT: 1;
  MS_ERR_EXISTS: 2;
  MS_ERR_NOT_FOUND: 3;
  MS_ERR_BAD_PASSWORD: 4;
  MS_ERR_BAD_LEADER_CODE: 5;
  MS_ERR_NOT_LEADING: 6;
  MS_ERR_NOT_FOLLOWING: 7;
  MS_ERR_ALREADY: 8;
  MS_ERR_TOO_LARGE: 9;
  MS_ERR_TIMEOUT: 10;
  MS_ERR_UNAVAILABLE: 11;
  MS_ERR_FORBIDDEN: 12;
  MS_ERR_SERVER: 13;
  MS_ERR_PROTOCOL: 14;
  MS_ERR_INTERNAL: 15;
  MS_ERR_THROTTLED: 16;
}>;
export type StatusName = keyof typeof Status;
export type StatusCode = (typeof Status)[StatusName];

/** Event kinds: the names and values of `ms_event_kind` in missionstream.h. */
export declare const EventKind: Readonly<{
  MS_EVENT_STATE: 0;
  MS_EVENT_ENDED: 1;
  MS_EVENT_CONNECTION_LOST: 2;
  MS_EVENT_RECONNECTED: 3;
  MS_EVENT_PUBLISH_FAILED: 4;
  MS_EVENT_LEADER_OFFLINE: 5;
  MS_EVENT_LEADER_ONLINE: 6;
}>;
export type EventKindName = keyof typeof EventKind;
export type EventKindCode = (typeof EventKind)[EventKindName];

export function statusName(status: number): StatusName | "MS_UNKNOWN_STATUS";
export function eventKindName(kind: number): EventKindName | "MS_EVENT_UNKNOWN";

/** Every failure: a status and a message. */
export class MissionstreamError extends Error {
  readonly status: StatusCode;
  readonly statusName: StatusName;
}

/** One event of a stream. */
export interface StreamEvent {
  kind: EventKindCode;
  kindName: EventKindName;
  /** The stream's name. */
  stream: string;
  /** MS_EVENT_STATE: the state (JSON text); otherwise null. */
  data: string | null;
  /** MS_EVENT_STATE: the state's seq; otherwise -1. */
  seq: number;
  /** MS_EVENT_CONNECTION_LOST, MS_EVENT_PUBLISH_FAILED: the cause; otherwise MS_OK. */
  status: StatusCode;
  message: string;
  /** MS_EVENT_STATE: when the state was stored (ms since the Unix epoch, on Redis' clock: compare it with no other clock). */
  updatedMs: number;
  /**
   * MS_EVENT_STATE: how old the state was when this client received it, ms
   * (Redis' own age of it for a state read by a snapshot, 0 for one that came
   * on the channel as it was stored); otherwise 0. Its age at any later
   * moment is `Date.now() - receivedAt + updatedAgeMs`.
   */
  updatedAgeMs: number;
  /** When this client received the event (Date.now()). */
  receivedAt: number;
}

export interface StreamInfo {
  name: string;
  seq: number;
  followers: number;
  /** When the last state was stored (ms since the Unix epoch, on Redis' clock). */
  updatedMs: number;
  /** When the stream's leader was last heard, a state or a heartbeat (ms since the Unix epoch, on Redis' clock; 0 when the record does not say). */
  heardMs: number;
  /** The leader's announced heartbeat interval (ms): not heard for 3 intervals, it is offline. */
  heartbeatMs: number;
  /**
   * Redis' time when it listed the stream (ms since the Unix epoch): ages
   * are `nowMs - updatedMs` and `nowMs - heardMs`, on one clock (never
   * compare Redis' times with this machine's clock).
   */
  nowMs: number;
}

export interface ClientOptions {
  /** Per call, in ms (default 10000). */
  timeoutMs?: number;
  /** Heartbeat interval of the streams this client leads, ms (default 5000). */
  heartbeatMs?: number;
  /** A led stream whose leader is gone expires after this many seconds (default 0: never). */
  streamTtlS?: number;
  /** PBKDF2 iterations of the streams this client starts (default 600000; 100000 to 10000000). */
  iterations?: number;
  /** Send calls as POST with a text/plain body (no CORS preflight); the deploy front turns them into PUT. */
  post?: boolean;
  /** The fetch function to use (default globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface SessionOptions {
  /** Called with every event, as it happens (events also queue for next()). */
  onEvent?: (event: StreamEvent) => void;
}

export type State = string | Uint8Array | unknown;

declare class Session implements AsyncIterable<StreamEvent> {
  readonly name: string;
  readonly ended: boolean;
  /** The next event; undefined after timeoutMs without one; null once the session is over and every event was read. */
  next(timeoutMs?: number): Promise<StreamEvent | null | undefined>;
  [Symbol.asyncIterator](): AsyncIterator<StreamEvent>;
}

export class Leader extends Session {
  /** The seq of the newest state stored by this lead. */
  readonly seq: number;
  /** Publishes a state (an object, JSON text or UTF-8 bytes); never waits for the network. Latest wins. */
  publish(state: State): void;
  /** Resolves once every state published before it is stored (a reply naming it proves it). */
  flush(timeoutMs?: number): Promise<void>;
  /** Deletes the stream; its followers get MS_EVENT_ENDED. */
  stop(): Promise<void>;
}

export class Follower extends Session {
  /** The newest state's seq (-1 before the first). */
  readonly seq: number;
  /** The newest state (JSON text), null before the first. */
  readonly latest: string | null;
  /** When the newest state was stored (ms since the Unix epoch, on Redis' clock). */
  readonly updatedMs: number;
  /** How long ago the newest state was stored, ms, now (from Redis' ages and this machine's elapsed time: no two clocks compared); -1 before the first. */
  readonly updatedAgeMs: number;
  /**
   * How long ago the leader was last heard (a state, a heartbeat, or the age
   * Redis gave with a snapshot), ms, now; -1 before the first snapshot. The
   * presence events count from joining at the earliest (docs/PROTOCOL.md,
   * "Following correctly"): a stream silent for hours is reported offline
   * three intervals after joining, while this says hours at once.
   */
  readonly heardAgeMs: number;
  /**
   * performance.now() marks of the newest state (null before the first):
   * `bytes` when the chunk holding its message was read from the
   * subscription, `parsed` when that message was parsed, `applied` when
   * the state was ready (delta applied and verified, text decoded), just
   * before its event. `bytes` and `parsed` are null for a state read by a
   * snapshot.
   */
  readonly timing: { seq: number; bytes: number | null; parsed: number | null; applied: number } | null;
  /** Whether the leader was heard within three heartbeat intervals. */
  readonly leaderOnline: boolean;
  /** Whether the subscription is working. */
  readonly connected: boolean;
  readonly active: boolean;
  /** Resolves true once a state of seq >= `seq` arrived (read or not), false after timeoutMs or at the end. */
  waitFor(seq: number, timeoutMs?: number): Promise<boolean>;
  /** The newest state parsed as JSON. */
  json(): unknown;
  /** Stops following (no MS_EVENT_ENDED). */
  disconnect(): void;
}

export class Client {
  /**
   * url: the Webdis (or deploy front) URL; `user:password@` becomes HTTP basic auth.
   * A replicated deployment: every node's Webdis, comma-separated or as an array
   * (the primary's first if known); writes go to the node that takes them,
   * followers subscribe on replicas and move to another node when theirs dies.
   */
  constructor(url: string | readonly string[], options?: ClientOptions);
  /** The index (into the URL list) of the endpoint that took the last write. */
  readonly primary: number;
  /** The base URL of that endpoint. */
  readonly base: string;
  /** The live streams, sorted by name. */
  list(): Promise<StreamInfo[]>;
  /** Starts stream `name` and leads it. */
  start(name: string, password: string, leaderCode: string, options?: SessionOptions & { iterations?: number }): Promise<Leader>;
  /** Takes up the lead of stream `name`, its state and seq kept. */
  reconnect(name: string, password: string, leaderCode: string, options?: SessionOptions): Promise<Leader>;
  /** Checks the password and follows stream `name`; the current state comes first. */
  follow(name: string, password?: string, options?: SessionOptions): Promise<Follower>;
  /** Delivers pending states of led streams, keeps them (no stop), and ends every follow. */
  close(): Promise<void>;
}

/** PBKDF2-HMAC-SHA256 of a secret (64 hex digits), as docs/PROTOCOL.md derives keys. */
export function deriveKey(secret: string, prefix: "pw:" | "code:", salt: string, iterations: number): Promise<string>;
/** The channel of stream `name` started with `seed`. */
export function channelOf(seed: string, name: string): Promise<string>;
/** Opens a sealed channel (null when it is not 40 hex digits). */
export function openSealed(sealed: string, key: string, nonce: string): Promise<string | null>;
/** The tag `ms_publish` names a channel by: the first 16 hex digits of SHA-1("tag:" + channel). */
export function channelTag(channel: string): Promise<string>;
/** The lead token (32 hex digits) sealed for one publish (docs/PROTOCOL.md, "Sealed values"). */
export function sealLead(
  token: string,
  leadHash: string,
  id: string,
  kind: "full" | "delta",
  baseSeq: string,
  baseId: string,
  floor: number | string,
  bodyLength: number,
): Promise<string>;
/** A framed request body. */
export function frameBody(fields: Array<string | Uint8Array>): Uint8Array;
/** Applies a Fossil delta; null when it is malformed or does not verify. */
export function applyDelta(base: Uint8Array, delta: Uint8Array): Uint8Array | null;
/** A Fossil delta from base to target keeping whole UTF-8 characters. */
export function makeDelta(base: Uint8Array, target: Uint8Array): Uint8Array;
/** The rendezvous hash of a record key and an endpoint's base URL (docs/PROTOCOL.md, "Several endpoints"). */
export function rendezvous(key: string, base: string): bigint;
/** Fossil's checksum of bytes. */
export function checksum(bytes: Uint8Array): number;
