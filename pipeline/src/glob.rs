//! Branch, tag and path filter patterns, with the semantics of GitHub Actions' "filter pattern
//! cheat sheet" (workflow syntax), so that filters pasted from a workflow mean the same here:
//!
//! - `*` matches zero or more characters except `/`; `**` zero or more of any character; `**/`
//!   zero or more whole leading directories (`**/README.md` matches `README.md`);
//! - `?` makes the preceding character (or `[...]` class) optional, `+` repeats it one or more
//!   times: `*.jsx?` matches `page.js` and `page.jsx`, `[0-9]+` one or more digits. At the start
//!   of a pattern they are literal characters;
//! - `[...]` matches one character listed or in a range; only letters, digits and the ranges
//!   `a-z`, `A-Z`, `0-9` (or parts of them) may be listed;
//! - `\` makes the next character literal (`\*`, `\?`, `\+`, `\[`, `\!`, `\\`);
//! - a leading `!` negates the pattern. In a list the *last* matching pattern decides, so a
//!   later pattern can exclude (`!`) or re-include what an earlier one matched;
//! - every other character, `{`, `}`, `.` and a `!` that is not first included, is literal.
//!
//! Quoting `*`, `[` or `!` at the start of a pattern is YAML's business (an unquoted `*x` is an
//! alias, `[` a flow sequence); by the time a pattern gets here it is plain text.
//!
//! Matching never backtracks: common shapes (`main`, `src/**`, `v*`, `**.js`, `**/README.md`)
//! are literal or prefix/suffix tests, and the rest runs as a small NFA over the pattern, so
//! the cost is linear in the input whatever the pattern. Patterns are capped at
//! [`MAX_PATTERN_BYTES`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::limits::MAX_PATTERN_BYTES;

/// Why a pattern cannot be used, with the pattern it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid glob `{pattern}`: {problem}")]
pub struct InvalidGlob {
    pub pattern: String,
    pub problem: GlobProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobProblem {
    #[error("empty pattern")]
    Empty,
    #[error("too long: {0} bytes; a pattern may have at most {MAX_PATTERN_BYTES}")]
    TooLong(usize),
    #[error("unclosed `[`; missing `]`")]
    UnclosedClass,
    #[error("empty brackets `[]`")]
    EmptyClass,
    #[error("`{0}` in brackets: only letters, digits and the ranges a-z, A-Z, 0-9 can be listed (escape a literal `[` as `\\[`)")]
    ClassChar(char),
    #[error("invalid range `{0}-{1}`: a range goes from low to high within a-z, A-Z or 0-9")]
    ClassRange(char, char),
    #[error("`\\` at the end of the pattern escapes nothing")]
    TrailingEscape,
    #[error("`+` cannot follow `{0}`; to match a literal `+`, write `\\+`")]
    Plus(&'static str),
}

/// One pattern, as written (including a leading `!` for negations).
#[derive(Clone)]
pub struct Glob {
    pattern: String,
    negated: bool,
    matcher: Arc<Matcher>,
}

impl Glob {
    /// Parse a pattern; a leading `!` makes it a negation.
    pub fn new(pattern: &str) -> Result<Glob, InvalidGlob> {
        let invalid = |problem| InvalidGlob {
            pattern: pattern.to_string(),
            problem,
        };
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(invalid(GlobProblem::TooLong(pattern.len())));
        }
        let (negated, body) = match pattern.strip_prefix('!') {
            Some(body) => (true, body),
            None => (false, pattern),
        };
        if body.is_empty() {
            return Err(invalid(GlobProblem::Empty));
        }
        let matcher = match Matcher::simple(body) {
            Some(m) => m,
            None => Matcher::new(parse(body).map_err(invalid)?),
        };
        Ok(Glob {
            pattern: pattern.to_string(),
            negated,
            matcher: Arc::new(matcher),
        })
    }

    /// A glob that matches nothing: what a stored pattern that no longer parses becomes.
    fn inert(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
            negated: pattern.starts_with('!'),
            matcher: Arc::new(Matcher::Nothing),
        }
    }

