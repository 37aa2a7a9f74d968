//! Go (RE2) regular expressions evaluated with the `regex` crate.
//!
//! Upstream KMM picks a kernel mapping with Go's `regexp.MatchString(pattern, kernelVersion)` and
//! its admission webhook refuses a `kernelMappings[].regexp` only when Go's `regexp.Compile` fails.
//! [`GoRegex`] reproduces both verdicts: it parses the pattern with Go's grammar (a port of the
//! parser in Go 1.26's `regexp/syntax`, default `Perl` flags), refuses what Go refuses, and writes
//! the pattern out again in the `regex` crate's syntax so that it matches exactly the strings Go
//! matches. Only plain, unanchored matching (Go's `MatchString`) is offered; capture groups are
//! kept but their names are dropped because nothing here reads them.
//!
//! The two dialects were compared by running Go's `regexp` and the `regex` crate on the same
//! patterns and inputs (the table in the tests). What differs, and what this module does about it:
//!
//! | Go pattern | Go | `regex` crate | here |
//! |---|---|---|---|
//! | `\Q…\E` | literal text | syntax error | escaped literals |
//! | `\d` `\w` `\s` `\b` `\B` | ASCII only; `\s` is `[\t\n\f\r ]` | Unicode (`(?-u:\s)` also has `\v`) | explicit ASCII classes, `(?-u:\b)` |
//! | `\0` `\012` `\123` | octal escapes | refused | `\x{…}` |
//! | `\<` `\>` (any escaped ASCII punctuation) | the literal character | word-start / word-end assertions | literal |
//! | `\b{start}` and similar | `\b` then literal `{start}` | one Unicode assertion | `(?-u:\b)\{start\}` |
//! | `a{,2}`, `a{02}`, `a{`, `a{1,2` (no valid count) | literal braces | a repetition, or an error | escaped braces |
//! | `[a&&b]` `[a~~b]` `[[a]]` | literal `&`, `~`, `[` | class set operations, nested classes | escaped |
//! | `(?)`, `(?ii)`, `(?i-i)` | accepted, last setting wins | refused | flags resolved while parsing |
//! | `a(?i)*` | repeats `a` | refused | repetition moved before the flag group |
//! | `(?P<1>x)`, duplicate group names | accepted | refused | names dropped |
//! | `\x{D800}` (UTF-16 surrogates) | accepted, never matches | refused | empty class / range without surrogates |
//! | `\p{…}` names | case, `_`, `-`, space ignored; aliases such as `Letter`, `digit`, `punct`, `Assigned`, `ASCII`; no multi-word scripts (`Old_Italic`), no `Alphabetic`, `sc=…`, `Grek` | other rules | Go's lookup, then an explicit `\p{gc=…}` / `\p{sc=…}` |
//! | `\p{Cs}` | surrogates (never match) | unknown | empty class |
//! | Unicode tables | Unicode 15.0 | Unicode 16.0 | classes corrected by the 5812 code points assigned in 16.0 and U+1171E (Mn in 15.0, Mc in 16.0) |
//! | `(?i)` on the 60 code points whose simple case folding changed in Unicode 16.0 (e.g. U+0264 / U+A7CB) | no fold partner | fold partner | matched case-sensitively, as in Go |
//! | `(?i)\p{LC}` | not case-folded (Go has no folding table for it; U+0345 folds to ι) | case-folded | matched without folding; refused inside a larger `(?i)` class |
//! | `\B` next to multi-byte characters | holds only between characters | `(?-u:\B)` also holds inside a character, and `Regex::is_match` (1.13) then misses real matches | `Regex::find` |
//! | `(?x)`, `(?u)`, `(?R)`, `a**`, `a++`, `x{2}{3}`, `a{1001}`, `(a{2}){501}`, `\u0041`, `(?P<a.b>x)`, `\p{Alphabetic}` … | refused | accepted | refused |
//!
//! Exact translation is impossible, and a pattern Go accepts is refused, in three cases:
//! - [`GoRegexError::TooLarge`] when the compiled program would exceed the `regex` crate's default
//!   size limit of 10 MiB (for example `\pL{1000}`; large counted repetitions of Unicode classes);
//! - [`GoRegexError::TooLarge`] when our estimate of Go's parse-tree height, program size or class
//!   size goes beyond Go's limits: Go factors alternations before it checks, which we do not
//!   replicate, so we estimate from above and, near those limits, refuse some patterns that Go
//!   still accepts (for example two alternatives sharing a prefix of about 1000 pieces);
//! - [`GoRegexError::Unsupported`] for `\p{LC}` (or its aliases) combined with other items in a
//!   case-insensitive character class.
//!
//! The Unicode corrections assume `regex-syntax` 0.8 with Unicode 16.0; a test fails when that
//! changes.

use regex::{Regex, RegexBuilder};

/// A Go (RE2) regular expression compiled for matching with the same results as Go's regexp.MatchString.
#[derive(Debug, Clone)]
pub struct GoRegex {
    re: Regex,
    translated: String,
    /// The pattern contains `\B`, see [`GoRegex::is_match`].
    not_word_boundary: bool,
}

impl GoRegex {
    /// Compiles `pattern` as Go's `regexp.Compile` would. The error names the offending construct
    /// and its byte offset in the pattern; [`GoRegexError::Invalid`] means Go rejects the pattern
    /// too, the other variants that Go accepts it but we cannot reproduce it faithfully.
    pub fn new(pattern: &str) -> Result<GoRegex, GoRegexError> {
        let tree = Parser::parse(pattern)?;
        let translated = Emitter::emit_root(&tree);
        let not_word_boundary = tree.contains(&|k| matches!(k, Kind::Look(Look::NotWordBoundary)));
        let re = RegexBuilder::new(&translated).nest_limit(RUST_NEST_LIMIT).build().map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => GoRegexError::TooLarge {
                message: format!(
                    "the pattern compiles to more than {} MiB in our regex engine (Go may accept it, we cannot run it)",
                    limit >> 20
                ),
            },
            other => GoRegexError::Unsupported {
                offset: 0,
                construct: pattern.to_string(),
                message: format!("the regex engine rejected the translated pattern: {other}"),
            },
        })?;
        Ok(GoRegex {
            re,
            translated,
            not_word_boundary,
        })
    }

    /// Unanchored search, as Go's MatchString: whether `text` contains a match anywhere.
    pub fn is_match(&self, text: &str) -> bool {
        // `(?-u:\B)` also holds between the bytes of a multi-byte character. The regex crate
        // (1.13) discards such empty matches, but `Regex::is_match` can then miss a real match
        // elsewhere (`(?-u:\B)|...` on "A\u{897}s" is false although `find` finds "A\u{897}s");
        // `find` is correct, so it is used for patterns with `\B`.
        if self.not_word_boundary {
            self.re.find(text).is_some()
        } else {
            self.re.is_match(text)
        }
    }

    /// The pattern in `regex` crate syntax that was actually compiled (for logs).
    pub fn translated(&self) -> &str {
        &self.translated
    }
}

/// Why a Go regular expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoRegexError {
    /// Go's `regexp.Compile` rejects the pattern as well.
    #[error("invalid regular expression: {message} (at byte {offset})")]
    Invalid {
        /// Byte offset of the offending construct in the pattern.
        offset: usize,
        /// The offending part of the pattern.
        construct: String,
        /// What is wrong, in words (the construct is quoted in it).
        message: String,
    },
    /// The pattern is, or may be, beyond Go's limits on nesting and size, or beyond our regex
    /// engine's size limit.
    #[error("regular expression too large or too deeply nested: {message}")]
    TooLarge {
        /// Which limit, in words.
        message: String,
    },
    /// Go accepts the pattern but it cannot be matched the way Go matches it.
    #[error("unsupported regular expression: {message} (at byte {offset})")]
    Unsupported {
        /// Byte offset of the offending construct in the pattern.
        offset: usize,
        /// The offending part of the pattern.
        construct: String,
        /// What is unsupported, in words.
        message: String,
    },
}

// Go's limits (regexp/syntax, Go 1.26): counted repetitions, parse-tree height, program size in
// instructions (`maxSize`) and runes held by character classes (`maxRunes`).
const GO_MAX_REPEAT: i64 = 1000;
const GO_MAX_HEIGHT: u64 = 1000;
const GO_MAX_SIZE: u64 = (128 << 20) / 40;
const GO_MAX_RUNES: u64 = (128 << 20) / 4;
/// The translation nests at most a few levels per level of Go's tree, whose height is at most
/// [`GO_MAX_HEIGHT`].
const RUST_NEST_LIMIT: u32 = 4 * GO_MAX_HEIGHT as u32;

/// A class that matches nothing (the `regex` crate accepts empty classes).
const NOTHING: &str = r"[^\x{0}-\x{10FFFF}]";

/// Code points assigned in Unicode 16.0 (the `regex` crate's tables) but not in 15.0 (Go's).
const NEW_IN_16: &str = concat!(
    r"\x{897}\x{1B4E}-\x{1B4F}\x{1B7F}\x{1C89}-\x{1C8A}\x{2427}-\x{2429}\x{2FFC}-\x{2FFF}\x{31E4}-\x{31E5}",
    r"\x{31EF}\x{A7CB}-\x{A7CD}\x{A7DA}-\x{A7DC}\x{105C0}-\x{105F3}\x{10D40}-\x{10D65}\x{10D69}-\x{10D85}",
    r"\x{10D8E}-\x{10D8F}\x{10EC2}-\x{10EC4}\x{10EFC}\x{11380}-\x{11389}\x{1138B}\x{1138E}\x{11390}-\x{113B5}",
    r"\x{113B7}-\x{113C0}\x{113C2}\x{113C5}\x{113C7}-\x{113CA}\x{113CC}-\x{113D5}\x{113D7}-\x{113D8}",
    r"\x{113E1}-\x{113E2}\x{116D0}-\x{116E3}\x{11BC0}-\x{11BE1}\x{11BF0}-\x{11BF9}\x{11F5A}\x{13460}-\x{143FA}",
    r"\x{16100}-\x{16139}\x{16D40}-\x{16D79}\x{18CFF}\x{1CC00}-\x{1CCF9}\x{1CD00}-\x{1CEB3}\x{1E5D0}-\x{1E5FA}",
    r"\x{1E5FF}\x{1F8B2}-\x{1F8BB}\x{1F8C0}-\x{1F8C1}\x{1FA89}\x{1FA8F}\x{1FABE}\x{1FAC6}\x{1FADC}\x{1FADF}",
    r"\x{1FAE9}\x{1FBCB}-\x{1FBEF}\x{2EBF0}-\x{2EE5D}",
);

/// The code points whose simple case folding differs between Unicode 15.0 and 16.0: each has no
/// fold partner in Go and one partner (also in this list) in the `regex` crate.
const FOLD_CHANGED: &[(u32, u32)] = &[
    (0x19B, 0x19B),
    (0x264, 0x264),
    (0x390, 0x390),
    (0x3B0, 0x3B0),
    (0x1C89, 0x1C8A),
    (0x1FD3, 0x1FD3),
    (0x1FE3, 0x1FE3),
    (0xA7CB, 0xA7CD),
    (0xA7DA, 0xA7DC),
    (0xFB05, 0xFB06),
    (0x10D50, 0x10D65),
    (0x10D70, 0x10D85),
];

/// Upper bounds used to estimate Go's `maxRunes` accounting: ranges in the largest Unicode class
/// (712, plus one for negation) and code points that take part in case folding.
const GO_MAX_TABLE_RANGES: u64 = 713;
const GO_FOLDING_CODE_POINTS: u64 = 2878;

