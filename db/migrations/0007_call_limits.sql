-- Call limits: concurrent calls per trunk (both directions) and per subscriber
-- (the calls it places), and new calls per second per trunk.  NULL: no limit.
--
-- The edge reads them from its `trunk` htable (the view of 0006 with more keys),
-- so a changed limit holds after the next trunk reload.  Subscribers' limits are
-- a table of their own: the subscriber table stays Kamailio's, and only the few
-- subscribers with a limit take room in the edge's memory.

ALTER TABLE sipstack_trunk
    ADD COLUMN max_calls INTEGER NULL CHECK (max_calls BETWEEN 1 AND 1000000),
    ADD COLUMN max_cps INTEGER NULL CHECK (max_cps BETWEEN 1 AND 100000);

CREATE TABLE sipstack_subscriber_limit (
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    max_calls INTEGER NOT NULL CHECK (max_calls BETWEEN 1 AND 1000000),
    PRIMARY KEY (username, domain),
    FOREIGN KEY (username, domain) REFERENCES subscriber (username, domain)
        ON UPDATE CASCADE ON DELETE CASCADE
);

-- The keys of 0006, and:
--   calls:ID         concurrent calls trunk ID may carry
--   cps:ID           new calls per second it may carry
--   sub:USER@DOMAIN  concurrent calls the subscriber may place
CREATE OR REPLACE VIEW sipstack_trunk_htable AS
WITH gw AS (
    SELECT g.trunk_id, g.uri,
           (row_number() OVER (PARTITION BY g.trunk_id ORDER BY g.priority, g.id) - 1) AS idx
    FROM sipstack_trunk_gateway AS g
)
SELECT ('gw:' || t.id || ':n')::varchar AS key_name, 0 AS key_type, 1 AS value_type,
       (SELECT count(*) FROM gw WHERE gw.trunk_id = t.id)::varchar AS key_value, 0 AS expires
FROM sipstack_trunk AS t
UNION ALL
SELECT ('gw:' || gw.trunk_id || ':' || gw.idx)::varchar, 0, 0, gw.uri::varchar, 0
FROM gw
UNION ALL
SELECT ('auth:' || t.id || ':user')::varchar, 0, 0, t.auth_username::varchar, 0
FROM sipstack_trunk AS t WHERE t.auth_username IS NOT NULL
UNION ALL
SELECT ('auth:' || t.id || ':pass')::varchar, 0, 0, t.auth_password_enc::varchar, 0
FROM sipstack_trunk AS t WHERE t.auth_password_enc IS NOT NULL
UNION ALL
SELECT ('strip:' || t.id)::varchar, 0, 1, t.strip_digits::varchar, 0
FROM sipstack_trunk AS t
UNION ALL
SELECT ('prefix:' || t.id)::varchar, 0, 0, t.prefix::varchar, 0
FROM sipstack_trunk AS t WHERE t.prefix <> ''
UNION ALL
SELECT ('pbx:' || t.id)::varchar, 0, 0, (t.account_username || '@' || t.account_domain)::varchar, 0
FROM sipstack_trunk AS t WHERE t.account_username IS NOT NULL
UNION ALL
SELECT ('acct:' || t.account_username || '@' || t.account_domain)::varchar, 0, 1, t.id::varchar, 0
FROM sipstack_trunk AS t WHERE t.account_username IS NOT NULL
UNION ALL
SELECT ('calls:' || t.id)::varchar, 0, 1, t.max_calls::varchar, 0
FROM sipstack_trunk AS t WHERE t.max_calls IS NOT NULL
UNION ALL
SELECT ('cps:' || t.id)::varchar, 0, 1, t.max_cps::varchar, 0
FROM sipstack_trunk AS t WHERE t.max_cps IS NOT NULL
UNION ALL
SELECT ('sub:' || l.username || '@' || l.domain)::varchar, 0, 1, l.max_calls::varchar, 0
FROM sipstack_subscriber_limit AS l;
