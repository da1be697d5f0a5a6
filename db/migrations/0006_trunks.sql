-- Trunks (carriers and PBXs), their inbound addresses and outbound gateways, and
-- the platform's numbers (DIDs).  The edge reads them through three views:
--
--   sipstack_trunk_address   permissions' address table: who may send calls
--                            without a digest challenge, as which trunk (grp)
--   sipstack_trunk_htable    the `trunk` htable: gateways in order, outbound
--                            credentials, number handling, PBX accounts
--   sipstack_dialplan        numbers in dpid 3, routes for calls from trunks in
--                            dpid 4 (besides the rule sets of 0002)
--
-- String columns the edge reads are varchar (see 0002: db_postgres reads text as
-- a blob and drops backslashes).

CREATE TABLE sipstack_trunk (
    id SERIAL PRIMARY KEY,
    name VARCHAR(63) NOT NULL UNIQUE,
    -- Digest credentials towards the carrier, used when a gateway challenges.
    -- The password is encrypted with the edges' trunk key (AES-256-CBC, a random
    -- IV in front, base64: the format of Kamailio's crypto module), never stored
    -- or rendered in clear.
    auth_username VARCHAR(64) NULL,
    auth_password_enc VARCHAR(256) NULL,
    -- A registration-based PBX: the subscriber account it registers and
    -- authenticates with.  Its calls are trunk calls; calls to its numbers go to
    -- the contact it registered.
    account_username VARCHAR(64) NULL,
    account_domain VARCHAR(64) NULL,
    -- Number handling towards the trunk's gateways: strip this many leading
    -- characters of the dialled number, then put the prefix in front.
    strip_digits INTEGER NOT NULL DEFAULT 0 CHECK (strip_digits BETWEEN 0 AND 15),
    prefix VARCHAR(15) NOT NULL DEFAULT '',
    description VARCHAR(255) NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ DEFAULT now(),
    CONSTRAINT sipstack_trunk_name_check
        CHECK (name ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'),
    -- The username goes into an Authorization header; the encrypted password is
    -- base64.  Both are plain tokens: nothing to quote anywhere.
    CONSTRAINT sipstack_trunk_auth_check CHECK (
        (auth_username IS NULL AND auth_password_enc IS NULL)
        OR (auth_username ~ '^[A-Za-z0-9._+-]{1,64}$'
            AND auth_password_enc ~ '^[A-Za-z0-9+/]{40,}={0,2}$')
    ),
    CONSTRAINT sipstack_trunk_account_check CHECK (
        (account_username IS NULL AND account_domain IS NULL)
        OR (account_username IS NOT NULL AND account_domain IS NOT NULL)
    ),
    CONSTRAINT sipstack_trunk_account_fk FOREIGN KEY (account_username, account_domain)
        REFERENCES subscriber (username, domain) ON UPDATE CASCADE ON DELETE RESTRICT,
    CONSTRAINT sipstack_trunk_account_unique UNIQUE (account_username, account_domain),
    CONSTRAINT sipstack_trunk_prefix_check CHECK (prefix ~ '^[0-9+*#]*$')
);

-- Addresses a trunk's calls come from: a host or a network, optionally one port
-- and one transport.  No two trunks share an address and port.
CREATE TABLE sipstack_trunk_address (
    id SERIAL PRIMARY KEY,
    trunk_id INTEGER NOT NULL REFERENCES sipstack_trunk (id) ON DELETE CASCADE,
    address INET NOT NULL,
    -- 0: any port
    port INTEGER NOT NULL DEFAULT 0 CHECK (port BETWEEN 0 AND 65535),
    transport VARCHAR(3) NOT NULL DEFAULT 'any'
        CHECK (transport IN ('any', 'udp', 'tcp', 'tls')),
    CONSTRAINT sipstack_trunk_address_unique UNIQUE (address, port)
);

CREATE INDEX sipstack_trunk_address_trunk_idx ON sipstack_trunk_address (trunk_id);

-- Where a trunk's outbound calls go, tried in priority order (lower first); the
-- next one takes over on a 5xx, a 408 or no answer, within the same transaction.
CREATE TABLE sipstack_trunk_gateway (
    id SERIAL PRIMARY KEY,
    trunk_id INTEGER NOT NULL REFERENCES sipstack_trunk (id) ON DELETE CASCADE,
    uri VARCHAR(127) NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9999),
    -- a SIP URI without a user part: the dialled number becomes its user
    CONSTRAINT sipstack_trunk_gateway_uri_check
        CHECK (uri ~ '^sips?:[A-Za-z0-9.:\[\]-]+(;transport=(udp|tcp|tls))?$'),
    CONSTRAINT sipstack_trunk_gateway_unique UNIQUE (trunk_id, uri)
);

