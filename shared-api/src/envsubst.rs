//! A faithful port of the template expansion done by `github.com/a8m/envsubst/parse` v1.4.2,
//! which upstream KMM calls as `parse.New("mapping", envvars, &parse.Restrictions{})` followed by
//! `Parse(template)` (no restrictions, quick mode).
//!
//! The port keeps upstream's structure on purpose: a lexer state machine producing tokens, a
//! one-token-lookahead parser building nodes, then evaluation of the nodes. Upstream's grammar is
//! much looser than a shell's, and matching it quirk for quirk is easiest by doing the same steps.
//! What it accepts, as verified against the Go package:
//!
//! | Template | Result |
//! | --- | --- |
//! | `$NAME`, `${NAME}` | the value of `NAME`; `NAME` is a run of Unicode letters, decimal digits and `_` (so `$1` is the variable `1`) |
//! | `$$` | a literal `$` (so `$$NAME` is `$NAME` and `$${NAME}` is `${NAME}`) |
//! | `$` followed by anything else, or at the end | a literal `$`, as are `$_` and `${_}` |
//! | `${NAME-word}`, `${NAME=word}` | `word` when `NAME` is undefined, else the value of `NAME` |
//! | `${NAME:-word}`, `${NAME:=word}` | `word` when `NAME` is undefined or empty, else the value |
//! | `${NAME+word}`, `${NAME:+word}` | `word` when `NAME` is defined (even if empty), else `""` |
//!
//! `word` is expanded only when it is a single `$OTHER`; anything else is literal text up to the
//! closing `}` (`${NOPE-a$B}` gives `a$B`), and a `$OTHER` followed by more keeps only what
//! follows the name (`${NOPE-$B a}` gives ` a`, `${NOPE-$B$A}` gives `$A`). The `=` forms assign
//! nothing. An empty `word` (`${NAME-}`, `${NAME:+}`) makes the operator a no-op: the result is
//! the value of `NAME`.
//!
//! Nothing else from the shell exists upstream, and none of it is an error: `${#A}`, `${!A}` and
//! `${$A}` look up a variable literally named `#A`, `!A` or `$A`; `${A^}`, `${A,,}`, `${A:1:2}`,
//! `${A: -1}`, `${A#p}`, `${A%%p}`, `${A/p/r}`, `${A?msg}` and the like ignore everything after
//! the name and give the plain value of `A` (`""` when undefined, no error). `${A:-${B}}` is not
//! nested either: it gives the value of `A` (or, when `A` is undefined or empty, of a variable
//! named `{B`) followed by a literal `}`.
//!
//! The only failure upstream reports is "closing brace expected": a `${` that runs into a line
//! break (`\n` or `\r`) or the end of the input, including `${A:}` (the `:` swallows the `}`).
//! `${_}` is kept literally but leaves the lexer believing a substitution is open, so a later
//! `$NAME` at the very end fails too (`${_}$A`). A few inputs (a default holding `$_` and no later
//! `}`, such as `${A-$_}`) make the Go parser spin forever; we return
//! [`EnvsubstError::Unterminated`] instead.
//!
//! Like Go, the lexer works on Unicode scalar values and reports byte offsets.

use std::sync::LazyLock;

use regex::Regex;
use thiserror::Error;

/// Result of expanding one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The expanded text.
    pub text: String,
    /// Names referenced but not defined (each once, in order of first use). A name is listed when
    /// its undefined value was substituted as `""`, which is exactly when upstream's `NoUnset`
    /// restriction would have failed; an undefined variable that is only tested (`${NOPE-x}`,
    /// `${NOPE:-x}`, `${NOPE+x}`) is not listed.
    pub unset: Vec<String>,
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvsubstError {
    /// A `${` substitution reached a line break or the end of the input before its `}`
    /// (upstream's only error without restrictions, with the same message).
    #[error("closing brace expected at byte {offset}")]
    ClosingBraceExpected {
        /// Byte offset of the line break, or the length of the template at its end.
        offset: usize,
    },
    /// The default text of a substitution ran to the end of the input. Upstream never returns on
    /// such inputs (its parser loops forever waiting for the closing brace); we fail instead.
    #[error("closing brace expected for the substitution starting at byte {offset}")]
    Unterminated {
        /// Byte offset of the `${` that opened the substitution.
        offset: usize,
    },
}

/// Expands `template` as a8m/envsubst's parser does with no restrictions; `lookup` gives the value
/// of a defined variable, `None` when it is not defined (an undefined variable expands to `""` and
/// is recorded in [`Expanded::unset`], as upstream; note envsubst distinguishes unset from empty
/// in forms like `${VAR-default}` vs `${VAR:-default}`).
///
/// `lookup` may be called more than once for the same name, and, as upstream, with names that are
/// not identifiers (`#A` for `${#A}`, `""` for `${A-$}`); it should return `None` for those.
pub fn expand(template: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Expanded, EnvsubstError> {
    let tokens = Lexer::new(template).run();
    let nodes = Parser {
        tokens: &tokens,
        next: 0,
    }
    .parse()?;
    let mut eval = Eval {
        lookup,
        unset: Vec::new(),
    };
    let mut text = String::new();
    for node in &nodes {
        text.push_str(&eval.node(node));
    }
    Ok(Expanded {
        text,
        unset: eval.unset,
    })
}

/// Token kinds, declared in upstream's order: evaluation compares them (`>= Plus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Error,
    Eof,
    Text,
    Plus,
    Dash,
    Equals,
    ColonEquals,
    ColonDash,
    ColonPlus,
    Variable,
    LeftDelim,
    RightDelim,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token<'a> {
    kind: Kind,
    /// Byte offset of the token; for [`Kind::Error`], where the closing brace was expected.
    pos: usize,
    /// The input covered by the token (empty for [`Kind::Error`]).
    val: &'a str,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Text,
    Variable,
    SubstitutionOperator,
    Substitution,
}