    /// The pattern as written, including a leading `!`.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Whether this is a `!negation`.
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// Whether the pattern body matches the whole of `s`, ignoring negation.
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}
impl Eq for Glob {}

/// By the pattern, as equality is.
impl std::hash::Hash for Glob {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.pattern.hash(state);
    }
}

impl Serialize for Glob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for Glob {
    /// Lenient: a run's stored spec must stay readable even if a pattern it holds was valid
    /// under older rules (globset syntax such as `[!x]`). Triggers were decided when the run was
    /// recorded, so such a pattern becomes one that matches nothing.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Glob::new(&s).unwrap_or_else(|_| Glob::inert(&s)))
    }
}

/// An ordered list of patterns; serialised as a list of pattern strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GlobList(pub Vec<Glob>);

impl GlobList {
    /// Parse every pattern; the first invalid one is the error.
    pub fn new<I, S>(patterns: I) -> Result<GlobList, InvalidGlob>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        patterns
            .into_iter()
            .map(|p| Glob::new(p.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(GlobList)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pattern that decides for `s`: the last one that matches it, if any.
    pub fn decisive(&self, s: &str) -> Option<&Glob> {
        self.0.iter().rev().find(|g| g.is_match(s))
    }

    /// Whether `s` is matched: the last pattern that matches decides (a `!` pattern un-matches).
    pub fn matches(&self, s: &str) -> bool {
        self.decisive(s).is_some_and(|g| !g.is_negated())
    }

    /// The patterns as written.
    pub fn patterns(&self) -> Vec<&str> {
        self.0.iter().map(Glob::pattern).collect()
    }

    /// Whether the list has at least one non-negated pattern.
    pub fn has_positive(&self) -> bool {
        self.0.iter().any(|g| !g.is_negated())
    }
}

impl fmt::Display for GlobList {
    /// `[main, release/**]`, as messages show a list.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(&g.pattern)?;
        }
        f.write_str("]")
    }
}

/// What one element of a pattern matches.
#[derive(Debug, Clone, PartialEq)]
enum Atom {
    Char(char),
    /// Inclusive byte ranges of ASCII letters and digits.
    Class(Box<[(u8, u8)]>),
    /// Any character but `/` (the atom of `*`).
    NotSlash,
    /// Any character (the atom of `**`).
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Quant {
    One,
    Optional,
    OneOrMore,
    ZeroOrMore,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Atom(Atom, Quant),
    /// `**/`: nothing, or any text of two or more characters ending with `/`.
    Dirs,
}

fn parse(body: &str) -> Result<Vec<Piece>, GlobProblem> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    if chars.peek() == Some(&'/') {
                        chars.next();
                        pieces.push(Piece::Dirs);
                    } else {
                        pieces.push(Piece::Atom(Atom::Any, Quant::ZeroOrMore));
                    }
                } else {
                    pieces.push(Piece::Atom(Atom::NotSlash, Quant::ZeroOrMore));
                }
            }
            '?' | '+' => match pieces.last_mut() {
                // First in the pattern: nothing to repeat, a literal character.
                None => pieces.push(Piece::Atom(Atom::Char(c), Quant::One)),
                Some(Piece::Atom(_, q @ Quant::One)) => {
                    *q = if c == '?' {
                        Quant::Optional
                    } else {
                        Quant::OneOrMore
                    };
                }
                // `?` after something already repeated changes nothing (a lazy quantifier
                // in GitHub's regular-expression translation); `+` there is an error in it.
                Some(_) if c == '?' => {}
                Some(Piece::Dirs) => return Err(GlobProblem::Plus("**/")),
                Some(Piece::Atom(Atom::Any, Quant::ZeroOrMore)) => {
                    return Err(GlobProblem::Plus("**"))
                }
                Some(Piece::Atom(Atom::NotSlash, Quant::ZeroOrMore)) => {
                    return Err(GlobProblem::Plus("*"))
                }
                Some(Piece::Atom(_, Quant::Optional)) => return Err(GlobProblem::Plus("?")),
                Some(Piece::Atom(..)) => return Err(GlobProblem::Plus("+")),
            },
            '[' => pieces.push(Piece::Atom(class(&mut chars)?, Quant::One)),
            '\\' => match chars.next() {
                Some(e) => pieces.push(Piece::Atom(Atom::Char(e), Quant::One)),
                None => return Err(GlobProblem::TrailingEscape),
            },
            c => pieces.push(Piece::Atom(Atom::Char(c), Quant::One)),
        }
    }
    Ok(pieces)
}

