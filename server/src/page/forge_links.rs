//! Links from a run to its forge: the commit, the branch and the pull/merge request, derived
//! from the repository's HTTPS URL (GitHub's and GitLab's URL layouts). A repository given by
//! a local path or an SSH URL has no web page to link to.

/// A repository's web address, when its clone URL is an HTTP(S) one.
pub struct ForgeRepo {
    web: String,
    gitlab: bool,
}

impl ForgeRepo {
    /// `https://github.com/o/r.git` → `https://github.com/o/r`. The URL is the watcher's,
    /// already without credentials.
    pub fn from_url(url: &str) -> Option<ForgeRepo> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return None;
        }
        let web = url
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .to_string();
        let host = web
            .split("://")
            .nth(1)?
            .split('/')
            .next()?
            .to_ascii_lowercase();
        Some(ForgeRepo {
            gitlab: host.contains("gitlab"),
            web,
        })
    }

    pub fn commit(&self, sha: &str) -> String {
        if self.gitlab {
            format!("{}/-/commit/{sha}", self.web)
        } else {
            format!("{}/commit/{sha}", self.web)
        }
    }

    pub fn pull_request(&self, number: i64) -> String {
        if self.gitlab {
            format!("{}/-/merge_requests/{number}", self.web)
        } else {
            format!("{}/pull/{number}", self.web)
        }
    }

    pub fn tree(&self, git_ref: &str) -> Option<String> {
        let name = git_ref
            .strip_prefix("refs/heads/")
            .or_else(|| git_ref.strip_prefix("refs/tags/"))?;
        Some(if self.gitlab {
            format!("{}/-/tree/{name}", self.web)
        } else {
            format!("{}/tree/{name}", self.web)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_and_gitlab_layouts() {
        let gh = ForgeRepo::from_url("https://github.com/acme/app.git").expect("forge");
        assert_eq!(gh.commit("abc"), "https://github.com/acme/app/commit/abc");
        assert_eq!(gh.pull_request(4), "https://github.com/acme/app/pull/4");
        assert_eq!(
            gh.tree("refs/heads/main").as_deref(),
            Some("https://github.com/acme/app/tree/main")
        );
        let gl = ForgeRepo::from_url("https://gitlab.example.com/g/p").expect("forge");
        assert_eq!(
            gl.commit("abc"),
            "https://gitlab.example.com/g/p/-/commit/abc"
        );
        assert_eq!(
            gl.pull_request(9),
            "https://gitlab.example.com/g/p/-/merge_requests/9"
        );
        assert!(ForgeRepo::from_url("/srv/git/app").is_none());
        assert!(ForgeRepo::from_url("git@github.com:acme/app.git").is_none());
    }
}
