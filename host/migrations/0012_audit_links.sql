-- Records the audit writer commits together share one chain link: one row
-- (encoding 3) whose `entries` holds every record of the group as compact JSON,
-- positions `first_seq` to `seq`, and whose hash covers them all (see README,
-- "Audit log"). Records committed with a change keep a row of their own.
ALTER TABLE audit_log ADD COLUMN first_seq BIGINT;
ALTER TABLE audit_log ADD COLUMN entries TEXT;
