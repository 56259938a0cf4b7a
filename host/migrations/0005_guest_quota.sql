-- Guest storage quotas: each entry's accounted size (key + sealed value, in bytes),
-- and per provider the entries and bytes in use, kept in the same transaction as
-- every write so a quota holds across replicas.
ALTER TABLE guest_kv ADD COLUMN size BIGINT NOT NULL DEFAULT 0;
UPDATE guest_kv SET size = LENGTH(key) + LENGTH(value);
CREATE TABLE guest_usage (
    provider TEXT PRIMARY KEY,
    entries BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO guest_usage (provider, entries, bytes)
    SELECT provider, COUNT(*), SUM(size) FROM guest_kv GROUP BY provider;
