-- The edge's record of every call it relays (sipstack_edge_cdr), and the view
-- that puts it side by side with the media node's record of the same call
-- (sipstack_call): one row per call, joined by the SIP Call-ID.
--
-- The edges do not write here themselves. Kamailio's acc module writes each
-- record to a spool file on the edge's host (db_flatstore), and
-- sipstack-cdr-shipper moves the records in: a database outage delays them and
-- loses none. A record is the edge's dialog (Call-ID and the caller's tag), so
-- a record shipped twice is stored once.

CREATE TABLE sipstack_edge_cdr (
    id BIGSERIAL PRIMARY KEY,
    -- the SipEdge that relayed the call
    edge VARCHAR(63) NOT NULL,
    sip_call_id VARCHAR(255) NOT NULL,
    from_tag VARCHAR(128) NOT NULL,
    -- the From user, and the number (Request-URI user) as the caller dialled it
    caller VARCHAR(128) NOT NULL DEFAULT '',
    callee VARCHAR(128) NOT NULL DEFAULT '',
    -- where the call came from: an authenticated subscriber, a trunk (by address
    -- or a PBX's account) or a media node
    source VARCHAR(10) NOT NULL CHECK (source IN ('subscriber', 'trunk', 'media')),
    source_subscriber VARCHAR(128) NULL,
    source_trunk VARCHAR(63) NULL,
    -- where the edge sent it: a subscriber's contacts, a trunk, a media pool, or a URI
    destination_kind VARCHAR(5) NOT NULL CHECK (destination_kind IN ('user', 'trunk', 'pool', 'uri')),
    -- the last place it was relayed to (a contact, a gateway, a media node)
    destination VARCHAR(255) NOT NULL DEFAULT '',
    destination_trunk VARCHAR(63) NULL,
    start_time TIMESTAMPTZ NOT NULL,
    answer_time TIMESTAMPTZ NULL,
    end_time TIMESTAMPTZ NOT NULL,
    -- the final answer to the INVITE (200 for an answered call), 0 if none came
    sip_code INTEGER NOT NULL DEFAULT 0 CHECK (sip_code BETWEEN 0 AND 699),
    -- who ended an answered call: caller, callee, or timeout (no BYE ever came)
    ended_by VARCHAR(7) NULL CHECK (ended_by IN ('caller', 'callee', 'timeout')),
    shipped_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sipstack_edge_cdr_dialog_key UNIQUE (sip_call_id, from_tag),
    CONSTRAINT sipstack_edge_cdr_times_check CHECK (
        end_time >= start_time AND (answer_time IS NULL OR answer_time >= start_time)
    )
);

CREATE INDEX sipstack_edge_cdr_start_time_idx ON sipstack_edge_cdr (start_time);

-- One row per call: the edge's record and the media node's, joined by Call-ID.
-- A call that only one of them saw has the other's columns empty.
CREATE VIEW sipstack_call AS
SELECT e.id AS edge_cdr_id,
       m.id AS media_cdr_id,
       COALESCE(e.sip_call_id, NULLIF(m.sip_call_id, '')) AS sip_call_id,
       COALESCE(e.start_time, m.start_time) AS start_time,
       COALESCE(e.answer_time, m.answer_time) AS answer_time,
       COALESCE(e.end_time, m.end_time) AS end_time,
       COALESCE(NULLIF(e.caller, ''), m.caller_number, '') AS caller,
       COALESCE(NULLIF(e.callee, ''), m.callee_number, '') AS callee,
       e.edge,
       e.source,
       e.source_subscriber,
       e.source_trunk,
       e.destination_kind,
       e.destination,
       e.destination_trunk,
       e.sip_code,
       e.ended_by,
       m.call_uuid,
       m.edge_node,
       m.media_node,
       m.hangup_cause,
       m.codec,
       m.duration AS media_duration,
       m.billsec AS media_billsec
FROM sipstack_edge_cdr AS e
FULL OUTER JOIN sipstack_cdr AS m
    ON m.sip_call_id = e.sip_call_id AND m.sip_call_id <> '';
