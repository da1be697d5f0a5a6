-- A route to a media pool may name the service the media node runs for the call
-- (echo, tone, conference, ...). The edge passes it to the node in a header it
-- sets itself (X-Sipstack-Service); the node's dialplan selects the service by it.
ALTER TABLE sipstack_route ADD COLUMN service VARCHAR(32) NULL;
-- Only pool routes name a service, and the name is a plain word: it is pasted into
-- the dialplan attributes (';v=NAME') and into a SIP header.
ALTER TABLE sipstack_route ADD CONSTRAINT sipstack_route_service_check CHECK (
    service IS NULL OR (target_kind = 'pool' AND service ~ '^[a-z][a-z0-9-]{0,31}$')
);

-- The view of 0002 with the service in the rule's attributes.
CREATE OR REPLACE VIEW sipstack_dialplan AS
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
            END ||
            CASE WHEN r.service IS NOT NULL THEN ';v=' || r.service ELSE '' END)::varchar AS attrs
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