/// The rest of a `[...]` class, after its `[`.
fn class(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<Atom, GlobProblem> {
    fn kind(c: char) -> Option<u8> {
        match c {
            'a'..='z' => Some(0),
            'A'..='Z' => Some(1),
            '0'..='9' => Some(2),
            _ => None,
        }
    }
    let mut ranges: Vec<(u8, u8)> = Vec::new();
    loop {
        let c = chars.next().ok_or(GlobProblem::UnclosedClass)?;
        if c == ']' {
            if ranges.is_empty() {
                return Err(GlobProblem::EmptyClass);
            }
            return Ok(Atom::Class(ranges.into_boxed_slice()));
        }
        let Some(k) = kind(c) else {
            return Err(GlobProblem::ClassChar(c));
        };
        let lo = c as u8; // ASCII: checked by `kind`.
        if chars.peek() == Some(&'-') {
            chars.next();
            let hi = chars.next().ok_or(GlobProblem::UnclosedClass)?;
            if hi == ']' {
                return Err(GlobProblem::ClassChar('-'));
            }
            if kind(hi) != Some(k) || (hi as u32) < u32::from(lo) {
                return Err(GlobProblem::ClassRange(c, hi));
            }
            ranges.push((lo, hi as u8));
        } else {
            ranges.push((lo, lo));
        }
    }
}

/// A compiled pattern body: the common shapes as string tests, the rest as an NFA.
#[derive(Debug)]
enum Matcher {
    Nothing,
    Exact(String),
    /// `lit**`: `s` starts with the literal.
    Prefix(String),
    /// `lit*`: `s` starts with the literal and the rest has no `/`.
    PrefixInSegment(String),
    /// `**lit`.
    Suffix(String),
    /// `*lit`: the part before the literal has no `/`.
    SuffixInSegment(String),
    /// `**/lit`: the literal, or the literal after a directory prefix.
    InAnyDir(String),
    Nfa(Nfa),
}

/// Whether `s` is all literal characters: nothing that [`parse`] reads as special.
fn is_literal(s: &str) -> bool {
    !s.bytes()
        .any(|b| matches!(b, b'*' | b'?' | b'+' | b'[' | b'\\'))
}

impl Matcher {
    /// The common shapes read straight from the pattern body, without [`parse`]'s pieces: the
    /// same matcher [`Matcher::new`] would build, for the bodies that are a literal with at
    /// most one `*`, `**` or `**/` before or after it. `None` for any other body.
    fn simple(body: &str) -> Option<Matcher> {
        if is_literal(body) {
            return Some(Matcher::Exact(body.to_string()));
        }
        if let Some(lit) = body.strip_suffix("**").filter(|l| is_literal(l)) {
            return Some(Matcher::Prefix(lit.to_string()));
        }
        if let Some(lit) = body.strip_suffix('*').filter(|l| is_literal(l)) {
            return Some(Matcher::PrefixInSegment(lit.to_string()));
        }
        // `?` and `+` after a `*` would repeat it, so a literal after one has neither: which
        // `is_literal` already says.
        if let Some(lit) = body.strip_prefix("**/") {
            return is_literal(lit).then(|| Matcher::InAnyDir(lit.to_string()));
        }
        // The bodies `**` and `*` were taken above: what follows the stars is not empty.
        if let Some(lit) = body.strip_prefix("**") {
            return is_literal(lit).then(|| Matcher::Suffix(lit.to_string()));
        }
        if let Some(lit) = body.strip_prefix('*') {
            return is_literal(lit).then(|| Matcher::SuffixInSegment(lit.to_string()));
        }
        None
    }

    fn new(pieces: Vec<Piece>) -> Matcher {
        let literal = |ps: &[Piece]| -> Option<String> {
            ps.iter()
                .map(|p| match p {
                    Piece::Atom(Atom::Char(c), Quant::One) => Some(*c),
                    _ => None,
                })
                .collect()
        };
        if let Some(lit) = literal(&pieces) {
            return Matcher::Exact(lit);
        }
        if let Some((last, init)) = pieces.split_last() {
            if let Some(lit) = literal(init) {
                match last {
                    Piece::Atom(Atom::Any, Quant::ZeroOrMore) => return Matcher::Prefix(lit),
                    Piece::Atom(Atom::NotSlash, Quant::ZeroOrMore) => {
                        return Matcher::PrefixInSegment(lit)
                    }
                    _ => {}
                }
            }
        }
        if let Some((first, rest)) = pieces.split_first() {
            if let Some(lit) = literal(rest) {
                match first {
                    Piece::Atom(Atom::Any, Quant::ZeroOrMore) => return Matcher::Suffix(lit),
                    Piece::Atom(Atom::NotSlash, Quant::ZeroOrMore) => {
                        return Matcher::SuffixInSegment(lit)
                    }
                    Piece::Dirs => return Matcher::InAnyDir(lit),
                    _ => {}
                }
            }
        }
        Matcher::Nfa(Nfa::new(&pieces))
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Nothing => false,
            Matcher::Exact(lit) => s == lit,
            Matcher::Prefix(lit) => s.starts_with(lit.as_str()),
            Matcher::PrefixInSegment(lit) => s
                .strip_prefix(lit.as_str())
                .is_some_and(|rest| !rest.contains('/')),
            Matcher::Suffix(lit) => s.ends_with(lit.as_str()),
            Matcher::SuffixInSegment(lit) => s
                .strip_suffix(lit.as_str())
                .is_some_and(|head| !head.contains('/')),
            Matcher::InAnyDir(lit) => s.strip_suffix(lit.as_str()).is_some_and(is_dirs),
            Matcher::Nfa(nfa) => nfa.is_match(s),
        }
    }
}

