-- Master key custody: every generation of the master key, wrapped by a seal
-- (`seal` names it: `file`, `vault-transit:<mount>/<key>`, …). A generation may
-- be wrapped by two seals only inside a migration's transaction.
CREATE TABLE seal_keys (
    generation BIGINT NOT NULL,
    seal TEXT NOT NULL,
    wrapped TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (generation, seal)
);
-- Each sealed item names the generation that sealed it, so a rotation finds
-- what is left to rewrap. Items written before generations existed are 1.
ALTER TABLE db_key_material ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE db_version_material ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
ALTER TABLE guest_kv ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
CREATE INDEX db_key_material_generation ON db_key_material (generation);
CREATE INDEX db_version_material_generation ON db_version_material (generation);
CREATE INDEX guest_kv_generation ON guest_kv (generation);
-- Seal operations by outcome (`seal-rotate`, `seal-migrate`, `backup`,
-- `restore`), counted by whichever process ran them, for `/metrics`.
CREATE TABLE seal_operations (
    operation TEXT NOT NULL,
    outcome TEXT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (operation, outcome)
);