struct Lexer<'a> {
    input: &'a str,
    pos: usize,
    start: usize,
    /// Width of the last char read, zero at the end of the input.
    width: usize,
    /// Start of the most recently emitted token.
    last_pos: usize,
    /// Number of `${` seen minus `}` closing them. Upstream never resets it, which matters:
    /// after `${_}` it stays at one.
    depth: isize,
    tokens: Vec<Token<'a>>,
}

impl<'a> Lexer<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            pos: 0,
            start: 0,
            width: 0,
            last_pos: 0,
            depth: 0,
            tokens: Vec::new(),
        }
    }

    fn run(mut self) -> Vec<Token<'a>> {
        let mut state = Some(State::Text);
        while let Some(s) = state {
            state = match s {
                State::Text => self.text(),
                State::Variable => self.variable(),
                State::SubstitutionOperator => self.substitution_operator(),
                State::Substitution => self.substitution(),
            };
        }
        self.tokens
    }

    fn next(&mut self) -> Option<char> {
        match self.input[self.pos..].chars().next() {
            Some(c) => {
                self.width = c.len_utf8();
                self.pos += self.width;
                Some(c)
            }
            None => {
                self.width = 0;
                None
            }
        }
    }

    fn peek(&mut self) -> Option<char> {
        let c = self.next();
        self.backup();
        c
    }

    fn backup(&mut self) {
        self.pos -= self.width;
    }

    fn emit(&mut self, kind: Kind) {
        self.tokens.push(Token {
            kind,
            pos: self.start,
            val: &self.input[self.start..self.pos],
        });
        self.last_pos = self.start;
        self.start = self.pos;
    }

    fn error(&mut self) -> Option<State> {
        self.tokens.push(Token {
            kind: Kind::Error,
            pos: self.pos - self.width,
            val: "",
        });
        None
    }

    /// Whether the most recent token is a `${`, i.e. we are right after one (give or take
    /// characters the operator state swallowed without emitting them).
    fn after_left_delim(&self) -> bool {
        self.input[self.last_pos..].starts_with("${")
    }

    /// Plain text up to a `$` that starts something.
    fn text(&mut self) -> Option<State> {
        while let Some(c) = self.next() {
            if c != '$' {
                continue;
            }
            self.pos -= 1;
            if self.pos > self.start {
                self.emit(Kind::Text);
            }
            self.pos += 1;
            match self.peek() {
                Some('$') => {
                    // `$$`: drop the first `$`, keep the second as text.
                    self.start = self.pos;
                    self.next();
                    self.emit(Kind::Text);
                }
                Some('{') => {
                    self.next();
                    self.depth += 1;
                    self.emit(Kind::LeftDelim);
                    return Some(State::SubstitutionOperator);
                }
                Some(c) if is_name_char(c) => return Some(State::Variable),
                // A lone `$` stays in the pending text.
                _ => {}
            }
        }
        if self.pos > self.start {
            self.emit(Kind::Text);
        }
        self.emit(Kind::Eof);
        None
    }

    /// A name; the pending input (a `$`, or whatever the substitution states left) is part of it.
    fn variable(&mut self) -> Option<State> {
        loop {
            match self.next() {
                Some(c) if is_name_char(c) => {}
                _ => {
                    self.backup();
                    break;
                }
            }
        }
        let v = &self.input[self.start..self.pos];
        if v == "_" || v == "$_" {
            // Not a variable: it stays pending and becomes text, even inside a substitution.
            return Some(State::Text);
        }
        self.emit(Kind::Variable);
        if self.depth > 0 {
            Some(State::SubstitutionOperator)
        } else {
            Some(State::Text)
        }
    }

    /// Right after `${` or after a name inside a substitution: an operator, if any.
    fn substitution_operator(&mut self) -> Option<State> {
        match self.next() {
            Some('}') => {
                self.depth -= 1;
                self.emit(Kind::RightDelim);
                return Some(State::Text);
            }
            None | Some('\r' | '\n') => return self.error(),
            Some(c) if is_name_char(c) && self.after_left_delim() => {
                return Some(State::Variable);
            }
            Some('+') => self.emit(Kind::Plus),
            Some('-') => self.emit(Kind::Dash),
            Some('=') => self.emit(Kind::Equals),
            Some(':') => match self.next() {
                Some('-') => self.emit(Kind::ColonDash),
                Some('=') => self.emit(Kind::ColonEquals),
                Some('+') => self.emit(Kind::ColonPlus),
                // `:` and the char after it (even a line break) stay pending.
                _ => {}
            },
            // Any other char stays pending.
            _ => {}
        }
        Some(State::Substitution)
    }

    /// The rest of a substitution, one char at a time.
    fn substitution(&mut self) -> Option<State> {
        match self.next() {
            Some('}') => {
                self.depth -= 1;
                self.emit(Kind::RightDelim);
                Some(State::Text)
            }
            None | Some('\r' | '\n') => self.error(),
            Some(c) if is_name_char(c) && self.after_left_delim() => Some(State::Variable),
            Some('$') => Some(State::Variable),
            Some(_) => {
                self.emit(Kind::Text);
                Some(State::Substitution)
            }
        }
    }
}

