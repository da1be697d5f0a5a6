-- What a media node knows of a call besides its times: the codec the caller's leg
-- used, and the SIP Call-ID that correlates the record with the edge's view of the call.
ALTER TABLE sipstack_cdr
    ADD COLUMN codec TEXT NOT NULL DEFAULT '',
    ADD COLUMN sip_call_id TEXT NOT NULL DEFAULT '';

CREATE INDEX sipstack_cdr_sip_call_id_idx ON sipstack_cdr (sip_call_id);
