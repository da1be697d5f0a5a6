//! Dispatcher destinations (Kamailio's `dispatcher` table): the members of each
//! media pool's set.

use std::collections::BTreeSet;

use tokio_postgres::GenericClient;

use crate::validate::{self, invalid, shown};
use crate::DbError;

/// A member a set should have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `sip:host[:port][;transport=udp|tcp|tls]`.
    pub destination: String,
    /// Share of calls with the weighted algorithm, 1 to 100.
    pub weight: i32,
    /// Order with the active-failover algorithm.
    pub priority: i32,
    pub description: String,
}

/// A row of the dispatcher table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub id: i32,
    pub set_id: i32,
    pub destination: String,
    /// Bits: 1 inactive, 2 trying, 4 disabled, 8 probing.
    pub flags: i32,
    pub priority: i32,
    pub attrs: String,
    pub description: String,
}

impl Destination {
    /// A row selected as `id, setid, destination, flags, priority, attrs, description`.
    pub fn from_row(r: &tokio_postgres::Row) -> Self {
        Destination {
            id: r.get(0),
            set_id: r.get(1),
            destination: r.get(2),
            flags: r.get(3),
            priority: r.get(4),
            attrs: r.get(5),
            description: r.get(6),
        }
    }
}

/// What [`replace_set`] changed, as destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Members that stayed; their flags (state) are untouched, their weight,
    /// priority and description are brought up to date.
    pub kept: Vec<String>,
}

impl SetChange {
    pub fn is_unchanged(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Dispatcher set ids sipstack uses, matching MediaPool's setId.
pub fn validate_set_id(set_id: i32) -> Result<(), DbError> {
    if !(1..=9999).contains(&set_id) {
        return Err(invalid(
            "setId",
            format!("{set_id} is out of range"),
            "use a set id from 1 to 9999",
        ));
    }
    Ok(())
}

/// Checks one member.
pub fn validate_member(index: usize, member: &Member) -> Result<(), DbError> {
    let field = |name: &str| format!("members[{index}].{name}");
    if member.destination.len() > 192 || !validate::DESTINATION.is_match(&member.destination) {
        return Err(invalid(
            &field("destination"),
            format!("{} is not a dispatcher destination", shown(&member.destination)),
            "use sip:host[:port][;transport=udp|tcp|tls], at most 192 characters, e.g. sip:10.0.0.5:5080",
        ));
    }
    if !(1..=100).contains(&member.weight) {
        return Err(invalid(
            &field("weight"),
            format!("{} is out of range", member.weight),
            "use a weight from 1 to 100",
        ));
    }
    validate::one_line_text(&field("description"), &member.description, 64)?;
    Ok(())
}

/// The member's `attrs`: `rweight` is what the weighted algorithm (Kamailio's 11,
/// relative weights) reads; `weight` is kept for the percentage-based algorithm 9
/// and for people reading the table. Without `rweight`, algorithm 11 sends every
/// call to one member.
pub fn weight_attrs(weight: i32) -> String {
    format!("weight={weight};rweight={weight}")
}

/// Makes set `set_id` hold exactly `members`, atomically (one statement).
///
/// Rows of members that stay are kept with their flags, so a member's probing
/// state survives; new members are inserted active (flags 0); the rest are deleted.
/// Kamailio sees the change on its next `dispatcher.reload`.
pub async fn replace_set(
    client: &impl GenericClient,
    set_id: i32,
    members: &[Member],
) -> Result<SetChange, DbError> {
    validate_set_id(set_id)?;
    let mut seen = BTreeSet::new();
    for (i, m) in members.iter().enumerate() {
        validate_member(i, m)?;
        if !seen.insert(m.destination.as_str()) {
            return Err(invalid(
                &format!("members[{i}].destination"),
                format!("{} is listed twice", shown(&m.destination)),
                "list each destination once",
            ));
        }
    }
    let destinations: Vec<&str> = members.iter().map(|m| m.destination.as_str()).collect();
    let priorities: Vec<i32> = members.iter().map(|m| m.priority).collect();
    let attrs: Vec<String> = members.iter().map(|m| weight_attrs(m.weight)).collect();
    let descriptions: Vec<&str> = members.iter().map(|m| m.description.as_str()).collect();

    // All parts see the same snapshot and run even when not selected from; the unique
    // (setid, destination) index keeps a concurrent writer of the same set from
    // duplicating a member.
    let rows = client
        .query(
            "WITH desired AS (
                 SELECT * FROM unnest($2::varchar[], $3::integer[], $4::varchar[], $5::varchar[])
                     AS d(destination, priority, attrs, description)
             ),
             current AS (
                 SELECT id, destination, priority, attrs, description FROM dispatcher WHERE setid = $1
             ),
             removed AS (
                 DELETE FROM dispatcher AS x USING current AS c
                 WHERE x.id = c.id AND NOT EXISTS (SELECT 1 FROM desired AS d WHERE d.destination = c.destination)
                 RETURNING x.destination
             ),
             updated AS (
                 UPDATE dispatcher AS x SET priority = d.priority, attrs = d.attrs, description = d.description
                 FROM current AS c JOIN desired AS d ON d.destination = c.destination
                 WHERE x.id = c.id
                   AND (c.priority, c.attrs, c.description) IS DISTINCT FROM (d.priority, d.attrs, d.description)
                 RETURNING x.id
             ),
             added AS (
                 INSERT INTO dispatcher (setid, destination, flags, priority, attrs, description)
                 SELECT $1, d.destination, 0, d.priority, d.attrs, d.description FROM desired AS d
                 WHERE NOT EXISTS (SELECT 1 FROM current AS c WHERE c.destination = d.destination)
                 ON CONFLICT (setid, destination) DO NOTHING
                 RETURNING destination
             )
             SELECT 'added', destination::text FROM added
             UNION ALL SELECT 'removed', destination::text FROM removed
             UNION ALL SELECT 'kept', c.destination::text FROM current AS c JOIN desired AS d USING (destination)",
            &[&set_id, &destinations, &priorities, &attrs, &descriptions],
        )
        .await
        .map_err(DbError::query(format!("cannot update dispatcher set {set_id}")))?;

    let mut change = SetChange::default();
    for row in &rows {
        let (what, destination): (&str, String) = (row.get(0), row.get(1));
        match what {
            "added" => change.added.push(destination),
            "removed" => change.removed.push(destination),
            _ => change.kept.push(destination),
        }
    }
    change.added.sort();
    change.removed.sort();
    change.kept.sort();
    tracing::debug!(set_id, added = ?change.added, removed = ?change.removed, "dispatcher set replaced");
    Ok(change)
}

/// Every destination, by set and id.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Destination>, DbError> {
    let rows = client
        .query(
            "SELECT id, setid, destination, flags, priority, attrs, description FROM dispatcher ORDER BY setid, id",
            &[],
        )
        .await
        .map_err(DbError::query("cannot list dispatcher destinations"))?;
    Ok(rows.iter().map(Destination::from_row).collect())
}

