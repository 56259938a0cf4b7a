-- Tenants: `keys.kid` is the gateway-wide key id, which is the client's kid for keys
-- outside tenants and `<tenant>~<kid>` inside one; `tenant` is '' outside tenants.
ALTER TABLE keys ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
CREATE INDEX keys_by_tenant ON keys (tenant, kid);
