// The examples' only outside module: the `ws` package, as Node 20 needs it (its own types are
// not a dependency of the client).
declare module 'ws' {
  const WebSocket: unknown;
  export default WebSocket;
}
