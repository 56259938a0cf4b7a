-- Guest adapters' private key-value storage, namespaced by provider id; values sealed
-- (AES-256-GCM under the master key, with provider and key as associated data).
CREATE TABLE guest_kv (
    provider TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (provider, key)
);