/// Flag bit: Kamailio marked the destination inactive.
pub const FLAG_INACTIVE: i32 = 1;
/// Flag bit: Kamailio is trying the destination (some probes failed).
pub const FLAG_TRYING: i32 = 2;
/// Flag bit: disabled by an administrator. Kamailio neither selects nor probes it,
/// and it is loaded so on every start and `dispatcher.reload`.
pub const FLAG_DISABLED: i32 = 4;
/// Flag bit: probed with OPTIONS.
pub const FLAG_PROBING: i32 = 8;

/// What [`set_drained`] did to one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainChange {
    /// The row as it is now.
    pub destination: Destination,
    pub previous_flags: i32,
}

impl DrainChange {
    pub fn changed(&self) -> bool {
        self.destination.flags != self.previous_flags
    }
}

/// Checks a destination given by a person (the URI `get dispatchers` shows).
pub fn validate_destination(field: &str, destination: &str) -> Result<(), DbError> {
    if destination.len() > 192 || !validate::DESTINATION.is_match(destination) {
        return Err(invalid(
            field,
            format!("{} is not a dispatcher destination", shown(destination)),
            "use sip:host[:port][;transport=udp|tcp|tls] as `sipctl get dispatchers` shows it, e.g. sip:10.0.0.5:5080",
        ));
    }
    Ok(())
}

/// First key of the advisory lock that serialises writers of one set (the second
/// is the set id): the sync engine holds it while it reads the set and writes its
/// plan, and a drain holds it while it changes a flag, so a drain committed in
/// between can never be overwritten by a plan computed before it.
pub const SET_LOCK_CLASS: i32 = 0x5157_0001;

