//! `GET /badges/{repo}/{pipeline}.svg?branch=main`: a small SVG with the latest run's status,
//! to embed in a README. Read access follows the API's (anonymous read, or a token).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use super::PageState;

#[derive(Debug, Deserialize)]
pub(crate) struct BadgeQuery {
    branch: Option<String>,
}

/// Approximate width of a character of 11px Verdana: badges size their halves by it.
const CHAR_W: usize = 7;

pub(crate) async fn badge(
    State(state): State<PageState>,
    Path((repo, file)): Path<(String, String)>,
    Query(q): Query<BadgeQuery>,
) -> Response {
    let Some(pipeline) = file.strip_suffix(".svg") else {
        return (StatusCode::NOT_FOUND, "badges end in .svg").into_response();
    };
    let git_ref = q
        .branch
        .as_deref()
        .filter(|b| !b.is_empty() && b.len() <= 256)
        .map(|b| {
            if b.starts_with("refs/") {
                b.to_string()
            } else {
                format!("refs/heads/{b}")
            }
        });
    let status = match state
        .store
        .latest_run(&repo, pipeline, git_ref.as_deref())
        .await
    {
        Ok(Some(run)) => run.status.as_str().to_string(),
        Ok(None) => "no runs".to_string(),
        Err(error) => {
            tracing::error!(%error, "cannot read a badge's run");
            "unknown".to_string()
        }
    };
    let mut response = svg(pipeline, &status).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml; charset=utf-8"),
    );
    // Forge image proxies cache badges; a short life keeps them near the truth.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    response
}

fn colour(status: &str) -> &'static str {
    match status {
        "success" => "#2e7d32",
        "failed" | "error" => "#c62828",
        "running" => "#1565c0",
        "queued" => "#6d4c41",
        "cancelled" | "skipped" => "#616161",
        _ => "#9e9e9e",
    }
}

/// A two-part badge: `label | status`, the status part coloured, both as text.
fn svg(label: &str, status: &str) -> String {
    let label: String = label.chars().take(40).collect();
    let left = 10 + label.chars().count() * CHAR_W;
    let right = 10 + status.chars().count() * CHAR_W;
    let width = left + right;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height="20" role="img"
            aria-label={ (label) ": " (status) } {
            title { (label) ": " (status) }
            rect width=(left) height="20" fill="#555" {}
            rect x=(left) width=(right) height="20" fill=(colour(status)) {}
            g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" {
                text x=(left / 2) y="14" { (label) }
                text x=(left + right / 2) y="14" { (status) }
            }
        }
    }
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::svg;

    #[test]
    fn a_badge_names_its_pipeline_and_status_as_text() {
        let badge = svg("ci", "success");
        assert!(badge.starts_with("<svg"));
        assert!(badge.contains(">ci<"));
        assert!(badge.contains(">success<"));
        assert!(badge.contains("#2e7d32"));
        assert!(!svg("<x>", "failed").contains("<x>"));
    }
}
