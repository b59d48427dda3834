//! ANSI SGR colours to HTML for one log line: bold, dim, italic, underline, the 16 named
//! colours (as classes the stylesheet themes for light and dark), and 256-colour and 24-bit
//! colours (as inline styles). Every other escape sequence is dropped; all text is escaped.
//! Each line starts plain: a tail page may begin anywhere in a log.

use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Colour {
    #[default]
    Default,
    /// 0–15: the named colours (8–15 bright).
    Named(u8),
    Rgb(u8, u8, u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Style {
    bold: bool,
    dim: bool,
    italic: bool,
    underline: bool,
    fg: Colour,
    bg: Colour,
}

impl Style {
    fn is_plain(&self) -> bool {
        *self == Style::default()
    }

    fn apply(&mut self, params: &[u16]) {
        let mut i = 0;
        if params.is_empty() {
            *self = Style::default();
            return;
        }
        while i < params.len() {
            match params[i] {
                0 => *self = Style::default(),
                1 => self.bold = true,
                2 => self.dim = true,
                3 => self.italic = true,
                4 => self.underline = true,
                22 => {
                    self.bold = false;
                    self.dim = false;
                }
                23 => self.italic = false,
                24 => self.underline = false,
                code @ 30..=37 => self.fg = Colour::Named((code - 30) as u8),
                39 => self.fg = Colour::Default,
                code @ 40..=47 => self.bg = Colour::Named((code - 40) as u8),
                49 => self.bg = Colour::Default,
                code @ 90..=97 => self.fg = Colour::Named((code - 90) as u8 + 8),
                code @ 100..=107 => self.bg = Colour::Named((code - 100) as u8 + 8),
                which @ (38 | 48) => {
                    let (colour, used) = extended(&params[i + 1..]);
                    if let Some(colour) = colour {
                        if which == 38 {
                            self.fg = colour;
                        } else {
                            self.bg = colour;
                        }
                    }
                    i += used;
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn open_tag(&self, out: &mut String) {
        out.push_str("<span class=\"");
        let mut classes = Vec::new();
        if self.bold {
            classes.push("ab".to_string());
        }
        if self.dim {
            classes.push("ad".to_string());
        }
        if self.italic {
            classes.push("ai".to_string());
        }
        if self.underline {
            classes.push("au".to_string());
        }
        if let Colour::Named(n) = self.fg {
            classes.push(format!("f{n}"));
        }
        if let Colour::Named(n) = self.bg {
            classes.push(format!("g{n}"));
        }
        out.push_str(&classes.join(" "));
        out.push('"');
        let mut style = String::new();
        if let Colour::Rgb(r, g, b) = self.fg {
            let _ = write!(style, "color:#{r:02x}{g:02x}{b:02x};");
        }
        if let Colour::Rgb(r, g, b) = self.bg {
            let _ = write!(style, "background:#{r:02x}{g:02x}{b:02x};");
        }
        if !style.is_empty() {
            let _ = write!(out, " style=\"{style}\"");
        }
        out.push('>');
    }
}

/// `5;n` (256 colours) or `2;r;g;b` after a 38/48: the colour and how many parameters it took.
fn extended(rest: &[u16]) -> (Option<Colour>, usize) {
    match rest {
        [5, n, ..] => (Some(palette(*n)), 2),
        [2, r, g, b, ..] => (Some(Colour::Rgb(byte(*r), byte(*g), byte(*b))), 4),
        [5] | [2, ..] => (None, rest.len()),
        _ => (None, 0),
    }
}

fn byte(v: u16) -> u8 {
    u8::try_from(v).unwrap_or(u8::MAX)
}

/// The xterm 256-colour palette: 16 named, a 6×6×6 cube, 24 greys.
fn palette(n: u16) -> Colour {
    let n = byte(n);
    match n {
        0..=15 => Colour::Named(n),
        16..=231 => {
            let i = n - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            Colour::Rgb(level(i / 36), level((i / 6) % 6), level(i % 6))
        }
        _ => {
            let grey = 8 + (n - 232) * 10;
            Colour::Rgb(grey, grey, grey)
        }
    }
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        // Other control characters would show as nothing or garble the line.
        c if c.is_control() && c != '\t' => {}
        c => out.push(c),
    }
}

/// One line of text with escapes → HTML (escaped text and `<span>`s).
pub fn to_html(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut style = Style::default();
    let mut open = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            escape_into(&mut out, c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // A CSI sequence: parameters and intermediates, then one final byte.
                let mut body = String::new();
                let mut last = None;
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        last = Some(c);
                        break;
                    }
                    if body.len() < 64 {
                        body.push(c);
                    }
                }
                if last != Some('m') {
                    continue;
                }
                let params: Vec<u16> = body
                    .split([';', ':'])
                    .map(|p| p.parse().unwrap_or(0))
                    .collect();
                let params = if body.is_empty() { Vec::new() } else { params };
                let before = style;
                style.apply(&params);
                if style != before {
                    if open {
                        out.push_str("</span>");
                        open = false;
                    }
                    if !style.is_plain() {
                        style.open_tag(&mut out);
                        open = true;
                    }
                }
            }
            Some(']') => {
                // OSC (titles, hyperlinks): up to BEL or ESC \.
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                        chars.next();
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    if open {
        out.push_str("</span>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_html;

    #[test]
    fn named_colours_become_classes_and_reset_closes_them() {
        assert_eq!(
            to_html("\u{1b}[32mok\u{1b}[0m done"),
            "<span class=\"f2\">ok</span> done"
        );
        assert_eq!(
            to_html("\u{1b}[1;91mFAIL\u{1b}[m"),
            "<span class=\"ab f9\">FAIL</span>"
        );
    }

    #[test]
    fn extended_colours_become_styles() {
        assert_eq!(
            to_html("\u{1b}[38;2;255;0;128mx"),
            "<span class=\"\" style=\"color:#ff0080;\">x</span>"
        );
        assert_eq!(
            to_html("\u{1b}[48;5;196my"),
            "<span class=\"\" style=\"background:#ff0000;\">y</span>"
        );
    }

    #[test]
    fn text_is_escaped_and_other_sequences_dropped() {
        assert_eq!(
            to_html("<b>&\"'\u{1b}[2K\u{1b}]0;title\u{7}x\u{7}"),
            "&lt;b&gt;&amp;&quot;&#39;x"
        );
        assert_eq!(to_html("\u{1b}[31"), "");
        assert_eq!(to_html("plain"), "plain");
    }
}
