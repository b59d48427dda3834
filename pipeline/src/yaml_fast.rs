//! A fast path for the YAML subset that pipeline files actually use.
//!
//! `saphyr-parser` is a complete YAML 1.2 event parser, and it costs tens of microseconds for a
//! one-kilobyte pipeline file. This module parses the common subset directly into the same
//! spanned [`Node`] tree that `yaml.rs` builds from saphyr events: block mappings and
//! sequences (including compact `- key: value` items and sequences at their key's indentation),
//! single-line flow collections, single-line plain and quoted scalars, comments, and literal or
//! folded block scalars (`|`, `|-`, `>`, `>-`) in their simple forms.
//!
//! The contract is strict: [`parse`] returns either exactly the tree (and the same
//! duplicate-key diagnostics) that the saphyr path produces, or `None` ("unsupported"), and the
//! caller then runs the saphyr path, which owns all syntax errors. Anything unusual or doubtful
//! (tabs, carriage returns, anchors, aliases, tags, directives, document markers, `?` keys,
//! multi-line plain/quoted/flow scalars, odd indentation, trailing text...) bails. The
//! differential tests in `tests/yaml_fast.rs` compare both paths on generated and hand-written
//! documents.

use std::borrow::Cow;

use saphyr_parser::ScalarStyle;

use crate::model::Pos;
use crate::yaml::{push_entry, Entry, Node, NodeKind, RawDiag, Scalar};

/// Deeper documents go to the saphyr path, which reports [`crate::yaml::MAX_DEPTH`].
const FAST_MAX_DEPTH: usize = 48;
/// saphyr limits simple keys to 1024 characters; stay well below.
const MAX_KEY_LEN: usize = 512;

/// "Not in the fast subset": the caller falls back to the full parser.
struct Bail;

type R<T> = Result<T, Bail>;

/// Parse `src` if it is in the fast subset. Duplicate-key diagnostics are appended to `diags`
/// exactly as the saphyr path would append them; on `None` nothing was appended.
pub(crate) fn parse<'a>(src: &'a str, diags: &mut Vec<RawDiag>) -> Option<Node<'a>> {
    let ascii = prescan(src.as_bytes()).ok()?;
    let mut local = Vec::new();
    let mut p = P {
        src,
        s: src.as_bytes(),
        i: 0,
        line: 1,
        line_start: 0,
        depth: 0,
        ascii,
        entries: Vec::new(),
        items: Vec::new(),
        diags: &mut local,
    };
    let node = p.document().ok()?;
    diags.append(&mut local);
    Some(node)
}

/// Whole-input character check: tabs, carriage returns, control characters and the
/// non-ASCII characters YAML treats specially are left to saphyr. Returns whether the input is
/// pure ASCII (columns are then byte offsets). (Document markers and directives can only start
/// a content line at column 0; `next_content_line` rejects those.)
fn prescan(s: &[u8]) -> R<bool> {
    // Branch-free over the common all-printable-ASCII input, so that it vectorises.
    let unusual = s.iter().fold(0u8, |acc, &b| {
        acc | (u8::from(b.wrapping_sub(0x20) > 0x5e) & u8::from(b != b'\n'))
    });
    if unusual == 0 {
        return Ok(true);
    }
    for (k, &b) in s.iter().enumerate() {
        match b {
            0x20..=0x7e | b'\n' => {}
            // Tabs, carriage returns and other control characters.
            0..=0x1f | 0x7f => return Err(Bail),
            _ => {
                let rest = s.get(k..).unwrap_or_default();
                // Non-ASCII characters that YAML treats specially or rejects: C1 controls and
                // NEL (U+0080..U+009F), BOM (U+FEFF), U+2028/U+2029, U+FFFE/U+FFFF.
                if matches!(rest, [0xc2, 0x80..=0x9f, ..])
                    || rest.starts_with(&[0xef, 0xbb, 0xbf])
                    || rest.starts_with(&[0xef, 0xbf, 0xbe])
                    || rest.starts_with(&[0xef, 0xbf, 0xbf])
                    || rest.starts_with(&[0xe2, 0x80, 0xa8])
                    || rest.starts_with(&[0xe2, 0x80, 0xa9])
                {
                    return Err(Bail);
                }
            }
        }
    }
    Ok(false)
}

