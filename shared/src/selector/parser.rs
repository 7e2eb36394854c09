//! Recursive-descent parser over the tokens of [`super::tokenizer`].

use std::collections::BTreeSet;

use super::tokenizer::{tokenize, Token};
use super::{Selector, SelectorError};

/// Deepest nesting of parentheses and `!` accepted; deeper input is refused, not overflowed.
const MAX_DEPTH: usize = 128;

const OPERATORS: &str = "an operator (==, !=, in, not in, contains, starts with, ends with)";

pub(super) fn parse(input: &str) -> Result<Selector, SelectorError> {
    let tokens = tokenize(input)?;
    if tokens.is_empty() {
        return Ok(Selector::All);
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        end: input.len(),
        depth: 0,
    };
    let selector = parser.or()?;
    match parser.tokens.get(parser.pos) {
        None => Ok(selector),
        Some((offset, token)) => Err(SelectorError::at(
            *offset,
            "`&&`, `||` or the end of the selector",
            &token.describe(),
        )),
    }
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    /// Byte length of the input, the offset reported for "end of selector".
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, token)| token)
    }

    fn next(&mut self) -> Option<(usize, Token)> {
        let item = self.tokens.get(self.pos).cloned();
        if item.is_some() {
            self.pos += 1;
        }
        item
    }

    /// Takes the next token, or explains that `expected` was wanted.
    fn expect_any(&mut self, expected: &str) -> Result<(usize, Token), SelectorError> {
        self.next()
            .ok_or_else(|| SelectorError::at(self.end, expected, "the end of the selector"))
    }

    fn or(&mut self) -> Result<Selector, SelectorError> {
        let mut operands = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            operands.push(self.and()?);
        }
        Ok(if operands.len() == 1 {
            operands.remove(0)
        } else {
            Selector::Or(operands)
        })
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut operands = vec![self.operation()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            operands.push(self.operation()?);
        }
        Ok(if operands.len() == 1 {
            operands.remove(0)
        } else {
            Selector::And(operands)
        })
    }

    fn operation(&mut self) -> Result<Selector, SelectorError> {
        let mut negated = false;
        while self.peek() == Some(&Token::Not) {
            self.pos += 1;
            negated = !negated;
        }
        let inner = self.primary()?;
        Ok(if negated {
            Selector::Not(Box::new(inner))
        } else {
            inner
        })
    }

    fn primary(&mut self) -> Result<Selector, SelectorError> {
        let (offset, token) = self.expect_any("a label, has(), all(), global() or `(`")?;
        match token {
            Token::Has(label) => Ok(Selector::Has(label)),
            Token::All => Ok(Selector::All),
            Token::Global => Ok(Selector::Global),
            Token::LParen => self.group(offset),
            Token::Label(label) => self.comparison(label),
            other => Err(SelectorError::at(
                offset,
                "a label, has(), all(), global() or `(`",
                &other.describe(),
            )),
        }
    }

    fn group(&mut self, offset: usize) -> Result<Selector, SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SelectorError::at(
                offset,
                "at most 128 nested groups",
                "deeper nesting",
            ));
        }
        let inner = self.or()?;
        self.depth -= 1;
        match self.expect_any("`)`")? {
            (_, Token::RParen) => Ok(inner),
            (at, other) => Err(SelectorError::at(at, "`)`", &other.describe())),
        }
    }

    fn comparison(&mut self, label: String) -> Result<Selector, SelectorError> {
        let (offset, operator) = self.expect_any(OPERATORS)?;
        match operator {
            Token::Eq => Ok(Selector::Equal(label, self.string()?)),
            Token::Ne => Ok(Selector::NotEqual(label, self.string()?)),
            Token::Contains => Ok(Selector::Contains(label, self.string()?)),
            Token::StartsWith => Ok(Selector::StartsWith(label, self.string()?)),
            Token::EndsWith => Ok(Selector::EndsWith(label, self.string()?)),
            Token::In => Ok(Selector::In(label, self.set()?)),
            Token::NotIn => Ok(Selector::NotIn(label, self.set()?)),
            other => Err(SelectorError::at(offset, OPERATORS, &other.describe())),
        }
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        match self.expect_any("a quoted string")? {
            (_, Token::Str(value)) => Ok(value),
            (offset, other) => Err(SelectorError::at(
                offset,
                "a quoted string",
                &other.describe(),
            )),
        }
    }

    /// `{ "a", "b", }`: empty sets and a trailing comma are allowed.
    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        match self.expect_any("`{`")? {
            (_, Token::LBrace) => {}
            (offset, other) => return Err(SelectorError::at(offset, "`{`", &other.describe())),
        }
        let mut values = BTreeSet::new();
        loop {
            match self.expect_any("a quoted string or `}`")? {
                (_, Token::RBrace) => return Ok(values),
                (_, Token::Str(value)) => {
                    values.insert(value);
                }
                (offset, other) => {
                    return Err(SelectorError::at(
                        offset,
                        "a quoted string or `}`",
                        &other.describe(),
                    ))
                }
            }
            match self.expect_any("`,` or `}`")? {
                (_, Token::Comma) => {}
                (_, Token::RBrace) => return Ok(values),
                (offset, other) => {
                    return Err(SelectorError::at(offset, "`,` or `}`", &other.describe()))
                }
            }
        }
    }
}
