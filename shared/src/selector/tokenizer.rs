//! Splits a selector into tokens, each with the byte offset where it starts.
//!
//! Operators that are words (`in`, `not in`, `contains`, `starts with`, `ends with`) are
//! only recognised directly after a label, as in Calico, so a label may itself be called
//! `in`. `has(`, `all(` and `global(` must be written without a space before `(`.

use super::SelectorError;

/// One token of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    And,
    Or,
    Not,
    Eq,
    Ne,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Has(String),
    All,
    Global,
    Label(String),
    Str(String),
}

impl Token {
    /// How the token reads in an error message.
    pub(crate) fn describe(&self) -> String {
        match self {
            Token::LParen => "`(`".into(),
            Token::RParen => "`)`".into(),
            Token::LBrace => "`{`".into(),
            Token::RBrace => "`}`".into(),
            Token::Comma => "`,`".into(),
            Token::And => "`&&`".into(),
            Token::Or => "`||`".into(),
            Token::Not => "`!`".into(),
            Token::Eq => "`==`".into(),
            Token::Ne => "`!=`".into(),
            Token::In => "`in`".into(),
            Token::NotIn => "`not in`".into(),
            Token::Contains => "`contains`".into(),
            Token::StartsWith => "`starts with`".into(),
            Token::EndsWith => "`ends with`".into(),
            Token::Has(label) => format!("`has({label})`"),
            Token::All => "`all()`".into(),
            Token::Global => "`global()`".into(),
            Token::Label(label) => format!("label `{label}`"),
            Token::Str(value) => format!("string {value:?}"),
        }
    }
}

/// Longest label Calico accepts.
const MAX_LABEL_LEN: usize = 512;

fn is_label_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'/' | b'-')
}

/// Tokenizes `input`; every token comes with its byte offset.
pub(crate) fn tokenize(input: &str) -> Result<Vec<(usize, Token)>, SelectorError> {
    let bytes = input.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let byte = bytes[pos];
        if byte == b' ' || byte == b'\t' {
            pos += 1;
            continue;
        }
        let after_label = matches!(tokens.last(), Some((_, Token::Label(_))));
        let rest = &input[pos..];
        let (token, len) = if after_label {
            match word_operator(rest) {
                Some(found) => found,
                None => punctuation(rest, pos)?,
            }
        } else {
            punctuation(rest, pos)?
        };
        tokens.push((pos, token));
        pos += len;
    }
    Ok(tokens)
}

/// A word operator right after a label: `in`, `not in`/`notin`, `contains`,
/// `starts with`/`startswith`, `ends with`/`endswith`.
fn word_operator(rest: &str) -> Option<(Token, usize)> {
    const WORDS: &[(&str, Token)] = &[
        ("not in", Token::NotIn),
        ("notin", Token::NotIn),
        ("in", Token::In),
        ("contains", Token::Contains),
        ("starts with", Token::StartsWith),
        ("startswith", Token::StartsWith),
        ("ends with", Token::EndsWith),
        ("endswith", Token::EndsWith),
    ];
    for (word, token) in WORDS {
        if let Some(after) = rest.strip_prefix(word) {
            // The word must end here: `inside` is a label, not `in` + `side`.
            if after.bytes().next().is_none_or(|b| !is_label_byte(b)) {
                return Some((token.clone(), word.len()));
            }
        }
        // `not  in` with several spaces is also one operator.
        if *word == "not in" || *word == "starts with" || *word == "ends with" {
            if let Some(len) = spaced_words(rest, word) {
                return Some((token.clone(), len));
            }
        }
    }
    None
}

/// Matches a two-word operator with any run of spaces or tabs between its words.
fn spaced_words(rest: &str, word: &str) -> Option<usize> {
    let (first, second) = word.split_once(' ')?;
    let after_first = rest.strip_prefix(first)?;
    let gap = after_first.len() - after_first.trim_start_matches([' ', '\t']).len();
    if gap == 0 {
        return None;
    }
    let after_gap = &after_first[gap..];
    let after_second = after_gap.strip_prefix(second)?;
    if after_second.bytes().next().is_some_and(is_label_byte) {
        return None;
    }
    Some(first.len() + gap + second.len())
}