-- The platform's numbers: an exact number or a prefix (a block of numbers), and
-- where its calls go.  Numbers are looked up before routes, for every caller.
CREATE TABLE sipstack_number (
    id SERIAL PRIMARY KEY,
    match_kind VARCHAR(6) NOT NULL CHECK (match_kind IN ('exact', 'prefix')),
    number VARCHAR(32) NOT NULL,
    target_kind VARCHAR(5) NOT NULL CHECK (target_kind IN ('user', 'trunk', 'pool')),
    target_username VARCHAR(64) NULL,
    target_domain VARCHAR(64) NULL,
    target_trunk VARCHAR(63) NULL
        REFERENCES sipstack_trunk (name) ON UPDATE CASCADE ON DELETE RESTRICT,
    target_pool VARCHAR(63) NULL
        REFERENCES sipstack_media_pool (name) ON UPDATE CASCADE ON DELETE RESTRICT,
    service VARCHAR(32) NULL,
    description VARCHAR(255) NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ DEFAULT now(),
    CONSTRAINT sipstack_number_unique UNIQUE (match_kind, number),
    CONSTRAINT sipstack_number_number_check CHECK (number ~ '^\+?[0-9]{1,31}$'),
    CONSTRAINT sipstack_number_user_fk FOREIGN KEY (target_username, target_domain)
        REFERENCES subscriber (username, domain) ON UPDATE CASCADE ON DELETE RESTRICT,
    -- The user's URI becomes a dialplan replacement: no '\' or '$' (see 0002).
    CONSTRAINT sipstack_number_target_check CHECK (
        (target_kind = 'user' AND target_username ~ '^[A-Za-z0-9._~+-]{1,64}$'
            AND target_domain IS NOT NULL
            AND target_trunk IS NULL AND target_pool IS NULL AND service IS NULL)
        OR (target_kind = 'trunk' AND target_trunk IS NOT NULL
            AND target_username IS NULL AND target_domain IS NULL
            AND target_pool IS NULL AND service IS NULL)
        OR (target_kind = 'pool' AND target_pool IS NOT NULL
            AND target_username IS NULL AND target_domain IS NULL AND target_trunk IS NULL
            AND (service IS NULL OR service ~ '^[a-z][a-z0-9-]{0,31}$'))
    )
);

CREATE INDEX sipstack_number_target_trunk_idx ON sipstack_number (target_trunk);

-- Routes may send calls out through a trunk, and may apply to calls that came in
-- from a trunk (transit), which no route does unless it says so.
ALTER TABLE sipstack_route ADD COLUMN target_trunk VARCHAR(63) NULL
    REFERENCES sipstack_trunk (name) ON UPDATE CASCADE ON DELETE RESTRICT;
ALTER TABLE sipstack_route ADD COLUMN source VARCHAR(10) NOT NULL DEFAULT 'subscriber';
ALTER TABLE sipstack_route ADD CONSTRAINT sipstack_route_source_kind_check
    CHECK (source IN ('subscriber', 'trunk', 'any'));
CREATE INDEX sipstack_route_target_trunk_idx ON sipstack_route (target_trunk);
ALTER TABLE sipstack_route DROP CONSTRAINT sipstack_route_target_kind_check;
ALTER TABLE sipstack_route ADD CONSTRAINT sipstack_route_target_kind_check
    CHECK (target_kind IN ('pool', 'user', 'uri', 'reject', 'trunk'));
ALTER TABLE sipstack_route ADD CONSTRAINT sipstack_route_trunk_check CHECK (
    (target_kind = 'trunk') = (target_trunk IS NOT NULL)
);
-- A caller's domain is a subscriber's; calls from trunks have none.
ALTER TABLE sipstack_route ADD CONSTRAINT sipstack_route_source_domain_source_check CHECK (
    source_domain IS NULL OR source = 'subscriber'
);
ALTER TABLE sipstack_route DROP CONSTRAINT sipstack_route_target_check;
ALTER TABLE sipstack_route ADD CONSTRAINT sipstack_route_target_check CHECK (
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
    OR (target_kind = 'trunk' AND target_pool IS NULL AND target_uri IS NULL
        AND reject_code IS NULL AND reject_reason IS NULL)
);

