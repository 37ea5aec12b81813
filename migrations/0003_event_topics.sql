-- Each event's topics (a JSON array of strings), or NULL for an event without topics. A
-- filtered poll reads them to decide which events it returns.
ALTER TABLE events ADD COLUMN topics TEXT;
