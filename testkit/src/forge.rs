//! A fake GitHub and GitLab: a real HTTP server on loopback that answers the API calls the
//! reporter, the pull request listings and the member checks make, from the recorded fixtures
//! in `forge/tests/fixtures`, validates each request against GitHub's OpenAPI description,
//! records it, and can be scripted to fail ([`fake::Reply`]). Shared by the forge crate's and
//! the webhook crate's tests.

pub mod fake;
pub mod openapi;

pub use fake::FakeForge;