/// What `**/` matches: nothing, or two or more characters ending with `/` (`(.+/)?`).
fn is_dirs(s: &str) -> bool {
    s.is_empty() || (s.len() >= 2 && s.ends_with('/'))
}

#[derive(Debug)]
enum State {
    Atom(Atom, usize),
    Split(usize, usize),
    Match,
}

/// A Thompson NFA, simulated state set by state set: no backtracking, so no pattern can make
/// matching slower than (input length × pattern length).
#[derive(Debug)]
struct Nfa {
    states: Vec<State>,
    start: usize,
    /// The pattern's leading literal, tested first: most inputs fail there.
    prefix: String,
}

impl Nfa {
    fn new(pieces: &[Piece]) -> Nfa {
        // Built back to front, so that every state knows its continuation.
        let mut states = vec![State::Match];
        let mut next = 0usize;
        for piece in pieces.iter().rev() {
            next = match piece {
                Piece::Atom(atom, Quant::One) => push(&mut states, State::Atom(atom.clone(), next)),
                Piece::Atom(atom, Quant::Optional) => {
                    let a = push(&mut states, State::Atom(atom.clone(), next));
                    push(&mut states, State::Split(a, next))
                }
                Piece::Atom(atom, quant) => {
                    // One or more: the atom, then back to it or on. Zero or more: enter at the
                    // choice instead of the atom.
                    let split = push(&mut states, State::Split(usize::MAX, next));
                    let a = push(&mut states, State::Atom(atom.clone(), split));
                    states[split] = State::Split(a, next);
                    if *quant == Quant::OneOrMore {
                        a
                    } else {
                        split
                    }
                }
                Piece::Dirs => {
                    // `(.+/)?`: skip, or one character, any more, and a `/`.
                    let slash = push(&mut states, State::Atom(Atom::Char('/'), next));
                    let more = push(&mut states, State::Split(usize::MAX, slash));
                    let again = push(&mut states, State::Atom(Atom::Any, more));
                    states[more] = State::Split(again, slash);
                    let first = push(&mut states, State::Atom(Atom::Any, more));
                    push(&mut states, State::Split(first, next))
                }
            };
        }
        let prefix = pieces
            .iter()
            .map_while(|p| match p {
                Piece::Atom(Atom::Char(c), Quant::One) => Some(*c),
                _ => None,
            })
            .collect();
        Nfa {
            states,
            start: next,
            prefix,
        }
    }

