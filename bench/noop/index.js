// The no-op Worker: answers every request with "ok", the ceiling for the runtime's own path.
// `/do/{name}` goes through a Durable Object that also only answers "ok": the ceiling for any
// request that must reach a channel's object (a publish, a subscribe).
export class NoopObject {
  fetch() {
    return new Response("ok");
  }
}

export default {
  fetch(request, env) {
    const path = new URL(request.url).pathname;
    if (path.startsWith("/do/")) {
      const ns = env.NOOP_OBJECT;
      return ns.get(ns.idFromName(path.slice(4))).fetch(request);
    }
    return new Response("ok");
  },
};
