// In Node 20 (no global WebSocket): pass the `ws` package; publish with retries that store once.
import WebSocket from 'ws';
import { EdgeHub } from '@edgehub/client';

const hub = new EdgeHub({ url: 'http://127.0.0.1:8787', token: process.env.EDGEHUB_TOKEN, WebSocket });

export async function placeOrder(order: { id: number; total: number }): Promise<number> {
  // The same key on every retry: a publish whose answer was lost is not stored twice.
  return hub.publish('orders', { type: 'order.created', data: order, topics: [`/orders/${order.id}`] }, { idempotencyKey: `order-${order.id}` });
}

export function watchOrder(id: number, onChange: (data: unknown) => void) {
  const sub = hub.subscribe('orders', {
    transport: 'ws',
    topicPatterns: [`/orders/${id}`],
    onEvent: (e) => onChange(e.data),
  });
  return () => sub.close();
}

declare const process: { env: Record<string, string | undefined> };