    fn is_match(&self, s: &str) -> bool {
        if !s.starts_with(self.prefix.as_str()) {
            return false;
        }
        let n = self.states.len();
        let mut seen = vec![usize::MAX; n];
        let mut current = Vec::with_capacity(n);
        let mut following = Vec::with_capacity(n);
        let mut stack = Vec::new();
        self.add(self.start, 0, &mut seen, &mut current, &mut stack);
        for (step, c) in s.chars().enumerate() {
            if current.is_empty() {
                return false;
            }
            following.clear();
            for &i in &current {
                if let Some(State::Atom(atom, next)) = self.states.get(i) {
                    if atom_matches(atom, c) {
                        self.add(*next, step + 1, &mut seen, &mut following, &mut stack);
                    }
                }
            }
            std::mem::swap(&mut current, &mut following);
        }
        current
            .iter()
            .any(|&i| matches!(self.states.get(i), Some(State::Match)))
    }

    /// Adds `state` and everything reachable from it without input to `set`, once per step.
    fn add(
        &self,
        state: usize,
        step: usize,
        seen: &mut [usize],
        set: &mut Vec<usize>,
        stack: &mut Vec<usize>,
    ) {
        stack.push(state);
        while let Some(i) = stack.pop() {
            match seen.get_mut(i) {
                Some(mark) if *mark != step => *mark = step,
                _ => continue,
            }
            match self.states.get(i) {
                Some(State::Split(a, b)) => {
                    stack.push(*b);
                    stack.push(*a);
                }
                Some(_) => set.push(i),
                None => {}
            }
        }
    }
}

fn push(states: &mut Vec<State>, state: State) -> usize {
    states.push(state);
    states.len() - 1
}

