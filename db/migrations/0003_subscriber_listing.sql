-- `sipctl get subscribers` pages through subscribers in (domain, username) order;
-- without this index every page sorts the whole table.
CREATE INDEX IF NOT EXISTS subscriber_domain_username_idx ON subscriber (domain, username);
