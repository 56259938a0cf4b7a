-- Audit records name the encoding their hash covers: 1 for records written
-- before kmsgw stored absent fields as NULL (absent and empty were both ''),
-- 2 for records whose fields are stored as given (see README, "Audit log").
ALTER TABLE audit_log ADD COLUMN encoding INTEGER NOT NULL DEFAULT 1;
