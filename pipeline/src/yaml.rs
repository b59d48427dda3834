//! The only YAML parser: `saphyr-parser` events → the spanned tree of [`crate::tree`].
//!
//! We do not use a YAML→serde bridge because every diagnostic must point at the exact
//! `line:col` of the offending node, and because we want to report *all* problems. The tree
//! keeps mapping key order (stage order is meaningful) and the position of every key.
//!
//! Deliberate restrictions, each reported as a diagnostic rather than silently accepted:
//! - anchors, aliases (and therefore merge keys `<<: *x`) are rejected: they make
//!   positions ambiguous and allow "billion laughs" expansion;
//! - several documents in one file are rejected (one file = one pipeline);
//! - nesting deeper than [`MAX_DEPTH`] is rejected, so hostile input cannot blow the stack of
//!   the recursive walkers in `parse.rs`;
//! - mapping keys must be scalars; duplicate keys are reported (the first one wins).
//!
//! Tags (`!!str`, `!foo`) are ignored: the pipeline grammar decides how a scalar is read.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::input::SkipTabs;
use saphyr_parser::{Event, Input, Parser, ScalarStyle, Span, StrInput};

use crate::limits::MAX_DEPTH;
use crate::model::Pos;
use crate::tree::{Entry, Node, NodeKind, Scalar};

/// A problem found while building the tree: position and message (the file is added later).
pub(crate) type RawDiag = (Pos, String);

fn pos_of(span: &Span) -> Pos {
    to_pos(span.start)
}

fn to_pos(m: saphyr_parser::Marker) -> Pos {
    // saphyr lines are 1-based, columns 0-based (in characters).
    Pos {
        line: u32::try_from(m.line()).unwrap_or(u32::MAX),
        col: u32::try_from(m.col().saturating_add(1)).unwrap_or(u32::MAX),
    }
}

enum KeyState<'a> {
    /// Next completed node is a key.
    Want,
    Have(Cow<'a, str>, Pos),
    /// The key was not a scalar (already reported): drop the value.
    Invalid,
}

enum Frame<'a> {
    Seq(Pos, Vec<Node<'a>>),
    Map(MapBuilder<'a>),
}

/// Below this many keys a mapping's duplicate check scans its entries; from it on, an index
/// does (a `stages:` of thousands would otherwise be quadratic).
const INDEX_FROM: usize = 16;

/// A mapping under construction.
struct MapBuilder<'a> {
    pos: Pos,
    entries: Vec<Entry<'a>>,
    /// Key → position in `entries`; empty until the mapping reaches [`INDEX_FROM`] keys.
    index: HashMap<Cow<'a, str>, usize>,
    key: KeyState<'a>,
}

impl<'a> MapBuilder<'a> {
    fn new(pos: Pos) -> Self {
        MapBuilder {
            pos,
            entries: Vec::new(),
            index: HashMap::new(),
            key: KeyState::Want,
        }
    }

    fn find(&self, key: &str) -> Option<&Entry<'a>> {
        if self.entries.len() < INDEX_FROM {
            self.entries.iter().find(|e| e.key == key)
        } else {
            self.index.get(key).and_then(|&i| self.entries.get(i))
        }
    }

    /// Adds `key: node`: an empty value takes its key's position, and a duplicate key is
    /// reported and dropped (the first one wins).
    fn push(
        &mut self,
        key: Cow<'a, str>,
        key_pos: Pos,
        mut node: Node<'a>,
        diags: &mut Vec<RawDiag>,
    ) {
        // An empty value (`key:` and nothing else) has no text of its own: point
        // diagnostics about it at its key.
        if matches!(&node.kind, NodeKind::Scalar(s) if s.value.is_empty() && s.style == ScalarStyle::Plain)
        {
            node.pos = key_pos;
        }
        if let Some(first) = self.find(&key) {
            diags.push((
                key_pos,
                format!(
                    "duplicate key `{key}` (first defined at {}:{})",
                    first.key_pos.line, first.key_pos.col
                ),
            ));
            return;
        }
        if self.entries.len() + 1 == INDEX_FROM {
            for (i, e) in self.entries.iter().enumerate() {
                self.index.insert(e.key.clone(), i);
            }
        }
        if self.entries.len() + 1 >= INDEX_FROM {
            self.index.insert(key.clone(), self.entries.len());
        }
        self.entries.push(Entry {
            key,
            key_pos,
            value: node,
        });
    }
}

