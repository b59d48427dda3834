//! Every input has a limit.

use std::time::Duration;

/// Policy files (modules and data) in one revision.
pub const MAX_FILES: usize = 256;
/// One policy file.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// How deep a bundle directory is searched.
pub const MAX_DIR_DEPTH: usize = 8;
/// Messages kept from one rule (`deny`/`warn`), and the length of each.
pub const MAX_MESSAGES: usize = 100;
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// The default time limit of one evaluation of one source set.
pub const DEFAULT_EVAL_LIMIT: Duration = Duration::from_millis(100);
