//! Checks of values before they reach the database. They mirror the CHECK
//! constraints of the migrations, so a mistake is reported by field with a fix
//! instead of as a constraint violation.

use std::sync::LazyLock;

use regex::Regex;

use crate::DbError;

/// Kubernetes object names: route and media pool names.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A host name: dot-separated labels of letters, digits and inner hyphens.
pub const DOMAIN_PATTERN: &str = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";
/// SIP user parts that need no escaping in a URI, a digest header or a config file.
pub const USERNAME_PATTERN: &str = r"^[A-Za-z0-9._~+-]{1,64}$";
/// Dialled prefixes and exact numbers.
pub const DIAL_STRING_PATTERN: &str = r"^[0-9A-Za-z+*#._-]+$";
/// A route's target URI. No '\', '$' or quotes: it becomes a dialplan replacement string.
pub const TARGET_URI_PATTERN: &str = r"^sips?:[A-Za-z0-9+*#._~!%:@=;-]+$";
/// The reason phrase of a reject route.
pub const REJECT_REASON_PATTERN: &str = r"^[A-Za-z0-9 ]{1,64}$";
/// A dispatcher destination: `sip:host[:port][;transport=udp|tcp|tls]`.
pub const DESTINATION_PATTERN: &str =
    r"^sip:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?(;transport=(udp|tcp|tls))?$";

/// A trunk's digest username towards its carrier (it goes into an Authorization header).
pub const AUTH_USERNAME_PATTERN: &str = r"^[A-Za-z0-9._+-]{1,64}$";
/// A trunk's encrypted password: base64 of IV and ciphertext.
pub const ENCRYPTED_PASSWORD_PATTERN: &str = r"^[A-Za-z0-9+/]{40,}={0,2}$";
/// What a trunk puts in front of the dialled number.
pub const TRUNK_PREFIX_PATTERN: &str = r"^[0-9+*#]*$";
/// A trunk gateway: a SIP URI without a user part (the dialled number becomes it).
pub const GATEWAY_URI_PATTERN: &str = r"^sips?:[A-Za-z0-9.:\[\]-]+(;transport=(udp|tcp|tls))?$";
/// A number (DID) of the platform, or a block's prefix.
pub const NUMBER_PATTERN: &str = r"^\+?[0-9]{1,31}$";
/// A media service name, as routes and numbers name it.
pub const SERVICE_PATTERN: &str = r"^[a-z][a-z0-9-]{0,31}$";

/// Dialplan copies a route's replacement into a 128-byte buffer without a bounds check.
pub const MAX_TARGET_URI_LEN: usize = 127;

fn builtin(pattern: &str) -> Regex {
    // The patterns are constants of this module; the unit tests compile each one.
    Regex::new(pattern).unwrap_or_else(|e| panic!("built-in pattern {pattern} is invalid: {e}"))
}

pub(crate) static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| builtin(DNS_LABEL_PATTERN));
pub(crate) static DOMAIN: LazyLock<Regex> = LazyLock::new(|| builtin(DOMAIN_PATTERN));
pub(crate) static USERNAME: LazyLock<Regex> = LazyLock::new(|| builtin(USERNAME_PATTERN));
pub(crate) static DIAL_STRING: LazyLock<Regex> = LazyLock::new(|| builtin(DIAL_STRING_PATTERN));
pub(crate) static TARGET_URI: LazyLock<Regex> = LazyLock::new(|| builtin(TARGET_URI_PATTERN));
pub(crate) static REJECT_REASON: LazyLock<Regex> = LazyLock::new(|| builtin(REJECT_REASON_PATTERN));
pub(crate) static DESTINATION: LazyLock<Regex> = LazyLock::new(|| builtin(DESTINATION_PATTERN));
pub(crate) static AUTH_USERNAME: LazyLock<Regex> = LazyLock::new(|| builtin(AUTH_USERNAME_PATTERN));
pub(crate) static ENCRYPTED_PASSWORD: LazyLock<Regex> =
    LazyLock::new(|| builtin(ENCRYPTED_PASSWORD_PATTERN));
pub(crate) static TRUNK_PREFIX: LazyLock<Regex> = LazyLock::new(|| builtin(TRUNK_PREFIX_PATTERN));
pub(crate) static GATEWAY_URI: LazyLock<Regex> = LazyLock::new(|| builtin(GATEWAY_URI_PATTERN));
pub(crate) static NUMBER: LazyLock<Regex> = LazyLock::new(|| builtin(NUMBER_PATTERN));
pub(crate) static SERVICE: LazyLock<Regex> = LazyLock::new(|| builtin(SERVICE_PATTERN));

/// Shows a value so that what is wrong with it is visible: quoted, control
/// characters escaped, long values cut.
pub fn shown(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if value.chars().count() > MAX {
        out.push('…');
    }
    format!("\"{out}\"")
}

