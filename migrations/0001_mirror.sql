-- The D1 read model that /poll serves. Written only by each channel's Durable Object, in id
-- order, one batch after the other, so a reader sees lag but never a hole.

-- One row per channel: the highest id mirrored (head) and the lowest id still retained
-- (earliest; head + 1 when nothing is retained).
CREATE TABLE channels (
  channel    TEXT PRIMARY KEY NOT NULL,
  head       INTEGER NOT NULL,
  earliest   INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Events by (channel, seq); `data` is the event's JSON, serialised once by the hub.
CREATE TABLE events (
  channel TEXT NOT NULL,
  seq     INTEGER NOT NULL,
  type    TEXT NOT NULL,
  data    TEXT NOT NULL,
  time_ms INTEGER NOT NULL,
  PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