/// Parse `src` into a spanned tree. Returns `None` when the file cannot be turned into a tree
/// (syntax error, empty file, ...); every problem is pushed onto `diags`. Non-fatal problems
/// (duplicate keys, non-scalar keys) are reported and the tree is still returned.
pub(crate) fn load<'a>(src: &'a str, diags: &mut Vec<RawDiag>) -> Option<Node<'a>> {
    // saphyr-parser is well tested, but it is a third-party state machine with internal
    // `unwrap`s; a pipeline file from any repository must never take the daemon down, so a
    // panic inside it is turned into a diagnostic. Our own code below does not panic.
    let mut local = Vec::new();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| load_inner(src, &mut local)));
    match result {
        Ok(node) => {
            diags.append(&mut local);
            node
        }
        Err(_) => {
            diags.push((
                Pos { line: 1, col: 1 },
                "internal error in the yaml parser on this input; please report it".to_string(),
            ));
            None
        }
    }
}

/// How many characters saphyr's scanner takes from [`ChunkedInput`] per look-ahead: the
/// capacity of saphyr's own buffered input (`BufferedInput`), which its scanner is built for.
const CHUNK: usize = 16;

/// saphyr's `&str` input with a smaller look-ahead chunk. `StrInput` says 128 characters, and
/// the scanner reserves that much room in every plain scalar's `String` after its first
/// character: a reallocation for nearly every key and value, about a tenth of the parse. With
/// [`CHUNK`] the scalar fits the 32 bytes the scanner allocates first. Every other method is
/// `StrInput`'s, and the scanner only uses the chunk size to decide how many characters to
/// examine between look-aheads (all of a `&str` is always there), so the events are the same:
/// a test compares them.
struct ChunkedInput<'a>(StrInput<'a>);

impl Input for ChunkedInput<'_> {
    #[inline]
    fn lookahead(&mut self, count: usize) {
        self.0.lookahead(count);
    }
    #[inline]
    fn buflen(&self) -> usize {
        self.0.buflen()
    }
    #[inline]
    fn bufmaxlen(&self) -> usize {
        CHUNK
    }
    #[inline]
    fn buf_is_empty(&self) -> bool {
        self.0.buf_is_empty()
    }
    #[inline]
    fn raw_read_ch(&mut self) -> char {
        self.0.raw_read_ch()
    }
    #[inline]
    fn raw_read_non_breakz_ch(&mut self) -> Option<char> {
        self.0.raw_read_non_breakz_ch()
    }
    #[inline]
    fn skip(&mut self) {
        self.0.skip();
    }
    #[inline]
    fn skip_n(&mut self, count: usize) {
        self.0.skip_n(count);
    }
    #[inline]
    fn peek(&self) -> char {
        self.0.peek()
    }
    #[inline]
    fn peek_nth(&self, n: usize) -> char {
        self.0.peek_nth(n)
    }
    #[inline]
    fn peek_opt(&self) -> Option<char> {
        self.0.peek_opt()
    }
    #[inline]
    fn look_ch(&mut self) -> char {
        self.0.look_ch()
    }
    #[inline]
    fn next_char_is(&self, c: char) -> bool {
        self.0.next_char_is(c)
    }
    #[inline]
    fn nth_char_is(&self, n: usize, c: char) -> bool {
        self.0.nth_char_is(n, c)
    }
    #[inline]
    fn next_2_are(&self, c1: char, c2: char) -> bool {
        self.0.next_2_are(c1, c2)
    }
    #[inline]
    fn next_3_are(&self, c1: char, c2: char, c3: char) -> bool {
        self.0.next_3_are(c1, c2, c3)
    }
    #[inline]
    fn next_is_document_indicator(&self) -> bool {
        self.0.next_is_document_indicator()
    }
    #[inline]
    fn next_is_document_start(&self) -> bool {
        self.0.next_is_document_start()
    }
    #[inline]
    fn next_is_document_end(&self) -> bool {
        self.0.next_is_document_end()
    }
    #[inline]
    fn skip_ws_to_eol(&mut self, skip_tabs: SkipTabs) -> (usize, Result<SkipTabs, &'static str>) {
        self.0.skip_ws_to_eol(skip_tabs)
    }
    #[inline]
    fn next_can_be_plain_scalar(&self, in_flow: bool) -> bool {
        self.0.next_can_be_plain_scalar(in_flow)
    }
    #[inline]
    fn next_is_blank_or_break(&self) -> bool {
        self.0.next_is_blank_or_break()
    }
    #[inline]
    fn next_is_blank_or_breakz(&self) -> bool {
        self.0.next_is_blank_or_breakz()
    }
    #[inline]
    fn next_is_blank(&self) -> bool {
        self.0.next_is_blank()
    }
    #[inline]
    fn next_is_break(&self) -> bool {
        self.0.next_is_break()
    }
    #[inline]
    fn next_is_breakz(&self) -> bool {
        self.0.next_is_breakz()
    }
    #[inline]
    fn next_is_z(&self) -> bool {
        self.0.next_is_z()
    }
    #[inline]
    fn next_is_flow(&self) -> bool {
        self.0.next_is_flow()
    }
    #[inline]
    fn next_is_digit(&self) -> bool {
        self.0.next_is_digit()
    }
    #[inline]
    fn next_is_alpha(&self) -> bool {
        self.0.next_is_alpha()
    }
    #[inline]
    fn skip_while_non_breakz(&mut self) -> usize {
        self.0.skip_while_non_breakz()
    }
    #[inline]
    fn skip_while_blank(&mut self) -> usize {
        self.0.skip_while_blank()
    }
    #[inline]
    fn fetch_while_is_alpha(&mut self, out: &mut String) -> usize {
        self.0.fetch_while_is_alpha(out)
    }
    #[inline]
    fn fetch_while_is_yaml_non_space(&mut self, out: &mut String) -> usize {
        self.0.fetch_while_is_yaml_non_space(out)
    }
}

