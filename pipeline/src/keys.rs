//! The one key-spelling rule of the DSL: keys are snake_case (`runs_on`, `paths_ignore`,
//! `max_backoff`), and the kebab-case spelling of every key (`runs-on`, `paths-ignore`) is
//! accepted too, with a deprecation warning, since GitHub Actions users paste it. Every mapping
//! with fixed keys goes through [`canonical_key`], so a key added later gets both spellings
//! without code of its own. Mappings whose keys are the user's (`env`, `stages`, `services`)
//! do not: their keys are kept exactly as written.

/// The canonical key that `key` spells, and whether it was spelled the deprecated way.
/// `None` when `key` is not one of `known` in either spelling.
pub fn canonical_key<'k>(key: &str, known: &[&'k str]) -> Option<(&'k str, bool)> {
    if let Some(k) = known.iter().find(|k| **k == key) {
        return Some((k, false));
    }
    if !key.contains('-') {
        return None;
    }
    known
        .iter()
        .find(|k| k.len() == key.len() && same_but_dashes(k, key))
        .map(|k| (*k, true))
}

/// Whether `alt` is `canonical` with every `_` written `-`.
fn same_but_dashes(canonical: &str, alt: &str) -> bool {
    canonical
        .bytes()
        .zip(alt.bytes())
        .all(|(c, a)| c == a || (c == b'_' && a == b'-'))
}

/// The deprecated spelling of a canonical key (`runs_on` → `runs-on`), or `None` when it has
/// no `_`; the JSON schema lists these.
pub fn alternate_spelling(canonical: &str) -> Option<String> {
    canonical.contains('_').then(|| canonical.replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let known = ["runs_on", "paths_ignore", "if", "max_backoff"];
        assert_eq!(canonical_key("runs_on", &known), Some(("runs_on", false)));
        assert_eq!(canonical_key("runs-on", &known), Some(("runs_on", true)));
        assert_eq!(
            canonical_key("max-backoff", &known),
            Some(("max_backoff", true))
        );
        assert_eq!(canonical_key("if", &known), Some(("if", false)));
        assert_eq!(canonical_key("runs-_on", &known), None);
        assert_eq!(canonical_key("runs-off", &known), None);
        assert_eq!(canonical_key("Runs-on", &known), None, "case matters");
        assert_eq!(
            alternate_spelling("paths_ignore").as_deref(),
            Some("paths-ignore")
        );
        assert_eq!(alternate_spelling("image"), None);
    }
}
