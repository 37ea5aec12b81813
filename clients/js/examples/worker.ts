// In a Cloudflare Worker's cron trigger (or any serverless function): poll, no connection kept.
import { EdgeHub, type PollPage } from '@edgehub/client';

interface Env {
  EDGEHUB_URL: string;
  EDGEHUB_TOKEN: string;
  CURSORS: { get(key: string): Promise<string | null>; put(key: string, value: string): Promise<void> };
}

export default {
  async scheduled(_event: unknown, env: Env): Promise<void> {
    const hub = new EdgeHub({ url: env.EDGEHUB_URL, token: env.EDGEHUB_TOKEN });
    let since = (await env.CURSORS.get('orders')) ?? 0;
    for (let page = 0; page < 10; page++) {
      const got: PollPage = await hub.poll(['orders', 'refunds'], { since, limit: 500 });
      for (const event of got.events) console.log(event.channel, event.id, event.type);
      since = got.next;
      if (!got.more) break;
    }
    await env.CURSORS.put('orders', String(since));
  },
};