fn load_inner<'a>(src: &'a str, diags: &mut Vec<RawDiag>) -> Option<Node<'a>> {
    let mut parser = Parser::new(ChunkedInput(StrInput::new(src)));
    let mut stack: Vec<Frame<'a>> = Vec::new();
    let mut root: Option<Node<'a>> = None;
    let mut documents = 0usize;

    while let Some(ev) = parser.next_event() {
        let (event, span) = match ev {
            Ok(x) => x,
            Err(e) => {
                diags.push((
                    to_pos(*e.marker()),
                    format!("yaml syntax error: {}", e.info()),
                ));
                return None;
            }
        };
        let pos = pos_of(&span);
        let done: Node<'a> = match event {
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    diags.push((
                        pos,
                        "multiple yaml documents in one file are not supported; use one file per pipeline"
                            .to_string(),
                    ));
                    return None;
                }
                continue;
            }
            Event::Alias(_) => {
                diags.push((pos, "yaml aliases (`*name`) are not supported".to_string()));
                return None;
            }
            Event::Scalar(value, style, anchor, _tag) => {
                if anchor != 0 {
                    diags.push((pos, "yaml anchors (`&name`) are not supported".to_string()));
                    return None;
                }
                let quotes = match style {
                    ScalarStyle::Plain => 0,
                    ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted => 2,
                    _ => usize::MAX,
                };
                let verbatim_single_line = quotes != usize::MAX
                    && span.start.line() == span.end.line()
                    && span.len() == value.chars().count().saturating_add(quotes);
                Node {
                    pos,
                    kind: NodeKind::Scalar(Scalar {
                        value,
                        style,
                        verbatim_single_line,
                    }),
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if anchor != 0 {
                    diags.push((pos, "yaml anchors (`&name`) are not supported".to_string()));
                    return None;
                }
                if stack.len() >= MAX_DEPTH {
                    diags.push((
                        pos,
                        format!("nesting too deep: more than {MAX_DEPTH} levels"),
                    ));
                    return None;
                }
                if matches!(event, Event::SequenceStart(..)) {
                    stack.push(Frame::Seq(pos, Vec::new()));
                } else {
                    stack.push(Frame::Map(MapBuilder::new(pos)));
                }
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(p, items)) => Node {
                    pos: p,
                    kind: NodeKind::Seq(items),
                },
                _ => {
                    // Cannot happen with a conforming event stream; report instead of panicking.
                    diags.push((pos, "yaml syntax error: unbalanced sequence".to_string()));
                    return None;
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(map)) => Node {
                    pos: map.pos,
                    kind: NodeKind::Map(map.entries),
                },
                _ => {
                    diags.push((pos, "yaml syntax error: unbalanced mapping".to_string()));
                    return None;
                }
            },
        };
        attach(&mut stack, &mut root, done, diags);
    }

    if root.is_none() && diags.is_empty() {
        diags.push((
            Pos { line: 1, col: 1 },
            "empty file: expected a mapping with `name` and `stages`".to_string(),
        ));
    }
    root
}