/// Drains a member (`drained`: sets the disabled flag, so Kamailio sends it no new
/// calls and stops probing it, also after a restart or reload) or enables it again
/// (clears the state bits and sets probing, so probing decides when it takes calls).
///
/// `set_id` picks the set when the destination is a member of several; without it
/// such a destination is refused, naming the sets. One statement: nothing changes
/// unless exactly one row is meant.
pub async fn set_drained(
    client: &mut tokio_postgres::Client,
    destination: &str,
    set_id: Option<i32>,
    drained: bool,
) -> Result<DrainChange, DbError> {
    validate_destination("destination", destination)?;
    if let Some(set) = set_id {
        validate_set_id(set)?;
    }
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    // the locks of every set the destination is in, in set order (no deadlock with
    // an engine, which takes one)
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, s.setid)
         FROM (SELECT DISTINCT setid FROM dispatcher
               WHERE destination = $2 AND ($3::integer IS NULL OR setid = $3)
               ORDER BY setid) AS s",
        &[&SET_LOCK_CLASS, &destination, &set_id],
    )
    .await
    .map_err(DbError::query(format!(
        "cannot lock the sets of {destination:?}"
    )))?;
    let rows = tx
        .query(
            "WITH m AS (
                 SELECT id, setid, flags FROM dispatcher
                 WHERE destination = $1 AND ($2::integer IS NULL OR setid = $2)
             ),
             u AS (
                 UPDATE dispatcher AS d
                 SET flags = CASE WHEN $3 THEN d.flags | $4 ELSE (d.flags & ~($4 | $5 | $6)) | $7 END
                 FROM m
                 WHERE d.id = m.id AND (SELECT count(*) FROM m) = 1
                 RETURNING d.id, d.flags
             )
             SELECT m.id, m.setid, m.flags, u.flags, d.destination::text, d.priority, d.attrs::text, d.description::text
             FROM m JOIN dispatcher AS d ON d.id = m.id LEFT JOIN u ON u.id = m.id
             ORDER BY m.setid",
            &[&destination, &set_id, &drained, &FLAG_DISABLED, &FLAG_INACTIVE, &FLAG_TRYING, &FLAG_PROBING],
        )
        .await
        .map_err(DbError::query(format!("cannot change dispatcher destination {destination:?}")))?;
    tx.commit().await.map_err(DbError::query(format!(
        "cannot change dispatcher destination {destination:?}"
    )))?;
    match rows.as_slice() {
        [] => Err(DbError::NotFound {
            kind: "dispatcher destination",
            name: match set_id {
                Some(set) => format!("{destination} in set {set}"),
                None => destination.to_string(),
            },
        }),
        [row] => {
            let previous_flags: i32 = row.get(2);
            let flags: Option<i32> = row.get(3);
            Ok(DrainChange {
                destination: Destination {
                    id: row.get(0),
                    set_id: row.get(1),
                    destination: row.get(4),
                    flags: flags.unwrap_or(previous_flags),
                    priority: row.get(5),
                    attrs: row.get(6),
                    description: row.get(7),
                },
                previous_flags,
            })
        }
        many => {
            let sets: Vec<String> = many
                .iter()
                .map(|r| r.get::<_, i32>(1).to_string())
                .collect();
            Err(invalid(
                "set",
                format!(
                    "{} is a member of sets {}",
                    shown(destination),
                    sets.join(", ")
                ),
                format!("name one of the sets: {}", sets.join(", ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(destination: &str) -> Member {
        Member {
            destination: destination.into(),
            weight: 50,
            priority: 0,
            description: String::new(),
        }
    }

    #[test]
    fn destinations() {
        for ok in [
            "sip:10.0.0.5",
            "sip:fs-0.media:5080",
            "sip:[fd00::1]:5060;transport=tcp",
        ] {
            assert!(validate_member(0, &member(ok)).is_ok(), "{ok} refused");
        }
        for bad in [
            "10.0.0.5",
            "sips:a",
            "sip:a;transport=sctp",
            "sip:a b",
            "sip:a\n",
            "sip:user@a",
        ] {
            let err = validate_member(3, &member(bad)).unwrap_err().to_string();
            assert!(err.starts_with("members[3].destination: "), "{err}");
        }
    }

    #[test]
    fn weights_and_descriptions() {
        let mut m = member("sip:a");
        m.weight = 0;
        assert!(validate_member(0, &m).is_err());
        m.weight = 101;
        assert!(validate_member(0, &m).is_err());
        m.weight = 100;
        m.description = "x".repeat(65);
        assert!(validate_member(0, &m).is_err());
        assert_eq!(weight_attrs(7), "weight=7;rweight=7");
    }

    #[test]
    fn set_ids() {
        assert!(validate_set_id(1).is_ok());
        assert!(validate_set_id(9999).is_ok());
        assert!(validate_set_id(0).is_err());
        assert!(validate_set_id(10000).is_err());
    }
}
