//! Is a delivery really from the forge? GitHub signs the raw body (`X-Hub-Signature-256:
//! sha256=<hex>`, HMAC-SHA256 with the webhook secret); GitLab sends the secret itself
//! (`X-Gitlab-Token`). Both comparisons are constant-time, and an unconfigured or empty secret
//! rejects every delivery: an unsigned webhook is never accepted.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use deploylite_forge::forges::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was not authenticated. The messages name the header or setting, never a
/// secret or the expected value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    /// No secret configured for this forge (or an empty one).
    NotConfigured(&'static str),
    /// The header is absent.
    Missing(&'static str),
    /// The header is not in the expected form (not `sha256=<hex>`, not visible ASCII).
    Malformed(&'static str),
    /// Well-formed, but does not match.
    Mismatch(&'static str),
}

impl AuthError {
    pub(crate) fn message(&self) -> String {
        match self {
            AuthError::NotConfigured(setting) => {
                format!("webhooks from this forge are not accepted: `{setting}` is not configured")
            }
            AuthError::Missing(header) => format!("missing `{header}` header"),
            AuthError::Malformed(header) => format!("`{header}` header is malformed"),
            AuthError::Mismatch(header) => format!("`{header}` does not match"),
        }
    }
}

pub(crate) const GITHUB_SIGNATURE: &str = "X-Hub-Signature-256";
pub(crate) const GITLAB_TOKEN: &str = "X-Gitlab-Token";

/// Checks GitHub's `X-Hub-Signature-256` over the raw `body`.
pub(crate) fn github_signature(
    secret: Option<&Secret>,
    body: &[u8],
    header: Option<&[u8]>,
) -> Result<(), AuthError> {
    let secret = configured(secret, "forges.github.webhook_secret")?;
    let header = header.ok_or(AuthError::Missing(GITHUB_SIGNATURE))?;
    let hex_digest = header
        .strip_prefix(b"sha256=")
        .ok_or(AuthError::Malformed(GITHUB_SIGNATURE))?;
    let signature = hex::decode(hex_digest).map_err(|_| AuthError::Malformed(GITHUB_SIGNATURE))?;
    let mut mac = HmacSha256::new_from_slice(secret)
        .map_err(|_| AuthError::NotConfigured("forges.github.webhook_secret"))?;
    mac.update(body);
    // verify_slice rejects a tag of the wrong length, then compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::Mismatch(GITHUB_SIGNATURE))
}

/// Checks GitLab's `X-Gitlab-Token` against the configured secret.
pub(crate) fn gitlab_token(
    secret: Option<&Secret>,
    header: Option<&[u8]>,
) -> Result<(), AuthError> {
    let secret = configured(secret, "forges.gitlab.webhook_secret")?;
    let token = header.ok_or(AuthError::Missing(GITLAB_TOKEN))?;
    // Compare MACs of both values rather than the values: the digests have a fixed length, so
    // neither the secret's length nor the position of the first differing byte shows in the
    // time taken (verify_slice is constant-time).
    let expected = token_mac(secret).finalize().into_bytes();
    token_mac(token)
        .verify_slice(&expected)
        .map_err(|_| AuthError::Mismatch(GITLAB_TOKEN))
}

fn token_mac(value: &[u8]) -> HmacSha256 {
    // The key only has to be fixed; HMAC accepts keys of any length, so this cannot fail: the
    // key is this constant, never input.
    #[allow(clippy::expect_used)]
    let mut mac = HmacSha256::new_from_slice(b"deploylite gitlab token comparison")
        .expect("HMAC takes any key length");
    mac.update(value);
    mac
}

fn configured<'a>(
    secret: Option<&'a Secret>,
    setting: &'static str,
) -> Result<&'a [u8], AuthError> {
    match secret.map(|s| s.expose().as_bytes()) {
        Some(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(AuthError::NotConfigured(setting)),
    }
}

/// `sha256=<hex>` for `body`, as GitHub sends it (for the unit tests).
#[cfg(test)]
pub(crate) fn github_sign(secret: &str, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"zen":"Anything added dilutes everything else."}"#;

    fn secret(s: &str) -> Option<Secret> {
        Some(Secret::new(s))
    }

    #[test]
    fn github_accepts_the_right_signature_only() {
        let s = secret("It's a Secret to Everybody");
        let good = github_sign("It's a Secret to Everybody", BODY);
        assert_eq!(
            github_signature(s.as_ref(), BODY, Some(good.as_bytes())),
            Ok(())
        );

        let other_secret = github_sign("another secret", BODY);
        assert_eq!(
            github_signature(s.as_ref(), BODY, Some(other_secret.as_bytes())),
            Err(AuthError::Mismatch(GITHUB_SIGNATURE))
        );
        let mut tampered = BODY.to_vec();
        tampered[3] ^= 1;
        assert_eq!(
            github_signature(s.as_ref(), &tampered, Some(good.as_bytes())),
            Err(AuthError::Mismatch(GITHUB_SIGNATURE))
        );
    }

    #[test]
    fn github_known_vector() {
        // GitHub's documented example ("Validating webhook deliveries"): secret
        // "It's a Secret to Everybody", payload "Hello, World!".
        let s = secret("It's a Secret to Everybody");
        let header = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            github_signature(s.as_ref(), b"Hello, World!", Some(header)),
            Ok(())
        );
    }

    #[test]
    fn github_wrong_lengths_and_forms() {
        let s = secret("k");
        let good = github_sign("k", BODY);
        let hex_part = good.strip_prefix("sha256=").unwrap();
        // Too short, too long (valid hex): a mismatch, never a panic or a prefix match.
        let short = format!("sha256={}", &hex_part[..62]);
        let long = format!("sha256={hex_part}00");
        let empty = "sha256=".to_string();
        for header in [short, long, empty] {
            assert_eq!(
                github_signature(s.as_ref(), BODY, Some(header.as_bytes())),
                Err(AuthError::Mismatch(GITHUB_SIGNATURE)),
                "{header}"
            );
        }
        // Not hex, odd length, other algorithms, no prefix.
        let odd = format!("sha256={}", &hex_part[..63]);
        let sha1 = format!("sha1={hex_part}");
        for header in [odd.as_str(), "sha256=zz", sha1.as_str(), hex_part, ""] {
            assert_eq!(
                github_signature(s.as_ref(), BODY, Some(header.as_bytes())),
                Err(AuthError::Malformed(GITHUB_SIGNATURE)),
                "{header}"
            );
        }
        assert_eq!(
            github_signature(s.as_ref(), BODY, None),
            Err(AuthError::Missing(GITHUB_SIGNATURE))
        );
        // Upper-case hex is still the same digest.
        let upper = format!("sha256={}", hex_part.to_ascii_uppercase());
        assert_eq!(
            github_signature(s.as_ref(), BODY, Some(upper.as_bytes())),
            Ok(())
        );
    }

    #[test]
    fn no_secret_never_accepts() {
        let sig = github_sign("", BODY);
        assert_eq!(
            github_signature(None, BODY, Some(sig.as_bytes())),
            Err(AuthError::NotConfigured("forges.github.webhook_secret"))
        );
        assert_eq!(
            github_signature(secret("").as_ref(), BODY, Some(sig.as_bytes())),
            Err(AuthError::NotConfigured("forges.github.webhook_secret"))
        );
        assert_eq!(
            gitlab_token(None, Some(b"")),
            Err(AuthError::NotConfigured("forges.gitlab.webhook_secret"))
        );
        assert_eq!(
            gitlab_token(secret("").as_ref(), Some(b"")),
            Err(AuthError::NotConfigured("forges.gitlab.webhook_secret"))
        );
        assert!(AuthError::NotConfigured("forges.github.webhook_secret")
            .message()
            .contains("forges.github.webhook_secret"));
    }

    #[test]
    fn gitlab_token_compares_whole_values() {
        let s = secret("glsecret-123");
        assert_eq!(gitlab_token(s.as_ref(), Some(b"glsecret-123")), Ok(()));
        for wrong in [
            &b"glsecret-12"[..],
            b"glsecret-1234",
            b"glsecret-124",
            b"",
            b"GLSECRET-123",
        ] {
            assert_eq!(
                gitlab_token(s.as_ref(), Some(wrong)),
                Err(AuthError::Mismatch(GITLAB_TOKEN)),
                "{wrong:?}"
            );
        }
        assert_eq!(
            gitlab_token(s.as_ref(), None),
            Err(AuthError::Missing(GITLAB_TOKEN))
        );
    }

    #[test]
    fn messages_never_contain_secrets() {
        for e in [
            AuthError::Missing(GITLAB_TOKEN),
            AuthError::Malformed(GITHUB_SIGNATURE),
            AuthError::Mismatch(GITLAB_TOKEN),
        ] {
            assert!(!e.message().contains("glsecret"));
        }
    }
}
