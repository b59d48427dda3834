//! The tiny expression language of `if:`.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | cmp
//! cmp     := primary (("==" | "!=") primary)?
//! primary := STRING | IDENT | "true" | "false" | "(" expr ")" | FUNC "(" expr "," expr ")"
//! STRING  := '...' | "..."            (a backslash escapes the next character)
//! IDENT   := branch | tag | ref | event | commit | repo | pipeline | base_branch
//! FUNC    := startsWith | endsWith | contains | matches
//! ```
//!
//! Values are strings or booleans. A missing context value (e.g. `tag` on a branch push) is
//! the empty string. Where a boolean is needed, a string is true when non-empty. `==`/`!=`
//! between a string and a boolean compare the boolean's text (`true`/`false`).
//! `matches(value, 'glob')` takes a quoted glob literal (checked at parse time) with the
//! branch/path glob semantics of [`crate::glob`].
//!
//! Unknown identifiers and functions are parse-time errors, so typos fail the pipeline at
//! load time instead of silently evaluating to false.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::glob::GlobList;
use crate::trigger::Event;

/// The identifiers the language knows, in the order suggested to users.
pub const IDENTIFIERS: &[&str] = &[
    "branch",
    "tag",
    "ref",
    "event",
    "commit",
    "repo",
    "pipeline",
    "base_branch",
];
/// The functions the language knows.
pub const FUNCTIONS: &[&str] = &["startsWith", "endsWith", "contains", "matches"];

/// Maximum nesting of parentheses, `!` and function calls; keeps recursion bounded.
const MAX_NESTING: usize = 32;

/// Values an expression is evaluated against. Missing values read as `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExprContext {
    /// Branch of a push (`main`), without `refs/heads/`.
    pub branch: Option<String>,
    /// Tag of a tag push (`v1.2.0`), without `refs/tags/`.
    pub tag: Option<String>,
    /// Full ref, e.g. `refs/heads/main`; the identifier is `ref`.
    pub git_ref: Option<String>,
    /// `push`, `tag` or `pull_request`.
    pub event: String,
    pub commit: Option<String>,
    pub repo: Option<String>,
    pub pipeline: Option<String>,
    /// Target branch of a pull request.
    pub base_branch: Option<String>,
}

impl ExprContext {
    /// The fields derivable from a trigger event (`branch`/`tag`/`base_branch`, `ref`, `event`);
    /// the caller fills in `commit`, `repo` and `pipeline`.
    pub fn from_event(event: &Event) -> ExprContext {
        match event {
            Event::Push { branch } => ExprContext {
                branch: Some(branch.clone()),
                git_ref: Some(format!("refs/heads/{branch}")),
                event: "push".to_string(),
                ..ExprContext::default()
            },
            Event::Tag { tag } => ExprContext {
                tag: Some(tag.clone()),
                git_ref: Some(format!("refs/tags/{tag}")),
                event: "tag".to_string(),
                ..ExprContext::default()
            },
            Event::PullRequest { target_branch } => ExprContext {
                base_branch: Some(target_branch.clone()),
                event: "pull_request".to_string(),
                ..ExprContext::default()
            },
        }
    }