struct P<'a, 'd> {
    src: &'a str,
    s: &'a [u8],
    /// Current byte offset.
    i: usize,
    /// 1-based line of `i`.
    line: u32,
    /// Byte offset where the current line starts.
    line_start: usize,
    depth: usize,
    /// The whole input is ASCII: a column is a byte offset.
    ascii: bool,
    /// Entries and items of the collections being built (a stack shared by all levels), so that
    /// each finished collection is allocated once, at its exact size.
    entries: Vec<Entry<'a>>,
    items: Vec<Node<'a>>,
    diags: &'d mut Vec<RawDiag>,
}

/// Bytes that end the fast skip over a plain scalar's ordinary characters.
const BLOCK_STOP: [bool; 256] = stop_table(false);
const FLOW_STOP: [bool; 256] = stop_table(true);

const fn stop_table(flow: bool) -> [bool; 256] {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b':' as usize] = true;
    t[b'\n' as usize] = true;
    if flow {
        t[b',' as usize] = true;
        t[b'[' as usize] = true;
        t[b']' as usize] = true;
        t[b'{' as usize] = true;
        t[b'}' as usize] = true;
    }
    t
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

impl<'a> P<'a, '_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.s.get(k).copied()
    }

    /// End of line or end of input at `k`.
    fn eol_at(&self, k: usize) -> bool {
        matches!(self.peek_at(k), None | Some(b'\n'))
    }

    fn pos_at(&self, k: usize) -> Pos {
        // Columns count characters, not bytes.
        let chars = if self.ascii {
            k.saturating_sub(self.line_start)
        } else {
            self.s
                .get(self.line_start..k)
                .map_or(0, |l| l.iter().filter(|&&b| b & 0xc0 != 0x80).count())
        };
        Pos {
            line: self.line,
            col: u32::try_from(chars + 1).unwrap_or(u32::MAX),
        }
    }

    fn pos(&self) -> Pos {
        self.pos_at(self.i)
    }

    fn text(&self, from: usize, to: usize) -> R<&'a str> {
        self.src.get(from..to).ok_or(Bail)
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }

    /// Consume a `\n` at `i` (or accept end of input).
    fn newline(&mut self) -> R<()> {
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.i += 1;
                self.line += 1;
                self.line_start = self.i;
                Ok(())
            }
            Some(_) => Err(Bail),
        }
    }

    /// After a node: optional spaces, an optional comment, and the end of the line.
    fn finish_line(&mut self) -> R<()> {
        let before = self.i;
        self.skip_spaces();
        if self.peek() == Some(b'#') {
            // A comment needs whitespace before it (or the start of the line).
            if self.i == before && self.i != self.line_start {
                return Err(Bail);
            }
            while !self.eol_at(self.i) {
                self.i += 1;
            }
        }
        self.newline()
    }

    /// From a line start, skip blank and comment-only lines. Leaves `i` at the start of the next
    /// content line and returns its indentation, or `None` at the end of the input.
    fn next_content_line(&mut self) -> R<Option<usize>> {
        loop {
            let start = self.i;
            let mut k = start;
            while self.peek_at(k) == Some(b' ') {
                k += 1;
            }
            match self.peek_at(k) {
                None => {
                    self.i = k;
                    return Ok(None);
                }
                Some(b'\n') => {
                    self.i = k;
                    self.newline()?;
                }
                Some(b'#') => {
                    self.i = k;
                    while !self.eol_at(self.i) {
                        self.i += 1;
                    }
                    self.newline()?;
                }
                Some(b) => {
                    // Directives and document markers (`%`, `---`, `...` at column 0).
                    let rest = self.s.get(k..).unwrap_or_default();
                    if k == start
                        && (b == b'%' || rest.starts_with(b"---") || rest.starts_with(b"..."))
                    {
                        return Err(Bail);
                    }
                    return Ok(Some(k - start));
                }
            }
        }
    }

    /// Whether the content at `k` is a block sequence entry indicator (`-` + space or EOL).
    fn is_dash_at(&self, k: usize) -> bool {
        self.peek_at(k) == Some(b'-') && matches!(self.peek_at(k + 1), None | Some(b' ' | b'\n'))
    }

    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > FAST_MAX_DEPTH {
            return Err(Bail);
        }
        Ok(())
    }

    fn document(&mut self) -> R<Node<'a>> {
        let Some(indent) = self.next_content_line()? else {
            return Err(Bail);
        };
        self.i += indent;
        let node = self.block_node(-1, indent, true)?;
        if !matches!(node.kind, NodeKind::Map(_) | NodeKind::Seq(_)) {
            return Err(Bail);
        }
        if self.next_content_line()?.is_some() {
            return Err(Bail);
        }
        Ok(node)
    }

    /// A node whose first character is at `i`, on column `col` (a byte offset from the line
    /// start, equal to the character column since only spaces and `- ` precede it), inside a
    /// block collection indented `parent`. With `allow_block`, the node may be a block mapping
    /// or sequence starting here (the node starts its line or follows `- `); otherwise it
    /// follows `key: ` on the same line. Leaves `i` at the start of the next line.
    fn block_node(&mut self, parent: i64, col: usize, allow_block: bool) -> R<Node<'a>> {
        let Some(b) = self.peek() else {
            return Err(Bail);
        };
        match b {
            b'-' if self.is_dash_at(self.i) => {
                if !allow_block {
                    return Err(Bail);
                }
                self.block_seq(col, false)
            }
            b'[' | b'{' => {
                let node = self.flow_node()?;
                self.finish_line()?;
                Ok(node)
            }
            b'|' | b'>' => self.block_scalar(parent),
            b'\'' | b'"' => {
                let key_pos = self.pos();
                let scalar = self.quoted()?;
                if self.is_value_indicator()? {
                    if !allow_block {
                        return Err(Bail);
                    }
                    return self.block_map(col, scalar.value, key_pos);
                }
                let node = Node {
                    pos: key_pos,
                    kind: NodeKind::Scalar(scalar),
                };
                self.finish_line()?;
                Ok(node)
            }
            _ => {
                let pos = self.pos();
                let (value, colon) = self.plain(false)?;
                if colon {
                    if !allow_block {
                        return Err(Bail);
                    }
                    return self.block_map(col, Cow::Borrowed(value), pos);
                }
                let node = plain_node(value, pos);
                self.finish_line()?;
                Ok(node)
            }
        }
    }

    /// After a quoted scalar: optional spaces, then `:` followed by a space or the end of the
    /// line means it was a mapping key (consumes up to and including the `:`).
    fn is_value_indicator(&mut self) -> R<bool> {
        let mut k = self.i;
        while self.peek_at(k) == Some(b' ') {
            k += 1;
        }
        if self.peek_at(k) == Some(b':') {
            if matches!(self.peek_at(k + 1), None | Some(b' ' | b'\n')) {
                self.i = k + 1;
                return Ok(true);
            }
            return Err(Bail);
        }
        Ok(false)
    }

    /// A block mapping at indentation `m` whose first key was just read (`i` is right after
    /// its `:`).
    fn block_map(&mut self, m: usize, first_key: Cow<'a, str>, first_pos: Pos) -> R<Node<'a>> {
        self.enter()?;
        let base = self.entries.len();
        let mut key = first_key;
        let mut key_pos = first_pos;
        loop {
            if key.len() > MAX_KEY_LEN {
                return Err(Bail);
            }
            let value = self.value_after_indicator(m as i64, true)?;
            push_entry(&mut self.entries, base, key, key_pos, value, self.diags);
            // The next entry, or the end of this mapping.
            let Some(indent) = self.next_content_line()? else {
                break;
            };
            if indent < m {
                break;
            }
            if indent > m {
                return Err(Bail);
            }
            self.i += indent;
            if self.is_dash_at(self.i) {
                return Err(Bail);
            }
            key_pos = self.pos();
            key = match self.peek() {
                Some(b'\'' | b'"') => {
                    let s = self.quoted()?;
                    if !self.is_value_indicator()? {
                        return Err(Bail);
                    }
                    s.value
                }
                _ => {
                    let (k, colon) = self.plain(false)?;
                    if !colon {
                        return Err(Bail);
                    }
                    Cow::Borrowed(k)
                }
            };
        }
        self.depth -= 1;
        let entries = self.entries.drain(base..).collect();
        Ok(Node {
            pos: first_pos,
            kind: NodeKind::Map(entries),
        })
    }

    /// The value after a mapping `:` or a sequence `-` (`i` right after the indicator), owned
    /// by a block collection indented `parent`. Leaves `i` at the start of the next line.
    fn value_after_indicator(&mut self, parent: i64, in_map: bool) -> R<Node<'a>> {
        match self.peek() {
            None | Some(b'\n') => {}
            Some(b' ') => {
                self.skip_spaces();
                match self.peek() {
                    None | Some(b'\n') => {}
                    Some(b'#') => {
                        while !self.eol_at(self.i) {
                            self.i += 1;
                        }
                    }
                    Some(_) => {
                        let col = self.i - self.line_start;
                        // After `- `, block collections may start on the same line.
                        return self.block_node(parent, col, !in_map);
                    }
                }
            }
            Some(_) => return Err(Bail),
        }
        // saphyr puts an empty sequence item at the end of its line (after any comment); an
        // empty mapping value takes its key's position (see `push_entry`).
        let empty_pos = self.pos();
        self.newline()?;
        // The value is on the following lines, or empty.
        let next = self.next_content_line()?;
        let Some(indent) = next else {
            return Ok(empty_node(empty_pos));
        };
        let indent_i = indent as i64;
        if indent_i > parent {
            self.i += indent;
            return self.block_node(parent, indent, true);
        }
        if in_map && indent_i == parent && self.is_dash_at(self.i + indent) {
            // A sequence at its key's indentation.
            self.i += indent;
            return self.block_seq(indent, true);
        }
        Ok(empty_node(empty_pos))
    }

    /// A block sequence whose dashes are on column `s`; `i` is at the first `-`.
    fn block_seq(&mut self, s: usize, indentless: bool) -> R<Node<'a>> {
        self.enter()?;
        let pos = if indentless {
            // saphyr starts a sequence at its key's indentation where the first `-` is
            // followed by its value, or by the end of the line (after any comment).
            let mut k = self.i + 1;
            while self.peek_at(k) == Some(b' ') {
                k += 1;
            }
            if self.peek_at(k) == Some(b'#') {
                while !self.eol_at(k) {
                    k += 1;
                }
            }
            self.pos_at(k)
        } else {
            self.pos()
        };
        let base = self.items.len();
        loop {
            // `i` is at a `-` indicator.
            self.i += 1;
            let item = self.value_after_indicator(s as i64, false)?;
            self.items.push(item);
            let Some(indent) = self.next_content_line()? else {
                break;
            };
            if indent < s {
                break;
            }
            if indent > s {
                return Err(Bail);
            }
            if !self.is_dash_at(self.i + indent) {
                // The parent decides whether this line is valid.
                break;
            }
            self.i += indent;
        }
        self.depth -= 1;
        let items = self.items.drain(base..).collect();
        Ok(Node {
            pos,
            kind: NodeKind::Seq(items),
        })
    }

    /// A plain scalar at `i`, on one line. Returns the (trimmed) text and whether it ended at a
    /// `:` value indicator (which is consumed). In flow context it also ends at `,[]{}`.
    fn plain(&mut self, flow: bool) -> R<(&'a str, bool)> {
        let start = self.i;
        let first = self.peek().ok_or(Bail)?;
        match first {
            b'-' => {
                // `-x` is a plain scalar, `- x` is not.
                match self.peek_at(start + 1) {
                    None | Some(b' ' | b'\n') => return Err(Bail),
                    Some(b) if is_flow_indicator(b) => return Err(Bail),
                    _ => {}
                }
            }
            b'?' | b':' | b',' | b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|'
            | b'>' | b'\'' | b'"' | b'%' | b'@' | b'`' | b' ' | b'\n' => return Err(Bail),
            _ => {}
        }
        let mut end = start; // end of the text without trailing spaces
        let mut k = start;
        let mut colon = false;
        loop {
            // Fast skip over ordinary characters.
            let stop = if flow { &FLOW_STOP } else { &BLOCK_STOP };
            let skip_from = k;
            while let Some(&b) = self.s.get(k) {
                if stop[usize::from(b)] {
                    break;
                }
                k += 1;
            }
            if k > skip_from {
                end = k;
            }
            match self.peek_at(k) {
                None | Some(b'\n') => break,
                Some(b' ') => {
                    let mut j = k;
                    while self.peek_at(j) == Some(b' ') {
                        j += 1;
                    }
                    if matches!(self.peek_at(j), None | Some(b'\n' | b'#')) {
                        break;
                    }
                    // saphyr checks indicators again after a space inside a flow scalar
                    // (`[a -, b]` is an error); leave such text to it.
                    if flow
                        && matches!(self.peek_at(j), Some(b'-' | b'?' | b':'))
                        && matches!(
                            self.peek_at(j + 1),
                            None | Some(b' ' | b'\n' | b',' | b'[' | b']' | b'{' | b'}')
                        )
                    {
                        return Err(Bail);
                    }
                    k = j;
                }
                Some(b':') => match self.peek_at(k + 1) {
                    None | Some(b' ' | b'\n') => {
                        colon = true;
                        break;
                    }
                    Some(b) if flow && is_flow_indicator(b) => return Err(Bail),
                    _ => {
                        k += 1;
                        end = k;
                    }
                },
                Some(b) if flow && is_flow_indicator(b) => break,
                Some(_) => {
                    k += 1;
                    end = k;
                }
            }
        }
        // Without a `:`, trailing spaces are left for the caller, which skips them.
        self.i = if colon { k + 1 } else { end };
        let text = self.text(start, end)?;
        Ok((text, colon))
    }

    /// A single- or double-quoted scalar on one line, `i` at the opening quote.
    fn quoted(&mut self) -> R<Scalar<'a>> {
        let start = self.i;
        let q = self.peek().ok_or(Bail)?;
        // Unescaped text so far; `None` while the value is a plain slice of the source.
        let mut owned: Option<String> = None;
        let mut k = start + 1;
        let mut run = k; // start of the pending verbatim run
        let value = loop {
            match self.peek_at(k) {
                None | Some(b'\n') => return Err(Bail),
                Some(b) if b == q => {
                    if q == b'\'' && self.peek_at(k + 1) == Some(b'\'') {
                        owned
                            .get_or_insert_with(String::new)
                            .push_str(self.text(run, k + 1)?);
                        k += 2;
                        run = k;
                        continue;
                    }
                    let tail = self.text(run, k)?;
                    k += 1;
                    break match owned {
                        Some(mut v) => {
                            v.push_str(tail);
                            Cow::Owned(v)
                        }
                        None => Cow::Borrowed(tail),
                    };
                }
                Some(b'\\') if q == b'"' => {
                    let c = match self.peek_at(k + 1) {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'0') => '\0',
                        Some(b' ') => ' ',
                        _ => return Err(Bail),
                    };
                    let v = owned.get_or_insert_with(String::new);
                    v.push_str(self.text(run, k)?);
                    v.push(c);
                    k += 2;
                    run = k;
                }
                Some(_) => k += 1,
            }
        };
        self.i = k;
        // Without escapes the source maps 1:1 onto the value, unless spaces follow: saphyr's
        // span of a quoted scalar also covers the spaces (and a comment) after it.
        let mut verbatim = matches!(value, Cow::Borrowed(_));
        // The quotes must be followed by a separator.
        match self.peek() {
            None | Some(b'\n' | b':') => {}
            Some(b' ') => verbatim = false,
            Some(b) if is_flow_indicator(b) => {}
            Some(_) => return Err(Bail),
        }
        Ok(Scalar {
            value,
            style: if q == b'\'' {
                ScalarStyle::SingleQuoted
            } else {
                ScalarStyle::DoubleQuoted
            },
            verbatim_single_line: verbatim,
        })
    }

    /// A flow collection or scalar on the current line, `i` at its first character.
    fn flow_node(&mut self) -> R<Node<'a>> {
        let pos = self.pos();
        match self.peek() {
            Some(b'[') => {
                self.enter()?;
                self.i += 1;
                self.skip_spaces();
                let base = self.items.len();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        let item = self.flow_node()?;
                        self.items.push(item);
                        self.skip_spaces();
                        match self.peek() {
                            Some(b',') => {
                                self.i += 1;
                                self.skip_spaces();
                                if self.peek() == Some(b']') {
                                    self.i += 1;
                                    break;
                                }
                            }
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(Bail),
                        }
                    }
                }
                self.depth -= 1;
                let items = self.items.drain(base..).collect();
                Ok(Node {
                    pos,
                    kind: NodeKind::Seq(items),
                })
            }
            Some(b'{') => {
                self.enter()?;
                self.i += 1;
                self.skip_spaces();
                let base = self.entries.len();
                if self.peek() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        let key_pos = self.pos();
                        let key = match self.peek() {
                            Some(b'\'' | b'"') => {
                                let s = self.quoted()?;
                                self.skip_spaces();
                                if self.peek() != Some(b':') {
                                    return Err(Bail);
                                }
                                self.i += 1;
                                s.value
                            }
                            _ => {
                                let (k, colon) = self.plain(true)?;
                                if !colon {
                                    return Err(Bail);
                                }
                                Cow::Borrowed(k)
                            }
                        };
                        if key.len() > MAX_KEY_LEN {
                            return Err(Bail);
                        }
                        if self.peek() != Some(b' ') {
                            return Err(Bail);
                        }
                        self.skip_spaces();
                        let value = match self.peek() {
                            Some(b',' | b'}') => empty_node(key_pos),
                            _ => self.flow_node()?,
                        };
                        push_entry(&mut self.entries, base, key, key_pos, value, self.diags);
                        self.skip_spaces();
                        match self.peek() {
                            Some(b',') => {
                                self.i += 1;
                                self.skip_spaces();
                                if self.peek() == Some(b'}') {
                                    self.i += 1;
                                    break;
                                }
                            }
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(Bail),
                        }
                    }
                }
                self.depth -= 1;
                let entries = self.entries.drain(base..).collect();
                Ok(Node {
                    pos,
                    kind: NodeKind::Map(entries),
                })
            }
            Some(b'\'' | b'"') => {
                let s = self.quoted()?;
                Ok(Node {
                    pos,
                    kind: NodeKind::Scalar(s),
                })
            }
            _ => {
                let (v, colon) = self.plain(true)?;
                if colon {
                    // `[a: b]` is a single-pair mapping.
                    return Err(Bail);
                }
                Ok(plain_node(v, pos))
            }
        }
    }

    /// A literal or folded block scalar, `i` at `|` or `>`, inside a block collection indented
    /// `parent`. Only clip and strip chomping, auto-detected indentation, no leading blank
    /// lines, and (folded) no more-indented lines.
    fn block_scalar(&mut self, parent: i64) -> R<Node<'a>> {
        if parent < 0 {
            return Err(Bail);
        }
        let literal = self.peek() == Some(b'|');
        self.i += 1;
        let strip = self.peek() == Some(b'-');
        if strip {
            self.i += 1;
        }
        match self.peek() {
            None | Some(b'\n' | b' ') => {}
            Some(_) => return Err(Bail),
        }
        self.finish_line()?;
        // First content line decides the indentation.
        let start = self.i;
        let mut k = start;
        while self.peek_at(k) == Some(b' ') {
            k += 1;
        }
        if self.eol_at(k) {
            return Err(Bail);
        }
        let ci = k - start;
        if (ci as i64) <= parent {
            return Err(Bail);
        }
        let pos = Pos {
            line: self.line,
            col: u32::try_from(ci + 1).unwrap_or(u32::MAX),
        };
        let mut value = String::new();
        // Blank lines seen since the last content line.
        let mut blanks = 0usize;
        let mut first = true;
        loop {
            let ls = self.i;
            let mut k = ls;
            while self.peek_at(k) == Some(b' ') {
                k += 1;
            }
            let sp = k - ls;
            if self.peek_at(k).is_none() && sp == 0 {
                break;
            }
            if self.eol_at(k) {
                // A blank line; with spaces beyond the indentation it would be content.
                if sp > ci {
                    return Err(Bail);
                }
                if self.peek_at(k).is_none() {
                    // Spaces without a line break at the end of the input: saphyr keeps an
                    // extra line break there for some indentations. Leave that to it.
                    return Err(Bail);
                }
                blanks += 1;
                self.i = k;
                self.newline()?;
                continue;
            }
            if sp < ci {
                break;
            }
            if sp > ci && !literal {
                return Err(Bail);
            }
            let text_start = ls + ci;
            let mut e = text_start;
            while !self.eol_at(e) {
                e += 1;
            }
            if self.peek_at(e).is_none() {
                // The last line has no line break: chomping would differ.
                return Err(Bail);
            }
            if !first {
                if literal {
                    for _ in 0..=blanks {
                        value.push('\n');
                    }
                } else if blanks == 0 {
                    value.push(' ');
                } else {
                    for _ in 0..blanks {
                        value.push('\n');
                    }
                }
            }
            first = false;
            blanks = 0;
            value.push_str(self.text(text_start, e)?);
            self.i = e;
            self.newline()?;
        }
        if !strip {
            value.push('\n');
        }
        Ok(Node {
            pos,
            kind: NodeKind::Scalar(Scalar {
                value: Cow::Owned(value),
                style: if literal {
                    ScalarStyle::Literal
                } else {
                    ScalarStyle::Folded
                },
                verbatim_single_line: false,
            }),
        })
    }
}

fn plain_node(value: &str, pos: Pos) -> Node<'_> {
    Node {
        pos,
        kind: NodeKind::Scalar(Scalar {
            value: Cow::Borrowed(value),
            style: ScalarStyle::Plain,
            verbatim_single_line: true,
        }),
    }
}

fn empty_node(pos: Pos) -> Node<'static> {
    Node {
        pos,
        kind: NodeKind::Scalar(Scalar {
            value: Cow::Borrowed(""),
            style: ScalarStyle::Plain,
            verbatim_single_line: true,
        }),
    }
}