fn punctuation(rest: &str, pos: usize) -> Result<(Token, usize), SelectorError> {
    let fixed: &[(&str, Token)] = &[
        ("&&", Token::And),
        ("||", Token::Or),
        ("==", Token::Eq),
        ("!=", Token::Ne),
        ("!", Token::Not),
        ("(", Token::LParen),
        (")", Token::RParen),
        ("{", Token::LBrace),
        ("}", Token::RBrace),
        (",", Token::Comma),
    ];
    for (text, token) in fixed {
        if rest.starts_with(text) {
            return Ok((token.clone(), text.len()));
        }
    }
    let first = rest.as_bytes()[0];
    if first == b'"' || first == b'\'' {
        return quoted(rest, pos);
    }
    if let Some(found) = function(rest, pos)? {
        return Ok(found);
    }
    if is_label_byte(first) {
        let len = rest.bytes().take_while(|&b| is_label_byte(b)).count();
        if len > MAX_LABEL_LEN {
            return Err(SelectorError::at(
                pos,
                "a label of at most 512 characters",
                "a longer label",
            ));
        }
        return Ok((Token::Label(rest[..len].to_string()), len));
    }
    let found = match first {
        b'=' => "`=` (equality is written `==`)".to_string(),
        b'&' => "`&` (conjunction is written `&&`)".to_string(),
        b'|' => "`|` (disjunction is written `||`)".to_string(),
        b'\n' | b'\r' => "a line break".to_string(),
        _ => format!("{:?}", rest.chars().next().unwrap_or('?')),
    };
    Err(SelectorError::at(
        pos,
        "a label, an operator or a parenthesis",
        &found,
    ))
}

/// A quoted string: `"…"` or `'…'`, without escapes.
fn quoted(rest: &str, pos: usize) -> Result<(Token, usize), SelectorError> {
    let quote = rest.as_bytes()[0] as char;
    match rest[1..].find(quote) {
        Some(end) => Ok((Token::Str(rest[1..1 + end].to_string()), end + 2)),
        None => Err(SelectorError::at(
            pos,
            &format!("a closing {quote} for the string"),
            "the end of the selector",
        )),
    }
}

/// `has(label)`, `all()` or `global()`; `None` when `rest` starts with none of them.
fn function(rest: &str, pos: usize) -> Result<Option<(Token, usize)>, SelectorError> {
    for (name, token) in [("all(", Token::All), ("global(", Token::Global)] {
        if let Some(after) = rest.strip_prefix(name) {
            let inner = after.len() - after.trim_start_matches([' ', '\t']).len();
            if !after[inner..].starts_with(')') {
                return Err(SelectorError::at(
                    pos + name.len() + inner,
                    "`)`",
                    "something else",
                ));
            }
            return Ok(Some((token, name.len() + inner + 1)));
        }
    }
    let Some(after) = rest.strip_prefix("has(") else {
        return Ok(None);
    };
    let lead = after.len() - after.trim_start_matches([' ', '\t']).len();
    let label_len = after[lead..]
        .bytes()
        .take_while(|&b| is_label_byte(b))
        .count();
    let label_pos = pos + 4 + lead;
    if label_len == 0 {
        return Err(SelectorError::at(
            label_pos,
            "a label inside has()",
            "something else",
        ));
    }
    let label = &after[lead..lead + label_len];
    let tail = &after[lead + label_len..];
    let trail = tail.len() - tail.trim_start_matches([' ', '\t']).len();
    if !tail[trail..].starts_with(')') {
        return Err(SelectorError::at(
            label_pos + label_len + trail,
            "`)` closing has(",
            "something else",
        ));
    }
    Ok(Some((
        Token::Has(label.to_string()),
        4 + lead + label_len + trail + 1,
    )))
}