    fn get(&self, var: Var) -> &str {
        let v = match var {
            Var::Branch => &self.branch,
            Var::Tag => &self.tag,
            Var::Ref => &self.git_ref,
            Var::Event => return &self.event,
            Var::Commit => &self.commit,
            Var::Repo => &self.repo,
            Var::Pipeline => &self.pipeline,
            Var::BaseBranch => &self.base_branch,
        };
        v.as_deref().unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Branch,
    Tag,
    Ref,
    Event,
    Commit,
    Repo,
    Pipeline,
    BaseBranch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
enum Ast {
    Str(String),
    Bool(bool),
    Var(Var),
    Not(Box<Ast>),
    /// n-ary so that long `a && b && c ...` chains do not make the tree deep.
    And(Vec<Ast>),
    Or(Vec<Ast>),
    Eq(Box<Ast>, Box<Ast>, bool),
    Call(Func, Box<Ast>, Box<Ast>),
    Matches(Box<Ast>, GlobList),
}

/// A parsed `if:` expression. Serialised as its source text.
#[derive(Clone)]
pub struct Expr {
    source: String,
    ast: Ast,
}

impl Expr {
    /// Parse `src`. The error carries the 0-based byte offset into `src` and a message.
    pub fn parse(src: &str) -> Result<Expr, (usize, String)> {
        let toks = lex(src)?;
        let mut p = ExprParser {
            toks: &toks,
            i: 0,
            depth: 0,
            end: src.len(),
        };
        let ast = p.or()?;
        if let Some((_, at)) = toks.get(p.i) {
            return Err((*at, format!("unexpected {}", describe(&toks[p.i].0))));
        }
        Ok(Expr {
            source: src.to_string(),
            ast,
        })
    }

    /// The source text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate against `ctx`; the result is the truthiness of the value.
    pub fn eval(&self, ctx: &ExprContext) -> bool {
        truthy(&eval(&self.ast, ctx))
    }
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Expr::parse(&s).map_err(|(at, msg)| {
            serde::de::Error::custom(format!("invalid expression `{s}` at offset {at}: {msg}"))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

enum Value<'a> {
    Str(std::borrow::Cow<'a, str>),
    Bool(bool),
}

fn truthy(v: &Value<'_>) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Str(s) => !s.is_empty(),
    }
}

fn text<'v>(v: &'v Value<'_>) -> &'v str {
    match v {
        Value::Str(s) => s,
        Value::Bool(true) => "true",
        Value::Bool(false) => "false",
    }
}

fn eval<'a>(ast: &'a Ast, ctx: &'a ExprContext) -> Value<'a> {
    match ast {
        Ast::Str(s) => Value::Str(s.as_str().into()),
        Ast::Bool(b) => Value::Bool(*b),
        Ast::Var(v) => Value::Str(ctx.get(*v).into()),
        Ast::Not(a) => Value::Bool(!truthy(&eval(a, ctx))),
        Ast::And(items) => Value::Bool(items.iter().all(|a| truthy(&eval(a, ctx)))),
        Ast::Or(items) => Value::Bool(items.iter().any(|a| truthy(&eval(a, ctx)))),
        Ast::Eq(a, b, want) => {
            let (a, b) = (eval(a, ctx), eval(b, ctx));
            Value::Bool((text(&a) == text(&b)) == *want)
        }
        Ast::Call(f, a, b) => {
            let (a, b) = (eval(a, ctx), eval(b, ctx));
            let (a, b) = (text(&a), text(&b));
            Value::Bool(match f {
                Func::StartsWith => a.starts_with(b),
                Func::EndsWith => a.ends_with(b),
                Func::Contains => a.contains(b),
            })
        }
        Ast::Matches(a, glob) => Value::Bool(glob.matches(text(&eval(a, ctx)))),
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing and parsing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Ident(String),
    EqEq,
    NotEq,
    AndAnd,
    OrOr,
    Bang,
    LParen,
    RParen,
    Comma,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Ident(s) => format!("`{s}`"),
        Tok::EqEq => "`==`".into(),
        Tok::NotEq => "`!=`".into(),
        Tok::AndAnd => "`&&`".into(),
        Tok::OrOr => "`||`".into(),
        Tok::Bang => "`!`".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
    }
}

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, (usize, String)> {
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, want: char| {
            chars.next_if(|&(_, n)| n == want).is_some()
        };
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' if next_is(&mut chars, '=') => Tok::EqEq,
            '=' => return Err((at, "expected `==`".into())),
            '!' if next_is(&mut chars, '=') => Tok::NotEq,
            '!' => Tok::Bang,
            '&' if next_is(&mut chars, '&') => Tok::AndAnd,
            '&' => return Err((at, "expected `&&`".into())),
            '|' if next_is(&mut chars, '|') => Tok::OrOr,
            '|' => return Err((at, "expected `||`".into())),
            '\'' | '"' => {
                let mut s = String::new();
                let mut closed = false;
                while let Some((_, ch)) = chars.next() {
                    match ch {
                        '\\' => match chars.next() {
                            Some((_, esc)) => s.push(esc),
                            None => break,
                        },
                        ch if ch == c => {
                            closed = true;
                            break;
                        }
                        ch => s.push(ch),
                    }
                }
                if !closed {
                    return Err((at, "unterminated string".into()));
                }
                Tok::Str(s)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = at + c.len_utf8();
                while let Some((i, _)) =
                    chars.next_if(|&(_, n)| n.is_ascii_alphanumeric() || n == '_')
                {
                    end = i + 1;
                }
                Tok::Ident(src[at..end].to_string())
            }
            c => return Err((at, format!("unexpected character `{c}`"))),
        };
        out.push((tok, at));
    }
    Ok(out)
}

struct ExprParser<'t> {
    toks: &'t [(Tok, usize)],
    i: usize,
    depth: usize,
    /// Byte length of the source, used as the position of "unexpected end" errors.
    end: usize,
}

type PResult<T> = Result<T, (usize, String)>;

impl ExprParser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i).map(|(t, _)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.i).map_or(self.end, |(_, a)| *a)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, t: &Tok) -> PResult<()> {
        if self.eat(t) {
            return Ok(());
        }
        Err((
            self.at(),
            format!("expected {}, found {}", describe(t), self.found()),
        ))
    }

    fn found(&self) -> String {
        self.peek()
            .map_or_else(|| "end of expression".to_string(), describe)
    }

    fn nest(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err((
                self.at(),
                format!("expression nested too deeply (more than {MAX_NESTING} levels)"),
            ));
        }
        Ok(())
    }

    fn or(&mut self) -> PResult<Ast> {
        let mut items = vec![self.and()?];
        while self.eat(&Tok::OrOr) {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Ast::Or(items)
        })
    }

    fn and(&mut self) -> PResult<Ast> {
        let mut items = vec![self.unary()?];
        while self.eat(&Tok::AndAnd) {
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Ast::And(items)
        })
    }

    fn unary(&mut self) -> PResult<Ast> {
        if self.eat(&Tok::Bang) {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Ast::Not(Box::new(inner)));
        }
        let lhs = self.primary()?;
        let want = match self.peek() {
            Some(Tok::EqEq) => true,
            Some(Tok::NotEq) => false,
            _ => return Ok(lhs),
        };
        self.i += 1;
        let rhs = self.primary()?;
        Ok(Ast::Eq(Box::new(lhs), Box::new(rhs), want))
    }

    fn primary(&mut self) -> PResult<Ast> {
        let at = self.at();
        let Some(tok) = self.peek().cloned() else {
            return Err((at, "unexpected end of expression".into()));
        };
        self.i += 1;
        match tok {
            Tok::Str(s) => Ok(Ast::Str(s)),
            Tok::LParen => {
                self.nest()?;
                let inner = self.or()?;
                self.expect(&Tok::RParen)?;
                self.depth -= 1;
                Ok(inner)
            }
            Tok::Ident(name) => self.ident(&name, at),
            other => Err((at, format!("unexpected {}", describe(&other)))),
        }
    }

    fn ident(&mut self, name: &str, at: usize) -> PResult<Ast> {
        let var = match name {
            "true" => return Ok(Ast::Bool(true)),
            "false" => return Ok(Ast::Bool(false)),
            "branch" => Some(Var::Branch),
            "tag" => Some(Var::Tag),
            "ref" => Some(Var::Ref),
            "event" => Some(Var::Event),
            "commit" => Some(Var::Commit),
            "repo" => Some(Var::Repo),
            "pipeline" => Some(Var::Pipeline),
            "base_branch" => Some(Var::BaseBranch),
            _ => None,
        };
        let is_call = self.peek() == Some(&Tok::LParen);
        if let Some(v) = var {
            return Ok(Ast::Var(v));
        }
        if !is_call {
            let hint =
                crate::suggest::did_you_mean(name, IDENTIFIERS.iter().chain(FUNCTIONS).copied());
            return Err((at, format!("unknown identifier `{name}`{hint}")));
        }
        let func = match name {
            "startsWith" => Some(Func::StartsWith),
            "endsWith" => Some(Func::EndsWith),
            "contains" => Some(Func::Contains),
            "matches" => None,
            _ => {
                let hint = crate::suggest::did_you_mean(name, FUNCTIONS.iter().copied());
                return Err((at, format!("unknown function `{name}`{hint}")));
            }
        };
        self.i += 1; // `(`
        self.nest()?;
        let a = self.or()?;
        self.expect(&Tok::Comma)?;
        let ast = match func {
            Some(f) => {
                let b = self.or()?;
                Ast::Call(f, Box::new(a), Box::new(b))
            }
            None => {
                let glob_at = self.at();
                let Some(Tok::Str(pattern)) = self.peek().cloned() else {
                    return Err((
                        glob_at,
                        format!("`matches` expects a quoted glob, found {}", self.found()),
                    ));
                };
                self.i += 1;
                let glob =
                    GlobList::new([pattern.as_str()]).map_err(|e| (glob_at, e.to_string()))?;
                Ast::Matches(Box::new(a), glob)
            }
        };
        self.expect(&Tok::RParen)?;
        self.depth -= 1;
        Ok(ast)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ExprContext {
        ExprContext {
            branch: Some("main".into()),
            git_ref: Some("refs/heads/main".into()),
            event: "push".into(),
            commit: Some("abc123".into()),
            repo: Some("acme/app".into()),
            pipeline: Some("ci".into()),
            ..ExprContext::default()
        }
    }

    #[test]
    fn eval_table() {
        let table: &[(&str, bool)] = &[
            ("branch == 'main'", true),
            ("branch == \"main\"", true),
            ("branch != 'main'", false),
            ("tag == ''", true),
            ("tag", false),
            ("branch", true),
            ("true", true),
            ("false", false),
            ("!false", true),
            ("!!true", true),
            ("event == 'push' && branch == 'main'", true),
            ("event == 'tag' || branch == 'dev'", false),
            (
                "event == 'tag' || branch == 'dev' || repo == 'acme/app'",
                true,
            ),
            ("!(branch == 'main')", false),
            ("startsWith(ref, 'refs/heads/')", true),
            ("endsWith(repo, '/app')", true),
            ("contains(commit, 'c12')", true),
            ("contains(commit, 'zz')", false),
            ("matches(branch, 'ma*')", true),
            ("matches(ref, 'refs/*')", false),
            ("matches(ref, 'refs/**')", true),
            ("base_branch == ''", true),
            ("pipeline == 'ci' && (tag != '' || branch == 'main')", true),
            ("true == 'true'", true),
            ("'it\\'s' == \"it's\"", true),
            ("  branch=='main'  ", true),
        ];
        let c = ctx();
        for (src, want) in table {
            let e = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e:?}"));
            assert_eq!(e.eval(&c), *want, "{src}");
        }
    }

    #[test]
    fn parse_errors() {
        let table: &[(&str, usize, &str)] = &[
            (
                "brnch == 'main'",
                0,
                "unknown identifier `brnch`; did you mean `branch`?",
            ),
            ("branch == 'main' && foo", 20, "unknown identifier `foo`"),
            ("branch = 'main'", 7, "expected `==`"),
            ("branch == 'main", 10, "unterminated string"),
            (
                "(branch == 'x'",
                14,
                "expected `)`, found end of expression",
            ),
            ("branch ==", 9, "unexpected end of expression"),
            ("branch 'x'", 7, "unexpected string 'x'"),
            (
                "startWith(ref, 'x')",
                0,
                "unknown function `startWith`; did you mean `startsWith`?",
            ),
            (
                "matches(branch, ref)",
                16,
                "`matches` expects a quoted glob, found `ref`",
            ),
            (
                "matches(branch, '[a')",
                16,
                "invalid glob `[a`: unclosed `[`; missing `]`",
            ),
            ("branch & tag", 7, "expected `&&`"),
            ("branch == 'a' #", 14, "unexpected character `#`"),
            ("", 0, "unexpected end of expression"),
        ];
        for (src, at, msg) in table {
            assert_eq!(
                Expr::parse(src).unwrap_err(),
                (*at, msg.to_string()),
                "{src}"
            );
        }
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(Expr::parse(&deep)
            .unwrap_err()
            .1
            .contains("nested too deeply"));
        let long = vec!["true"; 10_000].join(" && ");
        assert!(Expr::parse(&long).unwrap().eval(&ctx()));
    }

    #[test]
    fn serde_roundtrip() {
        let e = Expr::parse("branch == 'main'").unwrap();
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(j, "\"branch == 'main'\"");
        let back: Expr = serde_json::from_str(&j).unwrap();
        assert_eq!(back, e);
        assert!(serde_json::from_str::<Expr>("\"nope ==\"").is_err());
    }

    #[test]
    fn from_event() {
        let c = ExprContext::from_event(&Event::Tag { tag: "v1".into() });
        assert!(Expr::parse(
            "event == 'tag' && tag == 'v1' && ref == 'refs/tags/v1' && branch == ''"
        )
        .unwrap()
        .eval(&c));
    }
}
