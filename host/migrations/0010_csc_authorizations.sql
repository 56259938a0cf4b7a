-- Signature activation data (SAD) issued by the CSC API's credentials/authorize:
-- each row is one outstanding authorisation, deleted when a signHash uses it
-- (single use, on any replica) or when it expires. The SAD itself is never
-- stored, only its SHA-256.
CREATE TABLE csc_authorizations (
    sad_sha256 TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    api_key TEXT NOT NULL,
    hashes TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX csc_authorizations_api_key ON csc_authorizations (api_key, expires_at);