pub(crate) fn invalid(field: &str, problem: impl Into<String>, fix: impl Into<String>) -> DbError {
    DbError::Invalid {
        field: field.to_string(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A PostgreSQL role or database name the platform accepts,
/// `^[a-z_][a-z0-9_]{0,62}$`: it never needs quoting.
pub fn check_db_identifier(field: &str, value: &str) -> Result<(), DbError> {
    let mut chars = value.chars();
    let ok = value.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(invalid(
            field,
            format!("{} is not a PostgreSQL name the platform accepts", shown(value)),
            "use at most 63 lower-case letters, digits and '_', not starting with a digit (e.g. sipstack)",
        ));
    }
    Ok(())
}

/// A route or pool name: a DNS label of at most 63 characters.
pub fn name(field: &str, value: &str) -> Result<(), DbError> {
    if value.is_empty() || value.len() > 63 || !DNS_LABEL.is_match(value) {
        return Err(invalid(
            field,
            format!("{} is not a valid name", shown(value)),
            "use at most 63 lower-case letters, digits and inner '-', e.g. pstn-out",
        ));
    }
    Ok(())
}

/// A SIP domain of at most 64 characters (the width of Kamailio's domain columns).
/// Returns it lower-cased: domains compare case-insensitively, the database does not.
pub fn domain(field: &str, value: &str) -> Result<String, DbError> {
    if value.is_empty() || value.len() > 64 || !DOMAIN.is_match(value) {
        return Err(invalid(
            field,
            format!("{} is not a valid SIP domain", shown(value)),
            "use a host name of at most 64 characters, e.g. sip.example.com",
        ));
    }
    Ok(value.to_ascii_lowercase())
}

/// `user@domain` (a leading `sip:` is allowed) of a subscriber account, with the
/// errors naming `field`. Returns the user name and the lower-cased domain.
pub fn aor(field: &str, value: &str) -> Result<(String, String), DbError> {
    let bare = value.strip_prefix("sip:").unwrap_or(value);
    let fix = "write it as user@domain of a subscriber: 1 to 64 letters, digits and . _ ~ + - before the @, e.g. pbx1@example.com";
    let Some((username, domain)) = bare.split_once('@') else {
        return Err(invalid(
            field,
            format!("{} is not user@domain", shown(value)),
            fix,
        ));
    };
    if !USERNAME.is_match(username) {
        return Err(invalid(
            field,
            format!(
                "{} is not a SIP user name sipstack accepts",
                shown(username)
            ),
            fix,
        ));
    }
    let domain = self::domain(field, domain)?;
    Ok((username.to_string(), domain))
}

/// Free text of at most `max` characters on one line.
pub fn one_line_text(field: &str, value: &str, max: usize) -> Result<(), DbError> {
    if value.chars().count() > max {
        return Err(invalid(
            field,
            format!("{} is longer than {max} characters", shown(value)),
            "shorten it",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{} contains a control character", shown(value)),
            "use one line of printable text",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        for re in [
            &DNS_LABEL,
            &DOMAIN,
            &USERNAME,
            &DIAL_STRING,
            &TARGET_URI,
            &REJECT_REASON,
            &DESTINATION,
            &AUTH_USERNAME,
            &ENCRYPTED_PASSWORD,
            &TRUNK_PREFIX,
            &GATEWAY_URI,
            &NUMBER,
            &SERVICE,
        ] {
            assert!(!re.as_str().is_empty());
        }
    }

    #[test]
    fn names() {
        assert!(name("name", "pstn-out").is_ok());
        assert!(name("name", "a").is_ok());
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "a\n"] {
            assert!(name("name", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn domains_are_lower_cased() {
        assert_eq!(domain("d", "SIP.Example.com").unwrap(), "sip.example.com");
        for bad in [
            "",
            ".a",
            "a..b",
            "a b",
            "a\nb",
            "-a.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(domain("d", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn aors_name_the_field() {
        assert_eq!(
            aor("--user", "sip:Bob@Example.COM").unwrap(),
            ("Bob".to_string(), "example.com".to_string())
        );
        for bad in [
            "bob",
            "@example.com",
            "b b@example.com",
            "bob@",
            "bob@a;b",
            "b'ob@x.com",
        ] {
            let err = aor("--user", bad).unwrap_err().to_string();
            assert!(err.starts_with("--user: "), "{bad:?}: {err}");
        }
    }

    #[test]
    fn shown_makes_invisible_characters_visible() {
        assert_eq!(shown("a\nb\"c"), r#""a\nb\"c""#);
        assert!(shown(&"x".repeat(200)).ends_with("…\""));
    }

    #[test]
    fn errors_name_field_problem_and_fix() {
        let err = name("route.name", "Bad Name").unwrap_err().to_string();
        assert!(
            err.starts_with("route.name: \"Bad Name\" is not a valid name; use"),
            "{err}"
        );
    }

    #[test]
    fn one_line_text_rejects_control_characters() {
        assert!(one_line_text("d", "Calls to the PSTN", 64).is_ok());
        assert!(one_line_text("d", "a\tb", 64).is_err());
        assert!(one_line_text("d", "ééé", 3).is_ok());
        assert!(one_line_text("d", "éééé", 3).is_err());
    }
}
