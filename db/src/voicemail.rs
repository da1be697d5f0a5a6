//! Subscribers' voicemail (`sipstack_voicemail`): the media nodes record and play
//! the messages; this is what the control plane reads and removes. The audio
//! stays in the database, so listing a mailbox never reads it.

use std::time::SystemTime;

use tokio_postgres::GenericClient;

use crate::subscriber::parse_aor;
use crate::DbError;

/// One message, without its audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: i64,
    /// The mailbox: the subscriber's address of record.
    pub mailbox: String,
    pub caller: String,
    pub sip_call_id: String,
    pub media_node: String,
    pub created_at: SystemTime,
    pub duration_ms: i32,
    /// Size of the stored audio (a WAV file).
    pub audio_bytes: i64,
    pub heard_at: Option<SystemTime>,
}

const COLUMNS: &str = "id, username || '@' || domain, caller, sip_call_id, media_node, \
                       created_at, duration_ms, octet_length(audio)::bigint, heard_at";

fn message(row: &tokio_postgres::Row) -> Message {
    Message {
        id: row.get(0),
        mailbox: row.get(1),
        caller: row.get(2),
        sip_call_id: row.get(3),
        media_node: row.get(4),
        created_at: row.get(5),
        duration_ms: row.get(6),
        audio_bytes: row.get(7),
        heard_at: row.get(8),
    }
}

/// The messages of mailbox `aor` (`user@domain`), oldest first; every mailbox's
/// with `None`.
pub async fn list(client: &impl GenericClient, aor: Option<&str>) -> Result<Vec<Message>, DbError> {
    let rows = match aor {
        Some(aor) => {
            let (username, domain) = parse_aor(aor)?;
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM sipstack_voicemail \
                         WHERE username = $1 AND domain = $2 ORDER BY created_at, id"
                    ),
                    &[&username, &domain],
                )
                .await
        }
        None => {
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM sipstack_voicemail \
                         ORDER BY domain, username, created_at, id"
                    ),
                    &[],
                )
                .await
        }
    };
    Ok(rows
        .map_err(DbError::query("cannot read the voicemail messages"))?
        .iter()
        .map(message)
        .collect())
}

/// The audio of message `id` (a WAV file).
pub async fn audio(client: &impl GenericClient, id: i64) -> Result<Vec<u8>, DbError> {
    client
        .query_opt("SELECT audio FROM sipstack_voicemail WHERE id = $1", &[&id])
        .await
        .map_err(DbError::query(format!(
            "cannot read voicemail message {id}"
        )))?
        .map(|row| row.get(0))
        .ok_or_else(|| DbError::NotFound {
            kind: "voicemail message",
            name: id.to_string(),
        })
}

/// Deletes message `id`.
pub async fn delete(client: &impl GenericClient, id: i64) -> Result<(), DbError> {
    let n = client
        .execute("DELETE FROM sipstack_voicemail WHERE id = $1", &[&id])
        .await
        .map_err(DbError::query(format!(
            "cannot delete voicemail message {id}"
        )))?;
    if n == 0 {
        return Err(DbError::NotFound {
            kind: "voicemail message",
            name: id.to_string(),
        });
    }
    Ok(())
}