/// The `\p{…}` names Go 1.26 accepts, after its `canonicalName` (first letter upper case, the
/// rest lower case, no `_`, `-` or space), sorted; with the `regex` crate property that has the
/// same Unicode 15.0 content once [`NEW_IN_16`] is removed (third field). Produced from Go's
/// `unicode.Categories`, `unicode.Scripts` and `unicode.CategoryAliases`.
const UNICODE_NAMES: &[(&str, &str, bool)] = &[
    ("Adlam", "sc=Adlam", false),
    ("Ahom", "sc=Ahom", false),
    ("Any", "Any", false),
    ("Arabic", "sc=Arabic", true),
    ("Armenian", "sc=Armenian", false),
    ("Ascii", "ASCII", false),
    ("Assigned", "Assigned", true),
    ("Avestan", "sc=Avestan", false),
    ("Balinese", "sc=Balinese", true),
    ("Bamum", "sc=Bamum", false),
    ("Batak", "sc=Batak", false),
    ("Bengali", "sc=Bengali", false),
    ("Bhaiksuki", "sc=Bhaiksuki", false),
    ("Bopomofo", "sc=Bopomofo", false),
    ("Brahmi", "sc=Brahmi", false),
    ("Braille", "sc=Braille", false),
    ("Buginese", "sc=Buginese", false),
    ("Buhid", "sc=Buhid", false),
    ("C", "gc=C", false),
    ("Carian", "sc=Carian", false),
    ("Casedletter", "gc=LC", true),
    ("Cc", "gc=Cc", false),
    ("Cf", "gc=Cf", false),
    ("Chakma", "sc=Chakma", false),
    ("Cham", "sc=Cham", false),
    ("Cherokee", "sc=Cherokee", false),
    ("Chorasmian", "sc=Chorasmian", false),
    ("Closepunctuation", "gc=Pe", false),
    ("Cn", "gc=Cn", false),
    ("Cntrl", "gc=Cc", false),
    ("Co", "gc=Co", false),
    ("Combiningmark", "gc=M", true),
    ("Common", "sc=Common", true),
    ("Connectorpunctuation", "gc=Pc", false),
    ("Control", "gc=Cc", false),
    ("Coptic", "sc=Coptic", false),
    ("Cs", "gc=Cs", false),
    ("Cuneiform", "sc=Cuneiform", false),
    ("Currencysymbol", "gc=Sc", false),
    ("Cypriot", "sc=Cypriot", false),
    ("Cyrillic", "sc=Cyrillic", true),
    ("Dashpunctuation", "gc=Pd", true),
    ("Decimalnumber", "gc=Nd", true),
    ("Deseret", "sc=Deseret", false),
    ("Devanagari", "sc=Devanagari", false),
    ("Digit", "gc=Nd", true),
    ("Dogra", "sc=Dogra", false),
    ("Duployan", "sc=Duployan", false),
    ("Elbasan", "sc=Elbasan", false),
    ("Elymaic", "sc=Elymaic", false),
    ("Enclosingmark", "gc=Me", false),
    ("Ethiopic", "sc=Ethiopic", false),
    ("Finalpunctuation", "gc=Pf", false),
    ("Format", "gc=Cf", false),
    ("Georgian", "sc=Georgian", false),
    ("Glagolitic", "sc=Glagolitic", false),
    ("Gothic", "sc=Gothic", false),
    ("Grantha", "sc=Grantha", false),
    ("Greek", "sc=Greek", false),
    ("Gujarati", "sc=Gujarati", false),
    ("Gurmukhi", "sc=Gurmukhi", false),
    ("Han", "sc=Han", true),
    ("Hangul", "sc=Hangul", false),
    ("Hanunoo", "sc=Hanunoo", false),
    ("Hatran", "sc=Hatran", false),
    ("Hebrew", "sc=Hebrew", false),
    ("Hiragana", "sc=Hiragana", false),
    ("Inherited", "sc=Inherited", false),
    ("Initialpunctuation", "gc=Pi", false),
    ("Javanese", "sc=Javanese", false),
    ("Kaithi", "sc=Kaithi", false),
    ("Kannada", "sc=Kannada", false),
    ("Katakana", "sc=Katakana", false),
    ("Kawi", "sc=Kawi", true),
    ("Kharoshthi", "sc=Kharoshthi", false),
    ("Khmer", "sc=Khmer", false),
    ("Khojki", "sc=Khojki", false),
    ("Khudawadi", "sc=Khudawadi", false),
    ("L", "gc=L", true),
    ("Lao", "sc=Lao", false),
    ("Latin", "sc=Latin", true),
    ("Lc", "gc=LC", true),
    ("Lepcha", "sc=Lepcha", false),
    ("Letter", "gc=L", true),
    ("Letternumber", "gc=Nl", false),
    ("Limbu", "sc=Limbu", false),
    ("Lineseparator", "gc=Zl", false),
    ("Lisu", "sc=Lisu", false),
    ("Ll", "gc=Ll", true),
    ("Lm", "gc=Lm", true),
    ("Lo", "gc=Lo", true),
    ("Lowercaseletter", "gc=Ll", true),
    ("Lt", "gc=Lt", false),
    ("Lu", "gc=Lu", true),
    ("Lycian", "sc=Lycian", false),
    ("Lydian", "sc=Lydian", false),
    ("M", "gc=M", true),
    ("Mahajani", "sc=Mahajani", false),
    ("Makasar", "sc=Makasar", false),
    ("Malayalam", "sc=Malayalam", false),
    ("Mandaic", "sc=Mandaic", false),
    ("Manichaean", "sc=Manichaean", false),
    ("Marchen", "sc=Marchen", false),
    ("Mark", "gc=M", true),
    ("Mathsymbol", "gc=Sm", true),
    ("Mc", "gc=Mc", true),
    ("Me", "gc=Me", false),
    ("Medefaidrin", "sc=Medefaidrin", false),
    ("Miao", "sc=Miao", false),
    ("Mn", "gc=Mn", true),
    ("Modi", "sc=Modi", false),
    ("Modifierletter", "gc=Lm", true),
    ("Modifiersymbol", "gc=Sk", false),
    ("Mongolian", "sc=Mongolian", false),
    ("Mro", "sc=Mro", false),
    ("Multani", "sc=Multani", false),
    ("Myanmar", "sc=Myanmar", true),
    ("N", "gc=N", true),
    ("Nabataean", "sc=Nabataean", false),
    ("Nandinagari", "sc=Nandinagari", false),
    ("Nd", "gc=Nd", true),
    ("Newa", "sc=Newa", false),
    ("Nko", "sc=Nko", false),
    ("Nl", "gc=Nl", false),
    ("No", "gc=No", false),
    ("Nonspacingmark", "gc=Mn", true),
    ("Number", "gc=N", true),
    ("Nushu", "sc=Nushu", false),
    ("Ogham", "sc=Ogham", false),
    ("Openpunctuation", "gc=Ps", false),
    ("Oriya", "sc=Oriya", false),
    ("Osage", "sc=Osage", false),
    ("Osmanya", "sc=Osmanya", false),
    ("Other", "gc=C", false),
    ("Otherletter", "gc=Lo", true),
    ("Othernumber", "gc=No", false),
    ("Otherpunctuation", "gc=Po", true),
    ("Othersymbol", "gc=So", true),
    ("P", "gc=P", true),
    ("Palmyrene", "sc=Palmyrene", false),
    ("Paragraphseparator", "gc=Zp", false),
    ("Pc", "gc=Pc", false),
    ("Pd", "gc=Pd", true),
    ("Pe", "gc=Pe", false),
    ("Pf", "gc=Pf", false),
    ("Phoenician", "sc=Phoenician", false),
    ("Pi", "gc=Pi", false),
    ("Po", "gc=Po", true),
    ("Privateuse", "gc=Co", false),
    ("Ps", "gc=Ps", false),
    ("Punct", "gc=P", true),
    ("Punctuation", "gc=P", true),
    ("Rejang", "sc=Rejang", false),
    ("Runic", "sc=Runic", false),
    ("S", "gc=S", true),
    ("Samaritan", "sc=Samaritan", false),
    ("Saurashtra", "sc=Saurashtra", false),
    ("Sc", "gc=Sc", false),
    ("Separator", "gc=Z", false),
    ("Sharada", "sc=Sharada", false),
    ("Shavian", "sc=Shavian", false),
    ("Siddham", "sc=Siddham", false),
    ("Sinhala", "sc=Sinhala", false),
    ("Sk", "gc=Sk", false),
    ("Sm", "gc=Sm", true),
    ("So", "gc=So", true),
    ("Sogdian", "sc=Sogdian", false),
    ("Soyombo", "sc=Soyombo", false),
    ("Spaceseparator", "gc=Zs", false),
    ("Spacingmark", "gc=Mc", true),
    ("Sundanese", "sc=Sundanese", false),
    ("Surrogate", "gc=Cs", false),
    ("Symbol", "gc=S", true),
    ("Syriac", "sc=Syriac", false),
    ("Tagalog", "sc=Tagalog", false),
    ("Tagbanwa", "sc=Tagbanwa", false),
    ("Takri", "sc=Takri", false),
    ("Tamil", "sc=Tamil", false),
    ("Tangsa", "sc=Tangsa", false),
    ("Tangut", "sc=Tangut", false),
    ("Telugu", "sc=Telugu", false),
    ("Thaana", "sc=Thaana", false),
    ("Thai", "sc=Thai", false),
    ("Tibetan", "sc=Tibetan", false),
    ("Tifinagh", "sc=Tifinagh", false),
    ("Tirhuta", "sc=Tirhuta", false),
    ("Titlecaseletter", "gc=Lt", false),
    ("Toto", "sc=Toto", false),
    ("Ugaritic", "sc=Ugaritic", false),
    ("Unassigned", "gc=Cn", false),
    ("Uppercaseletter", "gc=Lu", true),
    ("Vai", "sc=Vai", false),
    ("Vithkuqi", "sc=Vithkuqi", false),
    ("Wancho", "sc=Wancho", false),
    ("Yezidi", "sc=Yezidi", false),
    ("Yi", "sc=Yi", false),
    ("Z", "gc=Z", false),
    ("Zl", "gc=Zl", false),
    ("Zp", "gc=Zp", false),
    ("Zs", "gc=Zs", false),
];

const DIGIT: &[(u8, u8)] = &[(b'0', b'9')];
const SPACE: &[(u8, u8)] = &[(b'\t', b'\n'), (0x0C, b'\r'), (b' ', b' ')];
const WORD: &[(u8, u8)] = &[(b'0', b'9'), (b'A', b'Z'), (b'_', b'_'), (b'a', b'z')];

/// Go's POSIX classes (`[[:alpha:]]`), all ASCII.
const POSIX: &[(&str, &[(u8, u8)])] = &[
    ("alnum", &[(b'0', b'9'), (b'A', b'Z'), (b'a', b'z')]),
    ("alpha", &[(b'A', b'Z'), (b'a', b'z')]),
    ("ascii", &[(0x00, 0x7F)]),
    ("blank", &[(b'\t', b'\t'), (b' ', b' ')]),
    ("cntrl", &[(0x00, 0x1F), (0x7F, 0x7F)]),
    ("digit", DIGIT),
    ("graph", &[(b'!', b'~')]),
    ("lower", &[(b'a', b'z')]),
    ("print", &[(b' ', b'~')]),
    ("punct", &[(b'!', b'/'), (b':', b'@'), (b'[', b'`'), (b'{', b'~')]),
    ("space", &[(b'\t', b'\r'), (b' ', b' ')]),
    ("upper", &[(b'A', b'Z')]),
    ("word", WORD),
    ("xdigit", &[(b'0', b'9'), (b'A', b'F'), (b'a', b'f')]),
];

