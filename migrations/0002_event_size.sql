-- Each event's `data` size in bytes, so a poll page can be cut at MAX_PAGE_BYTES without
-- reading the data of the events that do not fit. The index covers the query that finds the
-- cut, so it never reads `data` at all; events mirrored before this migration get their size
-- here.
ALTER TABLE events ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE events SET size = length(CAST(data AS BLOB));
CREATE INDEX events_size ON events (channel, seq, size);
