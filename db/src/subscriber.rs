//! SIP subscribers (Kamailio's `subscriber` table, read by auth_db).
//!
//! Only the digest hashes are stored: with `calculate_ha1=0` auth_db needs
//! `ha1` and `ha1b`, and the `password` column stays empty.

use md5::{Digest, Md5};
use tokio_postgres::GenericClient;

use crate::validate::{self, invalid, shown};
use crate::DbError;

/// A subscriber account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub username: String,
    pub domain: String,
}

/// HA1 of RFC 2617 digest authentication: md5(username:realm:password).
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}:{realm}:{password}"))
}

/// The HA1 auth_db uses when the client sends `username@domain` as its digest username.
pub fn ha1b(username: &str, domain: &str, realm: &str, password: &str) -> String {
    md5_hex(&format!("{username}@{domain}:{realm}:{password}"))
}

fn md5_hex(text: &str) -> String {
    format!("{:x}", Md5::digest(text.as_bytes()))
}

/// Checks a username; it goes into URIs, digest headers and SIPp files unescaped.
pub fn validate_username(username: &str) -> Result<(), DbError> {
    if !validate::USERNAME.is_match(username) {
        return Err(invalid(
            "username",
            format!("{} is not a SIP user name sipstack accepts", shown(username)),
            "use 1 to 64 letters, digits and . _ ~ + -",
        ));
    }
    Ok(())
}

/// Checks a password: it is hashed, so any printable text works.
pub fn validate_password(password: &str) -> Result<(), DbError> {
    if password.is_empty() || password.chars().count() > 128 {
        return Err(invalid(
            "password",
            "the password is empty or longer than 128 characters",
            "use 1 to 128 characters",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(invalid(
            "password",
            "the password contains a control character",
            "use printable characters only (SIP clients cannot type the others)",
        ));
    }
    Ok(())
}

struct Account {
    username: String,
    domain: String,
    ha1: String,
    ha1b: String,
}

fn account(username: &str, domain: &str, password: &str) -> Result<Account, DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    validate_password(password)?;
    // The realm of a subscriber is its domain.
    Ok(Account {
        ha1: ha1(username, &domain, password),
        ha1b: ha1b(username, &domain, &domain, password),
        username: username.to_string(),
        domain,
    })
}

/// Adds a subscriber; fails if `username@domain` exists. The domain is stored lower-case.
pub async fn add(client: &impl GenericClient, username: &str, domain: &str, password: &str) -> Result<(), DbError> {
    let a = account(username, domain, password)?;
    let inserted = client
        .execute(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ($1, $2, '', $3, $4)
             ON CONFLICT (username, domain) DO NOTHING",
            &[&a.username, &a.domain, &a.ha1, &a.ha1b],
        )
        .await
        .map_err(DbError::query(format!("cannot add subscriber {}@{}", a.username, a.domain)))?;
    if inserted == 0 {
        return Err(DbError::AlreadyExists { kind: "subscriber", name: format!("{}@{}", a.username, a.domain) });
    }
    Ok(())
}

/// Adds a subscriber or sets the password of an existing one. Returns whether it was added.
pub async fn upsert(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
    password: &str,
) -> Result<bool, DbError> {
    let a = account(username, domain, password)?;
    let row = client
        .query_one(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ($1, $2, '', $3, $4)
             ON CONFLICT (username, domain) DO UPDATE SET password = '', ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b
             RETURNING (xmax = 0)",
            &[&a.username, &a.domain, &a.ha1, &a.ha1b],
        )
        .await
        .map_err(DbError::query(format!("cannot store subscriber {}@{}", a.username, a.domain)))?;
    Ok(row.get(0))
}

/// Removes a subscriber.
pub async fn remove(client: &impl GenericClient, username: &str, domain: &str) -> Result<(), DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    let deleted = client
        .execute("DELETE FROM subscriber WHERE username = $1 AND domain = $2", &[&username, &domain])
        .await
        .map_err(DbError::query(format!("cannot remove subscriber {username}@{domain}")))?;
    if deleted == 0 {
        return Err(DbError::NotFound { kind: "subscriber", name: format!("{username}@{domain}") });
    }
    Ok(())
}

/// Every subscriber, ordered by domain and name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<Subscriber>, DbError> {
    let rows = client
        .query("SELECT username, domain FROM subscriber ORDER BY domain, username", &[])
        .await
        .map_err(DbError::query("cannot list subscribers"))?;
    Ok(rows.iter().map(|r| Subscriber { username: r.get(0), domain: r.get(1) }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha1_matches_rfc_2617_example() {
        // RFC 2617 §3.5: Mufasa / testrealm@host.com / Circle Of Life.
        assert_eq!(ha1("Mufasa", "testrealm@host.com", "Circle Of Life"), "939e7578ed9e3c518a452acee763bce9");
    }

    #[test]
    fn ha1_and_ha1b_match_md5sum() {
        // echo -n 'alice:example.com:secret' | md5sum
        assert_eq!(ha1("alice", "example.com", "secret"), "b1726872c344b6dc8365b774f8fd6412");
        // echo -n 'alice@example.com:example.com:secret' | md5sum
        assert_eq!(ha1b("alice", "example.com", "example.com", "secret"), "c79656e4f06dbae9fdf6727654273c65");
    }

    #[test]
    fn account_hashes_use_the_lower_cased_domain_as_realm() {
        let a = account("alice", "Example.COM", "secret").unwrap();
        assert_eq!(a.domain, "example.com");
        assert_eq!(a.ha1, ha1("alice", "example.com", "secret"));
        assert_eq!(a.ha1b, ha1b("alice", "example.com", "example.com", "secret"));
    }

    #[test]
    fn usernames() {
        for ok in ["alice", "1001", "a.b_c~d+e-f", &"u".repeat(64)] {
            assert!(validate_username(ok).is_ok(), "{ok:?} refused");
        }
        for bad in ["", "a b", "a@b", "a:b", "a;b", "a\"b", "a\nb", &"u".repeat(65), "ä"] {
            let err = validate_username(bad).unwrap_err().to_string();
            assert!(err.starts_with("username: "), "{err}");
        }
    }

    #[test]
    fn passwords() {
        assert!(validate_password("Circle Of Life").is_ok());
        assert!(validate_password("").is_err());
        assert!(validate_password("a\nb").is_err());
        assert!(validate_password(&"p".repeat(129)).is_err());
    }
}
