/** A way to reach the hub. `auto` tries them in this order. */
export type Transport = 'ws' | 'sse' | 'poll';
/** A token, or a function that returns one (called again before it expires and after a 401). */
export type TokenSource = string | (() => string | Promise<string>);
export interface HubOptions {
    /** The hub's origin, e.g. `https://hub.example.com` (a path prefix is kept). */
    url: string;
    /** Without one, only public channels can be read. */
    token?: TokenSource;
    /** `auto` (default): WebSocket, stepping down to SSE, then polling, and back up later. */
    transport?: 'auto' | Transport;
    /** A WebSocket constructor where the runtime has none (Node 20: the `ws` package). */
    WebSocket?: unknown;
    /** The `fetch` to use (default: the global one). */
    fetch?: typeof fetch;
    /** Milliseconds between polls when nothing is new (default 1000). */
    pollInterval?: number;
    /** Milliseconds a transport may take to open before it counts as failed (default 10000). */
    connectTimeout?: number;
    /** The hub's `HEARTBEAT_SECONDS` (default 15): an SSE stream silent for 3 × this is stalled. */
    heartbeat?: number;
    /** Milliseconds on a lower transport before `auto` tries the better one again (default 60000). */
    retryBetter?: number;
    /** Reconnect back-off bounds in milliseconds, with jitter (default [500, 15000]). */
    backoff?: [number, number];
}
/** An event, as every transport delivers it. */
export interface HubEvent {
    id: number;
    channel: string;
    type: string;
    data: unknown;
    time: string;
    topics?: string[];
}
/** Events after `requested` were pruned by retention; `earliest` is the first one left. */
export interface Gap {
    channel: string;
    requested: number;
    earliest: number;
}
export interface Member {
    sub: string;
    info: unknown;
}
/**
 * `sync`: every member (`members`), on (re)connect; `join` / `leave`: one `member`; `diff`:
 * several changes batched by the hub (`leaves` to remove, `joins` to add).
 */
export interface PresenceEvent {
    action: 'sync' | 'join' | 'leave' | 'diff';
    channel: string;
    member?: Member;
    members?: Member[];
    joins?: Member[];
    leaves?: Member[];
}
export type State = 'connecting' | 'open' | 'retrying' | 'closed';
export interface StateChange {
    state: State;
    /** The transport in use or being tried. */
    transport: Transport;
    /** Failed attempts in a row. */
    attempt: number;
    /** Why the subscription stopped (`closed`) or the last attempt failed (`retrying`). */
    error?: Error;
}
/** Where to start: a stream cursor (`"a=12,b=7"`), positions by channel, or one id for all. */
export type Since = number | string | Record<string, number>;
export interface SubscribeOptions {
    /** This subscription's transport, instead of the hub's `transport` option. */
    transport?: 'auto' | Transport;
    /** Without it, each channel starts from now on; `0` is everything retained. */
    since?: Since;
    /** Enter the channels' presence (the token needs a `sub`). */
    presence?: boolean;
    /** Only events with one of these topics (exact). */
    topics?: string[];
    /** Only events with a topic that one of these URL patterns matches. */
    topicPatterns?: string[];
    onEvent?(event: HubEvent): void;
    onGap?(gap: Gap): void;
    /** A presence event, and the channel's members after it. */
    onPresence?(event: PresenceEvent, members: Member[]): void;
    onState?(change: StateChange): void;
}
export interface Subscription extends AsyncIterable<HubEvent> {
    /** The stream cursor (`a=12,b=7`) of every channel whose position is known: pass it as `since`. */
    readonly cursor: string;
    /** The last id delivered (or the starting position) of each channel. */
    readonly positions: Record<string, number>;
    readonly state: State;
    /** The transport in use or being tried. */
    readonly transport: Transport;
    /** A channel's presence members as last seen. */
    members(channel: string): Member[];
    /** Stops for good; an iteration over the subscription ends. */
    close(): void;
}
export interface PublishEvent {
    type?: string;
    data: unknown;
    topics?: string[];
}
export interface PublishOptions {
    /** Makes retries store the event once (default: a random key per call). */
    idempotencyKey?: string;
    /** Retries after a network error or a 5xx (default 5). */
    retries?: number;
}
export interface PollOptions {
    since?: Since;
    limit?: number;
    topics?: string[];
    topicPatterns?: string[];
}
export interface PollPage {
    events: HubEvent[];
    /** The stream cursor to poll with next. */
    next: string;
    /** A page was cut at `limit`: poll again at once. */
    more: boolean;
    gaps: Gap[];
}
export interface PresenceList {
    channel: string;
    count: number;
    members: (Member & {
        connections: number;
        since: string;
    })[];
}
/** A refusal from the hub (its problem document), or a transport that could not be used. */
export declare class HubError extends Error {
    readonly status: number;
    readonly code: string;
    constructor(status: number, code?: string, detail?: string);
}
export declare class EdgeHub {
    #private;
    readonly url: string;
    constructor(options: HubOptions);
    /** The current token: the cached one while it has a quarter of its life (at most 30 s) left. */
    token(refresh?: boolean): Promise<string | undefined>;
    /** When the current token should be replaced (ms since the epoch; Infinity for none). */
    get tokenRefreshAt(): number;
    /** A fetch to the hub with the bearer token; a 401 refreshes a token function once. */
    request(method: string, path: string, body?: unknown, headers?: Record<string, string>, signal?: AbortSignal): Promise<Response>;
    /**
     * Publishes one event (returns its id) or a batch (returns their ids). Network errors and 5xx
     * answers are retried with the same idempotency key, so the event is stored once.
     */
    publish(channel: string, event: PublishEvent, options?: PublishOptions): Promise<number>;
    publish(channel: string, events: PublishEvent[], options?: PublishOptions): Promise<number[]>;
    /** One page over one or more channels, from the hub's read model (no connection kept). */
    poll(channels: string | string[], options?: PollOptions): Promise<PollPage>;
    /** Who is on a channel. */
    presence(channel: string): Promise<PresenceList>;
    /** Opens a subscription over one or more channels; it reconnects by itself until closed. */
    subscribe(channels: string | string[], options?: SubscribeOptions): Subscription;
    /** A reconnect delay: exponential within `backoff`, with jitter. */
    delay(attempt: number): number;
    /** The hub refused a URL token as too long-lived: mint shorter ones (false if they already are). */
    shortenQueryTokens(): boolean;
    /** A token that may travel in a URL (WebSocket): the token itself when short-lived, else one minted from it. */
    queryToken(channels: string[]): Promise<[string | undefined, number]>;
}
