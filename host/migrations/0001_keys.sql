-- Portable between SQLite and PostgreSQL: the gateway runs one code path on both.
CREATE TABLE keys (
    kid TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    alg TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The db provider's private keys, sealed (AES-256-GCM, kid as associated data).
CREATE TABLE db_key_material (
    kid TEXT PRIMARY KEY REFERENCES keys (kid) ON DELETE CASCADE,
    sealed TEXT NOT NULL
);

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
