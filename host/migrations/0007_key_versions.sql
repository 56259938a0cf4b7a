-- Key versions: every version of a key with its state and backend key. The keys row
-- keeps the current version's number, external id and public JWK (the sign path
-- reads only it), when that version became current, and the rotation policy.
ALTER TABLE keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE keys ADD COLUMN rotated_at BIGINT;
ALTER TABLE keys ADD COLUMN rotate_every_ms BIGINT;
ALTER TABLE keys ADD COLUMN grace_ms BIGINT;
CREATE TABLE key_versions (
    kid TEXT NOT NULL REFERENCES keys (kid) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    -- active | grace | retired
    state TEXT NOT NULL,
    external_id TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    grace_until BIGINT,
    retired_at BIGINT,
    PRIMARY KEY (kid, version)
);
INSERT INTO key_versions (kid, version, state, external_id, public_jwk, created_at)
    SELECT kid, 1, 'active', external_id, public_jwk, created_at FROM keys;
CREATE INDEX key_versions_in_grace ON key_versions (state, grace_until);
-- The db provider's sealed material of versions after the first, by `<key id>@v<n>`.
CREATE TABLE db_version_material (
    id TEXT PRIMARY KEY,
    sealed TEXT NOT NULL
);
