-- Voicemail: every message left for a subscriber, audio included. The media
-- nodes hold nothing of it: a message left through one node is heard through
-- any other, and a node can be replaced at any time. The audio is here (a WAV
-- file, 8 kHz 16-bit mono, at most a few minutes) rather than on a volume every
-- node mounts: one copy, replicated and backed up with the rest of the
-- platform's data, and no shared filesystem to provide on Kubernetes.

CREATE TABLE sipstack_voicemail (
    id BIGSERIAL PRIMARY KEY,
    -- the subscriber the message is for; deleting the subscriber deletes it
    username VARCHAR(64) NOT NULL,
    domain VARCHAR(64) NOT NULL,
    -- who left it: the caller's number as the media node saw it
    caller VARCHAR(128) NOT NULL DEFAULT '',
    sip_call_id VARCHAR(255) NOT NULL DEFAULT '',
    -- the node that recorded it (its address)
    media_node VARCHAR(64) NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_ms INTEGER NOT NULL CHECK (duration_ms >= 0),
    audio BYTEA NOT NULL,
    -- set when the subscriber has listened to it
    heard_at TIMESTAMPTZ NULL,
    CONSTRAINT sipstack_voicemail_subscriber_fk FOREIGN KEY (username, domain)
        REFERENCES subscriber (username, domain) ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE INDEX sipstack_voicemail_mailbox_idx ON sipstack_voicemail (username, domain, created_at);