-- permissions' address table: grp is the trunk's id, tag the transport it must
-- use ('any' or udp/tcp/tls).
CREATE VIEW sipstack_trunk_address_view AS
SELECT a.id,
       a.trunk_id AS grp,
       host(a.address)::varchar AS ip_addr,
       masklen(a.address) AS mask,
       a.port,
       a.transport::varchar AS tag
FROM sipstack_trunk_address AS a;

INSERT INTO version (table_name, table_version) VALUES ('sipstack_trunk_address_view', 6);

-- The edge's `trunk` htable, one row per key (value_type 0: string, 1: integer):
--   gw:ID:n          number of gateways of trunk ID
--   gw:ID:I          the I-th gateway's URI, in priority order (0 first)
--   auth:ID:user     digest username towards the carrier
--   auth:ID:pass     its encrypted password
--   strip:ID         leading characters to strip
--   prefix:ID        prefix to put in front
--   pbx:ID           a registration-based PBX's account (user@domain)
--   acct:USER@DOMAIN the trunk whose account this is
CREATE VIEW sipstack_trunk_htable AS
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
FROM sipstack_trunk AS t WHERE t.account_username IS NOT NULL;

-- The dialplan view of 0005, with
--   dpid 3  the numbers (exact before prefix, longer prefix first)
--   dpid 4  routes for calls from trunks: those with source 'trunk' or 'any'
-- Subscribers' rule sets (dpid 2 and per domain) hold routes with source
-- 'subscriber' or 'any'.
CREATE OR REPLACE VIEW sipstack_dialplan AS
WITH subscriber_route AS (
    SELECT * FROM sipstack_route WHERE source IN ('subscriber', 'any')
),
domain_dpid AS (
    SELECT source_domain AS domain,
           (1000 + dense_rank() OVER (ORDER BY source_domain))::integer AS dpid
    FROM (SELECT DISTINCT source_domain FROM subscriber_route
          WHERE source_domain IS NOT NULL) AS domains
),
rule AS (
    SELECT r.id,
           r.priority,
           r.source_domain,
           r.source,
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
                WHEN 'trunk' THEN ';k=' || t.id
                ELSE ''
            END ||
            CASE WHEN r.service IS NOT NULL THEN ';v=' || r.service ELSE '' END)::varchar AS attrs
    FROM sipstack_route AS r
    LEFT JOIN sipstack_media_pool AS p ON p.name = r.target_pool
    LEFT JOIN sipstack_trunk AS t ON t.name = r.target_trunk
),
placed AS (
    SELECT 2 AS dpid, rule.* FROM rule
    WHERE rule.source_domain IS NULL AND rule.source IN ('subscriber', 'any')
    UNION ALL
    SELECT d.dpid, rule.*
    FROM domain_dpid AS d
    JOIN rule ON (rule.source_domain = d.domain OR rule.source_domain IS NULL)
        AND rule.source IN ('subscriber', 'any')
    UNION ALL
    SELECT 4 AS dpid, rule.* FROM rule WHERE rule.source IN ('trunk', 'any')
),
number_rule AS (
    SELECT n.id,
           CASE n.match_kind WHEN 'exact' THEN 0 ELSE 1 END AS match_op,
           CASE n.match_kind
               WHEN 'prefix' THEN '^' || regexp_replace(n.number, '([+])', '\\\1', 'g')
               ELSE n.number
           END::varchar AS match_exp,
           CASE WHEN n.target_kind = 'user' THEN '^.*$' ELSE '' END::varchar AS subst_exp,
           CASE WHEN n.target_kind = 'user'
                THEN 'sip:' || n.target_username || '@' || n.target_domain
                ELSE ''
           END::varchar AS repl_exp,
           ('n=' || n.id || ';t=' || n.target_kind ||
            CASE n.target_kind
                WHEN 'pool' THEN ';s=' || p.set_id
                WHEN 'trunk' THEN ';k=' || t.id
                ELSE ''
            END ||
            CASE WHEN n.service IS NOT NULL THEN ';v=' || n.service ELSE '' END)::varchar AS attrs,
           -- exact numbers first, then the longest prefix
           (row_number() OVER (ORDER BY CASE n.match_kind WHEN 'exact' THEN 0 ELSE 1 END,
                                        char_length(n.number) DESC, n.number))::integer AS pr
    FROM sipstack_number AS n
    LEFT JOIN sipstack_media_pool AS p ON p.name = n.target_pool
    LEFT JOIN sipstack_trunk AS t ON t.name = n.target_trunk
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
FROM placed
UNION ALL
SELECT 3, number_rule.pr, number_rule.match_op, number_rule.match_exp, 0,
       number_rule.subst_exp, number_rule.repl_exp, number_rule.attrs
FROM number_rule;