/// Go's `unicode.IsLetter(c) || unicode.IsDigit(c) || c == '_'`: general category L or Nd
/// (which is not what `char::is_alphanumeric` tests).
fn is_name_char(c: char) -> bool {
    static LETTER_OR_DIGIT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^[\p{L}\p{Nd}]$").expect("a valid regular expression"));
    if c.is_ascii() {
        return c == '_' || c.is_ascii_alphanumeric();
    }
    let mut buf = [0; 4];
    LETTER_OR_DIGIT.is_match(c.encode_utf8(&mut buf))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Leaf<'a> {
    Text(String),
    Variable(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node<'a> {
    Leaf(Leaf<'a>),
    Substitution {
        /// The last operator token seen in the substitution, if any.
        op: Option<Kind>,
        variable: &'a str,
        default: Option<Leaf<'a>>,
    },
}

struct Parser<'t, 'a> {
    tokens: &'t [Token<'a>],
    next: usize,
}

impl<'a> Parser<'_, 'a> {
    /// The next token; `None` once the lexer has stopped (upstream then reads zero tokens from a
    /// closed channel).
    fn next(&mut self) -> Option<Token<'a>> {
        let t = self.tokens.get(self.next).copied();
        self.next += 1;
        t
    }

    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.next).copied()
    }

    fn parse(mut self) -> Result<Vec<Node<'a>>, EnvsubstError> {
        let mut nodes = Vec::new();
        loop {
            // Upstream would loop forever on a closed stream; the lexer always ends with an
            // end-of-input or error token, which stop us first.
            let Some(t) = self.next() else {
                return Err(EnvsubstError::Unterminated { offset: 0 });
            };
            match t.kind {
                Kind::Eof => break,
                Kind::Error => return Err(EnvsubstError::ClosingBraceExpected { offset: t.pos }),
                Kind::Variable => nodes.push(Node::Leaf(Leaf::Variable(strip_dollar(t.val)))),
                Kind::LeftDelim if self.peek().is_some_and(|p| p.kind == Kind::Variable) => {
                    nodes.push(self.action(t.pos)?);
                }
                _ => nodes.push(Node::Leaf(Leaf::Text(t.val.to_owned()))),
            }
        }
        Ok(nodes)
    }

    /// The inside of `${`, starting at its variable token.
    fn action(&mut self, open: usize) -> Result<Node<'a>, EnvsubstError> {
        // As upstream, the first name keeps whatever prefix the lexer gave it (`${$A}` is `$A`).
        let variable = self.next().map_or("", |t| t.val);
        let mut op = None;
        let mut default = None;
        loop {
            let Some(t) = self.next() else {
                return Err(EnvsubstError::Unterminated { offset: open });
            };
            match t.kind {
                Kind::RightDelim => break,
                Kind::Error => return Err(EnvsubstError::ClosingBraceExpected { offset: t.pos }),
                Kind::Variable => default = Some(Leaf::Variable(strip_dollar(t.val))),
                Kind::Text => {
                    // Literal text swallows every following token up to the closing brace.
                    let mut text = t.val.to_owned();
                    while let Some(p) = self.peek()
                        && !matches!(p.kind, Kind::RightDelim | Kind::Error | Kind::Eof)
                    {
                        text.push_str(p.val);
                        self.next += 1;
                    }
                    default = Some(Leaf::Text(text));
                }
                // Upstream records the end of input as the operator and then spins forever.
                Kind::Eof => return Err(EnvsubstError::Unterminated { offset: open }),
                kind => op = Some(kind),
            }
        }
        Ok(Node::Substitution { op, variable, default })
    }
}

fn strip_dollar(s: &str) -> &str {
    s.strip_prefix('$').unwrap_or(s)
}

struct Eval<F> {
    lookup: F,
    unset: Vec<String>,
}

impl<F: Fn(&str) -> Option<String>> Eval<F> {
    /// The value of a variable, `""` when undefined; `record` says whether an undefined one is
    /// reported (upstream ignores the `NoUnset` check only when probing for `:-` and `:=`).
    fn value(&mut self, name: &str, record: bool) -> String {
        match (self.lookup)(name) {
            Some(v) => v,
            None => {
                if record && !self.unset.iter().any(|u| u == name) {
                    self.unset.push(name.to_owned());
                }
                String::new()
            }
        }
    }

    fn is_set(&self, name: &str) -> bool {
        (self.lookup)(name).is_some()
    }

    fn leaf(&mut self, leaf: &Leaf<'_>) -> String {
        match leaf {
            Leaf::Text(t) => t.clone(),
            Leaf::Variable(name) => self.value(name, true),
        }
    }

