// In a page: short-lived tokens from the app's backend, any transport, events in order.
import { EdgeHub, HubError, type HubEvent } from '@edgehub/client';

const hub = new EdgeHub({
  url: 'https://hub.example.com',
  // Called again before each token expires, and after a 401.
  token: async () => {
    const res = await fetch('/api/edgehub-token', { credentials: 'include' });
    return (await res.json()).token as string;
  },
});

const saved = localStorage.getItem('orders-cursor') ?? undefined;
const sub = hub.subscribe(['orders', 'user:42'], {
  since: saved, // resume where the last visit stopped; without it, from now on
  presence: true,
  onGap: (gap) => console.warn(`${gap.channel}: events after ${gap.requested} are gone, from ${gap.earliest} on`),
  onPresence: (event, members) => console.log(event.action, event.channel, members.map((m) => m.sub)),
  onState: ({ state, transport, error }) => console.log(state, transport, error?.message),
});

function show(event: HubEvent) {
  console.log(event.channel, event.id, event.type, event.data);
  localStorage.setItem('orders-cursor', sub.cursor);
}

try {
  for await (const event of sub) show(event);
} catch (e) {
  // The hub refused the subscription for good (a right missing, a token it would not take).
  if (e instanceof HubError) console.error(e.status, e.code, e.message);
}