/// Attach a completed node to its parent (or make it the document root).
fn attach<'a>(
    stack: &mut [Frame<'a>],
    root: &mut Option<Node<'a>>,
    node: Node<'a>,
    diags: &mut Vec<RawDiag>,
) {
    match stack.last_mut() {
        None => *root = Some(node),
        Some(Frame::Seq(_, items)) => items.push(node),
        Some(Frame::Map(map)) => match std::mem::replace(&mut map.key, KeyState::Want) {
            KeyState::Want => match node.kind {
                NodeKind::Scalar(s) => map.key = KeyState::Have(s.value, node.pos),
                _ => {
                    diags.push((
                        node.pos,
                        format!("mapping keys must be strings, found {}", node.type_name()),
                    ));
                    map.key = KeyState::Invalid;
                }
            },
            KeyState::Invalid => {}
            KeyState::Have(k, key_pos) => map.push(k, key_pos, node, diags),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> Node<'_> {
        let mut d = Vec::new();
        let n = load(src, &mut d);
        assert!(d.is_empty(), "{d:?}");
        n.unwrap()
    }

    #[test]
    fn positions_and_order() {
        let n = ok("b: 1\na:\n  - x\n  - {k: v}\n");
        let NodeKind::Map(entries) = &n.kind else {
            panic!()
        };
        assert_eq!(entries[0].key, "b");
        assert_eq!(entries[0].key_pos, Pos { line: 1, col: 1 });
        assert_eq!(entries[1].key, "a");
        assert_eq!(entries[1].key_pos, Pos { line: 2, col: 1 });
        let NodeKind::Seq(items) = &entries[1].value.kind else {
            panic!()
        };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
        assert_eq!(items[1].pos, Pos { line: 4, col: 5 });
    }

    #[test]
    fn rejects() {
        for (src, msg) in [
            ("a: &x 1\nb: *x\n", "anchors"),
            ("a: 1\n---\nb: 2\n", "multiple yaml documents"),
            ("a: [1\n", "yaml syntax error"),
            ("", "empty file"),
        ] {
            let mut d = Vec::new();
            assert!(load(src, &mut d).is_none(), "{src}");
            assert!(d[0].1.contains(msg), "{src}: {d:?}");
        }
    }

    #[test]
    fn deep_nesting_is_capped() {
        // saphyr's scanner has its own limit for flow collections; either message is fine.
        let src = "[".repeat(100_000);
        let mut d = Vec::new();
        assert!(load(&src, &mut d).is_none());
        assert_eq!(d.len(), 1);
        let src = format!("{}{}", "[".repeat(70), "]".repeat(70));
        let mut d = Vec::new();
        assert!(load(&src, &mut d).is_none());
        assert_eq!(
            d,
            [(
                Pos { line: 1, col: 65 },
                "nesting too deep: more than 64 levels".to_string()
            )]
        );
        let src: String = (0..200)
            .map(|i| format!("{}a:\n", "  ".repeat(i)))
            .collect();
        let mut d = Vec::new();
        assert!(load(&src, &mut d).is_none());
        assert_eq!(d[0].1, "nesting too deep: more than 64 levels");
    }

    /// Large mappings look duplicates up through an index: same report as the scan.
    #[test]
    fn duplicate_keys_in_small_and_large_mappings() {
        for n in [3, INDEX_FROM - 1, INDEX_FROM, INDEX_FROM + 1, 100] {
            let mut src: String = (0..n).map(|i| format!("k{i}: {i}\n")).collect();
            src.push_str("k1: again\n");
            src.push_str(&format!("k{}: last\n", n - 1));
            let mut d = Vec::new();
            let node = load(&src, &mut d).unwrap();
            let line = u32::try_from(n).unwrap();
            assert_eq!(
                d,
                [
                    (
                        Pos {
                            line: line + 1,
                            col: 1
                        },
                        "duplicate key `k1` (first defined at 2:1)".to_string()
                    ),
                    (
                        Pos {
                            line: line + 2,
                            col: 1
                        },
                        format!("duplicate key `k{}` (first defined at {line}:1)", n - 1)
                    ),
                ],
                "{n} keys"
            );
            let NodeKind::Map(entries) = node.kind else {
                panic!()
            };
            assert_eq!(entries.len(), n);
        }
    }

    /// saphyr's events for `src`, through its own `&str` input and through ours.
    fn events_both_ways(src: &str) -> (Vec<String>, Vec<String>) {
        fn all<T: Input>(mut p: Parser<'_, T>) -> Vec<String> {
            let mut out = Vec::new();
            while let Some(ev) = p.next_event() {
                let failed = ev.is_err();
                out.push(format!("{ev:?}"));
                if failed {
                    break;
                }
            }
            out
        }
        (
            all(Parser::new_from_str(src)),
            all(Parser::new(ChunkedInput(StrInput::new(src)))),
        )
    }

    /// The chunked input changes nothing saphyr reports: events, values, styles, spans and
    /// errors, on every YAML file of the project and on inputs built around the chunk size
    /// (scalars, indentation and block scalars longer than it, multi-byte characters, errors).
    #[test]
    fn chunked_input_gives_saphyrs_events() {
        let mut inputs: Vec<String> = Vec::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in read.flatten() {
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if path.is_dir() {
                    if name != ".git" && name != "target" {
                        dirs.push(path);
                    }
                } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                    if let Ok(text) = std::fs::read_to_string(&path) {
                        inputs.push(text);
                    }
                } else if name.ends_with(".md") {
                    // The documentation's examples, one per fenced block.
                    let Ok(text) = std::fs::read_to_string(&path) else {
                        continue;
                    };
                    for block in text.split("```yaml\n").skip(1) {
                        inputs.extend(block.split("```").next().map(str::to_string));
                    }
                }
            }
        }
        assert!(
            inputs.len() > 20,
            "the project's YAML was found: {}",
            inputs.len()
        );
        for n in [
            1,
            CHUNK - 2,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            2 * CHUNK + 3,
            200,
        ] {
            let word = "x".repeat(n);
            let wide = "é".repeat(n);
            let pad = " ".repeat(n);
            inputs.extend([
                format!("{word}: {word}\n"),
                format!("k: {wide} {word}\n  {word} # c\n"),
                format!("a:\n{pad}b: |\n{pad}  {word}\n\n{pad}  {wide}\n{pad}c: >-\n{pad}   x\n"),
                format!("- [{word}, \"{wide}\", '{word}']\n- {{k: {word}}}\n"),
                format!("k: {word}\n  {word}\n\n  {word}\n"),
                format!("k: {word}: x\n"),
                format!("k: [{word}\n"),
                format!("k: \"{word}\\q\"\n"),
                format!("k:\n{pad}- {word}\n{pad} - x\n"),
                format!("k: |{}\n  {word}\n", n % 9),
                format!("{word}\t: x\n---\n...\n"),
            ]);
        }
        for src in &inputs {
            let (theirs, ours) = events_both_ways(src);
            assert_eq!(theirs, ours, "{src}");
        }
    }

    proptest::proptest! {
        /// The same on arbitrary text made of YAML's significant characters.
        #[test]
        fn chunked_input_gives_saphyrs_events_on_any_text(
            src in "([a-z]{1,20}|[ ]{1,20}|[-:,#|>'\"\\[\\]{}&*!?%@\t\n]|é|\r\n){0,40}"
        ) {
            let (theirs, ours) = events_both_ways(&src);
            proptest::prop_assert_eq!(theirs, ours);
        }
    }

    #[test]
    fn verbatim_columns() {
        let n = ok("a: 'x y'\nb: \"a\\tb\"\nc: plain text\n");
        let NodeKind::Map(e) = &n.kind else { panic!() };
        let flags: Vec<bool> = e
            .iter()
            .map(|e| match &e.value.kind {
                NodeKind::Scalar(s) => s.verbatim_single_line,
                _ => false,
            })
            .collect();
        assert_eq!(flags, [true, false, true]);
    }
}