/// Go's parser state flags that matter for matching (`FoldCase`, `OneLine` inverted, `DotNL`,
/// `NonGreedy`).
#[derive(Clone, Copy, Default)]
struct Flags {
    fold: bool,
    multi_line: bool,
    dot_nl: bool,
    ungreedy: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Look {
    BeginText,
    EndText,
    BeginLine,
    EndLine,
    WordBoundary,
    NotWordBoundary,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RepeatOp {
    Star,
    Plus,
    Quest,
    Counted { min: u32, max: Option<u32> },
}

/// One element of a character class, before Go's case folding.
#[derive(Debug)]
enum Item {
    /// Code points `lo..=hi` (may include surrogates, which Go accepts).
    Range(u32, u32),
    /// `\d`, `\s`, `\w`, a POSIX class, or their negation.
    Ascii { ranges: &'static [(u8, u8)], negated: bool },
    /// `\p{…}` / `\P{…}`: the `regex` crate property and whether [`NEW_IN_16`] must be removed.
    Unicode {
        target: &'static str,
        drop_new: bool,
        negated: bool,
    },
}

#[derive(Debug)]
struct Class {
    items: Vec<Item>,
    negated: bool,
    fold: bool,
}

/// Go's parse tree with the flags resolved into the nodes, plus what the limit checks need.
#[derive(Debug)]
struct Tree {
    kind: Kind,
    /// Upper bound of the height of Go's tree for this node.
    height: u64,
    /// Leaf count, an upper bound of how many pieces Go's alternation factoring can peel off.
    leaves: u64,
    /// Upper bound of Go's size estimate (`calcSize`) for this node.
    size: u64,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Literal { c: u32, fold: bool },
    Class(Class),
    AnyCharNotNl,
    AnyChar,
    Look(Look),
    Capture(Box<Tree>),
    Concat(Vec<Tree>),
    Alternate(Vec<Tree>),
    Repeat { sub: Box<Tree>, op: RepeatOp, greedy: bool },
}

impl Tree {
    fn leaf(kind: Kind) -> Tree {
        Tree {
            kind,
            height: 1,
            leaves: 1,
            size: 1,
        }
    }

    fn capture(sub: Tree) -> Tree {
        Tree {
            height: sub.height + 1,
            leaves: sub.leaves,
            size: sub.size.saturating_add(2),
            kind: Kind::Capture(Box::new(sub)),
        }
    }

    fn repeat(sub: Tree, op: RepeatOp, greedy: bool) -> Tree {
        let s = sub.size;
        let size = match op {
            RepeatOp::Star => s.saturating_add(2),
            RepeatOp::Plus | RepeatOp::Quest => s.saturating_add(1),
            RepeatOp::Counted { min: 0, max: None } => s.saturating_add(2),
            RepeatOp::Counted { min, max: None } => u64::from(min).saturating_mul(s).saturating_add(1),
            RepeatOp::Counted { min, max: Some(max) } => {
                u64::from(max).saturating_mul(s).saturating_add(u64::from(max - min))
            }
        };
        Tree {
            height: sub.height + 1,
            leaves: sub.leaves,
            size: size.max(1),
            kind: Kind::Repeat {
                sub: Box::new(sub),
                op,
                greedy,
            },
        }
    }

    /// Concatenation, flattening nested concatenations as Go's `collapse` does.
    fn concat(items: Vec<Tree>) -> Tree {
        let mut flat = Vec::with_capacity(items.len());
        for t in items {
            match t.kind {
                Kind::Concat(inner) => flat.extend(inner),
                _ => flat.push(t),
            }
        }
        match flat.len() {
            0 => Tree::leaf(Kind::Empty),
            1 => flat.pop().expect("one element"),
            _ => Tree {
                height: 1 + flat.iter().map(|t| t.height).max().unwrap_or(0),
                leaves: flat.iter().fold(0u64, |a, t| a.saturating_add(t.leaves)),
                size: flat.iter().fold(0u64, |a, t| a.saturating_add(t.size)),
                kind: Kind::Concat(flat),
            },
        }
    }

    /// Alternation, flattening nested alternations as Go's `collapse` does. Go then factors common
    /// prefixes out of the branches, which can deepen the tree: each level of factoring peels at
    /// least one piece off two branches, so it adds at most 2 × (second largest leaf count) and at
    /// most (second largest leaf count + branches - 1) levels.
    fn alternate(branches: Vec<Tree>) -> Tree {
        let mut flat = Vec::with_capacity(branches.len());
        for t in branches {
            match t.kind {
                Kind::Alternate(inner) => flat.extend(inner),
                _ => flat.push(t),
            }
        }
        if flat.len() == 1 {
            return flat.pop().expect("one element");
        }
        let n = flat.len() as u64;
        let (mut first, mut second) = (0u64, 0u64);
        for t in &flat {
            if t.leaves > first {
                second = first;
                first = t.leaves;
            } else if t.leaves > second {
                second = t.leaves;
            }
        }
        let factoring = second.saturating_mul(2).min(second.saturating_add(n - 1));
        Tree {
            height: 1u64
                .saturating_add(factoring)
                .saturating_add(flat.iter().map(|t| t.height).max().unwrap_or(0)),
            leaves: flat.iter().fold(0u64, |a, t| a.saturating_add(t.leaves)),
            size: flat.iter().fold(n - 1, |a, t| a.saturating_add(t.size)),
            kind: Kind::Alternate(flat),
        }
    }

    /// Whether some node of the tree satisfies `pred`.
    fn contains(&self, pred: &dyn Fn(&Kind) -> bool) -> bool {
        pred(&self.kind) || self.children().iter().any(|c| c.contains(pred))
    }

    fn children(&self) -> &[Tree] {
        match &self.kind {
            Kind::Capture(sub) | Kind::Repeat { sub, .. } => std::slice::from_ref(sub),
            Kind::Concat(v) | Kind::Alternate(v) => v,
            _ => &[],
        }
    }

    /// Runes Go's node holds (literal strings and classes), an upper bound.
    fn runes(&self) -> u64 {
        match &self.kind {
            Kind::Literal { .. } => 1,
            Kind::Class(c) => c.go_runes(),
            Kind::Concat(v) if v.iter().all(|t| matches!(t.kind, Kind::Literal { .. })) => v.len() as u64,
            _ => 0,
        }
    }
}

impl Class {
    /// Whether case folding cannot change what the class matches (only ASCII non-letters).
    fn caseless(&self) -> bool {
        let no_letters = |lo: u32, hi: u32| hi < 0x80 && !(lo..=hi).any(|x| (x as u8).is_ascii_alphabetic());
        self.items.iter().all(|item| match item {
            Item::Range(lo, hi) => no_letters(*lo, *hi),
            Item::Ascii { ranges, .. } => ranges.iter().all(|&(lo, hi)| no_letters(u32::from(lo), u32::from(hi))),
            Item::Unicode { .. } => false,
        })
    }

    /// Upper bound of the runes of Go's class (two per range).
    fn go_runes(&self) -> u64 {
        let ranges = self.items.iter().fold(1u64, |acc, item| {
            acc.saturating_add(match item {
                Item::Range(lo, hi) if self.fold => 3 + 3 * u64::from(hi - lo + 1).min(GO_FOLDING_CODE_POINTS),
                Item::Range(..) => 1,
                Item::Ascii { .. } => 10,
                Item::Unicode { .. } => GO_MAX_TABLE_RANGES,
            })
        });
        ranges.saturating_mul(2)
    }
}

/// Go's `repeatIsValid`: nested counted repetitions may not produce more than `n` copies.
fn repeat_is_valid(t: &Tree, mut n: i64) -> bool {
    if let Kind::Repeat {
        op: RepeatOp::Counted { min, max },
        ..
    } = t.kind
    {
        let mut m = max.map_or(-1, i64::from);
        if m == 0 {
            return true;
        }
        if m < 0 {
            m = i64::from(min);
        }
        if m > n {
            return false;
        }
        if m > 0 {
            n /= m;
        }
    }
    t.children().iter().all(|c| repeat_is_valid(c, n))
}

fn invalid(offset: usize, construct: &str, message: impl Into<String>) -> GoRegexError {
    GoRegexError::Invalid {
        offset,
        construct: construct.to_string(),
        message: message.into(),
    }
}

fn too_large(message: impl Into<String>) -> GoRegexError {
    GoRegexError::TooLarge {
        message: message.into(),
    }
}

/// An open group (or the whole pattern) while parsing.
struct Frame {
    capture: bool,
    open: usize,
    saved: Flags,
    branches: Vec<Tree>,
    concat: Vec<Tree>,
}

impl Frame {
    fn new(capture: bool, open: usize, saved: Flags) -> Frame {
        Frame {
            capture,
            open,
            saved,
            branches: Vec::new(),
            concat: Vec::new(),
        }
    }
}

/// A port of Go's `regexp/syntax` parser (`Perl` flags) producing [`Tree`].
struct Parser<'a> {
    s: &'a str,
    flags: Flags,
    frames: Vec<Frame>,
    /// Go's `numRunes`, estimated from above.
    runes: u64,
}

impl<'a> Parser<'a> {
    fn parse(s: &'a str) -> Result<Tree, GoRegexError> {
        let mut p = Parser {
            s,
            flags: Flags::default(),
            frames: vec![Frame::new(false, 0, Flags::default())],
            runes: 0,
        };
        let b = s.as_bytes();
        let mut i = 0;
        let mut last_repeat: Option<usize> = None;
        while i < b.len() {
            let mut repeat = None;
            match b[i] {
                b'(' if b.get(i + 1) == Some(&b'?') => i = p.perl_flags(i)?,
                b'(' => {
                    p.frames.push(Frame::new(true, i, p.flags));
                    i += 1;
                }
                b'|' => {
                    p.vertical_bar()?;
                    i += 1;
                }
                b')' => {
                    p.right_paren(i)?;
                    i += 1;
                }
                b'^' => {
                    p.push(Tree::leaf(Kind::Look(if p.flags.multi_line {
                        Look::BeginLine
                    } else {
                        Look::BeginText
                    })))?;
                    i += 1;
                }
                b'$' => {
                    p.push(Tree::leaf(Kind::Look(if p.flags.multi_line {
                        Look::EndLine
                    } else {
                        Look::EndText
                    })))?;
                    i += 1;
                }
                b'.' => {
                    p.push(Tree::leaf(if p.flags.dot_nl {
                        Kind::AnyChar
                    } else {
                        Kind::AnyCharNotNl
                    }))?;
                    i += 1;
                }
                b'[' => i = p.class(i)?,
                b'*' | b'+' | b'?' => {
                    let op = match b[i] {
                        b'*' => RepeatOp::Star,
                        b'+' => RepeatOp::Plus,
                        _ => RepeatOp::Quest,
                    };
                    repeat = Some(i);
                    i = p.repeat(op, i, i + 1, last_repeat)?;
                }
                b'{' => match parse_repeat(&s[i..]) {
                    None => {
                        p.literal(u32::from('{'))?;
                        i += 1;
                    }
                    Some((min, max, len)) => {
                        let text = &s[i..i + len];
                        if !(0..=GO_MAX_REPEAT).contains(&min) || max > GO_MAX_REPEAT || (max >= 0 && min > max) {
                            return Err(invalid(
                                i,
                                text,
                                format!(
                                    "invalid repeat count `{text}`: counts go up to 1000 and the minimum may not exceed the maximum"
                                ),
                            ));
                        }
                        let min = u32::try_from(min).unwrap_or(u32::MAX);
                        let max = u32::try_from(max).ok();
                        repeat = Some(i);
                        i = p.repeat(RepeatOp::Counted { min, max }, i, i + len, last_repeat)?;
                    }
                },
                b'\\' => i = p.backslash(i)?,
                _ => {
                    let c = s[i..].chars().next().expect("not at the end");
                    p.literal(u32::from(c))?;
                    i += c.len_utf8();
                }
            }
            last_repeat = repeat;
        }
        p.finish()
    }

    fn frame(&mut self) -> &mut Frame {
        self.frames.last_mut().expect("the outermost frame is never popped")
    }

    fn check(&self, t: &Tree) -> Result<(), GoRegexError> {
        if t.height > GO_MAX_HEIGHT {
            return Err(too_large(format!(
                "the expression nests too deeply: Go refuses parse trees higher than {GO_MAX_HEIGHT} levels"
            )));
        }
        if t.size > GO_MAX_SIZE {
            return Err(too_large(format!(
                "the expression is too large: Go refuses programs of more than {GO_MAX_SIZE} instructions"
            )));
        }
        if self.runes > GO_MAX_RUNES {
            return Err(too_large(format!(
                "the expression is too large: Go refuses patterns whose character classes hold more than {GO_MAX_RUNES} code points"
            )));
        }
        Ok(())
    }

    fn push(&mut self, t: Tree) -> Result<(), GoRegexError> {
        self.runes = self.runes.saturating_add(t.runes());
        self.check(&t)?;
        self.frame().concat.push(t);
        Ok(())
    }

    fn literal(&mut self, c: u32) -> Result<(), GoRegexError> {
        let fold = self.flags.fold;
        self.push(Tree::leaf(Kind::Literal { c, fold }))
    }

    fn push_class(&mut self, items: Vec<Item>, negated: bool) -> Result<(), GoRegexError> {
        // Go has no case-folding table for `\p{LC}` and matches it as is under (?i); the class is
        // not closed under folding (U+0345 folds to ι), so only a class made of it alone can be
        // reproduced, by matching it without folding.
        let fold = self.flags.fold && !matches!(items.as_slice(), [Item::Unicode { target: "gc=LC", .. }]);
        self.push(Tree::leaf(Kind::Class(Class { items, negated, fold })))
    }

    /// Go's `concat()`: the current concatenation becomes one node.
    fn finish_concat(&mut self) -> Result<Tree, GoRegexError> {
        let items = std::mem::take(&mut self.frame().concat);
        let t = Tree::concat(items);
        self.runes = self.runes.saturating_add(t.runes());
        self.check(&t)?;
        Ok(t)
    }

    /// Go's `alternate()`: the branches of the current group become one node.
    fn finish_alternate(&mut self) -> Result<Tree, GoRegexError> {
        let last = self.finish_concat()?;
        let mut branches = std::mem::take(&mut self.frame().branches);
        branches.push(last);
        self.runes = branches.iter().fold(self.runes, |a, t| a.saturating_add(t.runes()));
        let t = Tree::alternate(branches);
        self.check(&t)?;
        Ok(t)
    }

    fn vertical_bar(&mut self) -> Result<(), GoRegexError> {
        let t = self.finish_concat()?;
        self.frame().branches.push(t);
        Ok(())
    }

    fn right_paren(&mut self, at: usize) -> Result<(), GoRegexError> {
        if self.frames.len() == 1 {
            return Err(invalid(at, ")", "unexpected `)`: there is no open group to close"));
        }
        let t = self.finish_alternate()?;
        let frame = self.frames.pop().expect("checked above");
        self.flags = frame.saved;
        if frame.capture {
            self.push(Tree::capture(t))
        } else {
            self.push(t)
        }
    }

    fn finish(mut self) -> Result<Tree, GoRegexError> {
        if self.frames.len() > 1 {
            let open = self.frame().open;
            return Err(invalid(open, "(", "missing closing `)` for the group opened here"));
        }
        self.finish_alternate()
    }

    /// Go's `repeat`: applies `op` to the last node of the current concatenation. `start` is the
    /// operator's offset and `after` the offset just past it.
    fn repeat(
        &mut self,
        op: RepeatOp,
        start: usize,
        mut after: usize,
        last_repeat: Option<usize>,
    ) -> Result<usize, GoRegexError> {
        let mut ungreedy = self.flags.ungreedy;
        if self.s.as_bytes().get(after) == Some(&b'?') {
            after += 1;
            ungreedy = !ungreedy;
        }
        if let Some(prev) = last_repeat {
            let text = &self.s[prev..after];
            return Err(invalid(
                prev,
                text,
                format!("nested repetition operator `{text}`: to repeat a repetition, wrap it in (?:...) first"),
            ));
        }
        let text = &self.s[start..after];
        let Some(sub) = self.frame().concat.pop() else {
            return Err(invalid(
                start,
                text,
                format!("repetition operator `{text}` has nothing to repeat"),
            ));
        };
        let t = Tree::repeat(sub, op, !ungreedy);
        if let RepeatOp::Counted { min, max } = op
            && (min >= 2 || max.is_some_and(|m| m >= 2))
            && !repeat_is_valid(&t, GO_MAX_REPEAT)
        {
            return Err(invalid(
                start,
                text,
                format!(
                    "invalid repeat count `{text}`: together with the repetitions inside it, more than 1000 copies"
                ),
            ));
        }
        self.check(&t)?;
        self.frame().concat.push(t);
        Ok(after)
    }

    /// Go's `parsePerlFlags`: `(?P<name>`, `(?<name>`, `(?flags)` and `(?flags:`, at `at`.
    fn perl_flags(&mut self, at: usize) -> Result<usize, GoRegexError> {
        let t = &self.s[at..];
        let tb = t.as_bytes();
        let starts_with_p = tb.len() > 4 && tb[2] == b'P' && tb[3] == b'<';
        let starts_with_name = tb.len() > 3 && tb[2] == b'<';
        if starts_with_p || starts_with_name {
            let name_start = if starts_with_p { 4 } else { 3 };
            let Some(end) = t.find('>') else {
                let message = if t[2..].starts_with("<=") || t[2..].starts_with("<!") {
                    "lookbehind `(?<=` / `(?<!` is not supported".to_string()
                } else {
                    format!("unterminated capture group name in `{t}`")
                };
                return Err(invalid(at, t, message));
            };
            let name = &t[name_start..end];
            if name.is_empty() || !name.bytes().all(|c| c == b'_' || c.is_ascii_alphanumeric()) {
                let construct = &t[..end + 1];
                let message = if t[2..].starts_with("<=") || t[2..].starts_with("<!") {
                    "lookbehind `(?<=` / `(?<!` is not supported".to_string()
                } else {
                    format!("invalid capture group name in `{construct}`: use one or more ASCII letters, digits or `_`")
                };
                return Err(invalid(at, construct, message));
            }
            self.frames.push(Frame::new(true, at, self.flags));
            return Ok(at + end + 1);
        }

        let mut flags = self.flags;
        let mut negate = false;
        let mut saw_flag = false;
        let mut j = at + 2;
        let bad = loop {
            let Some(c) = self.s[j..].chars().next() else {
                break None;
            };
            j += c.len_utf8();
            match c {
                'i' => flags.fold = !negate,
                'm' => flags.multi_line = !negate,
                's' => flags.dot_nl = !negate,
                'U' => flags.ungreedy = !negate,
                '-' if !negate => {
                    negate = true;
                    saw_flag = false;
                    continue;
                }
                ':' | ')' if !negate || saw_flag => {
                    if c == ':' {
                        self.frames.push(Frame::new(false, at, self.flags));
                    }
                    self.flags = flags;
                    return Ok(j);
                }
                _ => break Some(c),
            }
            saw_flag = true;
        };
        let construct = &self.s[at..j];
        let message = match bad {
            None => format!("unterminated group `{construct}`"),
            Some('=' | '!') if j == at + 3 => format!("lookahead `{construct}` is not supported"),
            Some('#') if j == at + 3 => "comments `(?#...)` are not supported".to_string(),
            Some('>') if j == at + 3 => "atomic groups `(?>...)` are not supported".to_string(),
            Some('P') if j == at + 3 => {
                "`(?P` must be followed by `<name>`; backreferences such as `(?P=name)` are not supported".to_string()
            }
            Some('-' | ')' | ':') => {
                format!("invalid flags `{construct}`: use at most one `-`, followed by at least one flag")
            }
            Some(c) if c.is_alphabetic() => {
                format!("unsupported flag `{c}` in `{construct}`: Go knows only the flags i, m, s and U")
            }
            Some(_) => format!("invalid or unsupported group syntax `{construct}`"),
        };
        Err(invalid(at, construct, message))
    }

    /// A backslash outside a class, at `at`.
    fn backslash(&mut self, at: usize) -> Result<usize, GoRegexError> {
        let b = self.s.as_bytes();
        if let Some(&c) = b.get(at + 1) {
            let look = match c {
                b'A' => Some(Look::BeginText),
                b'b' => Some(Look::WordBoundary),
                b'B' => Some(Look::NotWordBoundary),
                b'z' => Some(Look::EndText),
                _ => None,
            };
            if let Some(look) = look {
                self.push(Tree::leaf(Kind::Look(look)))?;
                return Ok(at + 2);
            }
            if c == b'C' {
                return Err(invalid(at, r"\C", r"`\C` (any byte) is not supported"));
            }
            if c == b'Q' {
                let rest = &self.s[at + 2..];
                let (lit, next) = match rest.find(r"\E") {
                    Some(k) => (&rest[..k], at + 2 + k + 2),
                    None => (rest, self.s.len()),
                };
                for ch in lit.chars() {
                    self.literal(u32::from(ch))?;
                }
                return Ok(next);
            }
            if c == b'p' || c == b'P' {
                let (item, next) = self.unicode_class(at)?;
                self.push_class(vec![item], false)?;
                return Ok(next);
            }
            if let Some((ranges, negated)) = perl_class(c) {
                self.push_class(vec![Item::Ascii { ranges, negated }], false)?;
                return Ok(at + 2);
            }
        }
        let (c, next) = self.escape(at, false)?;
        self.literal(c)?;
        Ok(next)
    }

    /// Go's `parseEscape` at `at` (a backslash): the code point and the offset after it.
    fn escape(&self, at: usize, in_class: bool) -> Result<(u32, usize), GoRegexError> {
        let s = self.s;
        let Some(c) = s[at + 1..].chars().next() else {
            return Err(invalid(at, r"\", "trailing backslash at the end of the pattern"));
        };
        let mut j = at + 1 + c.len_utf8();
        let b = s.as_bytes();
        let is_octal = |j: usize| b.get(j).is_some_and(|d| (b'0'..=b'7').contains(d));
        match c {
            '1'..='7' if !is_octal(j) => {}
            '0'..='7' => {
                let mut r = u32::from(c) - u32::from('0');
                for _ in 1..3 {
                    if !is_octal(j) {
                        break;
                    }
                    r = r * 8 + u32::from(b[j] - b'0');
                    j += 1;
                }
                return Ok((r, j));
            }
            'x' => {
                let hex = |ch: Option<char>| ch.and_then(|ch| ch.to_digit(16));
                let mut chars = s[j..].chars();
                match chars.next() {
                    None => {}
                    Some('{') => {
                        j += 1;
                        let mut r = 0u32;
                        let mut digits = 0;
                        while let Some(ch) = s[j..].chars().next() {
                            j += ch.len_utf8();
                            if ch == '}' {
                                if digits > 0 {
                                    return Ok((r, j));
                                }
                                break;
                            }
                            let Some(v) = hex(Some(ch)) else { break };
                            r = r * 16 + v;
                            if r > 0x10FFFF {
                                break;
                            }
                            digits += 1;
                        }
                    }
                    Some(first) => {
                        j += first.len_utf8();
                        let second = chars.next();
                        j += second.map_or(0, char::len_utf8);
                        if let (Some(x), Some(y)) = (hex(Some(first)), hex(second)) {
                            return Ok((x * 16 + y, j));
                        }
                    }
                }
                let construct = &s[at..j];
                return Err(invalid(
                    at,
                    construct,
                    format!(r"invalid hexadecimal escape `{construct}`: use `\xHH` or `\x{{H...}}` up to 10FFFF"),
                ));
            }
            'a' => return Ok((0x07, j)),
            'f' => return Ok((0x0C, j)),
            'n' => return Ok((0x0A, j)),
            'r' => return Ok((0x0D, j)),
            't' => return Ok((0x09, j)),
            'v' => return Ok((0x0B, j)),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => return Ok((u32::from(c), j)),
            _ => {}
        }
        let construct = &s[at..j];
        let message = match c {
            '1'..='9' | 'k' | 'g' => format!("`{construct}`: backreferences are not supported"),
            'C' => r"`\C` (any byte) is not supported".to_string(),
            'Z' => r"`\Z` is not supported; use `\z` for the end of the text".to_string(),
            'u' | 'U' => format!(r"`{construct}` escapes are not supported; write the code point as `\x{{...}}`"),
            'e' => r"`\e` is not supported; use `\x1B`".to_string(),
            'b' if in_class => r"`\b` is not allowed in a character class; use `\x08` for a backspace".to_string(),
            'A' | 'z' | 'B' | 'Q' | 'd' | 'D' | 's' | 'S' | 'w' | 'W' | 'p' | 'P' if in_class => {
                format!("`{construct}` cannot be used here in a character class")
            }
            'E' => r"`\E` without a `\Q` before it".to_string(),
            _ => format!("invalid escape sequence `{construct}`"),
        };
        Err(invalid(at, construct, message))
    }

    /// Go's `parseUnicodeClass` at `at` (`\p` or `\P`).
    fn unicode_class(&self, at: usize) -> Result<(Item, usize), GoRegexError> {
        let s = &self.s[at..];
        let mut negated = s.as_bytes()[1] == b'P';
        let (seq, name) = match s[2..].chars().next() {
            Some('{') => {
                let Some(end) = s.find('}') else {
                    return Err(invalid(at, s, format!("missing `}}` in the Unicode class `{s}`")));
                };
                (&s[..end + 1], &s[3..end])
            }
            c => {
                let seq = &s[..2 + c.map_or(0, char::len_utf8)];
                (seq, &seq[2..])
            }
        };
        let name = match name.strip_prefix('^') {
            Some(rest) => {
                negated = !negated;
                rest
            }
            None => name,
        };
        let Some(&(_, target, drop_new)) = lookup_unicode_name(name) else {
            let hint = if name.contains(['_', '-', ' ']) {
                " (Go looks names up ignoring case, `_`, `-` and spaces, so multi-word script names such as Old_Italic are not found)"
            } else {
                ""
            };
            return Err(invalid(at, seq, format!("unknown Unicode class `{seq}`{hint}")));
        };
        Ok((
            Item::Unicode {
                target,
                drop_new,
                negated,
            },
            at + seq.len(),
        ))
    }

    /// Go's `parseClass` at `at` (`[`): pushes the class and returns the offset after `]`.
    fn class(&mut self, at: usize) -> Result<usize, GoRegexError> {
        let s = self.s;
        let b = s.as_bytes();
        let mut j = at + 1;
        let negated = b.get(j) == Some(&b'^');
        if negated {
            j += 1;
        }
        let mut items = Vec::new();
        let mut lc_item = None;
        let mut first = true;
        while j >= b.len() || b[j] != b']' || first {
            first = false;
            let t = &s[j..];
            // A `[:` without a later `:]` is just a `[` (Go's parseNamedClass).
            if t.len() > 2
                && t.starts_with("[:")
                && let Some(k) = t[2..].find(":]")
            {
                let name = &t[..k + 4];
                let inner = &name[2..name.len() - 2];
                let (inner, neg) = match inner.strip_prefix('^') {
                    Some(rest) => (rest, true),
                    None => (inner, false),
                };
                let Some(&(_, ranges)) = POSIX.iter().find(|(n, _)| *n == inner) else {
                    return Err(invalid(j, name, format!("unknown POSIX class `{name}`")));
                };
                items.push(Item::Ascii { ranges, negated: neg });
                j += name.len();
                continue;
            }
            if t.len() >= 2 && (t.starts_with(r"\p") || t.starts_with(r"\P")) {
                let (item, next) = self.unicode_class(j)?;
                if self.flags.fold && matches!(item, Item::Unicode { target: "gc=LC", .. }) {
                    lc_item = Some((j, next));
                }
                items.push(item);
                j = next;
                continue;
            }
            if t.len() >= 2
                && t.starts_with('\\')
                && let Some((ranges, neg)) = perl_class(b[j + 1])
            {
                items.push(Item::Ascii { ranges, negated: neg });
                j += 2;
                continue;
            }
            let range_start = j;
            let (lo, next) = self.class_char(j, at)?;
            j = next;
            let mut hi = lo;
            if b.len() >= j + 2 && b[j] == b'-' && b[j + 1] != b']' {
                let (h, next) = self.class_char(j + 1, at)?;
                hi = h;
                j = next;
                if hi < lo {
                    let text = &s[range_start..j];
                    return Err(invalid(
                        range_start,
                        text,
                        format!("invalid character class range `{text}`"),
                    ));
                }
            }
            items.push(Item::Range(lo, hi));
        }
        if let Some((start, end)) = lc_item
            && items.len() > 1
        {
            let construct = &s[start..end];
            return Err(GoRegexError::Unsupported {
                offset: start,
                construct: construct.to_string(),
                message: format!(
                    "`{construct}` together with other items in a case-insensitive character class: Go does not case-fold this class and the combination cannot be reproduced; use it in a class of its own"
                ),
            });
        }
        self.push_class(items, negated)?;
        Ok(j + 1)
    }

    /// Go's `parseClassChar`: one (possibly escaped) character of the class opened at `class_at`.
    fn class_char(&self, j: usize, class_at: usize) -> Result<(u32, usize), GoRegexError> {
        match self.s[j..].chars().next() {
            None => Err(invalid(
                class_at,
                &self.s[class_at..],
                "missing closing `]` for the character class starting here",
            )),
            Some('\\') => self.escape(j, true),
            Some(c) => Ok((u32::from(c), j + c.len_utf8())),
        }
    }
}

/// Go's `parseRepeat` on `s` (starting with `{`): `(min, max, length)`, `max == -1` for `{n,}`,
/// `min == -1` when a number is too big; `None` when `s` is not a repetition (then `{` is literal).
fn parse_repeat(s: &str) -> Option<(i64, i64, usize)> {
    let b = s.as_bytes();
    let mut j = 1;
    let parse_int = |j: &mut usize| -> Option<i64> {
        let start = *j;
        if !b.get(start).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        if b[start] == b'0' && b.get(start + 1).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        let mut n: i64 = 0;
        while let Some(d) = b.get(*j).filter(|d| d.is_ascii_digit()) {
            if n >= 0 {
                n = if n >= 100_000_000 {
                    -1
                } else {
                    n * 10 + i64::from(d - b'0')
                };
            }
            *j += 1;
        }
        Some(n)
    };
    let mut min = parse_int(&mut j)?;
    let max;
    match b.get(j)? {
        b',' => {
            j += 1;
            match b.get(j)? {
                b'}' => max = -1,
                _ => {
                    max = parse_int(&mut j)?;
                    if max < 0 {
                        min = -1;
                    }
                }
            }
        }
        _ => max = min,
    }
    (b.get(j) == Some(&b'}')).then_some((min, max, j + 1))
}

/// `\d`, `\s`, `\w` and their negations, given the letter after the backslash.
fn perl_class(c: u8) -> Option<(&'static [(u8, u8)], bool)> {
    match c {
        b'd' => Some((DIGIT, false)),
        b'D' => Some((DIGIT, true)),
        b's' => Some((SPACE, false)),
        b'S' => Some((SPACE, true)),
        b'w' => Some((WORD, false)),
        b'W' => Some((WORD, true)),
        _ => None,
    }
}

/// Go's `canonicalName`: drops `_`, `-` and spaces, upper-cases the first remaining ASCII letter
/// and lower-cases the other ASCII letters.
fn canonical_name(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len());
    let mut first = true;
    for &c in name.as_bytes() {
        if matches!(c, b'_' | b'-' | b' ') {
            continue;
        }
        out.push(if first {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        first = false;
    }
    String::from_utf8(out).unwrap_or_default()
}

fn lookup_unicode_name(name: &str) -> Option<&'static (&'static str, &'static str, bool)> {
    let canon = canonical_name(name);
    UNICODE_NAMES
        .binary_search_by(|(n, _, _)| (*n).cmp(canon.as_str()))
        .ok()
        .map(|i| &UNICODE_NAMES[i])
}

fn fold_changed(lo: u32, hi: u32) -> bool {
    FOLD_CHANGED.iter().any(|&(a, b)| a <= hi && lo <= b)
}

fn is_surrogate(c: u32) -> bool {
    (0xD800..=0xDFFF).contains(&c)
}

/// Appends `c` so that it is one literal character in and outside classes (non-ASCII and
/// invisible characters as `\x{…}`).
fn push_char(out: &mut String, c: u32) {
    use std::fmt::Write as _;
    match char::from_u32(c) {
        Some(ch) if ch.is_ascii_alphanumeric() => out.push(ch),
        Some(ch) if ch.is_ascii_graphic() => out.push_str(&regex::escape(ch.encode_utf8(&mut [0; 4]))),
        _ => {
            let _ = write!(out, r"\x{{{c:X}}}");
        }
    }
}

fn push_ascii_ranges(out: &mut String, ranges: &[(u8, u8)]) {
    for &(lo, hi) in ranges {
        push_char(out, u32::from(lo));
        if hi != lo {
            out.push('-');
            push_char(out, u32::from(hi));
        }
    }
}

/// The set expression (for use inside brackets) for a `\p{…}` target, with Go's Unicode 15.0
/// content.
fn unicode_set(target: &str, drop_new: bool) -> String {
    match target {
        "Any" => r"\p{Any}".to_string(),
        "ASCII" => r"\x{0}-\x{7F}".to_string(),
        // Surrogates never occur in a Rust string (nor in text Go decodes).
        "gc=Cs" => NOTHING.to_string(),
        // Go's unassigned code points include those assigned only in Unicode 16.0.
        "gc=C" | "gc=Cn" => format!(r"\p{{{target}}}{NEW_IN_16}"),
        // U+1171E was a non-spacing mark in Unicode 15.0 and is a spacing mark in 16.0.
        "gc=Mn" => format!(r"[\p{{gc=Mn}}--[{NEW_IN_16}]]\x{{1171E}}"),
        "gc=Mc" => format!(r"\p{{gc=Mc}}--[{NEW_IN_16}\x{{1171E}}]"),
        _ if drop_new => format!(r"\p{{{target}}}--[{NEW_IN_16}]"),
        _ => format!(r"\p{{{target}}}"),
    }
}

/// Writes the `regex` crate pattern for a [`Tree`].
struct Emitter;

/// How loosely an emitted piece binds, to know where `(?:…)` is needed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prec {
    Atom,
    Concat,
    Alternate,
}

impl Emitter {
    fn emit_root(t: &Tree) -> String {
        let fold = Self::fold_hint(t) == Some(true);
        let (s, _) = Self::emit(t, fold);
        if fold { format!("(?i:{s})") } else { s }
    }

    /// Whether a leaf must be matched with (`Some(true)`) or without (`Some(false)`) case folding;
    /// `None` when folding makes no difference.
    fn leaf_fold(t: &Tree) -> Option<bool> {
        match &t.kind {
            Kind::Literal { c, fold } => {
                let caseless = (*c < 0x80 && !(*c as u8).is_ascii_alphabetic()) || is_surrogate(*c);
                if caseless {
                    None
                } else {
                    Some(*fold && !fold_changed(*c, *c))
                }
            }
            Kind::Class(c) => {
                if c.caseless() {
                    None
                } else {
                    Some(c.fold)
                }
            }
            _ => None,
        }
    }

    /// The folding the first case-sensitive leaf of `t` wants, to group runs of them.
    fn fold_hint(t: &Tree) -> Option<bool> {
        match &t.kind {
            Kind::Literal { .. } | Kind::Class(_) => Self::leaf_fold(t),
            _ => t.children().iter().find_map(Self::fold_hint),
        }
    }

    /// Emits `t` for a context where case folding is `fold`.
    fn emit(t: &Tree, fold: bool) -> (String, Prec) {
        match &t.kind {
            Kind::Empty => (String::new(), Prec::Concat),
            Kind::Literal { c, .. } => {
                let mut s = String::new();
                if is_surrogate(*c) {
                    s.push_str(NOTHING);
                } else {
                    push_char(&mut s, *c);
                }
                (Self::with_fold(s, Self::leaf_fold(t), fold), Prec::Atom)
            }
            Kind::Class(c) => {
                let (s, want) = Self::class(c);
                (Self::with_fold(s, want, fold), Prec::Atom)
            }
            Kind::AnyCharNotNl => (r"[^\n]".to_string(), Prec::Atom),
            Kind::AnyChar => ("(?s:.)".to_string(), Prec::Atom),
            Kind::Look(look) => {
                let s = match look {
                    Look::BeginText => r"\A",
                    Look::EndText => r"\z",
                    Look::BeginLine => "(?m:^)",
                    Look::EndLine => "(?m:$)",
                    Look::WordBoundary => r"(?-u:\b)",
                    Look::NotWordBoundary => r"(?-u:\B)",
                };
                (s.to_string(), Prec::Atom)
            }
            Kind::Capture(sub) => (format!("({})", Self::emit(sub, fold).0), Prec::Atom),
            Kind::Repeat { sub, op, greedy } => {
                use std::fmt::Write as _;
                let (inner, prec) = Self::emit(sub, fold);
                let mut s = if prec == Prec::Atom {
                    inner
                } else {
                    format!("(?:{inner})")
                };
                let _ = match op {
                    RepeatOp::Star => write!(s, "*"),
                    RepeatOp::Plus => write!(s, "+"),
                    RepeatOp::Quest => write!(s, "?"),
                    RepeatOp::Counted { min, max: None } => write!(s, "{{{min},}}"),
                    RepeatOp::Counted { min, max: Some(max) } if min == max => write!(s, "{{{min}}}"),
                    RepeatOp::Counted { min, max: Some(max) } => write!(s, "{{{min},{max}}}"),
                };
                if !greedy {
                    s.push('?');
                }
                (s, Prec::Concat)
            }
            Kind::Concat(items) => (Self::concat(items, fold), Prec::Concat),
            Kind::Alternate(branches) => {
                let parts: Vec<String> = branches.iter().map(|b| Self::emit(b, fold).0).collect();
                (parts.join("|"), Prec::Alternate)
            }
        }
    }

    /// Wraps a leaf in `(?i:…)` or `(?-i:…)` when the context's folding is not the one it wants.
    fn with_fold(s: String, want: Option<bool>, fold: bool) -> String {
        match want {
            Some(true) if !fold => format!("(?i:{s})"),
            Some(false) if fold => format!("(?-i:{s})"),
            _ => s,
        }
    }

    /// A concatenation, grouping consecutive items that want the same folding into one
    /// `(?i:…)` / `(?-i:…)` group.
    fn concat(items: &[Tree], fold: bool) -> String {
        let mut out = String::new();
        let mut run = String::new();
        let mut run_fold = fold;
        let flush = |out: &mut String, run: &mut String, run_fold: bool| {
            if run.is_empty() {
            } else if run_fold == fold {
                out.push_str(run);
            } else {
                out.push_str(if run_fold { "(?i:" } else { "(?-i:" });
                out.push_str(run);
                out.push(')');
            }
            run.clear();
        };
        for item in items {
            if let Some(want) = Self::fold_hint(item)
                && want != run_fold
            {
                flush(&mut out, &mut run, run_fold);
                run_fold = want;
            }
            let (s, prec) = Self::emit(item, run_fold);
            if prec == Prec::Alternate {
                run.push_str("(?:");
                run.push_str(&s);
                run.push(')');
            } else {
                run.push_str(&s);
            }
        }
        flush(&mut out, &mut run, run_fold);
        out
    }

    /// A character class and the folding it wants. Under `(?i)`, a class containing any of the
    /// [`FOLD_CHANGED`] code points is split: those code points are matched without folding (Go
    /// has no fold partner for them), everything else with it.
    fn class(c: &Class) -> (String, Option<bool>) {
        let mut content = String::new();
        for item in &c.items {
            Self::item(item, &mut content);
        }
        if content.is_empty() {
            content.push_str(NOTHING);
        }
        let split = c.fold
            && c.items.iter().any(|item| match item {
                Item::Range(lo, hi) => fold_changed(*lo, *hi),
                Item::Ascii { .. } => false,
                Item::Unicode { .. } => true,
            });
        if split {
            let changed = {
                let mut s = String::new();
                for &(lo, hi) in FOLD_CHANGED {
                    Self::item(&Item::Range(lo, hi), &mut s);
                }
                s
            };
            let s = if c.negated {
                format!("(?:[[^{content}]--[{changed}]]|(?-i:[[{changed}]--[{content}]]))")
            } else {
                format!("(?:[[{content}]--[{changed}]]|(?-i:[[{content}]&&[{changed}]]))")
            };
            return (s, Some(true));
        }
        let caret = |negated: bool| if negated { "^" } else { "" };
        let s = match c.items.as_slice() {
            [Item::Ascii { ranges, negated: true }] => {
                let mut inner = String::new();
                push_ascii_ranges(&mut inner, ranges);
                format!("[{}{inner}]", caret(!c.negated))
            }
            [
                Item::Unicode {
                    target,
                    drop_new,
                    negated,
                },
            ] => {
                format!("[{}{}]", caret(*negated != c.negated), unicode_set(target, *drop_new))
            }
            _ => format!("[{}{content}]", caret(c.negated)),
        };
        (s, if c.caseless() { None } else { Some(c.fold) })
    }

    /// Appends one class item (for use inside brackets).
    fn item(item: &Item, out: &mut String) {
        match item {
            Item::Range(lo, hi) => {
                // Go accepts surrogates in ranges; they can never match, so they are left out.
                let pieces = [(*lo, (*hi).min(0xD7FF)), ((*lo).max(0xE000), *hi)];
                for (a, b) in pieces {
                    if a > b {
                        continue;
                    }
                    push_char(out, a);
                    if b != a {
                        out.push('-');
                        push_char(out, b);
                    }
                }
            }
            Item::Ascii { ranges, negated: false } => push_ascii_ranges(out, ranges),
            Item::Ascii { ranges, negated: true } => {
                out.push_str("[^");
                push_ascii_ranges(out, ranges);
                out.push(']');
            }
            Item::Unicode {
                target,
                drop_new,
                negated,
            } => {
                out.push('[');
                if *negated {
                    out.push('^');
                }
                out.push_str(&unicode_set(target, *drop_new));
                out.push(']');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's verdict on a pattern: the inputs with their match results, or the compile error.
    type GoVerdict = Result<&'static [(&'static str, bool)], &'static str>;

    /// `(pattern, Go's verdict)`: `Ok` lists `(input, regexp.MatchString result)`, `Err` is the text
    /// of the error `regexp.Compile` returned. Recorded verbatim from Go's `regexp` package, go1.26.8
    /// linux/amd64 (Unicode 15.0.0), by a small Go program that compiled every pattern and matched
    /// it against the listed inputs.
    #[rustfmt::skip]
    const GO_TABLE: &[(&str, GoVerdict)] = &[
    (r"\Q.*\E", Ok(&[(r".*", true), (r"ab", false), (r"x.*y", true), ("", false)])),
    (r"\Qa\E.b", Ok(&[(r"axb", true), (r"a.b", true), (r"ab", false), ("a\nb", false)])),
    (r"\Qab", Ok(&[(r"ab", true), (r"a", false), (r"xaby", true)])),
    (r"\Q\E", Ok(&[("", true), (r"a", true)])),
    (r"\Q\E*", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"a\Q\E*", Ok(&[("", true), (r"a", true), (r"aaa", true), (r"b", true)])),
    (r"\Qab\E*", Ok(&[(r"a", true), (r"ab", true), (r"abbb", true), (r"b", false)])),
    (r"\Qab\E{2}", Ok(&[(r"ab", false), (r"abb", true), (r"abab", false)])),
    (r"\Q\\E", Ok(&[(r"\", true), (r"a", false)])),
    (r"\Qa\Eb\E", Err(r"error parsing regexp: invalid escape sequence: `\E`")),
    (r"\Q[\E", Ok(&[(r"[", true), (r"a", false)])),
    ("\\Q\u{e9}+\\E", Ok(&[("\u{e9}+", true), ("\u{e9}\u{e9}", false)])),
    (r"[\Q]", Err(r"error parsing regexp: invalid escape sequence: `\Q`")),
    (r"x\Q", Ok(&[(r"x", true)])),
    (r"\Q(?i)A\E", Ok(&[(r"(?i)A", true), (r"a", false)])),
    (r"(?i)\Qab\E", Ok(&[(r"AB", true), (r"ab", true), (r"aB", true)])),
    (r"\E", Err(r"error parsing regexp: invalid escape sequence: `\E`")),
    (r"\C", Err(r"error parsing regexp: invalid escape sequence: `\C`")),
    (r"a\C*", Err(r"error parsing regexp: invalid escape sequence: `\C`")),
    (r"[\C]", Err(r"error parsing regexp: invalid escape sequence: `\C`")),
    (r"(?U)a+", Ok(&[(r"a", true), (r"aa", true), ("", false), (r"b", false)])),
    (r"(?U)a+?", Ok(&[(r"a", true), (r"aa", true)])),
    (r"(?i)ABC", Ok(&[(r"abc", true), (r"AbC", true), (r"ABD", false), (r"xaBcx", true)])),
    (r"(?s).", Ok(&[("\n", true), (r"a", true), ("", false)])),
    (r".", Ok(&[("\n", false), (r"a", true), ("", false), ("\r", true), ("\u{e9}", true), ("\u{1f600}", true), ("\x00", true)])),
    (r"(?s:.)x", Ok(&[("\nx", true), (r"x", false)])),
    (r"(?m)^x$", Ok(&[("a\nx\nb", true), (r"x", true), (r"ax", false), ("x\n", true), ("\nx", true), ("a\r\nx\r\n", false)])),
    (r"(?x) a b", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?x`")),
    (r"(?u)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?u`")),
    (r"(?R)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?R`")),
    (r"(?i)", Ok(&[("", true), (r"a", true)])),
    (r"(?)", Ok(&[("", true), (r"a", true)])),
    (r"(?)a", Ok(&[(r"a", true), (r"b", false)])),
    (r"a(?)*", Ok(&[("", true), (r"aa", true), (r"b", true)])),
    (r"(?:)", Ok(&[("", true), (r"a", true)])),
    (r"(?i-i)a", Ok(&[(r"a", true), (r"A", false)])),
    (r"(?ii)a", Ok(&[(r"A", true)])),
    (r"(?i-)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?i-)`")),
    (r"(?-)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?-)`")),
    (r"(?--i)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?--`")),
    (r"(?i-s-m)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?i-s-`")),
    (r"(?i-sm)a.", Ok(&[("A\n", false), (r"Ab", true)])),
    (r"(?i:a)b", Ok(&[(r"AB", false), (r"Ab", true), (r"ab", true)])),
    (r"(?-i)a", Ok(&[(r"a", true), (r"A", false)])),
    (r"(?i)(?-i)a", Ok(&[(r"a", true), (r"A", false)])),
    (r"(?i)a(?-i:b)c", Ok(&[(r"AbC", true), (r"ABC", false)])),
    (r"(?i-s:a.)", Ok(&[("A\n", false), (r"Ab", true)])),
    (r"(?smiU)a.$", Ok(&[("A\n", true), ("xA\n\n", true)])),
    (r"(?sm-i)A.$", Ok(&[("A\n", true), ("a\n\n", false)])),
    (r"(?i)a|b", Ok(&[(r"A", true), (r"B", true)])),
    (r"a(?i)b|c", Ok(&[(r"C", true), (r"aB", true), (r"AB", false)])),
    (r"(?:a(?i)b|c)d", Ok(&[(r"Cd", true), (r"CD", false), (r"aBd", true)])),
    (r"(a(?i)b)c", Ok(&[(r"aBC", false), (r"aBc", true), (r"AbC", false)])),
    (r"a(?i)*", Ok(&[("", true), (r"aaa", true), (r"A", true)])),
    (r"a(?i)*B", Ok(&[(r"b", true), (r"aaB", true), (r"AB", true)])),
    (r"(?i)*", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"x|(?i)*", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"((?i)*)", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"a(?i)", Ok(&[(r"a", true), (r"A", false)])),
    (r"(?i", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?i`")),
    (r"(?", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?`")),
    (r"(?z)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?z`")),
    (r"(?i)(?m)(?s)^a.$", Ok(&[("x\nA\n", true)])),
    (r"(?P>x)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?P`")),
    (r"(?#c)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?#`")),
    (r"(?=a)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?=`")),
    (r"(?!a)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?!`")),
    (r"(?<=a)b", Err(r"error parsing regexp: invalid named capture: `(?<=a)b`")),
    (r"(?<!a)b", Err(r"error parsing regexp: invalid named capture: `(?<!a)b`")),
    (r"(?>a)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?>`")),
    (r"(?|a)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?|`")),
    (r"(?'n'a)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?'`")),
    (r"(?^i)a", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?^`")),
    (r"(?i:)", Ok(&[("", true)])),
    (r"(?i:a", Err(r"error parsing regexp: missing closing ): `(?i:a`")),
    (r"(?i)k", Ok(&[(r"k", true), (r"K", true), ("\u{212a}", true), (r"x", false)])),
    (r"(?i)\x{212A}", Ok(&[(r"k", true), (r"K", true)])),
    (r"(?i)s", Ok(&[(r"S", true), ("\u{17f}", true)])),
    ("(?i)\u{df}", Ok(&[("\u{1e9e}", true), (r"ss", false), (r"SS", false)])),
    (r"(?i)i", Ok(&[(r"I", true), ("\u{130}", false), ("\u{131}", false)])),
    ("(?i)\u{130}", Ok(&[(r"i", false), (r"I", false), ("\u{130}", true)])),
    ("(?i)\u{131}", Ok(&[(r"I", false), (r"i", false), ("\u{131}", true)])),
    ("(?i)\u{3c3}", Ok(&[("\u{3c2}", true), ("\u{3a3}", true), ("\u{3c3}", true)])),
    ("(?i)\u{1c5}", Ok(&[("\u{1c4}", true), ("\u{1c6}", true), ("\u{1c5}", true)])),
    ("(?i)\u{b5}", Ok(&[("\u{3bc}", true), ("\u{39c}", true)])),
    ("(?i)\u{264}", Ok(&[("\u{a7cb}", false), ("\u{264}", true)])),
    (r"(?i)\x{A7CB}", Ok(&[("\u{264}", false), ("\u{a7cb}", true)])),
    ("(?i)\u{390}", Ok(&[("\u{1fd3}", false), ("\u{390}", true)])),
    (r"(?i)\x{FB05}", Ok(&[("\u{fb06}", false), ("\u{fb05}", true)])),
    ("(?i)[\u{264}]", Ok(&[("\u{a7cb}", false), ("\u{264}", true)])),
    ("(?i)[\u{260}-\u{265}]", Ok(&[("\u{a7cb}", false), ("\u{264}", true), ("\u{193}", true)])),
    ("(?i)[^\u{264}]", Ok(&[("\u{a7cb}", true), ("\u{264}", false), (r"a", true)])),
    ("(?i)[^\u{260}-\u{265}]", Ok(&[("\u{a7cb}", true), ("\u{264}", false), ("\u{193}", false), (r"a", true)])),
    (r"(?i)[\x{A7CB}]", Ok(&[("\u{264}", false), ("\u{a7cb}", true)])),
    (r"(?i)[^\x{A7CB}]", Ok(&[("\u{264}", true), ("\u{a7cb}", false)])),
    (r"(?i)[a-z]", Ok(&[(r"K", true), ("\u{17f}", true), ("\u{212a}", true), (r"1", false)])),
    (r"(?i)[k]", Ok(&[("\u{212a}", true), (r"K", true)])),
    (r"(?i)[^k]", Ok(&[(r"K", false), ("\u{212a}", false), (r"a", true)])),
    (r"(?i)[^a-z]", Ok(&[(r"K", false), ("\u{17f}", false), ("\u{212a}", false), (r"1", true)])),
    (r"(?i)\w", Ok(&[(r"K", true), ("\u{17f}", true), ("\u{212a}", true), ("\u{e9}", false)])),
    (r"(?i)\W", Ok(&[(r"K", false), ("\u{17f}", false), ("\u{212a}", false), ("\u{e9}", true), (r"-", true)])),
    (r"(?i)[\W]", Ok(&[("\u{17f}", false), ("\u{212a}", false), ("\u{e9}", true)])),
    (r"(?i)[^\w]", Ok(&[("\u{17f}", false), ("\u{212a}", false), ("\u{e9}", true)])),
    (r"(?i)\S", Ok(&[("\u{17f}", true)])),
    (r"(?i)[[:upper:]]", Ok(&[(r"a", true), ("\u{17f}", true), ("\u{212a}", true), (r"1", false)])),
    (r"(?i)[[:^lower:]]", Ok(&[(r"A", false), ("\u{17f}", false), ("\u{212a}", false), (r"1", true)])),
    (r"(?i)[[:word:]]", Ok(&[("\u{17f}", true), ("\u{212a}", true)])),
    (r"(?i)\p{Lu}", Ok(&[(r"a", true), (r"A", true), (r"1", false), ("\u{264}", false)])),
    (r"(?i)\P{Lu}", Ok(&[(r"a", false), (r"A", false), (r"1", true)])),
    (r"(?i)[^\p{Lu}]", Ok(&[(r"a", false), (r"A", false), (r"1", true)])),
    (r"(?i)\p{Ascii}", Ok(&[("\u{17f}", true), ("\u{212a}", true), ("\u{e9}", false)])),
    (r"(?i)\P{Ascii}", Ok(&[("\u{17f}", false), ("\u{212a}", false), ("\u{e9}", true), (r"k", false)])),
    (r"(?i)\p{Latin}", Ok(&[("\u{264}", true), ("\u{a7cb}", false), ("\u{19b}", true), ("\u{a7dc}", false)])),
    (r"(?i)\P{Latin}", Ok(&[("\u{264}", false), ("\u{a7cb}", true), ("\u{19b}", false), ("\u{a7dc}", true), (r"1", true)])),
    (r"(?i)\p{Greek}", Ok(&[("\u{390}", true), ("\u{1fd3}", true), ("\u{345}", true)])),
    (r"(?i)[\p{Greek}\d]", Ok(&[("\u{390}", true), ("\u{1fd3}", true), (r"5", true)])),
    (r"(?i)[^\p{Greek}\d]", Ok(&[("\u{390}", false), ("\u{1fd3}", false), (r"5", false), (r"a", true)])),
    (r"(?i)[\P{Latin}a]", Ok(&[("\u{264}", false), ("\u{a7cb}", true), (r"A", true), (r"b", false)])),
    (r"(?i)\p{Ll}", Ok(&[("\u{a7cb}", false), ("\u{264}", true), (r"A", true)])),
    (r"(?i)\p{Cn}", Ok(&[("\u{a7cb}", true), ("\u{10d50}", true)])),
    (r"(?i)\p{Any}", Ok(&[(r"a", true)])),
    (r"(?i)\p{LC}", Ok(&[("\u{345}", false), (r"a", true), (r"A", true), ("\u{3b9}", true), (r"1", false)])),
    (r"(?i)\P{LC}", Ok(&[("\u{345}", true), (r"a", false), (r"1", true)])),
    (r"(?i)[^\p{LC}]", Ok(&[("\u{345}", true), (r"a", false)])),
    (r"(?i)[\p{LC}1]", Ok(&[("\u{345}", false), (r"a", true), (r"1", true)])),
    (r"(?i)[\x{10D50}-\x{10D55}]", Ok(&[("\u{10d50}", true), ("\u{10d70}", false)])),
    (r"[[:alpha:]]+", Ok(&[(r"abc", true), (r"123", false), ("\u{e9}", false), ("", false)])),
    (r"[[:^digit:]]", Ok(&[(r"1", false), (r"a", true), ("\u{663}", true)])),
    (r"[[:alnum:]]", Ok(&[(r"a", true), (r"1", true), (r"_", false), ("\u{e9}", false)])),
    (r"[[:ascii:]]", Ok(&[("\x7f", true), ("\u{e9}", false)])),
    (r"[[:blank:]]", Ok(&[(r" ", true), ("\t", true), ("\n", false), ("\u{a0}", false)])),
    (r"[[:cntrl:]]", Ok(&[("\x00", true), ("\x1f", true), ("\x7f", true), (r" ", false), ("\u{85}", false)])),
    (r"[[:digit:]]", Ok(&[(r"5", true), ("\u{663}", false)])),
    (r"[[:graph:]]", Ok(&[(r"!", true), (r"~", true), (r" ", false), ("\u{e9}", false)])),
    (r"[[:lower:]]", Ok(&[(r"a", true), (r"A", false), ("\u{e9}", false)])),
    (r"[[:print:]]", Ok(&[(r" ", true), (r"~", true), ("\x7f", false), ("\u{e9}", false)])),
    (r"[[:punct:]]", Ok(&[(r"!", true), (r"/", true), (r":", true), (r"@", true), (r"[", true), (r"`", true), (r"{", true), (r"~", true), (r"a", false), ("\u{a1}", false)])),
    (r"[[:space:]]", Ok(&[(r" ", true), ("\t", true), ("\n", true), ("\x0b", true), ("\x0c", true), ("\r", true), ("\u{a0}", false), ("\u{85}", false)])),
    (r"[[:upper:]]", Ok(&[(r"A", true), (r"a", false), ("\u{c9}", false)])),
    (r"[[:word:]]", Ok(&[(r"_", true), (r"a", true), ("\u{e9}", false)])),
    (r"[[:xdigit:]]", Ok(&[(r"f", true), (r"F", true), (r"g", false)])),
    (r"[[:foo:]]", Err(r"error parsing regexp: invalid character class range: `[:foo:]`")),
    (r"[[:alpha:]", Err(r"error parsing regexp: missing closing ]: `[[:alpha:]`")),
    (r"[:alpha:]", Ok(&[(r"a", true), (r":", true), (r"x", false), (r"p", true)])),
    (r"[[:alpha]]", Ok(&[(r"a]", true), (r":]", true), (r"a", false)])),
    (r"[[=a=]]", Ok(&[(r"a]", true), (r"=]", true), (r"a", false)])),
    (r"[[.a.]]", Ok(&[(r"a]", true), (r".]", true)])),
    (r"[[:a]b:]]", Err(r"error parsing regexp: invalid character class range: `[:a]b:]`")),
    (r"[[:alpha:]-z]", Ok(&[(r"-", true), (r"z", true), (r"a", true), (r"5", false)])),
    (r"[a-[:alpha:]]", Err(r"error parsing regexp: invalid character class range: `a-[`")),
    (r"[^[:alpha:]]", Ok(&[(r"a", false), (r"1", true)])),
    (r"[[:alpha:][:digit:]]", Ok(&[(r"a", true), (r"1", true), (r"-", false)])),
    (r"[[:ALPHA:]]", Err(r"error parsing regexp: invalid character class range: `[:ALPHA:]`")),
    (r"[[:^space:]]", Ok(&[(r" ", false), (r"a", true)])),
    (r"\pL", Ok(&[(r"a", true), ("\u{e9}", true), (r"1", false), ("\u{a7cb}", false), ("\u{10d50}", false)])),
    (r"\pl", Ok(&[(r"a", true)])),
    (r"\p{Greek}", Ok(&[("\u{3b1}", true), (r"a", false), ("\u{3a9}", true)])),
    (r"\PL", Ok(&[(r"a", false), (r"1", true), ("\u{e9}", false)])),
    (r"\p{L}", Ok(&[("\u{a7cb}", false)])),
    (r"\p{Lu}", Ok(&[(r"A", true), (r"a", false), ("\u{a7cb}", false), ("\u{a7dc}", false)])),
    (r"\p{Cn}", Ok(&[("\u{a7cb}", true), ("\u{10d50}", true), ("\u{e0080}", true), (r"a", false)])),
    (r"\P{Cn}", Ok(&[("\u{a7cb}", false), (r"a", true)])),
    (r"\pC", Ok(&[("\u{a7cb}", true), ("\x00", true), (r"a", false)])),
    (r"\p{Assigned}", Ok(&[("\u{a7cb}", false), (r"a", true), ("\u{e0080}", false)])),
    (r"\p{Any}", Ok(&[(r"a", true), ("\u{10ffff}", true)])),
    (r"\P{Any}", Ok(&[(r"a", false), ("", false)])),
    (r"\p{ASCII}", Ok(&[(r"a", true), ("\u{e9}", false)])),
    (r"\p{Ascii}", Ok(&[(r"a", true)])),
    (r"\p{LC}", Ok(&[(r"a", true), ("\u{1c5}", true), ("\u{aa}", false), ("\u{345}", false)])),
    (r"\p{lc}", Ok(&[(r"a", true)])),
    (r"\p{L&}", Err(r"error parsing regexp: invalid character class range: `\p{L&}`")),
    (r"\p{Cs}", Ok(&[(r"a", false), ("\u{fffd}", false)])),
    (r"\P{Cs}", Ok(&[(r"a", true)])),
    (r"\p{Co}", Ok(&[("\u{e000}", true), (r"a", false)])),
    (r"\p{greek}", Ok(&[("\u{3b1}", true)])),
    (r"\p{GREEK}", Ok(&[("\u{3b1}", true)])),
    (r"\p{Old_Italic}", Err(r"error parsing regexp: invalid character class range: `\p{Old_Italic}`")),
    (r"\p{OldItalic}", Err(r"error parsing regexp: invalid character class range: `\p{OldItalic}`")),
    (r"\p{Letter}", Ok(&[(r"a", true), (r"1", false)])),
    (r"\p{letter}", Ok(&[(r"a", true)])),
    (r"\p{Uppercase_Letter}", Ok(&[(r"A", true), (r"a", false)])),
    (r"\p{uppercase letter}", Ok(&[(r"A", true)])),
    (r"\p{Digit}", Ok(&[("\u{663}", true), (r"a", false)])),
    (r"\p{digit}", Ok(&[(r"5", true)])),
    (r"\p{Decimal_Number}", Ok(&[(r"5", true)])),
    (r"\p{Cntrl}", Ok(&[("\x00", true)])),
    (r"\p{Punct}", Ok(&[(r"!", true), (r"a", false)])),
    (r"\p{Alphabetic}", Err(r"error parsing regexp: invalid character class range: `\p{Alphabetic}`")),
    (r"\p{Alpha}", Err(r"error parsing regexp: invalid character class range: `\p{Alpha}`")),
    (r"\p{White_Space}", Err(r"error parsing regexp: invalid character class range: `\p{White_Space}`")),
    (r"\p{sc=Greek}", Err(r"error parsing regexp: invalid character class range: `\p{sc=Greek}`")),
    (r"\p{gc=L}", Err(r"error parsing regexp: invalid character class range: `\p{gc=L}`")),
    (r"\p{Grek}", Err(r"error parsing regexp: invalid character class range: `\p{Grek}`")),
    (r"\p{Zinh}", Err(r"error parsing regexp: invalid character class range: `\p{Zinh}`")),
    (r"\p{Garay}", Err(r"error parsing regexp: invalid character class range: `\p{Garay}`")),
    (r"\p{Han}", Ok(&[("\u{4e2d}", true), (r"a", false), ("\u{2ebf0}", false)])),
    (r"\p{Latin}", Ok(&[(r"a", true), ("\u{a7cb}", false), ("\u{264}", true)])),
    (r"\p{Common}", Ok(&[(r"1", true), (r"a", false)])),
    (r"\p{Inherited}", Ok(&[("\u{300}", true)])),
    (r"\p{Mn}", Ok(&[("\u{300}", true), (r"a", false)])),
    (r"\p{Nd}", Ok(&[("\u{663}", true), (r"5", true), (r"a", false)])),
    (r"\p{N}", Ok(&[("\u{bd}", true)])),
    (r"\p{Z}", Ok(&[(r" ", true), ("\u{2028}", true)])),
    (r"\p{Greek", Err(r"error parsing regexp: invalid character class range: `\p{Greek`")),
    (r"\p{}", Err(r"error parsing regexp: invalid character class range: `\p{}`")),
    (r"\p", Err(r"error parsing regexp: invalid character class range: `\p`")),
    ("\\p\u{e9}", Err("error parsing regexp: invalid character class range: `\\p\u{e9}`")),
    (r"\pZ", Ok(&[(r" ", true)])),
    (r"\p{^Greek}", Ok(&[("\u{3b1}", false), (r"a", true)])),
    (r"\P{^Greek}", Ok(&[("\u{3b1}", true), (r"a", false)])),
    (r"\p^L", Err(r"error parsing regexp: invalid character class range: `\p^`")),
    (r"[\pL]", Ok(&[(r"a", true), (r"1", false)])),
    (r"[^\pL]", Ok(&[(r"a", false), (r"1", true)])),
    (r"[\PL]", Ok(&[(r"a", false), (r"1", true)])),
    (r"[^\PL]", Ok(&[(r"a", true), (r"1", false)])),
    (r"[\pL\d]", Ok(&[(r"a", true), (r"1", true), (r"-", false)])),
    (r"[\p{Greek}a-c]", Ok(&[("\u{3b1}", true), (r"b", true), (r"d", false)])),
    (r"[\pL-z]", Ok(&[(r"-", true), (r"5", false)])),
    (r"[\p{^Greek}]", Ok(&[("\u{3b1}", false), (r"a", true)])),
    (r"\p{Nko}", Ok(&[("\u{7c0}", true)])),
    (r"\p{SignWriting}", Err(r"error parsing regexp: invalid character class range: `\p{SignWriting}`")),
    (r"\p{Kawi}", Ok(&[("\u{11f5a}", false), ("\u{11f00}", true)])),
    (r"a{,2}", Ok(&[(r"a{,2}", true), (r"aa", false), ("", false), (r"a{,2", false)])),
    (r"a{2,}", Ok(&[(r"a", false), (r"aa", true), (r"aaaa", true)])),
    (r"a{2}", Ok(&[(r"a", false), (r"aa", true), (r"aaa", true)])),
    (r"a{1001}", Err(r"error parsing regexp: invalid repeat count: `{1001}`")),
    (r"a{1000}", Ok(&[(r"a", false), (r"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true)])),
    (r"a{1000,}", Ok(&[(r"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false), (r"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", true)])),
    (r"a{0,1000}", Ok(&[("", true)])),
    (r"a{0,1001}", Err(r"error parsing regexp: invalid repeat count: `{0,1001}`")),
    (r"a{1001,}", Err(r"error parsing regexp: invalid repeat count: `{1001,}`")),
    (r"a{2,1}", Err(r"error parsing regexp: invalid repeat count: `{2,1}`")),
    (r"a{2,2}", Ok(&[(r"aa", true), (r"a", false)])),
    (r"a{02}", Ok(&[(r"a{02}", true), (r"aa", false)])),
    (r"a{2,02}", Ok(&[(r"a{2,02}", true), (r"aa", false)])),
    (r"a{00}", Ok(&[(r"a{00}", true)])),
    (r"a{0}", Ok(&[("", true), (r"b", true)])),
    (r"a{0,0}b", Ok(&[(r"b", true), (r"ab", true)])),
    (r"a{0}b", Ok(&[(r"b", true)])),
    (r"a{ 2}", Ok(&[(r"a{ 2}", true), (r"aa", false)])),
    (r"a{2 }", Ok(&[(r"a{2 }", true), (r"aa", false)])),
    (r"a{2, 3}", Ok(&[(r"a{2, 3}", true), (r"aaa", false)])),
    (r"a{-1}", Ok(&[(r"a{-1}", true)])),
    (r"a{x}", Ok(&[(r"a{x}", true)])),
    (r"a{}", Ok(&[(r"a{}", true)])),
    (r"a{,}", Ok(&[(r"a{,}", true)])),
    (r"a{", Ok(&[(r"a{", true), (r"a", false)])),
    (r"a{1", Ok(&[(r"a{1", true), (r"a", false)])),
    (r"a{1,", Ok(&[(r"a{1,", true), (r"a", false)])),
    (r"a{1,2", Ok(&[(r"a{1,2", true), (r"aa", false)])),
    (r"{", Ok(&[(r"{", true)])),
    (r"}", Ok(&[(r"}", true)])),
    (r"a}", Ok(&[(r"a}", true)])),
    (r"{}", Ok(&[(r"{}", true)])),
    (r"{2}", Err(r"error parsing regexp: missing argument to repetition operator: `{2}`")),
    (r"{2", Ok(&[(r"{2", true)])),
    (r"x{2}{3}", Err(r"error parsing regexp: invalid nested repetition operator: `{2}{3}`")),
    (r"(x{2}){3}", Ok(&[(r"xxxxxx", true), (r"xxxxx", false)])),
    (r"x{2}{", Ok(&[(r"xx{", true), (r"x{", false)])),
    (r"a{99999999999}", Err(r"error parsing regexp: invalid repeat count: `{99999999999}`")),
    (r"a{1,99999999999}", Err(r"error parsing regexp: invalid repeat count: `{1,99999999999}`")),
    (r"a{99999999}", Err(r"error parsing regexp: invalid repeat count: `{99999999}`")),
    (r"a{100000000}", Err(r"error parsing regexp: invalid repeat count: `{100000000}`")),
    (r"a{1000}b{1000}", Ok(&[(r"ab", false)])),
    (r"(?:a{2}){500}", Ok(&[(r"aa", false)])),
    (r"(?:a{2}){501}", Err(r"error parsing regexp: invalid repeat count: `{501}`")),
    (r"((a{10}){10}){10}", Ok(&[(r"a", false)])),
    (r"((a{10}){10}){11}", Err(r"error parsing regexp: invalid repeat count: `{11}`")),
    (r"(a{1000})*", Ok(&[("", true), (r"a", true)])),
    (r"(a*){1000}", Ok(&[("", true), (r"b", true)])),
    (r"(a{2,}){500}", Ok(&[(r"a", false)])),
    (r"(a{2,}){501}", Err(r"error parsing regexp: invalid repeat count: `{501}`")),
    (r"(a{0}){1000}", Ok(&[("", true)])),
    (r"((a{2}){0}){1000}", Ok(&[("", true)])),
    (r"((a{2}){0}b{2}){600}", Err(r"error parsing regexp: invalid repeat count: `{600}`")),
    (r"(?:a{1000}){1}", Ok(&[(r"a", false)])),
    (r"(?:a{1000}){0,1}", Ok(&[("", true)])),
    (r"(?:a{1000}){1,2}", Err(r"error parsing regexp: invalid repeat count: `{1,2}`")),
    (r"(?:a{1000}|b){1,2}", Err(r"error parsing regexp: invalid repeat count: `{1,2}`")),
    (r"(?:a{500}|b{3}){2}", Ok(&[(r"bbbbbb", true)])),
    (r"(?:a{500}|b{3}){3}", Err(r"error parsing regexp: invalid repeat count: `{3}`")),
    (r"a{1,1000}?", Ok(&[(r"a", true)])),
    (r"a**", Err(r"error parsing regexp: invalid nested repetition operator: `**`")),
    (r"a++", Err(r"error parsing regexp: invalid nested repetition operator: `++`")),
    (r"a*?", Ok(&[("", true), (r"a", true)])),
    (r"a*??", Err(r"error parsing regexp: invalid nested repetition operator: `*??`")),
    (r"a+?", Ok(&[(r"a", true), ("", false)])),
    (r"a??", Ok(&[("", true)])),
    (r"a?*", Err(r"error parsing regexp: invalid nested repetition operator: `?*`")),
    (r"a*+", Err(r"error parsing regexp: invalid nested repetition operator: `*+`")),
    (r"a{2}*", Err(r"error parsing regexp: invalid nested repetition operator: `{2}*`")),
    (r"a*{2}", Err(r"error parsing regexp: invalid nested repetition operator: `*{2}`")),
    (r"a{2}?", Ok(&[(r"aa", true), (r"a", false)])),
    (r"a{2}??", Err(r"error parsing regexp: invalid nested repetition operator: `{2}??`")),
    (r"a*{", Ok(&[(r"a{", true), (r"{", true)])),
    (r"a*(?i)*", Ok(&[("", true), (r"a", true)])),
    (r"a*\Q\E*", Ok(&[("", true), (r"a", true)])),
    (r"a*(?:)*", Ok(&[("", true), (r"a", true)])),
    (r"*", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"+a", Err(r"error parsing regexp: missing argument to repetition operator: `+`")),
    (r"?", Err(r"error parsing regexp: missing argument to repetition operator: `?`")),
    (r"a|*", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"(*)", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"(?:*)", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"(?i:*)", Err(r"error parsing regexp: missing argument to repetition operator: `*`")),
    (r"^*", Ok(&[("", true), (r"a", true)])),
    (r"^*a", Ok(&[(r"a", true), (r"ba", true)])),
    (r"$+", Ok(&[("", true), (r"a", true)])),
    (r"\b*", Ok(&[("", true)])),
    (r"\b+a", Ok(&[(r"a", true), (r" a", true), (r"ba", false)])),
    (r"\B{2}", Ok(&[("", true), (r"ab", true)])),
    (r"\A?a", Ok(&[(r"ba", true)])),
    (r"\z*", Ok(&[("", true)])),
    (r"(?:)*", Ok(&[("", true)])),
    (r"()+", Ok(&[("", true)])),
    (r"(|a)+", Ok(&[("", true), (r"aa", true), (r"b", true)])),
    (r"(a*)*", Ok(&[(r"b", true), ("", true)])),
    (r"(a*)+", Ok(&[(r"b", true)])),
    (r"(a|b)*c", Ok(&[(r"abac", true), (r"ab", false)])),
    (r"(?:a|b)+c", Ok(&[(r"c", false), (r"abc", true)])),
    (r"(?<name>x)", Ok(&[(r"x", true), (r"y", false)])),
    (r"(?P<name>x)", Ok(&[(r"x", true)])),
    (r"(?P=name)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?P`")),
    (r"(?P<name>x)(?P=name)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?P`")),
    (r"(?P<1>x)", Ok(&[(r"x", true)])),
    (r"(?<1a>x)", Ok(&[(r"x", true)])),
    (r"(?P<a.b>x)", Err(r"error parsing regexp: invalid named capture: `(?P<a.b>`")),
    (r"(?P<a[1]>x)", Err(r"error parsing regexp: invalid named capture: `(?P<a[1]>`")),
    ("(?P<\u{e9}>x)", Err("error parsing regexp: invalid named capture: `(?P<\u{e9}>`")),
    (r"(?P<>x)", Err(r"error parsing regexp: invalid named capture: `(?P<>`")),
    (r"(?<>x)", Err(r"error parsing regexp: invalid named capture: `(?<>`")),
    (r"(?P<a>x)(?P<a>y)", Ok(&[(r"xy", true)])),
    (r"(?<a>x)(?P<a>y)", Ok(&[(r"xy", true)])),
    (r"(?<a>x)(?<b>y)", Ok(&[(r"xy", true)])),
    (r"(?P<a>x)|(?P<a>y)", Ok(&[(r"y", true)])),
    (r"(?P<a", Err(r"error parsing regexp: invalid named capture: `(?P<a`")),
    (r"(?<a>", Err(r"error parsing regexp: missing closing ): `(?<a>`")),
    (r"(?<a", Err(r"error parsing regexp: invalid named capture: `(?<a`")),
    (r"(?P<na-me>x)", Err(r"error parsing regexp: invalid named capture: `(?P<na-me>`")),
    (r"(?P<_>x)", Ok(&[(r"x", true)])),
    (r"(?P<a_1>x)", Ok(&[(r"x", true)])),
    (r"(?Px)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?P`")),
    (r"(?P)", Err(r"error parsing regexp: invalid or unsupported Perl syntax: `(?P`")),
    (r"(?P<a>", Err(r"error parsing regexp: missing closing ): `(?P<a>`")),
    (r"()", Ok(&[("", true), (r"a", true)])),
    (r"(", Err(r"error parsing regexp: missing closing ): `(`")),
    (r")", Err(r"error parsing regexp: unexpected ): `)`")),
    (r"a)", Err(r"error parsing regexp: unexpected ): `a)`")),
    (r"(a", Err(r"error parsing regexp: missing closing ): `(a`")),
    (r"((a)", Err(r"error parsing regexp: missing closing ): `((a)`")),
    (r"(a))", Err(r"error parsing regexp: unexpected ): `(a))`")),
    (r"(a|)", Ok(&[("", true), (r"b", true)])),
    (r"(|)", Ok(&[("", true)])),
    (r"|", Ok(&[("", true), (r"a", true)])),
    (r"a||b", Ok(&[("", true), (r"c", true)])),
    (r"a|", Ok(&[("", true), (r"b", true)])),
    (r"|a", Ok(&[(r"b", true)])),
    (r"(?:a|b)|c", Ok(&[(r"c", true), (r"d", false)])),
    (r"\1", Err(r"error parsing regexp: invalid escape sequence: `\1`")),
    (r"(a)\1", Err(r"error parsing regexp: invalid escape sequence: `\1`")),
    (r"\0", Ok(&[("\x00", true), (r"0", false)])),
    (r"\01", Ok(&[("\x01", true), (r"01", false)])),
    (r"\012", Ok(&[("\n", true)])),
    (r"\0123", Ok(&[("\n3", true), (r"S", false)])),
    (r"\123", Ok(&[(r"S", true), (r"123", false)])),
    (r"\8", Err(r"error parsing regexp: invalid escape sequence: `\8`")),
    (r"\18", Err(r"error parsing regexp: invalid escape sequence: `\1`")),
    (r"\10", Ok(&[("\x08", true)])),
    (r"\777", Ok(&[("\u{1ff}", true)])),
    (r"\400", Ok(&[("\u{100}", true)])),
    (r"\9", Err(r"error parsing regexp: invalid escape sequence: `\9`")),
    (r"[\123]", Ok(&[(r"S", true)])),
    (r"[\0]", Ok(&[("\x00", true)])),
    (r"[\1]", Err(r"error parsing regexp: invalid escape sequence: `\1`")),
    (r"[\08]", Ok(&[("\x00", true), (r"8", true)])),
    (r"\07", Ok(&[("\x07", true)])),
    (r"\x41", Ok(&[(r"A", true), (r"x41", false)])),
    (r"\x{41}", Ok(&[(r"A", true)])),
    (r"\x{0041}", Ok(&[(r"A", true)])),
    (r"\x{10FFFF}", Ok(&[("\u{10ffff}", true)])),
    (r"\x{110000}", Err(r"error parsing regexp: invalid escape sequence: `\x{110000`")),
    (r"\x{FFFFFFFFF}", Err(r"error parsing regexp: invalid escape sequence: `\x{FFFFFF`")),
    (r"\x{}", Err(r"error parsing regexp: invalid escape sequence: `\x{}`")),
    (r"\x{41", Err(r"error parsing regexp: invalid escape sequence: `\x{41`")),
    (r"\x{4g}", Err(r"error parsing regexp: invalid escape sequence: `\x{4g`")),
    (r"\x{ 41}", Err(r"error parsing regexp: invalid escape sequence: `\x{ `")),
    (r"\x4", Err(r"error parsing regexp: invalid escape sequence: `\x4`")),
    (r"\x4g", Err(r"error parsing regexp: invalid escape sequence: `\x4g`")),
    (r"\xg4", Err(r"error parsing regexp: invalid escape sequence: `\xg4`")),
    (r"\x", Err(r"error parsing regexp: invalid escape sequence: `\x`")),
    (r"\x{D800}", Ok(&[("\u{fffd}", false), (r"a", false)])),
    (r"[\x{D800}]", Ok(&[("\u{fffd}", false), (r"a", false)])),
    (r"[\x{D7FF}-\x{E000}]", Ok(&[("\u{d7ff}", true), ("\u{e000}", true), ("\u{fffd}", false), (r"a", false)])),
    (r"[^\x{D800}-\x{DFFF}]", Ok(&[(r"a", true), ("\u{fffd}", true)])),
    (r"[\x{D800}-\x{DFFF}]", Ok(&[(r"a", false), ("\u{fffd}", false)])),
    (r"\x{DFFF}|a", Ok(&[(r"a", true)])),
    (r"(?i)\x{D800}", Ok(&[(r"a", false)])),
    (r"\u0041", Err(r"error parsing regexp: invalid escape sequence: `\u`")),
    (r"\U00000041", Err(r"error parsing regexp: invalid escape sequence: `\U`")),
    (r"\x{1F600}", Ok(&[("\u{1f600}", true)])),
    (r"^.$", Ok(&[("\u{1f600}", true), ("\u{e9}", true), (r"ab", false)])),
    (r"^..$", Ok(&[("\u{1f600}", false)])),
    (r"\_", Ok(&[(r"_", true), (r"a", false)])),
    (r"\-", Ok(&[(r"-", true)])),
    (r"\/", Ok(&[(r"/", true)])),
    (r"\<", Ok(&[(r"<", true), (r"a", false)])),
    (r"\>", Ok(&[(r">", true), (r"a", false)])),
    (r"\<a\>", Ok(&[(r"<a>", true), (r"a", false)])),
    (r"\b{start}", Ok(&[(r"{start}", false), (r"a", false), (r" {start}", false)])),
    (r"a\b{end}", Ok(&[(r"a{end}", true), (r"a", false)])),
    (r"\b{start-half}", Ok(&[(r"{start-half}", false)])),
    (r"\B{start}", Ok(&[(r"{start}", true), (r"a{start}", false)])),
    (r"\e", Err(r"error parsing regexp: invalid escape sequence: `\e`")),
    (r"\a\f\t\n\r\v", Ok(&[("\x07\x0c\t\n\r\x0b", true)])),
    (r"\a", Ok(&[("\x07", true)])),
    (r"\v", Ok(&[("\x0b", true)])),
    (r"\", Err(r"error parsing regexp: trailing backslash at end of expression: ``")),
    (r"a\", Err(r"error parsing regexp: trailing backslash at end of expression: ``")),
    (r"\\", Ok(&[(r"\", true)])),
    ("\\\u{e9}", Err("error parsing regexp: invalid escape sequence: `\\\u{e9}`")),
    (r"\ ", Ok(&[(r" ", true)])),
    (r"\#", Ok(&[(r"#", true)])),
    (r"\&", Ok(&[(r"&", true)])),
    (r"\~", Ok(&[(r"~", true)])),
    (r#"\""#, Ok(&[(r#"""#, true)])),
    (r"\'", Ok(&[(r"'", true)])),
    (r"\%\@\!\,\;\:\=", Ok(&[(r"%@!,;:=", true)])),
    (r"\`", Ok(&[(r"`", true)])),
    (r"\{\}\[\]\(\)\|\*\+\?\.\^\$", Ok(&[(r"{}[]()|*+?.^$", true)])),
    (r"\k<a>", Err(r"error parsing regexp: invalid escape sequence: `\k`")),
    (r"\g1", Err(r"error parsing regexp: invalid escape sequence: `\g`")),
    (r"\K", Err(r"error parsing regexp: invalid escape sequence: `\K`")),
    (r"\G", Err(r"error parsing regexp: invalid escape sequence: `\G`")),
    (r"\R", Err(r"error parsing regexp: invalid escape sequence: `\R`")),
    (r"\X", Err(r"error parsing regexp: invalid escape sequence: `\X`")),
    (r"\N", Err(r"error parsing regexp: invalid escape sequence: `\N`")),
    (r"\h", Err(r"error parsing regexp: invalid escape sequence: `\h`")),
    (r"\H", Err(r"error parsing regexp: invalid escape sequence: `\H`")),
    (r"\V", Err(r"error parsing regexp: invalid escape sequence: `\V`")),
    (r"\cA", Err(r"error parsing regexp: invalid escape sequence: `\c`")),
    (r"\o{12}", Err(r"error parsing regexp: invalid escape sequence: `\o`")),
    (r"\Z", Err(r"error parsing regexp: invalid escape sequence: `\Z`")),
    (r"a\Z", Err(r"error parsing regexp: invalid escape sequence: `\Z`")),
    (r"\z", Ok(&[("", true), (r"a", true)])),
    (r"a\z", Ok(&[(r"a", true), ("a\n", false), (r"ab", false)])),
    (r"\A", Ok(&[("", true)])),
    (r"\Aa", Ok(&[(r"a", true), (r"ba", false)])),
    (r"a\A", Ok(&[(r"a", false)])),
    ("a\x00b", Ok(&[("a\x00b", true), (r"ab", false)])),
    ("a\tb", Ok(&[("a\tb", true)])),
    ("a\nb", Ok(&[("a\nb", true), (r"ab", false)])),
    (r"a b", Ok(&[(r"a b", true), (r"ab", false)])),
    (r"#a", Ok(&[(r"#a", true), (r"a", false)])),
    (r"a&&b", Ok(&[(r"a&&b", true)])),
    (r"a--b", Ok(&[(r"a--b", true)])),
    (r"a~~b", Ok(&[(r"a~~b", true)])),
    ("\u{fffd}", Ok(&[("\u{fffd}", true)])),
    (r"[a&&b]", Ok(&[(r"&", true), (r"a", true), (r"b", true), (r"c", false)])),
    (r"[a--b]", Err(r"error parsing regexp: invalid character class range: `a--`")),
    (r"[--a]", Ok(&[(r"5", true), (r"-", true), (r"a", true), (r"b", false), (r"A", true)])),
    (r"[a~~b]", Ok(&[(r"~", true), (r"a", true), (r"b", true)])),
    (r"[[a]]", Ok(&[(r"a]", true), (r"[]", true), (r"a", false), (r"[", false), (r"]", false)])),
    (r"[]a]", Ok(&[(r"]", true), (r"a", true), (r"b", false)])),
    (r"[^]a]", Ok(&[(r"]", false), (r"a", false), (r"b", true)])),
    (r"[a-]", Ok(&[(r"-", true), (r"a", true), (r"b", false)])),
    (r"[-a]", Ok(&[(r"-", true), (r"a", true)])),
    (r"[a-b-c]", Ok(&[(r"-", true), (r"c", true), (r"b", true), (r"d", false)])),
    (r"[]", Err(r"error parsing regexp: missing closing ]: `[]`")),
    (r"[^]", Err(r"error parsing regexp: missing closing ]: `[^]`")),
    (r"[^]]", Ok(&[(r"a", true), (r"]", false)])),
    (r"[]]", Ok(&[(r"]", true)])),
    (r"[", Err(r"error parsing regexp: missing closing ]: `[`")),
    (r"[a", Err(r"error parsing regexp: missing closing ]: `[a`")),
    (r"[a-", Err(r"error parsing regexp: missing closing ]: `[a-`")),
    (r"[a-]b", Ok(&[(r"-b", true)])),
    (r"[z-a]", Err(r"error parsing regexp: invalid character class range: `z-a`")),
    (r"[a-a]", Ok(&[(r"a", true)])),
    (r"[\d-z]", Ok(&[(r"-", true), (r"z", true), (r"5", true), (r"e", false)])),
    (r"[a-\d]", Err(r"error parsing regexp: invalid escape sequence: `\d`")),
    (r"[\b]", Err(r"error parsing regexp: invalid escape sequence: `\b`")),
    (r"[\A]", Err(r"error parsing regexp: invalid escape sequence: `\A`")),
    (r"[\z]", Err(r"error parsing regexp: invalid escape sequence: `\z`")),
    (r"[\n]", Ok(&[("\n", true)])),
    (r"[\x41-\x43]", Ok(&[(r"B", true), (r"D", false)])),
    (r"[\x{41}-\x{10FFFF}]", Ok(&[(r"A", true), ("\x00", false)])),
    (r"[\-]", Ok(&[(r"-", true)])),
    (r"[\]]", Ok(&[(r"]", true)])),
    (r"[\\]", Ok(&[(r"\", true)])),
    (r"[\^]", Ok(&[(r"^", true)])),
    (r"[^\^]", Ok(&[(r"^", false), (r"a", true)])),
    (r"[a^]", Ok(&[(r"^", true), (r"a", true)])),
    (r"[&&]", Ok(&[(r"&", true)])),
    (r"[~]", Ok(&[(r"~", true)])),
    (r"[!-[]", Ok(&[(r"!", true), (r"[", true), (r"5", true)])),
    (r"[[]", Ok(&[(r"[", true)])),
    (r"[[:]", Ok(&[(r":", true), (r"[", true)])),
    (r"[a[]", Ok(&[(r"a", true), (r"[", true)])),
    (r"[\[]", Ok(&[(r"[", true)])),
    (r"[\e]", Err(r"error parsing regexp: invalid escape sequence: `\e`")),
    (r"[\pL-]", Ok(&[(r"-", true)])),
    (r"[\w-]", Ok(&[(r"-", true), (r"a", true)])),
    (r"[^\D]", Ok(&[(r"5", true), ("\u{663}", false), (r"a", false)])),
    (r"[^\s\S]", Ok(&[(r"a", false), ("", false)])),
    (r"[^\x00-\x{10FFFF}]", Ok(&[(r"a", false), ("", false)])),
    (r"[\x00-\x{10FFFF}]", Ok(&[(r"a", true), ("\n", true)])),
    (r"[^a]", Ok(&[("\n", true), (r"a", false), (r"b", true)])),
    (r"[^\n]", Ok(&[("\n", false), (r"a", true)])),
    ("[\u{e9}-\u{eb}]", Ok(&[("\u{ea}", true), (r"e", false)])),
    ("[\u{1f600}-\u{1f602}]", Ok(&[("\u{1f601}", true)])),
    (r"[ -~]", Ok(&[(r"a", true), ("\x7f", false)])),
    (r"[#]", Ok(&[(r"#", true)])),
    (r"[ ]", Ok(&[(r" ", true)])),
    (r"[\ ]", Ok(&[(r" ", true)])),
    (r"[a-z&&[^aeiou]]", Ok(&[(r"b", false), (r"a", false), (r"&", false), (r"[", false)])),
    (r"[\Qa\E]", Err(r"error parsing regexp: invalid escape sequence: `\Q`")),
    (r"[a-c[:digit:]x-z]", Ok(&[(r"b", true), (r"5", true), (r"y", true), (r"d", false)])),
    (r"[^-a]", Ok(&[(r"-", false), (r"b", true)])),
    (r"[\x{FFFD}]", Ok(&[("\u{fffd}", true)])),
    (r"\d", Ok(&[(r"5", true), ("\u{663}", false), (r"a", false), ("\u{ff15}", false)])),
    (r"\D", Ok(&[("\u{663}", true), (r"5", false), (r"a", true)])),
    (r"\w", Ok(&[(r"a", true), (r"_", true), ("\u{e9}", false), (r"-", false), ("\u{663}", false)])),
    (r"\W", Ok(&[("\u{e9}", true), (r"a", false), (r"-", true)])),
    (r"\s", Ok(&[(r" ", true), ("\t", true), ("\n", true), ("\x0b", false), ("\x0c", true), ("\r", true), ("\u{a0}", false), ("\u{2003}", false), ("\u{85}", false), (r"a", false)])),
    (r"\S", Ok(&[("\u{a0}", true), ("\x0b", true), (r" ", false), (r"a", true)])),
    (r"[\s]", Ok(&[("\x0b", false), (r" ", true)])),
    (r"[^\s]", Ok(&[("\x0b", true), (r" ", false)])),
    (r"[\S]", Ok(&[("\x0b", true)])),
    (r"[\d\s]", Ok(&[("\x0b", false), (r"5", true)])),
    (r"\b", Ok(&[(r"a", true), ("\u{e9}", false), ("", false), (r" ", false), (r"-", false)])),
    (r"\B", Ok(&[(r"a", false), ("\u{e9}", true), ("", true), (r" ", true), ("\u{e9}\u{e9}", true), (r"ab", true), ("a\u{e9}b", false), ("A\u{897}s", false), ("a\u{897}", true)])),
    (r"a\b", Ok(&[("a\u{e9}", true), (r"ab", false), (r"a", true)])),
    ("\\b\u{e9}", Ok(&[("\u{e9}", false), ("a\u{e9}", true)])),
    ("\u{e9}\\B", Ok(&[("\u{e9}\u{e9}", true), ("\u{e9}", true), ("\u{e9}a", false)])),
    (r"\bx\b", Ok(&[(r"x", true), ("\u{e9}x\u{e9}", true), (r"axb", false), (r"_x_", false)])),
    (r"\Bx\B", Ok(&[("\u{e9}x\u{e9}", false), (r"axb", true)])),
    (r"\B|...", Ok(&[("A\u{897}s", true), ("a\u{e9}b", true), (r"ab", true)])),
    (r"(\B|\<[^[:upper:]]{0})|(?P<n>||)\p{Greek}|b(?i-s)$", Ok(&[("S\u{3c2}K", true), (r"b", true)])),
    (r"(?i)\b", Ok(&[("\u{212a}", false)])),
    (r"(?i)\bk\b", Ok(&[("\u{212a}", false), (r"k", true)])),
    (r"\d+", Ok(&[("\u{661}\u{662}\u{663}", false), (r"123", true)])),
    (r"^\w+$", Ok(&[("h\u{e9}llo", false), (r"hello_1", true)])),
    (r"^$", Ok(&[("", true), ("\n", false), (r"a", false)])),
    (r"(?m)^$", Ok(&[("a\n", true), ("\n", true), (r"a", false), ("", true)])),
    (r"^", Ok(&[("", true), (r"a", true)])),
    (r"$", Ok(&[("", true), (r"a", true)])),
    (r"a$", Ok(&[(r"a", true), ("a\n", false), (r"ab", false)])),
    (r"(?m)a$", Ok(&[("a\n", true), ("a\r\n", false), (r"ab", false)])),
    (r"(?m)^a", Ok(&[("b\na", true), ("b\ra", false), (r"ba", false)])),
    (r"(?m)$\n^", Ok(&[("a\nb", true)])),
    (r"(?s)^.+$", Ok(&[("a\n", true), ("\n", true)])),
    (r"a.c", Ok(&[(r"abc", true), ("a\nc", false), ("a\u{e9}c", true)])),
    ("", Ok(&[("", true), (r"a", true)])),
    (r"^5\.14\.0-.*\.el9.*$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"^6\.[0-9]+\..+$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", false), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", true), (r"6.x.1", false), (r"6.10.0-rc1", true), ("", false), (r"15.14.0-1.el9", false)])),
    (r".*el8.*", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", false), (r"5.14.0-70.el8", true), (r"4.18.0-425.3.1.el8.x86_64", true), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"^.+$", Ok(&[(r"a", true), ("a\n", false), ("\n", false), ("\u{e9}", true), (r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", true), (r"4.18.0-425.3.1.el8.x86_64", true), (r"6.1.2", true), (r"6.x.1", true), (r"6.10.0-rc1", true), ("", false), (r"15.14.0-1.el9", true)])),
    (r"5.14", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", true), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", true)])),
    (r"^4\.18\.0-(305|348|425)\..*$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", false), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", true), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"^(?P<ver>5\.14)\.(?:\d+)-\d+.*$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", true), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"^(5|6)\.\d+\.\d+(-rc\d+)?$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", false), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", true), (r"6.x.1", false), (r"6.10.0-rc1", true), ("", false), (r"15.14.0-1.el9", false)])),
    (r"\.el(8|9)(_\d+)?\.x86_64$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", true), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"(?i)^6\.X\.\d$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", false), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", false), (r"6.x.1", true), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"^[56]\.[0-9]{1,2}\.[0-9]+", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", true), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", true), (r"6.x.1", false), (r"6.10.0-rc1", true), ("", false), (r"15.14.0-1.el9", false)])),
    (r"el9_0", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", false), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"^\d+\.\d+\.\d+-\d+(\.\d+)*\.el\d+(_\d+)?\.(x86_64|aarch64)$", Ok(&[(r"5.14.0-70.13.1.el9_0.x86_64", true), (r"5.14.0-70.el8", false), (r"4.18.0-425.3.1.el8.x86_64", true), (r"6.1.2", false), (r"6.x.1", false), (r"6.10.0-rc1", false), ("", false), (r"15.14.0-1.el9", false)])),
    (r"abc|abd|aef|bcx|bcy", Ok(&[(r"abd", true), (r"bcy", true), (r"bcz", false), (r"ae", false)])),
    (r"a|a", Ok(&[(r"a", true), (r"b", false)])),
    (r"ab|a", Ok(&[(r"a", true), (r"ab", true)])),
    (r"[ab]x|[ab]y", Ok(&[(r"by", true), (r"cy", false)])),
    (r"(?i)ab|AC", Ok(&[(r"Ab", true), (r"aC", true), (r"ad", false)])),
    (r"a|b|c|d", Ok(&[(r"c", true), (r"e", false)])),
    (r"x*y*z*", Ok(&[("", true), (r"q", true)])),
    (r"(?:(?:(?:a)))", Ok(&[(r"a", true)])),
    (r"((((a))))", Ok(&[(r"a", true)])),
    ];

    /// Patterns of [`GO_TABLE`] that Go accepts and we refuse on purpose (see the module docs).
    const REFUSED_ON_PURPOSE: &[&str] = &[r"(?i)[\p{LC}1]"];

    fn is_go_limit_error(go: &str) -> bool {
        go.contains("expression nests too deeply") || go.contains("expression too large")
    }

    #[test]
    fn same_verdicts_and_matches_as_go() {
        let mut failures = Vec::new();
        for &(pattern, go) in GO_TABLE {
            match (GoRegex::new(pattern), go) {
                (Ok(re), Ok(cases)) => {
                    for &(input, want) in cases {
                        if re.is_match(input) != want {
                            failures.push(format!(
                                "{pattern:?} on {input:?}: Go says {want}, we say {} (translated {:?})",
                                !want,
                                re.translated()
                            ));
                        }
                    }
                }
                (Ok(re), Err(go)) => failures.push(format!(
                    "{pattern:?}: Go refuses ({go}), we accept as {:?}",
                    re.translated()
                )),
                (Err(GoRegexError::Unsupported { .. }), Ok(_)) if REFUSED_ON_PURPOSE.contains(&pattern) => {}
                (Err(e), Ok(_)) => failures.push(format!("{pattern:?}: Go accepts, we refuse: {e}")),
                (Err(e), Err(go)) => {
                    let expected_kind = if is_go_limit_error(go) {
                        matches!(e, GoRegexError::TooLarge { .. })
                    } else {
                        matches!(e, GoRegexError::Invalid { .. })
                    };
                    if !expected_kind {
                        failures.push(format!(
                            "{pattern:?}: Go refuses ({go}), we refuse with another kind: {e:?}"
                        ));
                    }
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} differences from Go:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// Patterns at Go's nesting and size limits, built here because they are long. The comment on
    /// each line is Go's verdict (go1.26.8): `ok`, or the error code. Where our estimate of Go's
    /// limits is not exact, or our engine cannot hold what Go accepts, we refuse with `TooLarge`.
    #[test]
    fn go_limits() {
        let nest = |open: &str, mid: &str, close: &str, n: usize| format!("{}{mid}{}", open.repeat(n), close.repeat(n));
        let factor2 = |n: usize| {
            let a = "a[xy]".repeat(n);
            format!("{a}1|{a}2")
        };
        let chain = |n: usize| (1..=n).map(|i| "a".repeat(i)).collect::<Vec<_>>().join("|");
        let kernels = (0..2000)
            .map(|i| format!(r"5\.14\.0-{i}\.el9\.x86_64"))
            .collect::<Vec<_>>()
            .join("|");
        // (pattern, accepted by us, Go's verdict)
        let cases: Vec<(String, bool, &str)> = vec![
            (nest("(", "a", ")", 999), true, "ok"),
            (nest("(", "a", ")", 1000), false, "expression nests too deeply"),
            (nest("(?:a", "", ")*", 500), true, "ok"),
            (nest("(?:a", "", ")*", 501), false, "expression nests too deeply"),
            (nest("(?:", "a", ")", 100_000), true, "ok"),
            (factor2(400), true, "ok"),
            (factor2(499), false, "ok"),
            (factor2(500), false, "expression nests too deeply"),
            (chain(300), true, "ok"),
            (chain(501), false, "expression nests too deeply"),
            (r"\pL".repeat(25459), false, "expression too large"),
            (nest("(?:", r"\pL", ")", 8486), false, "expression too large"),
            (nest("(?:", r"\pL", ")", 5000), true, "ok"),
            (
                format!("(?:{}){{1000}}", "a".repeat(3356)),
                false,
                "expression too large",
            ),
            (format!("(?:{}){{1000}}", "a".repeat(3355)), false, "ok"),
            (r"\pL{1000}".to_string(), false, "ok"),
            (format!("^(?:{kernels})$"), true, "ok"),
        ];
        // Deep patterns need a deep stack in unoptimised builds of the regex crate.
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn(move || {
                for (pattern, accepted, go) in cases {
                    let got = GoRegex::new(&pattern);
                    let head: String = pattern.chars().take(40).collect();
                    match got {
                        Ok(_) => assert!(accepted, "{head}… ({} bytes) accepted; Go: {go}", pattern.len()),
                        Err(GoRegexError::TooLarge { .. }) => {
                            assert!(!accepted, "{head}… ({} bytes) refused; Go: {go}", pattern.len())
                        }
                        Err(e) => panic!("{head}…: unexpected {e}"),
                    }
                }
            })
            .expect("spawn")
            .join()
            .expect("no panic");
        assert!(
            GoRegex::new(&format!(
                "^(?:{})$",
                (0..2000)
                    .map(|i| format!("5\\.14\\.0-{i}\\.el9"))
                    .collect::<Vec<_>>()
                    .join("|")
            ))
            .is_ok_and(|re| re.is_match("5.14.0-1999.el9") && !re.is_match("5.14.0-2000.el9"))
        );
    }

    #[test]
    fn errors_name_the_construct_and_offset() {
        let err = |p: &str| match GoRegex::new(p) {
            Err(GoRegexError::Invalid {
                offset,
                construct,
                message,
            }) => (offset, construct, message),
            other => panic!("{p}: {other:?}"),
        };
        assert_eq!(
            err(r"^5\.14\C"),
            (6, r"\C".into(), r"`\C` (any byte) is not supported".into())
        );
        let (offset, construct, message) = err("^a**$");
        assert_eq!((offset, construct.as_str()), (2, "**"));
        assert!(message.contains("nested repetition"), "{message}");
        let (offset, construct, _) = err("a{1001}");
        assert_eq!((offset, construct.as_str()), (1, "{1001}"));
        let (offset, construct, message) = err("(?x) a");
        assert_eq!((offset, construct.as_str()), (0, "(?x"));
        assert!(message.contains("only the flags i, m, s and U"), "{message}");
        let (offset, _, message) = err("x(a|b");
        assert_eq!(offset, 1);
        assert!(message.contains("missing closing `)`"), "{message}");
        let (offset, construct, message) = err(r"[a-z\p{Old_Italic}]");
        assert_eq!((offset, construct.as_str()), (4, r"\p{Old_Italic}"));
        assert!(message.contains("unknown Unicode class"), "{message}");
        let (_, _, message) = err(r"\u0041");
        assert!(message.contains(r"\x{...}"), "{message}");
        let (offset, construct, _) = err("ab[^x");
        assert_eq!((offset, construct.as_str()), (2, "[^x"));
        let e = GoRegex::new(r"(a)\1").unwrap_err();
        assert_eq!(
            e.to_string(),
            r"invalid regular expression: `\1`: backreferences are not supported (at byte 3)"
        );
    }

    #[test]
    fn translations_for_logs() {
        let t = |p: &str| {
            GoRegex::new(p)
                .map(|re| re.translated().to_string())
                .unwrap_or_else(|e| panic!("{p}: {e}"))
        };
        assert_eq!(t(r"^5\.14\.0-.*\.el9.*$"), r"\A5\.14\.0\-[^\n]*\.el9[^\n]*\z");
        assert_eq!(t(r"^6\.[0-9]+\..+$"), r"\A6\.[0-9]+\.[^\n]+\z");
        assert_eq!(t(r"(?i)^\d+\.EL\w\b"), r"(?i:\A[0-9]+\.EL[0-9A-Z_a-z](?-u:\b))");
        assert_eq!(t(r"\Qa.b\E+"), r"a\.b+");
        assert_eq!(t(r"a{,2}\<"), r"a\{,2\}<");
        assert_eq!(t(r"(?P<v>5|6)\.x(?i)y"), r"(5|6)\.x(?i:y)");
        assert_eq!(
            t(r"\s\S"),
            r"[\x{9}-\x{A}\x{C}-\x{D}\x{20}][^\x{9}-\x{A}\x{C}-\x{D}\x{20}]"
        );
        // Go's class ends at the first `]`: `[c` is not a nested class.
        assert_eq!(t(r"[a&&b~~[c]\012]"), r"[a\&\&b\~\~\[c]\x{A}\]");
        assert_eq!(t(r"a(?i)*"), r"a*");
        assert_eq!(t(""), "");
    }

    /// The Unicode corrections ([`NEW_IN_16`], [`FOLD_CHANGED`], the `gc=Mn` / `gc=Mc` fix) were
    /// computed against the tables of `regex-syntax` 0.8 (Unicode 16.0). If the regex crate moves
    /// to another Unicode version, this fails and the corrections must be recomputed.
    #[test]
    fn regex_crate_still_uses_unicode_16() {
        assert!(
            Regex::new(r"\p{sc=Garay}").is_ok(),
            "Garay (new in Unicode 16.0) is missing"
        );
        assert!(
            Regex::new(&format!(r"\p{{sc={}}}", "Sidetic")).is_err(),
            "Sidetic (new in Unicode 17.0) exists"
        );
        // U+A7CB was assigned in 16.0 and folds with U+0264 there.
        assert!(Regex::new(r"(?i)\x{264}").is_ok_and(|re| re.is_match("\u{A7CB}")));
        // Every code point of FOLD_CHANGED has a fold partner in the regex crate, itself listed.
        for &(lo, hi) in FOLD_CHANGED {
            for c in lo..=hi {
                let re = Regex::new(&format!(r"(?i)\x{{{c:X}}}")).unwrap();
                let partners: Vec<u32> = FOLD_CHANGED
                    .iter()
                    .flat_map(|&(a, b)| a..=b)
                    .filter(|&p| p != c && re.is_match(char::from_u32(p).unwrap().encode_utf8(&mut [0; 4])))
                    .collect();
                assert_eq!(partners.len(), 1, "U+{c:X}: {partners:X?}");
            }
        }
        // NEW_IN_16 is exactly what Unicode 16.0 assigned on top of 15.0 in these spots.
        let assigned = Regex::new(&format!(r"^[\p{{Assigned}}--[{NEW_IN_16}]]$")).unwrap();
        assert!(!assigned.is_match("\u{A7CB}") && !assigned.is_match("\u{2EBF0}") && assigned.is_match("a"));
    }

    #[test]
    fn unicode_name_table() {
        assert!(UNICODE_NAMES.windows(2).all(|w| w[0].0 < w[1].0), "sorted and unique");
        for &(name, target, drop_new) in UNICODE_NAMES {
            assert_eq!(canonical_name(name), name);
            let set = unicode_set(target, drop_new);
            assert!(Regex::new(&format!("[{set}]")).is_ok(), "{name}: {set}");
        }
        assert_eq!(canonical_name("Old_Italic"), "Olditalic");
        assert_eq!(canonical_name("uppercase letter"), "Uppercaseletter");
        assert_eq!(canonical_name("lU"), "Lu");
        assert_eq!(canonical_name("-é"), "é");
        assert_eq!(lookup_unicode_name("DIGIT").map(|r| r.1), Some("gc=Nd"));
        assert_eq!(lookup_unicode_name("Old_Italic"), None);
    }

    #[test]
    fn kernel_mappings() {
        let re = GoRegex::new(r"^5\.14\.0-(70|162)\..*\.el9(_\d+)?\.x86_64$").unwrap();
        assert!(re.is_match("5.14.0-70.13.1.el9_0.x86_64"));
        assert!(re.is_match("5.14.0-162.6.1.el9.x86_64"));
        assert!(!re.is_match("5.14.0-284.11.1.el9_2.x86_64"));
        assert!(
            !re.is_match("5.14.0-70.13.1.el9_٣.x86_64"),
            r"\d is ASCII only, as in Go"
        );
        // Unanchored, like Go's MatchString.
        assert!(GoRegex::new("el8").unwrap().is_match("4.18.0-425.3.1.el8.x86_64"));
    }
}
