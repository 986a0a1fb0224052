-- Retention deletes by age, and the live feed reads events by age.
CREATE INDEX events_by_age ON events(at_ms);
CREATE INDEX audit_by_age ON audit(at_ms);