    fn node(&mut self, node: &Node<'_>) -> String {
        match node {
            Node::Leaf(leaf) => self.leaf(leaf),
            Node::Substitution { op, variable, default } => {
                if let (Some(op), Some(default)) = (op, default)
                    && *op >= Kind::Plus
                {
                    match op {
                        Kind::ColonDash | Kind::ColonEquals => {
                            let v = self.value(variable, false);
                            return if v.is_empty() { self.leaf(default) } else { v };
                        }
                        Kind::Plus | Kind::ColonPlus => {
                            return if self.is_set(variable) {
                                self.leaf(default)
                            } else {
                                String::new()
                            };
                        }
                        _ => {
                            if !self.is_set(variable) {
                                return self.leaf(default);
                            }
                        }
                    }
                }
                self.value(variable, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `name` up in `NAME=value` pairs the way upstream's `Env.Lookup` does: the first pair
    /// starting with `name=` wins.
    fn env(pairs: &[&str]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<String> = pairs.iter().map(|p| (*p).to_owned()).collect();
        move |name| {
            pairs
                .iter()
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_owned)
        }
    }

    /// Upstream's `FakeEnv`.
    const FAKE_ENV: &[&str] = &["BAR=bar", "FOO=foo", "EMPTY=", "ALSO_EMPTY=", "A=AAA"];

    /// Cases of a8m/envsubst's `parse/parse_test.go` (v1.4.2), same names, inputs and expected
    /// outputs. The two flags are upstream's `hasErr` for the relaxed mode (no restrictions) and
    /// for `NoUnset`; the latter is what a non-empty `unset` stands for here. The `NoEmpty`
    /// column has no counterpart: we do not report empty values.
    const PARSE_TESTS: &[(&str, &str, &str, bool, bool)] = &[
        ("empty", "", "", false, false),
        ("env only", "$BAR", "bar", false, false),
        ("with text", "$BAR baz", "bar baz", false, false),
        ("concatenated", "$BAR$FOO", "barfoo", false, false),
        ("2 env var", "$BAR - $FOO", "bar - foo", false, false),
        ("invalid var", "$_ bar", "$_ bar", false, false),
        ("invalid subst var", "${_} bar", "${_} bar", false, false),
        ("value of $var", "${BAR}baz", "barbaz", false, false),
        ("$var not set -", "${NOTSET-$BAR}", "bar", false, false),
        ("$var not set =", "${NOTSET=$BAR}", "bar", false, false),
        ("$var set but empty -", "${EMPTY-$BAR}", "", false, false),
        ("$var set but empty =", "${EMPTY=$BAR}", "", false, false),
        ("$var not set or empty :-", "${EMPTY:-$BAR}", "bar", false, false),
        ("$var not set or empty :=", "${EMPTY:=$BAR}", "bar", false, false),
        (
            "if $var set evaluate expression as $other +",
            "${EMPTY+hello}",
            "hello",
            false,
            false,
        ),
        (
            "if $var set evaluate expression as $other :+",
            "${EMPTY:+hello}",
            "hello",
            false,
            false,
        ),
        (
            "if $var not set, use empty string +",
            "${NOTSET+hello}",
            "",
            false,
            false,
        ),
        (
            "if $var not set, use empty string :+",
            "${NOTSET:+hello}",
            "",
            false,
            false,
        ),
        (
            "multi line string",
            "hello $BAR\nhello ${EMPTY:=$FOO}",
            "hello bar\nhello foo",
            false,
            false,
        ),
        (
            "issue #1",
            "${hello:=wo_rld} ${foo:=bar_baz}",
            "wo_rld bar_baz",
            false,
            false,
        ),
        (
            "issue #2",
            "name: ${NAME:=foo_qux}, key: ${EMPTY:=baz_bar}",
            "name: foo_qux, key: baz_bar",
            false,
            false,
        ),
        (
            "gh-issue-8",
            "prop=${HOME_URL-http://localhost:8080}",
            "prop=http://localhost:8080",
            false,
            false,
        ),
        ("gh-issue-41-1", "${NOTSET--1}", "-1", false, false),
        ("gh-issue-41-2", "${NOTSET:--1}", "-1", false, false),
        ("gh-issue-41-3", "${NOTSET=-1}", "-1", false, false),
        ("gh-issue-41-4", "${NOTSET:==1}", "=1", false, false),
        ("gh-issue-43-1", "${A}", "AAA", false, false),
        ("closing brace expected", "hello ${", "", true, true),
        ("$var not set", "${NOTSET}", "", false, true),
        ("$var set to empty", "${EMPTY}", "", false, false),
        ("gh-issue-9", "$NOTSET", "", false, true),
        ("gh-issue-9", "$EMPTY", "", false, false),
        ("$var and $DEFAULT not set -", "${NOTSET-$ALSO_NOTSET}", "", false, true),
        (
            "$var and $DEFAULT not set :-",
            "${NOTSET:-$ALSO_NOTSET}",
            "",
            false,
            true,
        ),
        ("$var and $DEFAULT not set =", "${NOTSET=$ALSO_NOTSET}", "", false, true),
        (
            "$var and $DEFAULT not set :=",
            "${NOTSET:=$ALSO_NOTSET}",
            "",
            false,
            true,
        ),
        ("$var and $OTHER not set +", "${NOTSET+$ALSO_NOTSET}", "", false, false),
        (
            "$var and $OTHER not set :+",
            "${NOTSET:+$ALSO_NOTSET}",
            "",
            false,
            false,
        ),
        (
            "$var empty and $DEFAULT not set -",
            "${EMPTY-$NOTSET}",
            "",
            false,
            false,
        ),
        (
            "$var empty and $DEFAULT not set :-",
            "${EMPTY:-$NOTSET}",
            "",
            false,
            true,
        ),
        (
            "$var empty and $DEFAULT not set =",
            "${EMPTY=$NOTSET}",
            "",
            false,
            false,
        ),
        (
            "$var empty and $DEFAULT not set :=",
            "${EMPTY:=$NOTSET}",
            "",
            false,
            true,
        ),
        ("$var empty and $OTHER not set +", "${EMPTY+$NOTSET}", "", false, true),
        ("$var empty and $OTHER not set :+", "${EMPTY:+$NOTSET}", "", false, true),
        (
            "$var not set and $DEFAULT empty -",
            "${NOTSET-$EMPTY}",
            "",
            false,
            false,
        ),
        (
            "$var not set and $DEFAULT empty :-",
            "${NOTSET:-$EMPTY}",
            "",
            false,
            false,
        ),
        (
            "$var not set and $DEFAULT empty =",
            "${NOTSET=$EMPTY}",
            "",
            false,
            false,
        ),
        (
            "$var not set and $DEFAULT empty :=",
            "${NOTSET:=$EMPTY}",
            "",
            false,
            false,
        ),
        ("$var not set and $OTHER empty +", "${NOTSET+$EMPTY}", "", false, false),
        (
            "$var not set and $OTHER empty :+",
            "${NOTSET:+$EMPTY}",
            "",
            false,
            false,
        ),
        ("$var and $DEFAULT empty -", "${EMPTY-$ALSO_EMPTY}", "", false, false),
        ("$var and $DEFAULT empty :-", "${EMPTY:-$ALSO_EMPTY}", "", false, false),
        ("$var and $DEFAULT empty =", "${EMPTY=$ALSO_EMPTY}", "", false, false),
        ("$var and $DEFAULT empty :=", "${EMPTY:=$ALSO_EMPTY}", "", false, false),
        ("$var and $OTHER empty +", "${EMPTY+$ALSO_EMPTY}", "", false, false),
        ("$var and $OTHER empty :+", "${EMPTY:+$ALSO_EMPTY}", "", false, false),
        ("escape $$var", "FOO $$BAR BAZ", "FOO $BAR BAZ", false, false),
        ("escape $${subst}", "FOO $${BAR} BAZ", "FOO ${BAR} BAZ", false, false),
        ("escape $$$var", "$$$BAR", "$bar", false, false),
        ("escape $$${subst}", "$$${BAZ:-baz}", "$baz", false, false),
    ];

    #[test]
    fn upstream_parse_tests() {
        for &(name, input, expected, err_relaxed, err_no_unset) in PARSE_TESTS {
            match expand(input, env(FAKE_ENV)) {
                Ok(got) => {
                    assert!(!err_relaxed, "{name}: {input:?} should fail, got {got:?}");
                    assert_eq!(got.text, expected, "{name}: {input:?}");
                    assert_eq!(
                        !got.unset.is_empty(),
                        err_no_unset,
                        "{name}: {input:?} unset {:?}",
                        got.unset
                    );
                }
                Err(err) => {
                    assert!(err_relaxed, "{name}: {input:?} failed: {err}");
                    assert_eq!(expected, "", "{name}");
                }
            }
        }
    }

    /// Upstream's `negativeParseTests` (strict mode, all errors): the undefined variable is the
    /// one `unset` reports; the empty one is not our concern.
    #[test]
    fn upstream_negative_parse_test() {
        let got = expand("${NOTSET} and $EMPTY", env(FAKE_ENV)).unwrap();
        assert_eq!(got.text, " and ");
        assert_eq!(got.unset, ["NOTSET"]);
    }

    /// Cases of a8m/envsubst's `parse/lex_test.go` (v1.4.2), except the `no digit` ones, which
    /// need the `NoDigit` restriction. Positions are not compared, as upstream; for the error
    /// token only the kind is.
    #[test]
    fn upstream_lex_tests() {
        use Kind::*;
        let l = (LeftDelim, "${");
        let r = (RightDelim, "}");
        let eof = (Eof, "");
        /// Name, input, expected kinds and texts of the tokens.
        type Case = (&'static str, &'static str, Vec<(Kind, &'static str)>);
        let cases: &[Case] = &[
            ("empty", "", vec![eof]),
            ("text", "hello", vec![(Text, "hello"), eof]),
            ("var", "$hello", vec![(Variable, "$hello"), eof]),
            ("single char var", "${A}", vec![l, (Variable, "A"), r, eof]),
            (
                "2 vars",
                "$hello $world",
                vec![(Variable, "$hello"), (Text, " "), (Variable, "$world"), eof],
            ),
            (
                "substitution-1",
                "bar ${BAR}",
                vec![(Text, "bar "), l, (Variable, "BAR"), r, eof],
            ),
            (
                "substitution-2",
                "bar ${BAR:=baz}",
                vec![
                    (Text, "bar "),
                    l,
                    (Variable, "BAR"),
                    (ColonEquals, ":="),
                    (Text, "b"),
                    (Text, "a"),
                    (Text, "z"),
                    r,
                    eof,
                ],
            ),
            (
                "substitution-3",
                "bar ${BAR:=$BAZ}",
                vec![
                    (Text, "bar "),
                    l,
                    (Variable, "BAR"),
                    (ColonEquals, ":="),
                    (Variable, "$BAZ"),
                    r,
                    eof,
                ],
            ),
            (
                "substitution-4",
                "bar ${BAR:=$BAZ} foo",
                vec![
                    (Text, "bar "),
                    l,
                    (Variable, "BAR"),
                    (ColonEquals, ":="),
                    (Variable, "$BAZ"),
                    r,
                    (Text, " foo"),
                    eof,
                ],
            ),
            (
                "substitution-leading-dash-1",
                "bar ${BAR:--1} foo",
                vec![
                    (Text, "bar "),
                    l,
                    (Variable, "BAR"),
                    (ColonDash, ":-"),
                    (Text, "-"),
                    (Text, "1"),
                    r,
                    (Text, " foo"),
                    eof,
                ],
            ),
            (
                "substitution-leading-dash-2",
                "bar ${BAR:=-1} foo",
                vec![
                    (Text, "bar "),
                    l,
                    (Variable, "BAR"),
                    (ColonEquals, ":="),
                    (Text, "-"),
                    (Text, "1"),
                    r,
                    (Text, " foo"),
                    eof,
                ],
            ),
            (
                "closing brace error",
                "hello-${world",
                vec![(Text, "hello-"), l, (Variable, "world"), (Error, "")],
            ),
            (
                "escaping $$var",
                "hello $$HOME",
                vec![(Text, "hello "), (Text, "$"), (Text, "HOME"), eof],
            ),
            (
                "escaping $${subst}",
                "hello $${HOME}",
                vec![(Text, "hello "), (Text, "$"), (Text, "{HOME}"), eof],
            ),
        ];
        for (name, input, want) in cases {
            let got: Vec<(Kind, &str)> = Lexer::new(input).run().iter().map(|t| (t.kind, t.val)).collect();
            assert_eq!(&got, want, "{name}: {input:?}");
        }
    }

    #[test]
    fn upstream_lex_positions_of_escapes() {
        let pos: Vec<usize> = Lexer::new("hello $${HOME}").run().iter().map(|t| t.pos).collect();
        assert_eq!(pos, [0, 7, 8, 14]);
    }

    /// The variables of the Go harness used to produce [`COMPARED_WITH_GO`].
    const GO_ENV: &[&str] = &[
        "BAR=bar",
        "FOO=foo",
        "EMPTY=",
        "ALSO_EMPTY=",
        "A=AAA",
        "B=bbb",
        "KERNEL_FULL_VERSION=5.14.0-70.13.1.el9_0.x86_64",
        "KERNEL_X=5",
        "KERNEL_XYZ=5.14.0",
        "MOD_NAME=kmm-ci",
        "1=one",
        "É=eacute",
        "$A=dollarA",
        "#A=hashA",
        "{B=braceB",
        "_A=underA",
    ];

    enum Want {
        /// Expanded text and unset names.
        Ok(&'static str, &'static [&'static str]),
        /// "closing brace expected".
        Brace,
        /// Upstream never returns.
        Hang,
    }
    use Want::{Brace, Hang};

    /// Outputs of `github.com/a8m/envsubst/parse` v1.4.2 (`Restrictions{}`, quick mode) on
    /// [`GO_ENV`], recorded with a small Go program; the unset names are those its `NoUnset`
    /// restriction reports in all-errors mode.
    const COMPARED_WITH_GO: &[(&str, Want)] = &[
        ("$$", Want::Ok("$", &[])),
        ("$", Want::Ok("$", &[])),
        ("${", Brace),
        ("${A", Brace),
        ("${A:-${B}}", Want::Ok("AAA}", &[])),
        ("$1", Want::Ok("one", &[])),
        ("${1}", Want::Ok("one", &[])),
        ("a$", Want::Ok("a$", &[])),
        ("${A:1:2}", Want::Ok("AAA", &[])),
        ("${A: -1}", Want::Ok("AAA", &[])),
        ("${A/x/y}", Want::Ok("AAA", &[])),
        ("${A//x/y}", Want::Ok("AAA", &[])),
        ("${A/#x/y}", Want::Ok("AAA", &[])),
        ("${A/%x/y}", Want::Ok("AAA", &[])),
        ("${#A}", Want::Ok("hashA", &[])),
        ("${#NOPE}", Want::Ok("", &["#NOPE"])),
        ("${A^}", Want::Ok("AAA", &[])),
        ("${A^^}", Want::Ok("AAA", &[])),
        ("${A,}", Want::Ok("AAA", &[])),
        ("${A,,}", Want::Ok("AAA", &[])),
        ("${A:1}", Want::Ok("AAA", &[])),
        ("${A#x}", Want::Ok("AAA", &[])),
        ("${A##x}", Want::Ok("AAA", &[])),
        ("${A%x}", Want::Ok("AAA", &[])),
        ("${A%%x}", Want::Ok("AAA", &[])),
        ("${A?msg}", Want::Ok("AAA", &[])),
        ("${A:?msg}", Want::Ok("AAA", &[])),
        ("${NOPE?msg}", Want::Ok("", &["NOPE"])),
        ("${NOPE:?msg}", Want::Ok("", &["NOPE"])),
        ("${!A}", Want::Ok("", &["!A"])),
        ("${$A}", Want::Ok("dollarA", &[])),
        ("${A-$_}", Hang),
        ("${_}$X", Brace),
        ("${_} $A}", Want::Ok("${_} AAA}", &[])),
        ("${_}", Want::Ok("${_}", &[])),
        ("$_", Want::Ok("$_", &[])),
        ("$_A", Want::Ok("underA", &[])),
        ("${_A}", Want::Ok("underA", &[])),
        ("$A_", Want::Ok("", &["A_"])),
        ("${}", Want::Ok("${}", &[])),
        ("${ }", Want::Ok("${ }", &[])),
        ("${A }", Want::Ok("AAA", &[])),
        ("${ A}", Want::Ok("", &[" A"])),
        ("${A-}", Want::Ok("AAA", &[])),
        ("${A:-}", Want::Ok("AAA", &[])),
        ("${NOPE-}", Want::Ok("", &["NOPE"])),
        ("${NOPE:-}", Want::Ok("", &["NOPE"])),
        ("${A+}", Want::Ok("AAA", &[])),
        ("${A:+}", Want::Ok("AAA", &[])),
        ("${NOPE+}", Want::Ok("", &["NOPE"])),
        ("${A:}", Brace),
        ("${A:}x}", Want::Ok("AAA", &[])),
        ("${A:x}", Want::Ok("AAA", &[])),
        ("${:A}", Want::Ok("${:A}", &[])),
        ("${:}A}", Want::Ok("", &[":}A"])),
        ("${A-${B}}", Want::Ok("AAA}", &[])),
        ("${NOPE-${B}}", Want::Ok("braceB}", &[])),
        ("${NOPE:-${B}}", Want::Ok("braceB}", &[])),
        ("${NOPE-$B}", Want::Ok("bbb", &[])),
        ("${NOPE-a$B}", Want::Ok("a$B", &[])),
        ("${NOPE-$B a}", Want::Ok(" a", &[])),
        ("${NOPE-$B-x}", Want::Ok("x", &[])),
        ("${NOPE-$Ba}", Want::Ok("", &["Ba"])),
        ("${NOPE-$}", Want::Ok("", &[""])),
        ("${NOPE-$$}", Want::Ok("", &[""])),
        ("${NOPE-$$B}", Want::Ok("$B", &[])),
        ("${NOPE=x} $NOPE", Want::Ok("x ", &["NOPE"])),
        ("${EMPTY-x}", Want::Ok("", &[])),
        ("${EMPTY:-x}", Want::Ok("x", &[])),
        ("${EMPTY=x}", Want::Ok("", &[])),
        ("${EMPTY:=x}", Want::Ok("x", &[])),
        ("${EMPTY+x}", Want::Ok("x", &[])),
        ("${EMPTY:+x}", Want::Ok("x", &[])),
        ("${NOPE+x}", Want::Ok("", &[])),
        ("${NOPE:+x}", Want::Ok("", &[])),
        ("${NOPE:=x}", Want::Ok("x", &[])),
        ("${NOPE--1}", Want::Ok("-1", &[])),
        ("${NOPE:--1}", Want::Ok("-1", &[])),
        ("${NOPE:==1}", Want::Ok("=1", &[])),
        ("${NOPE-:-x}", Want::Ok(":-x", &[])),
        ("${NOPE-}x}", Want::Ok("x}", &["NOPE"])),
        ("${A}}", Want::Ok("AAA}", &[])),
        ("${A}{", Want::Ok("AAA{", &[])),
        ("{$A}", Want::Ok("{AAA}", &[])),
        ("$A$B", Want::Ok("AAAbbb", &[])),
        ("$A-$B", Want::Ok("AAA-bbb", &[])),
        ("$A.x", Want::Ok("AAA.x", &[])),
        ("$KERNEL_X.x", Want::Ok("5.x", &[])),
        ("r/$MOD_NAME:$KERNEL_X.x", Want::Ok("r/kmm-ci:5.x", &[])),
        (
            "quay.io/org/kmod:${KERNEL_FULL_VERSION}",
            Want::Ok("quay.io/org/kmod:5.14.0-70.13.1.el9_0.x86_64", &[]),
        ),
        ("${KERNEL_XYZ}", Want::Ok("5.14.0", &[])),
        ("${NOPE}", Want::Ok("", &["NOPE"])),
        ("cost $ 5 and $1", Want::Ok("cost $ 5 and one", &[])),
        ("$É", Want::Ok("eacute", &[])),
        ("${É}", Want::Ok("eacute", &[])),
        ("$Éa", Want::Ok("", &["Éa"])),
        ("$日本", Want::Ok("", &["日本"])),
        ("${日本}", Want::Ok("", &["日本"])),
        ("é$A", Want::Ok("éAAA", &[])),
        ("$ $", Want::Ok("$ $", &[])),
        ("$$$", Want::Ok("$$", &[])),
        ("$$$$", Want::Ok("$$", &[])),
        ("$$$A", Want::Ok("$AAA", &[])),
        ("$$${A}", Want::Ok("$AAA", &[])),
        ("$${A}", Want::Ok("${A}", &[])),
        ("$$A", Want::Ok("$A", &[])),
        ("$-", Want::Ok("$-", &[])),
        ("$}", Want::Ok("$}", &[])),
        ("${-}", Want::Ok("${-}", &[])),
        ("${-A}", Want::Ok("${-A}", &[])),
        ("${+}", Want::Ok("${+}", &[])),
        ("${=}", Want::Ok("${=}", &[])),
        ("${:-}", Want::Ok("${:-}", &[])),
        ("${A:-x", Brace),
        ("${A\n}", Brace),
        ("${A:-a\nb}", Brace),
        ("${A:\nB}", Want::Ok("AAA", &[])),
        ("${:\nA}", Want::Ok("", &[":\nA"])),
        ("${A-x}${B-y}", Want::Ok("AAAbbb", &[])),
        ("${NOPE-x}${NOPE2-y}", Want::Ok("xy", &[])),
        ("${NOPE}$NOPE${NOPE2}", Want::Ok("", &["NOPE", "NOPE2"])),
        ("${NOPE:-$NOPE2}", Want::Ok("", &["NOPE2"])),
        ("${NOPE+$NOPE2}", Want::Ok("", &[])),
        ("${EMPTY+$NOPE2}", Want::Ok("", &["NOPE2"])),
        ("${A:-$NOPE2}", Want::Ok("AAA", &[])),
        ("${A+$NOPE2}", Want::Ok("", &["NOPE2"])),
        ("${A-$NOPE2}", Want::Ok("AAA", &[])),
        ("${NOPE-$NOPE2}", Want::Ok("", &["NOPE2"])),
        ("${A\r}", Brace),
        ("${A-x\r}", Brace),
        ("$A\r$B", Want::Ok("AAA\rbbb", &[])),
        ("${A-$_ ${B}}", Want::Ok("AAA}", &[])),
        ("${NOPE-$_ ${B}}", Want::Ok("$_ ${B}", &[])),
        ("${A$B}", Want::Ok("AAA", &[])),
        ("${A$_${B}}", Want::Ok("AAA}", &[])),
        ("$1ABC", Want::Ok("", &["1ABC"])),
        ("${2ABC}", Want::Ok("", &["2ABC"])),
        ("${1-x}", Want::Ok("one", &[])),
        ("${A}-${B:-c}", Want::Ok("AAA-bbb", &[])),
        ("${A:+${B}}", Want::Ok("braceB}", &[])),
        ("$ABC", Want::Ok("", &["ABC"])),
        ("${ABC}", Want::Ok("", &["ABC"])),
        ("$a", Want::Ok("", &["a"])),
        ("${a}", Want::Ok("", &["a"])),
        ("", Want::Ok("", &[])),
        (
            "hello $BAR\nhello ${EMPTY:=$FOO}",
            Want::Ok("hello bar\nhello foo", &[]),
        ),
        ("${A}\n", Want::Ok("AAA\n", &[])),
        ("$A\n$B", Want::Ok("AAA\nbbb", &[])),
        ("${A-x\ny}", Brace),
        ("${A-x\r\ny}", Brace),
        ("${A:\n}", Want::Ok("AAA", &[])),
        ("$Ⅻ", Want::Ok("$Ⅻ", &[])),
        ("$٣", Want::Ok("", &["٣"])),
        ("$a\u{345}", Want::Ok("\u{345}", &["a"])),
        ("$ª", Want::Ok("", &["ª"])),
        ("$A×", Want::Ok("AAA×", &[])),
        ("${A-x}-${NOPE:-y}", Want::Ok("AAA-y", &[])),
        ("${Ⅻ}", Want::Ok("${Ⅻ}", &[])),
        ("${٣}", Want::Ok("", &["٣"])),
        (
            "prefix-${MOD_NAME}-${KERNEL_X}.${NOPE:-0}",
            Want::Ok("prefix-kmm-ci-5.0", &[]),
        ),
        ("${NOPE:-${NOPE2}}", Want::Ok("}", &["{NOPE2"])),
        ("${A:-$B}", Want::Ok("AAA", &[])),
        ("${A=$B}", Want::Ok("AAA", &[])),
        ("${NOPE=$B}x", Want::Ok("bbbx", &[])),
        ("$$$$$", Want::Ok("$$$", &[])),
        ("${A}$", Want::Ok("AAA$", &[])),
        ("${A}$$", Want::Ok("AAA$", &[])),
        ("x ${A-$_ y", Hang),
        ("${NOPE-$B$A}", Want::Ok("$A", &[])),
        ("${_}$A", Brace),
        ("${_}$A}", Want::Ok("${_}AAA}", &[])),
        ("${_} ${A}", Want::Ok("${_} AAA", &[])),
        ("$_${A}", Want::Ok("$_AAA", &[])),
    ];

    #[test]
    fn same_as_go() {
        for (input, want) in COMPARED_WITH_GO {
            let got = expand(input, env(GO_ENV));
            match (want, &got) {
                (Want::Ok(text, unset), Ok(got)) => {
                    assert_eq!(got.text, *text, "{input:?}");
                    assert_eq!(got.unset, *unset, "{input:?}");
                }
                (Brace, Err(EnvsubstError::ClosingBraceExpected { .. }))
                | (Hang, Err(EnvsubstError::Unterminated { .. })) => {}
                _ => panic!("{input:?}: got {got:?}"),
            }
        }
    }

    #[test]
    fn kmm_templates() {
        let vars = env(&[
            "KERNEL_FULL_VERSION=6.1.0-28-amd64",
            "KERNEL_XYZ=6.1.0",
            "KERNEL_X=6",
            "MOD_NAME=kmm_ci_a",
        ]);
        let ok = |t: &str, text: &str, unset: &[&str]| {
            assert_eq!(
                expand(t, &vars).unwrap(),
                Expanded {
                    text: text.to_owned(),
                    unset: unset.iter().map(|u| (*u).to_owned()).collect()
                },
                "{t:?}"
            );
        };
        ok(
            "quay.io/org/kmod:${KERNEL_FULL_VERSION}",
            "quay.io/org/kmod:6.1.0-28-amd64",
            &[],
        );
        ok("r/$MOD_NAME:$KERNEL_X.x", "r/kmm_ci_a:6.x", &[]);
        ok("${KERNEL_XYZ}", "6.1.0", &[]);
        ok("${NOPE}", "", &["NOPE"]);
        ok("cost $ 5 and $1", "cost $ 5 and ", &["1"]);
        ok("${NOPE}/${NOPE}:$NOPE2", "/:", &["NOPE", "NOPE2"]);
    }

    #[test]
    fn error_offsets() {
        let none = |_: &str| None;
        assert_eq!(
            expand("hello ${", none),
            Err(EnvsubstError::ClosingBraceExpected { offset: 8 })
        );
        assert_eq!(
            expand("${A-x\ny}", none),
            Err(EnvsubstError::ClosingBraceExpected { offset: 5 })
        );
        assert_eq!(
            expand("${A}\n${B\r}", none),
            Err(EnvsubstError::ClosingBraceExpected { offset: 8 })
        );
        assert_eq!(expand("${A-$_}", none), Err(EnvsubstError::Unterminated { offset: 0 }));
        assert_eq!(
            expand("x ${A-$_ y", none),
            Err(EnvsubstError::Unterminated { offset: 2 })
        );
        assert_eq!(
            EnvsubstError::ClosingBraceExpected { offset: 8 }.to_string(),
            "closing brace expected at byte 8"
        );
    }

    /// Names are made of Go's letters (category L) and decimal digits (Nd), not Rust's
    /// alphanumerics.
    #[test]
    fn name_chars_follow_go() {
        for c in ['a', 'Z', '0', '_', 'É', 'ª', 'µ', '日', '٣'] {
            assert!(is_name_char(c), "{c:?}");
        }
        for c in ['-', '.', '$', '{', ' ', '×', 'Ⅻ', '\u{345}', '²'] {
            assert!(!is_name_char(c), "{c:?}");
        }
    }

    #[test]
    fn undefined_versus_empty() {
        let vars = env(&["EMPTY="]);
        let text = |t: &str| expand(t, &vars).unwrap().text;
        assert_eq!(text("${EMPTY-d}|${EMPTY:-d}|${NOPE-d}|${NOPE:-d}"), "|d|d|d");
        assert_eq!(text("${EMPTY+a}|${EMPTY:+a}|${NOPE+a}|${NOPE:+a}"), "a|a||");
    }
}
