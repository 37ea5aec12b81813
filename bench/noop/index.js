// The no-op Worker: answers every request with "ok", the ceiling for the runtime's own path.
// `/do/{name}` goes through a Durable Object that also only answers "ok": the ceiling for any
// request that must reach a channel's object (a publish, a subscribe). `/big?bytes=N` answers a
// fresh JSON body of about N bytes: what the runtime itself spends on serving large answers.
// `/sse/{name}` holds an event stream open with a heartbeat comment every 5 s, as the hub's
// streams do at its default `HEARTBEAT_SECONDS`: what an idle stream costs the runtime itself.
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
    if (path.startsWith("/sse/")) {
      const encoder = new TextEncoder();
      let timer;
      const body = new ReadableStream({
        start(controller) {
          controller.enqueue(encoder.encode("retry: 2000\n: noop stream open\n\n"));
          timer = setInterval(() => controller.enqueue(encoder.encode(": heartbeat\n\n")), 5000);
        },
        cancel() {
          clearInterval(timer);
        },
      });
      return new Response(body, {
        headers: { "content-type": "text/event-stream", "cache-control": "no-cache" },
      });
    }
    if (path === "/big") {
      const bytes = Number(new URL(request.url).searchParams.get("bytes")) || 0;
      const body = JSON.stringify({ data: "x".repeat(Math.max(0, bytes - 12)) });
      return new Response(body, { headers: { "content-type": "application/json" } });
    }
    return new Response("ok");
  },
};
