-- The audit log: one row per create, import, delete and sign, hash-chained
-- (`hash` covers `prev_hash` and every other column of the row).
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    time BIGINT NOT NULL,
    api_key TEXT,
    tenant TEXT,
    action TEXT NOT NULL,
    kid TEXT,
    provider TEXT,
    outcome TEXT NOT NULL,
    message_sha256 TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
