//! AS path matching: regular expressions in the style of FRR's `bgp as-path access-list`
//! (and Cisco's), and the origin AS (BIRD's `bgp_path.last`).

use std::fmt::Write as _;

use regex::Regex;

use crate::wire::attribute::{AsPath, SegmentType};

/// What `_` stands for: an AS number's boundary — a space, a comma, the brackets of a set or
/// of a confederation segment, or either end of the path (FRR's `_`).
const BOUNDARY: &str = "(?:^|$|[ ,{}()\\[\\]])";

/// A regular expression matched against an AS path written as FRR shows it:
/// `65002 65001 {64512,64513}` — sequences space-separated, sets in braces with commas,
/// confederation sequences in parentheses and confederation sets in square brackets. It
/// matches anywhere in that text unless anchored with `^` (the neighbour's end) or `$` (the
/// origin's end); `_` matches a boundary between AS numbers. So `^65002_` is "learned from
/// AS 65002", `_65001$` "originated by AS 65001", `_64512_` "passed through 64512" and `^$`
/// "our own routes" (the path is empty).
#[derive(Debug, Clone)]
pub struct AsPathRegex {
    source: String,
    regex: Regex,
}

impl PartialEq for AsPathRegex {
    fn eq(&self, other: &AsPathRegex) -> bool {
        self.source == other.source
    }
}

impl Eq for AsPathRegex {}

impl AsPathRegex {
    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the path (absent: empty) matches.
    pub fn matches(&self, path: Option<&AsPath>) -> bool {
        self.regex.is_match(&render(path))
    }
}

impl std::str::FromStr for AsPathRegex {
    type Err = String;

    fn from_str(text: &str) -> Result<AsPathRegex, String> {
        let regex = regex::RegexBuilder::new(&translate(text))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                let detail = e.to_string();
                let last = detail.lines().last().unwrap_or("invalid").trim();
                format!("{text:?} is not a regular expression: {last}")
            })?;
        Ok(AsPathRegex {
            source: text.to_string(),
            regex,
        })
    }
}

/// Replaces each `_` outside a bracket expression with [`BOUNDARY`].
fn translate(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_class = false;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                out.push(c);
            }
            '\\' => {
                escaped = true;
                out.push(c);
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            '_' if !in_class => out.push_str(BOUNDARY),
            _ => out.push(c),
        }
    }
    out
}

/// The path as FRR's `show bgp` writes it.
fn render(path: Option<&AsPath>) -> String {
    let mut out = String::new();
    for segment in path.iter().flat_map(|p| p.segments()) {
        if !out.is_empty() {
            out.push(' ');
        }
        let (open, separator, close) = match segment.kind {
            SegmentType::Sequence => ("", " ", ""),
            SegmentType::Set => ("{", ",", "}"),
            SegmentType::ConfedSequence => ("(", " ", ")"),
            SegmentType::ConfedSet => ("[", " ", "]"),
        };
        out.push_str(open);
        for (at, asn) in segment.asns.iter().enumerate() {
            if at > 0 {
                out.push_str(separator);
            }
            let _ = write!(out, "{asn}");
        }
        out.push_str(close);
    }
    out
}

/// The AS that originated the route (RFC 6811 §2): the last AS of the path when its final
/// segment is a sequence; `None` when it ends in a set (the origin is unknown); `local_as`
/// for an empty path (a route of our own AS). Confederation segments are skipped: they are
/// inside our confederation, never the origin of a route with anything after them.
pub fn origin_as(path: Option<&AsPath>, local_as: u32) -> Option<u32> {
    let last = path.and_then(|p| {
        p.segments()
            .filter(|s| matches!(s.kind, SegmentType::Sequence | SegmentType::Set))
            .last()
    });
    match last {
        None => Some(local_as),
        Some(segment) if segment.kind == SegmentType::Sequence => segment.asns.last().copied(),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::attribute::Segment;

    fn path(segments: &[(SegmentType, &[u32])]) -> AsPath {
        AsPath::from_segments(segments.iter().map(|&(kind, asns)| Segment { kind, asns }))
    }

    fn re(text: &str) -> AsPathRegex {
        text.parse().unwrap()
    }

    #[test]
    fn paths_are_written_as_frr_shows_them() {
        let p = path(&[
            (SegmentType::ConfedSequence, &[64600, 64601]),
            (SegmentType::Sequence, &[65002, 65001]),
            (SegmentType::Set, &[64512, 64513]),
        ]);
        assert_eq!(render(Some(&p)), "(64600 64601) 65002 65001 {64512,64513}");
        assert_eq!(render(None), "");
    }

    #[test]
    fn underscore_is_an_as_boundary_and_anchors_hold() {
        let p = path(&[(SegmentType::Sequence, &[65002, 165001, 65001])]);
        assert!(re("^65002_").matches(Some(&p)));
        assert!(!re("^65001_").matches(Some(&p)));
        assert!(re("_65001$").matches(Some(&p)));
        assert!(re("_165001_").matches(Some(&p)));
        assert!(
            !re("_5001_").matches(Some(&p)),
            "`_` keeps 5001 from matching inside 165001"
        );
        assert!(
            re("5001").matches(Some(&p)),
            "unanchored text matches inside"
        );
        assert!(re("^65002 165001 65001$").matches(Some(&p)));
        assert!(re("^$").matches(None) && !re("^$").matches(Some(&p)));
        assert!(re("^65002_([0-9]+_)*65001$").matches(Some(&p)));
        let set = path(&[
            (SegmentType::Sequence, &[65002]),
            (SegmentType::Set, &[64512, 64513]),
        ]);
        assert!(
            re("_64513_").matches(Some(&set)),
            "`_` matches `,` and `}}`"
        );
        assert!(
            !re("[_]").matches(Some(&p)),
            "inside brackets `_` is itself"
        );
        assert!("("
            .parse::<AsPathRegex>()
            .unwrap_err()
            .starts_with("\"(\" is not a regular expression"));
    }

    #[test]
    fn the_origin_is_the_last_as_of_a_final_sequence() {
        let p = path(&[(SegmentType::Sequence, &[65002, 65001])]);
        assert_eq!(origin_as(Some(&p), 65000), Some(65001));
        let set = path(&[
            (SegmentType::Sequence, &[65002]),
            (SegmentType::Set, &[64512, 64513]),
        ]);
        assert_eq!(origin_as(Some(&set), 65000), None, "RFC 6811 §2: NONE");
        assert_eq!(origin_as(None, 65000), Some(65000));
        assert_eq!(origin_as(Some(&AsPath::default()), 65000), Some(65000));
        let confed = path(&[(SegmentType::ConfedSequence, &[64600])]);
        assert_eq!(origin_as(Some(&confed), 65000), Some(65000));
    }
}
