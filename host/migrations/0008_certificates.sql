-- Certificates belong to a key version: its chain (a JSON array of base64 DER,
-- leaf first, as the JWK `x5c` member) and the leaf's validity in milliseconds
-- since the epoch, for renewals. A key's certificate policy (JSON
-- {issuerKid, validityDays, subject}) makes each new version get a leaf.
ALTER TABLE key_versions ADD COLUMN x5c TEXT;
ALTER TABLE key_versions ADD COLUMN cert_not_before BIGINT;
ALTER TABLE key_versions ADD COLUMN cert_not_after BIGINT;
ALTER TABLE keys ADD COLUMN certificate_policy TEXT;
