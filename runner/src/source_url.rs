//! Repository URLs that carry credentials (`https://user:token@host/x.git`). The credential is
//! split off before the URL goes anywhere: git gets it through a credential helper that reads
//! it from the environment (never in a stored URL or on a command line), leases and Pods get
//! the bare URL, and whatever prints a URL prints [`redact_url`].

use std::fmt;

/// The userinfo of a URL, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct UrlCredential {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for UrlCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UrlCredential(***)")
    }
}

/// Where the URL's userinfo sits: `(start, end)` of `user:pass` (without the `@`).
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |at| start + at);
    let at = url[start..authority_end].rfind('@')? + start;
    Some((start, at))
}

fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// Whether the scheme sends credentials over HTTP (where the helper can hand them to git).
fn is_http(url: &str) -> bool {
    matches!(scheme(url).to_ascii_lowercase().as_str(), "http" | "https")
}

/// The URL without its credential, and the credential. An ssh URL keeps its user name (the
/// login, not a secret) and loses only a password; other schemes lose the whole userinfo.
pub fn split_credentials(url: &str) -> (String, Option<UrlCredential>) {
    let Some((start, end)) = userinfo_span(url) else {
        return (url.to_string(), None);
    };
    let userinfo = &url[start..end];
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    // ssh, git+ssh, ssh+git
    if scheme(url).to_ascii_lowercase().contains("ssh") {
        let bare = format!("{}{user}{}", &url[..start], &url[end..]);
        return (bare, None);
    }
    let bare = format!("{}{}", &url[..start], &url[end + 1..]);
    let credential = is_http(url).then(|| UrlCredential {
        username: percent_decode(user),
        password: password.map(percent_decode).unwrap_or_default(),
    });
    (bare, credential)
}

/// The URL as it may be printed: any userinfo of an http(s) URL, and any password, is `***`.
pub fn redact_url(url: &str) -> String {
    let Some((start, end)) = userinfo_span(url) else {
        return url.to_string();
    };
    let userinfo = &url[start..end];
    if !is_http(url) && !userinfo.contains(':') {
        return url.to_string();
    }
    format!("{}***{}", &url[..start], &url[end..])
}

/// `scheme://host[:port]` of a URL, for scoping a credential to the host it was given for.
pub fn origin(url: &str) -> Option<String> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    (!host.is_empty()).then(|| format!("{}{host}", &url[..start]))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The shell snippet git runs as its credential helper: it answers `get` with the
/// credential from `DEPLOYLITE_GIT_USERNAME` / `DEPLOYLITE_GIT_PASSWORD` and ignores `store`
/// and `erase`. Only variable names appear in it, never the secret.
pub const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || return 0; \
    printf 'username=%s\\npassword=%s\\n' \"$DEPLOYLITE_GIT_USERNAME\" \"$DEPLOYLITE_GIT_PASSWORD\"; }; f";

/// Git configuration, as `GIT_CONFIG_COUNT` / `GIT_CONFIG_KEY_n` / `GIT_CONFIG_VALUE_n`
/// environment variables, that makes [`CREDENTIAL_HELPER`] the only credential helper for
/// `origin` (the user's own helpers are reset, so none of them stores the credential). The
/// credential itself goes in `DEPLOYLITE_GIT_USERNAME` / `DEPLOYLITE_GIT_PASSWORD`.
pub fn credential_helper_config(origin: &str) -> Vec<(String, String)> {
    vec![
        ("GIT_CONFIG_COUNT".into(), "2".into()),
        ("GIT_CONFIG_KEY_0".into(), "credential.helper".into()),
        ("GIT_CONFIG_VALUE_0".into(), String::new()),
        (
            "GIT_CONFIG_KEY_1".into(),
            format!("credential.{origin}.helper"),
        ),
        ("GIT_CONFIG_VALUE_1".into(), CREDENTIAL_HELPER.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_http_credentials_off() {
        let (bare, credential) = split_credentials("https://user:s3cr%40t@git.example.com/x.git");
        assert_eq!(bare, "https://git.example.com/x.git");
        assert_eq!(
            credential,
            Some(UrlCredential {
                username: "user".into(),
                password: "s3cr@t".into()
            })
        );
        let (bare, credential) = split_credentials("http://tok@127.0.0.1:8080/x.git?a=b@c");
        assert_eq!(bare, "http://127.0.0.1:8080/x.git?a=b@c");
        assert_eq!(credential.map(|c| c.username), Some("tok".to_string()));
        assert!(!format!("{:?}", split_credentials("https://u:s3cret@h/x").1).contains("s3cret"));
    }

    #[test]
    fn other_urls_keep_what_is_no_secret() {
        for url in [
            "https://git.example.com/x.git",
            "git@github.com:o/n.git",
            "/srv/git/app",
            "ssh://git@host/x.git",
        ] {
            assert_eq!(split_credentials(url), (url.to_string(), None), "{url}");
            assert_eq!(redact_url(url), url);
        }
        assert_eq!(
            split_credentials("ssh://git:pw@host/x.git"),
            ("ssh://git@host/x.git".to_string(), None)
        );
        assert_eq!(
            split_credentials("file://u:s3cret@/srv/x.git"),
            ("file:///srv/x.git".to_string(), None)
        );
    }

    #[test]
    fn redacts_for_display() {
        assert_eq!(
            redact_url("https://user:s3cret@host/x.git"),
            "https://***@host/x.git"
        );
        assert_eq!(
            redact_url("https://tok@host/x.git"),
            "https://***@host/x.git"
        );
        assert_eq!(redact_url("ssh://git:pw@host/x"), "ssh://***@host/x");
    }

    #[test]
    fn origins_and_decoding() {
        assert_eq!(
            origin("https://u:p@Host:8443/x.git").as_deref(),
            Some("https://Host:8443")
        );
        assert_eq!(origin("/srv/x"), None);
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
