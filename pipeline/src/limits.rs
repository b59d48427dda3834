//! Caps on what one pipeline file may cost: its size, its stages, how deep it nests, and how
//! much work goes into reporting its problems. Documented in `docs/pipeline.md`; every cap is
//! reported as a diagnostic, never a panic or a silent cut.

/// Bytes of one pipeline file; larger files are refused before they are parsed.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Stages of one pipeline.
pub const MAX_STAGES: usize = 5_000;
/// Nesting of sequences and mappings. The grammar needs about 6 levels; the cap keeps hostile
/// input from blowing the stack of the recursive walkers.
pub const MAX_DEPTH: usize = 64;
/// Diagnostics reported per file (the first ones in file order, then one saying how many
/// more there were): a run that did not validate carries them all in the store.
pub const MAX_DIAGNOSTICS: usize = 100;
/// "Did you mean" lookups per file (each may compare a word with every stage name); later
/// problems are reported without a suggestion.
pub const MAX_SUGGESTIONS: usize = 20;
/// Dependency cycles named per file: one is enough to know the file is wrong.
pub const MAX_CYCLES: usize = 10;
/// Bytes of one branch, tag or path pattern: matching costs up to (input × pattern) steps.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Patterns in one filter list: every changed path of a commit is tried against each.
pub const MAX_PATTERNS: usize = 256;
/// Entries of one list of an environment file (`requires`, `promote_from`).
pub const MAX_ENVIRONMENT_LIST: usize = 64;
/// Environment files of one repository; `check_environment_set` reports the excess.
pub const MAX_ENVIRONMENTS: usize = 100;
/// Characters of an environment name: it is a URL segment and part of environment variables,
/// and a DNS label's length is the smallest limit among the places it may end up.
pub const MAX_ENVIRONMENT_NAME: usize = 63;
