// A Worker that uses the client, for clients/js/test/workerd.test.mjs: the client must run
// unchanged in the Workers runtime (workerd), where a client WebSocket opens by `fetch`.
// `GET /run?hub=…&token=…&transport=…&channel=…&channel=…`: publishes two events on each
// channel, subscribes `since=0`, publishes two more on each, and answers what it received
// (bounded: at most 20 s), with the subscription's states and cursor, and a one-shot poll.
import { EdgeHub } from '../../dist/index.js';

export default {
  async fetch(request) {
    const q = new URL(request.url).searchParams;
    const channels = q.getAll('channel');
    const hub = new EdgeHub({ url: q.get('hub'), token: q.get('token'), transport: q.get('transport') });
    const publish = (from) =>
      Promise.all(channels.map(async (channel) => {
        for (let n = from; n < from + 2; n++) await hub.publish(channel, { type: 'note', data: { n } });
      }));
    await publish(1);
    const got = [];
    const states = [];
    const sub = hub.subscribe(channels, {
      since: 0,
      onEvent: (e) => got.push(e),
      onState: (s) => states.push(`${s.state}/${s.transport}${s.error ? ` (${s.error.message})` : ''}`),
    });
    await publish(3);
    const want = channels.length * 4;
    for (let i = 0; i < 200 && got.length < want; i++) await new Promise((r) => setTimeout(r, 100));
    sub.close();
    const page = await hub.poll(channels, { since: 0 });
    return Response.json({ got, states, cursor: sub.cursor, polled: page.events.length, next: page.next });
  },
};