fn atom_matches(atom: &Atom, c: char) -> bool {
    match atom {
        Atom::Char(x) => *x == c,
        Atom::Class(ranges) => {
            u8::try_from(c).is_ok_and(|b| ranges.iter().any(|&(lo, hi)| lo <= b && b <= hi))
        }
        Atom::NotSlash => c != '/',
        Atom::Any => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> GlobList {
        GlobList::new(p).unwrap()
    }

    /// The shortcut for common shapes builds what the pieces would.
    #[test]
    fn simple_bodies_get_the_matcher_of_their_pieces() {
        let bodies = [
            "main",
            "src/**",
            "**",
            "*",
            "v*",
            "Cargo.*",
            "**.js",
            "*.md",
            "**/README.md",
            "**/",
            "**/a",
            "*/a",
            "**a",
            "a**",
            "a*",
            "!x",
            "a.b-c_d{e}",
            "**/**",
            "***",
            "*a*",
            "a**b",
            "src/**/*.rs",
            "?a",
            "+a",
            "a?",
            "a+",
            "*?",
            "**?",
            "**/?a",
            "[ab]",
            "a\\*",
            "\\*a",
            "**\\?",
            "*[0-9]",
            "é*",
            "**é",
        ];
        let mut simple = 0;
        for body in bodies {
            let Ok(pieces) = parse(body) else {
                assert!(Matcher::simple(body).is_none(), "{body}");
                continue;
            };
            let slow = format!("{:?}", Matcher::new(pieces));
            if let Some(fast) = Matcher::simple(body) {
                simple += 1;
                assert_eq!(format!("{fast:?}"), slow, "{body}");
            }
        }
        assert_eq!(simple, 19, "the shortcut is taken");
    }

    /// Every example of GitHub's "Filter pattern cheat sheet" (workflow syntax for GitHub
    /// Actions), the "Patterns to match branches and tags" and "Patterns to match file paths"
    /// tables and the list above them, row by row: pattern(s), matches, non-matches.
    #[test]
    fn github_cheat_sheet() {
        type Row<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str]);
        let rows: &[Row<'_>] = &[
            // The list of special characters.
            (&["Octo*"], &["Octocat"], &[]),
            (&["[CB]at"], &["Cat", "Bat"], &["Hat", "cat"]),
            (&["[1-2]00"], &["100", "200"], &["300"]),
            (&["[0-9a-z]"], &["0", "7", "a", "q"], &["A", "-", "ab"]),
            (
                &["release/v[0-9].[0-9]"],
                &["release/v1.2"],
                &["release/v1.23"],
            ),
            // Patterns to match branches and tags.
            (
                &["feature/*"],
                &["feature/my-branch", "feature/your-branch"],
                &["feature/a/b"],
            ),
            (
                &["feature/**"],
                &[
                    "feature/beta-a/my-branch",
                    "feature/your-branch",
                    "feature/mona/the/octocat",
                ],
                &["feature"],
            ),
            (
                &["main", "releases/mona-the-octocat"],
                &["main", "releases/mona-the-octocat"],
                &["mainline"],
            ),
            (&["*"], &["main", "releases"], &["releases/1"]),
            (&["**"], &["all/the/branches", "every/tag"], &[]),
            (
                &["*feature"],
                &["mona-feature", "feature", "ver-10-feature"],
                &["a/feature"],
            ),
            (&["v2*"], &["v2", "v2.0", "v2.9"], &["v3", "v2/x"]),
            (
                &["v[12].[0-9]+.[0-9]+"],
                &["v1.10.1", "v2.0.0"],
                &["v3.0.0", "v1.x.1", "v1..1"],
            ),
            // Patterns to match file paths.
            (&["*"], &["README.md", "server.rb"], &["docs/README.md"]),
            (
                &["*.jsx?"],
                &["page.js", "page.jsx"],
                &["page.jsxx", "a/page.js"],
            ),
            (&["**"], &["all/the/files.md"], &[]),
            (&["*.js"], &["app.js", "index.js"], &["js/index.js"]),
            (
                &["**.js"],
                &["index.js", "js/index.js", "src/js/app.js"],
                &["index.jsx"],
            ),
            (
                &["docs/*"],
                &["docs/README.md", "docs/file.txt"],
                &["docs/mona/octocat.txt"],
            ),
            (
                &["docs/**"],
                &["docs/README.md", "docs/mona/octocat.txt"],
                &["README.md"],
            ),
            (
                &["docs/**/*.md"],
                &[
                    "docs/README.md",
                    "docs/mona/hello-world.md",
                    "docs/a/markdown/file.md",
                ],
                &["docs/a.txt"],
            ),
            (
                &["**/docs/**"],
                &[
                    "docs/hello.md",
                    "dir/docs/my-file.txt",
                    "space/docs/plan/space.doc",
                ],
                &["mydocs/x"],
            ),
            (
                &["**/README.md"],
                &["README.md", "js/README.md"],
                &["NOTREADME.md"],
            ),
            (
                &["**/*src/**"],
                &["a/src/app.js", "my-src/code/js/app.js"],
                &["src.js"],
            ),
            (
                &["**/*-post.md"],
                &["my-post.md", "path/their-post.md"],
                &["post.md"],
            ),
            (
                &["**/migrate-*.sql"],
                &[
                    "migrate-10909.sql",
                    "db/migrate-v1.0.sql",
                    "db/sept/migrate-v1.sql",
                ],
                &["migrate.sql"],
            ),
            (
                &["*.md", "!README.md"],
                &["hello.md"],
                &["README.md", "docs/hello.md"],
            ),
            (
                &["*.md", "!README.md", "README*"],
                &["hello.md", "README.md", "README.doc"],
                &[],
            ),
        ];
        for (patterns, yes, no) in rows {
            let l = list(patterns);
            for s in *yes {
                assert!(l.matches(s), "{patterns:?} must match {s:?}");
            }
            for s in *no {
                assert!(!l.matches(s), "{patterns:?} must not match {s:?}");
            }
        }
    }

    /// The issue's tag filter: `+` repeats the preceding class.
    #[test]
    fn semver_tags() {
        let l = list(&["[0-9]+.[0-9]+.[0-9]+*"]);
        for t in ["2.4.0", "10.20.30", "2.4.0-rc1", "1.0.0.post"] {
            assert!(l.matches(t), "{t}");
        }
        for t in ["v2.4.0", "2.4", "2.4.0/x", "a.b.c"] {
            assert!(!l.matches(t), "{t}");
        }
    }

    #[test]
    fn quantifiers_escapes_and_literals() {
        let m = |p: &str, s: &str| Glob::new(p).unwrap().is_match(s);
        assert!(m("?x", "?x") && m("+x", "+x"), "first: literal");
        assert!(m("ab+c", "abbbc") && !m("ab+c", "ac"));
        assert!(m("ab?c", "ac") && m("ab?c", "abc") && !m("ab?c", "abbc"));
        assert!(m("a\\*b", "a*b") && !m("a\\*b", "axb"));
        assert!(m("a\\?", "a?") && m("\\[x]", "[x]") && m("\\!x", "!x"));
        assert!(m("a\\+?", "a") && m("a\\+?", "a+"));
        assert!(m("{a,b}", "{a,b}") && !m("{a,b}", "a"), "no alternation");
        assert!(m("a!b", "a!b") && m("a.b", "a.b") && !m("a.b", "axb"));
        assert!(m("é+t", "ééét"), "a multi-byte character repeats whole");
        assert!(
            m("x*?", "xyz") && m("x**?", "x/y") && m("a+?", "aa"),
            "lazy `?`"
        );
        assert!(m("**/", "a/") && !m("**/", "/"));
        assert!(m("[a-c]*[0-9]", "b-x9") && !m("[a-c]*[0-9]", "b/9"));
        assert!(
            !m("*a*a*a*a*a*a*a*a*b", &"a".repeat(60)),
            "no backtracking blow-up"
        );
        assert!(m("**a**a**a**a**b", &format!("{}b", "a/".repeat(500))));
        assert!(m("[A-Z]", "Q") && !m("[A-Z]", "q") && m("[a-fX]", "X"));
        let n = Glob::new("!docs/**").unwrap();
        assert!(n.is_negated() && n.is_match("docs/x") && n.pattern() == "!docs/**");
    }

    #[test]
    fn order_decides() {
        let l = list(&["src/**", "!src/gen/**", "src/gen/keep.rs"]);
        assert!(l.matches("src/a.rs"));
        assert!(!l.matches("src/gen/x.rs"));
        assert!(l.matches("src/gen/keep.rs"));
        assert_eq!(
            l.decisive("src/gen/x.rs").map(Glob::pattern),
            Some("!src/gen/**")
        );
        assert_eq!(l.decisive("lib/x"), None);
        assert!(!list(&["!docs/**"]).matches("src/a"));
        assert!(!GlobList::default().matches("x"));
        assert_eq!(l.to_string(), "[src/**, !src/gen/**, src/gen/keep.rs]");
    }

    #[test]
    fn errors() {
        let e = |p: &str| Glob::new(p).unwrap_err().to_string();
        assert_eq!(e("[a"), "invalid glob `[a`: unclosed `[`; missing `]`");
        assert_eq!(e("[]"), "invalid glob `[]`: empty brackets `[]`");
        assert_eq!(
            e("[!a]"),
            "invalid glob `[!a]`: `!` in brackets: only letters, digits and the ranges a-z, A-Z, 0-9 can be listed (escape a literal `[` as `\\[`)"
        );
        assert_eq!(
            e("[a-Z]"),
            "invalid glob `[a-Z]`: invalid range `a-Z`: a range goes from low to high within a-z, A-Z or 0-9"
        );
        assert_eq!(
            e("[9-0]"),
            "invalid glob `[9-0]`: invalid range `9-0`: a range goes from low to high within a-z, A-Z or 0-9"
        );
        assert!(e("[a-]").contains("`-` in brackets"));
        assert_eq!(
            e("a\\"),
            "invalid glob `a\\`: `\\` at the end of the pattern escapes nothing"
        );
        assert_eq!(
            e("a*+"),
            "invalid glob `a*+`: `+` cannot follow `*`; to match a literal `+`, write `\\+`"
        );
        for p in ["a++", "a?+", "**+", "**/+", "[ab"] {
            assert!(Glob::new(p).is_err(), "{p}");
        }
        assert_eq!(e("!"), "invalid glob `!`: empty pattern");
        assert_eq!(e(""), "invalid glob ``: empty pattern");
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        assert!(e(&long).ends_with("a pattern may have at most 1024"));
    }

    #[test]
    fn serde_is_lenient_with_stored_patterns() {
        let l = list(&["a/*", "!b"]);
        let j = serde_json::to_string(&l).unwrap();
        assert_eq!(j, r#"["a/*","!b"]"#);
        let back: GlobList = serde_json::from_str(&j).unwrap();
        assert_eq!(back, l);
        assert!(back.matches("a/x"));
        let old: GlobList = serde_json::from_str(r#"["[!a]x", "y"]"#).unwrap();
        assert_eq!(old.patterns(), ["[!a]x", "y"]);
        assert!(!old.matches("bx") && old.matches("y"));
    }

    /// Any input, as pattern or as subject: no panic, and the fast paths agree with the NFA.
    #[test]
    fn fast_paths_agree_with_the_nfa() {
        let patterns = [
            "main",
            "src/**",
            "v*",
            "**.js",
            "*.md",
            "**/README.md",
            "a",
            "**/",
            "*",
            "**",
        ];
        let subjects = [
            "",
            "main",
            "src/a",
            "src",
            "v1",
            "v1/x",
            "a.js",
            "b/a.js",
            "x.md",
            "d/x.md",
            "README.md",
            "d/README.md",
            "/README.md",
            "//README.md",
            "a",
            "a/",
            "/",
        ];
        for p in patterns {
            let pieces = parse(p).unwrap();
            let nfa = Nfa::new(&pieces);
            let fast = Matcher::new(pieces);
            for s in subjects {
                assert_eq!(fast.is_match(s), nfa.is_match(s), "{p} on {s:?}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 3000, ..Default::default() })]

        /// Patterns and subjects from a small alphabet of special and plain characters: no
        /// panic, and whichever matcher a pattern gets answers as the NFA does.
        #[test]
        fn any_pattern_any_subject(p in "[ab/*?+\\[\\]0-9!.\\\\-]{0,12}", s in "[ab/0-9.+*-]{0,12}") {
            if let Ok(g) = Glob::new(&p) {
                let body = p.strip_prefix('!').unwrap_or(&p);
                if let Ok(pieces) = parse(body) {
                    proptest::prop_assert_eq!(g.is_match(&s), Nfa::new(&pieces).is_match(&s));
                }
            }
        }

        #[test]
        fn arbitrary_text_never_panics(p in "\\PC{0,40}", s in "\\PC{0,40}") {
            if let Ok(g) = Glob::new(&p) {
                let _ = g.is_match(&s);
            }
        }
    }
}
