//! Voicemail: `get voicemail [USER@DOMAIN]` lists the messages the media nodes
//! recorded, `delete voicemail ID` removes one, `export voicemail ID` writes its
//! audio to a WAV file. The messages live in the platform database.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use sipstack_db::voicemail::{self, Message};

use super::cdr::rfc3339;
use super::Ctx;
use crate::output::Columns;

/// List voicemail messages, oldest first.
#[derive(Debug, Args)]
#[command(
    after_help = "Calls to a subscriber who is not registered, busy, or does not answer within \
spec.routing.voicemailAfterSeconds go to the voicemail of spec.routing.voicemailMediaPool; a route \
with --service voicemail-inbox lets subscribers hear theirs.\n\nExamples:\n  sipctl get voicemail\n  \
sipctl get voicemail alice@example.com -o json"
)]
pub struct GetArgs {
    /// One mailbox: user@domain.
    pub mailbox: Option<String>,
}

/// Delete a voicemail message.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl delete voicemail 42")]
pub struct DeleteArgs {
    /// The message's ID (the ID column of `get voicemail`).
    pub id: i64,
}

/// Write a voicemail message's audio to a file.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  sipctl export voicemail 42 --out message-42.wav")]
pub struct ExportArgs {
    /// The message's ID (the ID column of `get voicemail`).
    pub id: i64,
    /// The WAV file to write (8 kHz, 16-bit, mono).
    #[arg(long)]
    pub out: PathBuf,
}

/// One message as sipctl prints it; the JSON/YAML field names are stable.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageView {
    id: i64,
    mailbox: String,
    caller: String,
    /// When it was left (RFC 3339, UTC).
    created_at: String,
    duration_ms: i32,
    audio_bytes: i64,
    /// When the subscriber heard it; null: new.
    heard_at: Option<String>,
    sip_call_id: String,
    media_node: String,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            mailbox: m.mailbox,
            caller: m.caller,
            created_at: rfc3339(m.created_at),
            duration_ms: m.duration_ms,
            audio_bytes: m.audio_bytes,
            heard_at: m.heard_at.map(rfc3339),
            sip_call_id: m.sip_call_id,
            media_node: m.media_node,
        }
    }
}

const COLUMNS: Columns = Columns {
    headers: &[
        "ID",
        "MAILBOX",
        "FROM",
        "LEFT",
        "SECONDS",
        "STATE",
        "SIP-CALL-ID",
        "MEDIA",
        "BYTES",
    ],
    narrow: 6,
};

fn row(m: &MessageView) -> Vec<String> {
    vec![
        m.id.to_string(),
        m.mailbox.clone(),
        m.caller.clone(),
        m.created_at.clone(),
        format!("{:.1}", f64::from(m.duration_ms) / 1000.0),
        if m.heard_at.is_some() { "heard" } else { "new" }.into(),
        m.sip_call_id.clone(),
        m.media_node.clone(),
        m.audio_bytes.to_string(),
    ]
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let db = ctx.db().await?;
    let messages = voicemail::list(&db, args.mailbox.as_deref()).await?;
    let views: Vec<MessageView> = messages.into_iter().map(MessageView::from).collect();
    ctx.output.list(&views, &COLUMNS, row)?;
    if ctx.output.is_human() && views.is_empty() {
        eprintln!("No voicemail messages.");
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct Deleted {
    deleted: i64,
}

pub async fn delete(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<()> {
    let db = ctx.db().await?;
    voicemail::delete(&db, args.id).await?;
    let result = Deleted { deleted: args.id };
    ctx.output.object(&result, |out| {
        writeln!(out, "voicemail message {} deleted", args.id)
    })?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct Exported {
    id: i64,
    file: String,
    bytes: usize,
}

pub async fn export(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<()> {
    let db = ctx.db().await?;
    let audio = voicemail::audio(&db, args.id).await?;
    std::fs::write(&args.out, &audio)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let result = Exported {
        id: args.id,
        file: args.out.display().to_string(),
        bytes: audio.len(),
    };
    ctx.output.object(&result, |out| {
        writeln!(
            out,
            "voicemail message {} written to {} ({} bytes)",
            result.id, result.file, result.bytes
        )
    })?;
    Ok(())
}
