//! The section `deploylite status` prints before its runs table when some repository cannot be
//! polled or has a tag trigger that can never fire. Nothing when all is well.

use deploylite_server::RepoView;

use super::Client;

/// Prints the section (nothing when every repository is fine).
pub async fn print_section(client: &Client) {
    print!("{}", section(&fetch(client).await));
}

/// The daemon's repositories; none from a daemon that does not list them (an older version,
/// or a token without the right): the section is a help, never a reason to fail `status`.
pub async fn fetch(client: &Client) -> Vec<RepoView> {
    let Ok(response) = client
        .send(client.http.get(client.url("/api/v1/repos")))
        .await
    else {
        return Vec::new();
    };
    if !response.status().is_success() {
        return Vec::new();
    }
    response.json().await.unwrap_or_default()
}

/// The section's text, ending with a blank line; empty when no repository needs attention.
pub fn section(repos: &[RepoView]) -> String {
    let failing: Vec<&RepoView> = repos
        .iter()
        .filter(|r| r.consecutive_failures > 0)
        .collect();
    let warned: Vec<&RepoView> = repos
        .iter()
        .filter(|r| !r.tag_warnings.is_empty())
        .collect();
    if failing.is_empty() && warned.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    if !failing.is_empty() {
        out += "UNHEALTHY REPOSITORIES\n";
        for r in failing {
            let polls = if r.consecutive_failures == 1 {
                "1 failed poll".to_string()
            } else {
                format!("{} failed polls in a row", r.consecutive_failures)
            };
            let next = r
                .next_poll_at
                .as_deref()
                .map(|t| format!(", next at {t}"))
                .unwrap_or_default();
            out += &format!("{} ({}): {polls}{next}\n", r.name, r.url);
            out += &format!("  {}\n", r.last_error.as_deref().unwrap_or("unknown error"));
        }
    }
    if !warned.is_empty() {
        out += "TAG TRIGGERS THAT CANNOT FIRE\n";
        for r in warned {
            for warning in &r.tag_warnings {
                out += &format!("{}: {warning}\n", r.name);
            }
        }
    }
    out + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, failures: u32, warnings: &[&str]) -> RepoView {
        RepoView {
            name: name.into(),
            url: format!("https://***@git.example.com/{name}.git"),
            last_poll_at: Some("2026-12-07T16:00:00.000Z".into()),
            last_success_at: None,
            last_error: (failures > 0).then(|| "cannot fetch: not found".to_string()),
            consecutive_failures: failures,
            next_poll_at: Some("2026-12-07T16:00:08.000Z".into()),
            tag_warnings: warnings.iter().map(|w| w.to_string()).collect(),
            polls: 1,
        }
    }

    #[test]
    fn nothing_is_printed_while_every_repository_is_healthy() {
        assert_eq!(section(&[repo("app", 0, &[])]), "");
    }

    #[test]
    fn failing_repositories_and_dead_tag_triggers_are_listed() {
        let text = section(&[
            repo("app", 0, &[]),
            repo("broken", 3, &[]),
            repo("flaky", 1, &[]),
            repo(
                "tagged",
                0,
                &["pipeline `release` (r.yaml) triggers on tags `v*` ..."],
            ),
        ]);
        assert_eq!(
            text,
            "UNHEALTHY REPOSITORIES\n\
             broken (https://***@git.example.com/broken.git): 3 failed polls in a row, next at 2026-12-07T16:00:08.000Z\n\
             \x20 cannot fetch: not found\n\
             flaky (https://***@git.example.com/flaky.git): 1 failed poll, next at 2026-12-07T16:00:08.000Z\n\
             \x20 cannot fetch: not found\n\
             TAG TRIGGERS THAT CANNOT FIRE\n\
             tagged: pipeline `release` (r.yaml) triggers on tags `v*` ...\n\
             \n"
        );
    }
}
