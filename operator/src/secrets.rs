//! Values of the Secrets the operator generates: made once, in the cluster, when the
//! Secret is created; an existing Secret is never written again, so a password that
//! PostgreSQL or a running edge already uses stays the same.

use k8s_openapi::api::core::v1::Secret;

use crate::meta::{GENERATED_KEY_PLACEHOLDER, GENERATED_PLACEHOLDER};

/// Characters of generated values: letters and digits only, so a value can go into a
/// URL, a libpq connection string or FreeSWITCH's XML without quoting.
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// 32 characters of 62: about 190 bits.
pub const GENERATED_LENGTH: usize = 32;

#[derive(Debug, thiserror::Error)]
#[error("the system's random source failed: {0}")]
pub struct RandomError(String);

/// A random value of [`GENERATED_LENGTH`] letters and digits from the system's
/// random source (no bias: bytes that would favour some characters are drawn again).
pub fn random_value() -> Result<String, RandomError> {
    let mut out = String::with_capacity(GENERATED_LENGTH);
    let limit = 256 - 256 % ALPHABET.len();
    while out.len() < GENERATED_LENGTH {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf).map_err(|e| RandomError(e.to_string()))?;
        for b in buf {
            if (b as usize) < limit && out.len() < GENERATED_LENGTH {
                out.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

/// Replaces every placeholder value of a Secret built by the builders with a value of
/// `generate`, and every key placeholder with a fresh 256-bit key, for creating it.
pub fn fill_generated(
    secret: &mut Secret,
    mut generate: impl FnMut() -> Result<String, RandomError>,
) -> Result<(), RandomError> {
    if let Some(values) = secret.string_data.as_mut() {
        for value in values.values_mut() {
            if value == GENERATED_PLACEHOLDER {
                *value = generate()?;
            } else if value == GENERATED_KEY_PLACEHOLDER {
                *value = sipstack_db::trunk::TrunkKey::generate().to_base64();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Object;
    use crate::testing::example;

    #[test]
    fn generated_values_are_long_letters_and_digits_and_differ() {
        let a = random_value().unwrap();
        let b = random_value().unwrap();
        assert_eq!(a.len(), GENERATED_LENGTH);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn placeholders_are_filled_and_fixed_values_kept() {
        let p = example();
        let objects = crate::pgcluster::build(&p.pg_clusters[0], "voice", &[], &[]).unwrap();
        let Some(Object::Secret(mut secret)) = objects.into_iter().find(|o| o.name() == "pg-app")
        else {
            panic!()
        };
        fill_generated(&mut secret, random_value).unwrap();
        let values = secret.string_data.unwrap();
        assert_eq!(values["username"], "sipstack");
        assert_eq!(values["password"].len(), GENERATED_LENGTH);
        assert_ne!(values["password"], GENERATED_PLACEHOLDER);
    }
}
