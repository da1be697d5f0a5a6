-- The routing engine: media pools, routes, and the dialplan view Kamailio's
-- dialplan module loads (modparam("dialplan", "table_name", "sipstack_dialplan")).

-- Written by the local driver and the operator, so routes can name pools.
CREATE TABLE sipstack_media_pool (
    name VARCHAR(63) PRIMARY KEY,
    set_id INTEGER NOT NULL UNIQUE CHECK (set_id BETWEEN 1 AND 9999),
    algorithm TEXT NOT NULL
        CHECK (algorithm IN ('roundRobin', 'callIdHash', 'weighted', 'activeFailover')),
    updated_at TIMESTAMPTZ DEFAULT now(),
    CONSTRAINT sipstack_media_pool_name_check
        CHECK (name ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')
);

CREATE TABLE sipstack_route (
    id SERIAL PRIMARY KEY,
    name VARCHAR(63) NOT NULL UNIQUE,
    -- Lower is tried first.
    priority INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 9999),
    match_kind TEXT NOT NULL CHECK (match_kind IN ('prefix', 'exact', 'regex')),
    match_value VARCHAR(128) NOT NULL,
    -- NULL: the route applies to callers of every domain.
    source_domain VARCHAR(64) NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('pool', 'user', 'uri', 'reject')),
    target_pool VARCHAR(63) NULL
        REFERENCES sipstack_media_pool (name) ON UPDATE CASCADE ON DELETE RESTRICT,
    target_uri VARCHAR(255) NULL,
    reject_code INTEGER NULL,
    reject_reason VARCHAR(64) NULL,
    description VARCHAR(255) NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ DEFAULT now(),
    CONSTRAINT sipstack_route_name_check
        CHECK (name ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'),
    -- Prefixes and exact numbers use characters that need no quoting anywhere;
    -- a regex goes to PCRE as it is, and a newline would split Kamailio's log lines.
    CONSTRAINT sipstack_route_match_value_check CHECK (
        (match_kind IN ('prefix', 'exact') AND match_value ~ '^[0-9A-Za-z+*#._-]+$')
        OR (match_kind = 'regex' AND match_value <> ''
            AND strpos(match_value, chr(10)) = 0 AND strpos(match_value, chr(13)) = 0)
    ),
    CONSTRAINT sipstack_route_source_domain_check CHECK (
        source_domain IS NULL
        OR source_domain ~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$'
    ),
    -- Each target kind has exactly its own columns.  The URI and the reason become
    -- dialplan replacement strings, where '\' and '$' have a meaning: both are
    -- excluded.  Kamailio copies the replacement into a 128-byte buffer, hence the
    -- length limit on the URI.
    CONSTRAINT sipstack_route_target_check CHECK (
        (target_kind = 'pool' AND target_pool IS NOT NULL AND target_uri IS NULL
            AND reject_code IS NULL AND reject_reason IS NULL)
        OR (target_kind = 'user' AND target_pool IS NULL AND target_uri IS NULL
            AND reject_code IS NULL AND reject_reason IS NULL)
        OR (target_kind = 'uri' AND target_pool IS NULL AND target_uri IS NOT NULL
            AND target_uri ~ '^sips?:[A-Za-z0-9+*#._~!%:@=;-]+$'
            AND char_length(target_uri) <= 127
            AND reject_code IS NULL AND reject_reason IS NULL)
        OR (target_kind = 'reject' AND target_pool IS NULL AND target_uri IS NULL
            AND reject_code BETWEEN 400 AND 699
            AND reject_reason IS NOT NULL AND reject_reason ~ '^[A-Za-z0-9 ]{1,64}$')
    )
);

CREATE INDEX sipstack_route_target_pool_idx ON sipstack_route (target_pool);

-- Kamailio's dialplan rules, derived from the routes in one consistent read.
--
--   dpid 1            source-domain map: caller domain -> that domain's dpid (in attrs)
--   dpid 2            routes for callers whose domain has no routes of its own
--   dpid 1000 + rank  a domain's routes together with the routes for every domain
--
-- Every route rule has match_len 0: dialplan tries rules whose match_len equals the
-- input's length before all rules with match_len 0, whatever their pr, so a non-zero
-- match_len would let an exact route overtake routes of lower priority.  The equal
-- operator compares lengths by itself.
--
-- The string columns are varchar, not text: db_postgres reads text columns as
-- bytea-escaped blobs and drops every backslash, so '^\+44' would reach PCRE as '^+44'.
CREATE VIEW sipstack_dialplan AS
WITH domain_dpid AS (
    SELECT source_domain AS domain,
           (1000 + dense_rank() OVER (ORDER BY source_domain))::integer AS dpid
    FROM (SELECT DISTINCT source_domain FROM sipstack_route
          WHERE source_domain IS NOT NULL) AS domains
),
rule AS (
    SELECT r.id,
           r.priority,
           r.source_domain,
           CASE r.match_kind WHEN 'exact' THEN 0 ELSE 1 END AS match_op,
           CASE r.match_kind
               -- PCRE metacharacters among the characters a prefix may hold.
               WHEN 'prefix' THEN '^' || regexp_replace(r.match_value, '([+*.])', '\\\1', 'g')
               ELSE r.match_value
           END::varchar AS match_exp,
           CASE WHEN r.target_kind IN ('uri', 'reject') THEN '^.*$' ELSE '' END::varchar AS subst_exp,
           CASE r.target_kind
               WHEN 'uri' THEN r.target_uri
               WHEN 'reject' THEN r.reject_reason
               ELSE ''
           END::varchar AS repl_exp,
           ('id=' || r.id || ';t=' || r.target_kind ||
            CASE r.target_kind
                WHEN 'pool' THEN ';s=' || p.set_id
                WHEN 'reject' THEN ';c=' || r.reject_code
                ELSE ''
            END)::varchar AS attrs
    FROM sipstack_route AS r
    LEFT JOIN sipstack_media_pool AS p ON p.name = r.target_pool
),
placed AS (
    SELECT 2 AS dpid, rule.* FROM rule WHERE rule.source_domain IS NULL
    UNION ALL
    SELECT d.dpid, rule.*
    FROM domain_dpid AS d
    JOIN rule ON rule.source_domain = d.domain OR rule.source_domain IS NULL
)
SELECT 1 AS dpid,
       (row_number() OVER (ORDER BY d.domain))::integer AS pr,
       0 AS match_op,
       d.domain::varchar AS match_exp,
       char_length(d.domain) AS match_len,
       ''::varchar AS subst_exp,
       ''::varchar AS repl_exp,
       d.dpid::varchar AS attrs
FROM domain_dpid AS d
UNION ALL
SELECT placed.dpid,
       (row_number() OVER (PARTITION BY placed.dpid ORDER BY placed.priority, placed.id))::integer,
       placed.match_op,
       placed.match_exp,
       0,
       placed.subst_exp,
       placed.repl_exp,
       placed.attrs
FROM placed;

INSERT INTO version (table_name, table_version) VALUES ('sipstack_dialplan', 2);
