//! Path attributes (RFC 4271 §4.3, §5) and how each malformation is handled (RFC 7606 §7).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};

use super::open::AS_TRANS;
use super::prefix::{decode_prefixes, encode_prefixes, Family, Nlri};
use super::reader::Reader;
use super::Context;

/// Attribute flag bits (RFC 4271 §4.3).
pub mod flags {
    /// Optional (not well-known).
    pub const OPTIONAL: u8 = 0x80;
    /// Transitive.
    pub const TRANSITIVE: u8 = 0x40;
    /// Partial.
    pub const PARTIAL: u8 = 0x20;
    /// Extended (2-octet) length.
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Attribute type codes.
pub mod code {
    #![allow(missing_docs)]
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// Well-known communities (RFC 1997).
pub mod community {
    /// NO_EXPORT: do not advertise outside the AS (or confederation).
    pub const NO_EXPORT: u32 = 0xFFFF_FF01;
    /// NO_ADVERTISE: do not advertise to any peer.
    pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
    /// NO_EXPORT_SUBCONFED.
    pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
}

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// 0: learned by an interior protocol.
    Igp,
    /// 1: learned by EGP.
    Egp,
    /// 2: learned some other way.
    Incomplete,
}

/// AS_PATH segment types (RFC 4271 §4.3, RFC 5065 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentType {
    /// 1: AS_SET.
    Set,
    /// 2: AS_SEQUENCE.
    Sequence,
    /// 3: AS_CONFED_SEQUENCE.
    ConfedSequence,
    /// 4: AS_CONFED_SET.
    ConfedSet,
}

impl SegmentType {
    fn code(self) -> u8 {
        match self {
            SegmentType::Set => 1,
            SegmentType::Sequence => 2,
            SegmentType::ConfedSequence => 3,
            SegmentType::ConfedSet => 4,
        }
    }

    fn from_code(code: u8) -> Option<SegmentType> {
        Some(match code {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        })
    }
}

/// One AS_PATH segment, borrowed from its [`AsPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Set, sequence, or their confederation forms.
    pub kind: SegmentType,
    /// The AS numbers (1 to 255 of them on the wire).
    pub asns: &'a [u32],
}

/// An AS_PATH (or AS4_PATH), nearest AS first.
///
/// Kept compact, as hundreds of thousands of distinct paths live in a full table: the
/// segments are flattened into one allocation of words, each segment a header word (its type
/// code above [`AsPath::COUNT_BITS`] bits of AS count) followed by its AS numbers. A path of
/// one sequence of five ASes is one 24-byte allocation, where a `Vec` of segments each with a
/// `Vec` of numbers took two; the field is 16 bytes, not 24. Every path has exactly one such
/// form, so equality and hashing are those of the segments.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    words: Box<[u32]>,
}

impl std::fmt::Debug for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.segments()).finish()
    }
}

impl AsPath {
    /// Bits of a segment's header word that hold its AS count; the type code is above them.
    /// A segment holds fewer than 2^24 ASes (on the wire, at most 255).
    pub const COUNT_BITS: u32 = 24;

    fn header(kind: SegmentType, count: usize) -> u32 {
        let count = u32::try_from(count)
            .ok()
            .filter(|c| *c < 1 << AsPath::COUNT_BITS)
            .expect("a segment holds fewer than 2^24 ASes (on the wire, at most 255)");
        u32::from(kind.code()) << AsPath::COUNT_BITS | count
    }

    /// A path of these segments, in order.
    pub fn from_segments<'a>(segments: impl IntoIterator<Item = Segment<'a>>) -> AsPath {
        let mut words = Vec::new();
        for segment in segments {
            words.push(AsPath::header(segment.kind, segment.asns.len()));
            words.extend_from_slice(segment.asns);
        }
        AsPath {
            words: words.into_boxed_slice(),
        }
    }

    /// A path of one sequence.
    pub fn sequence(asns: Vec<u32>) -> AsPath {
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath::from_segments([Segment {
            kind: SegmentType::Sequence,
            asns: &asns,
        }])
    }

    /// The segments, nearest first.
    pub fn segments(&self) -> Segments<'_> {
        Segments { rest: &self.words }
    }

    /// Path length for best-path selection (RFC 4271 §9.1.2.2): a sequence counts its ASes,
    /// a set counts one, confederation segments count nothing.
    pub fn len(&self) -> usize {
        self.segments()
            .map(|s| match s.kind {
                SegmentType::Sequence => s.asns.len(),
                SegmentType::Set => 1,
                _ => 0,
            })
            .sum()
    }

    /// Whether the path is empty.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Every AS in the path, in order.
    pub fn asns(&self) -> impl Iterator<Item = u32> + '_ {
        self.segments().flat_map(|s| s.asns.iter().copied())
    }

    /// The nearest AS of the first sequence (the neighbouring AS), if any.
    pub fn first_as(&self) -> Option<u32> {
        self.segments()
            .find(|s| s.kind == SegmentType::Sequence)
            .and_then(|s| s.asns.first().copied())
    }

    /// Puts `asn` in front, as a speaker does when it sends the path to an eBGP peer: into
    /// the first segment when it is a sequence of fewer than 255 ASes, else as a sequence of
    /// its own.
    pub fn prepend(&mut self, asn: u32) {
        let mut words = Vec::with_capacity(self.words.len() + 2);
        match self.segments().next() {
            Some(first) if first.kind == SegmentType::Sequence && first.asns.len() < 255 => {
                words.push(AsPath::header(SegmentType::Sequence, first.asns.len() + 1));
                words.push(asn);
                words.extend_from_slice(&self.words[1..]);
            }
            _ => {
                words.push(AsPath::header(SegmentType::Sequence, 1));
                words.push(asn);
                words.extend_from_slice(&self.words);
            }
        }
        self.words = words.into_boxed_slice();
    }

    /// Whether any AS of the path needs 4 octets.
    fn needs_four_octets(&self) -> bool {
        self.asns().any(|asn| asn > 0xFFFF)
    }

    /// RFC 6793 §4.2.3: rebuilds the true path from a 2-octet AS_PATH and the AS4_PATH.
    pub fn merge_as4(&self, as4: &AsPath) -> AsPath {
        let (len, len4) = (self.len(), as4.len());
        if len < len4 {
            return self.clone();
        }
        let mut keep = len - len4;
        let mut segments = Vec::new();
        for segment in self.segments() {
            if keep == 0 {
                break;
            }
            match segment.kind {
                SegmentType::Sequence if segment.asns.len() > keep => {
                    segments.push(Segment {
                        kind: SegmentType::Sequence,
                        asns: &segment.asns[..keep],
                    });
                    keep = 0;
                }
                SegmentType::Sequence => {
                    keep -= segment.asns.len();
                    segments.push(segment);
                }
                SegmentType::Set => {
                    keep -= 1;
                    segments.push(segment);
                }
                _ => segments.push(segment),
            }
        }
        AsPath::from_segments(segments.into_iter().chain(as4.segments()))
    }

    fn decode(bytes: &[u8], four_octet: bool) -> Option<AsPath> {
        let width = if four_octet { 4 } else { 2 };
        // Checked first, so that the words are allocated once, at their size.
        let mut words = 0;
        let mut at = 0;
        while at < bytes.len() {
            let (code, count) = (*bytes.get(at)?, usize::from(*bytes.get(at + 1)?));
            SegmentType::from_code(code)?;
            if count == 0 {
                return None; // RFC 7606 §7.2: a zero-length segment is malformed.
            }
            at += 2 + count * width;
            words += 1 + count;
        }
        if at != bytes.len() {
            return None;
        }
        let mut reader = Reader::new(bytes);
        let mut path = Vec::with_capacity(words);
        while !reader.is_empty() {
            let kind = SegmentType::from_code(reader.u8().ok()?)?;
            let count = reader.u8().ok()?;
            path.push(AsPath::header(kind, usize::from(count)));
            for _ in 0..count {
                path.push(if four_octet {
                    reader.u32().ok()?
                } else {
                    u32::from(reader.u16().ok()?)
                });
            }
        }
        Some(AsPath {
            words: path.into_boxed_slice(),
        })
    }

    fn encode(&self, out: &mut BytesMut, four_octet: bool, skip_confed: bool) {
        for segment in self.segments() {
            if skip_confed
                && matches!(
                    segment.kind,
                    SegmentType::ConfedSequence | SegmentType::ConfedSet
                )
            {
                continue;
            }
            for chunk in segment.asns.chunks(255) {
                out.put_u8(segment.kind.code());
                out.put_u8(chunk.len() as u8);
                for &asn in chunk {
                    if four_octet {
                        out.put_u32(asn);
                    } else {
                        out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
                    }
                }
            }
        }
    }
}

/// The segments of an [`AsPath`], nearest first.
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: &'a [u32],
}

impl<'a> Iterator for Segments<'a> {
    type Item = Segment<'a>;

    fn next(&mut self) -> Option<Segment<'a>> {
        let (&header, rest) = self.rest.split_first()?;
        let count = (header & ((1 << AsPath::COUNT_BITS) - 1)) as usize;
        let kind = SegmentType::from_code((header >> AsPath::COUNT_BITS) as u8)
            .expect("headers are written from a segment type");
        let (asns, rest) = rest.split_at(count);
        self.rest = rest;
        Some(Segment { kind, asns })
    }
}

/// MP_REACH_NLRI (RFC 4760 §3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    /// The family.
    pub family: Family,
    /// Next hops: one address, or for IPv6 a global and a link-local address (RFC 2545).
    pub next_hops: Vec<IpAddr>,
    /// Reachable prefixes.
    pub nlri: Vec<Nlri>,
}

/// MP_UNREACH_NLRI (RFC 4760 §4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    /// The family.
    pub family: Family,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<Nlri>,
}

/// An attribute Twill does not interpret, passed on as received (with PARTIAL set when it is
/// optional transitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// Flags as received.
    pub flags: u8,
    /// Type code.
    pub code: u8,
    /// Value.
    pub value: Bytes,
}

/// The path attributes of an UPDATE.
///
/// Hundreds of thousands of distinct sets live in a full table, so lists that are rarely
/// present or changed (CLUSTER_LIST, EXTENDED_COMMUNITIES, LARGE_COMMUNITIES, unrecognised
/// attributes) are boxed slices, 8 bytes smaller than a `Vec` each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH (merged with AS4_PATH when the peer is 2-octet only).
    pub as_path: Option<AsPath>,
    /// NEXT_HOP (IPv4 NLRI).
    pub next_hop: Option<Ipv4Addr>,
    /// MULTI_EXIT_DISC.
    pub med: Option<u32>,
    /// LOCAL_PREF.
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE.
    pub atomic_aggregate: bool,
    /// AGGREGATOR: AS and address.
    pub aggregator: Option<(u32, Ipv4Addr)>,
    /// COMMUNITIES (RFC 1997).
    pub communities: Vec<u32>,
    /// ORIGINATOR_ID (RFC 4456).
    pub originator_id: Option<Ipv4Addr>,
    /// CLUSTER_LIST (RFC 4456).
    pub cluster_list: Box<[Ipv4Addr]>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<Box<MpReach>>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<Box<MpUnreach>>,
    /// EXTENDED_COMMUNITIES (RFC 4360).
    pub extended_communities: Box<[[u8; 8]]>,
    /// LARGE_COMMUNITIES (RFC 8092): global administrator, local data 1, local data 2.
    pub large_communities: Box<[(u32, u32, u32)]>,
    /// Attributes passed through uninterpreted.
    pub unknown: Box<[RawAttribute]>,
}

/// What RFC 7606 says to do with a malformed attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Remedy {
    /// Drop the attribute, keep the routes (RFC 7606 §2 "attribute discard").
    Discard,
    /// Treat the UPDATE's routes as withdrawn (RFC 7606 §2 "treat-as-withdraw").
    TreatAsWithdraw,
    /// Reset the session with this UPDATE Message Error subcode (RFC 7606 §2 "session reset").
    Reset(u8),
}

/// A malformed attribute and its remedy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeError {
    /// The attribute's type code.
    pub code: u8,
    /// What to do.
    pub remedy: Remedy,
    /// The attribute as received (flags, type, length, value): NOTIFICATION data.
    pub data: Bytes,
    /// Why, for logs.
    pub reason: &'static str,
}

/// The remedy for a malformed attribute of type `code` (RFC 7606 §7, RFC 8092 §6).
fn remedy_for(code: u8) -> Remedy {
    match code {
        code::ATOMIC_AGGREGATE | code::AGGREGATOR | code::AS4_PATH | code::AS4_AGGREGATOR => {
            Remedy::Discard
        }
        code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => Remedy::Reset(9),
        _ => Remedy::TreatAsWithdraw,
    }
}

/// The flags a recognized attribute must carry (optional and transitive bits), if known.
fn expected_flags(code: u8) -> Option<u8> {
    use flags::{OPTIONAL, TRANSITIVE};
    Some(match code {
        code::ORIGIN
        | code::AS_PATH
        | code::NEXT_HOP
        | code::LOCAL_PREF
        | code::ATOMIC_AGGREGATE => TRANSITIVE,
        code::MULTI_EXIT_DISC | code::ORIGINATOR_ID | code::CLUSTER_LIST => OPTIONAL,
        code::MP_REACH_NLRI | code::MP_UNREACH_NLRI => OPTIONAL,
        code::AGGREGATOR
        | code::COMMUNITIES
        | code::EXTENDED_COMMUNITIES
        | code::AS4_PATH
        | code::AS4_AGGREGATOR
        | code::LARGE_COMMUNITIES => OPTIONAL | TRANSITIVE,
        _ => return None,
    })
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

fn u32_list(bytes: &[u8]) -> Option<Vec<u32>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// State kept while decoding one UPDATE's attributes.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) attributes: PathAttributes,
    pub(crate) as4_path: Option<AsPath>,
    pub(crate) as4_aggregator: Option<(u32, Ipv4Addr)>,
    pub(crate) errors: Vec<AttributeError>,
    seen: [bool; 256],
}

impl Default for Decoded {
    fn default() -> Decoded {
        Decoded {
            attributes: PathAttributes::default(),
            as4_path: None,
            as4_aggregator: None,
            errors: Vec::new(),
            seen: [false; 256],
        }
    }
}

impl Decoded {
    /// Decodes one attribute into the set, recording any malformation with its remedy.
    pub(crate) fn add(
        &mut self,
        flags_byte: u8,
        type_code: u8,
        value: &[u8],
        raw: &[u8],
        cx: &Context,
    ) {
        let fail = |this: &mut Decoded, reason: &'static str| {
            this.errors.push(AttributeError {
                code: type_code,
                remedy: remedy_for(type_code),
                data: Bytes::copy_from_slice(raw),
                reason,
            });
        };
        if self.seen[usize::from(type_code)] {
            // RFC 7606 §3 g: keep the first; a repeated MP attribute resets the session.
            if matches!(type_code, code::MP_REACH_NLRI | code::MP_UNREACH_NLRI) {
                fail(self, "repeated MP_REACH_NLRI or MP_UNREACH_NLRI");
            }
            return;
        }
        self.seen[usize::from(type_code)] = true;
        if let Some(expected) = expected_flags(type_code) {
            if flags_byte & (flags::OPTIONAL | flags::TRANSITIVE) != expected {
                return fail(self, "attribute flags conflict with the attribute type");
            }
        }
        let attributes = &mut self.attributes;
        let ok = match type_code {
            code::ORIGIN => match value {
                [0] => attributes.origin.replace(Origin::Igp).is_none(),
                [1] => attributes.origin.replace(Origin::Egp).is_none(),
                [2] => attributes.origin.replace(Origin::Incomplete).is_none(),
                _ => false,
            },
            code::AS_PATH => AsPath::decode(value, cx.four_octet_as)
                .map(|p| attributes.as_path = Some(p))
                .is_some(),
            code::NEXT_HOP => ipv4(value).map(|a| attributes.next_hop = Some(a)).is_some(),
            code::MULTI_EXIT_DISC => u32_list(value)
                .filter(|v| v.len() == 1)
                .map(|v| attributes.med = Some(v[0]))
                .is_some(),
            code::LOCAL_PREF => u32_list(value)
                .filter(|v| v.len() == 1)
                .map(|v| attributes.local_pref = Some(v[0]))
                .is_some(),
            code::ATOMIC_AGGREGATE => {
                value.is_empty() && {
                    attributes.atomic_aggregate = true;
                    true
                }
            }
            code::AGGREGATOR => decode_aggregator(value, cx.four_octet_as)
                .map(|a| attributes.aggregator = Some(a))
                .is_some(),
            code::COMMUNITIES => u32_list(value)
                .map(|c| attributes.communities = c)
                .is_some(),
            code::ORIGINATOR_ID => ipv4(value)
                .map(|a| attributes.originator_id = Some(a))
                .is_some(),
            code::CLUSTER_LIST => u32_list(value)
                .map(|ids| attributes.cluster_list = ids.into_iter().map(Ipv4Addr::from).collect())
                .is_some(),
            code::MP_REACH_NLRI => decode_mp_reach(value, cx)
                .map(|m| attributes.mp_reach = Some(Box::new(m)))
                .is_some(),
            code::MP_UNREACH_NLRI => decode_mp_unreach(value, cx)
                .map(|m| attributes.mp_unreach = Some(Box::new(m)))
                .is_some(),
            code::EXTENDED_COMMUNITIES => {
                (!value.is_empty() && value.len().is_multiple_of(8)) && {
                    attributes.extended_communities = value
                        .chunks_exact(8)
                        .map(|c| <[u8; 8]>::try_from(c).expect("chunks of 8"))
                        .collect();
                    true
                }
            }
            code::LARGE_COMMUNITIES => {
                (!value.is_empty() && value.len().is_multiple_of(12)) && {
                    attributes.large_communities = value
                        .chunks_exact(12)
                        .map(|c| {
                            let word =
                                |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                            (word(0), word(4), word(8))
                        })
                        .collect();
                    true
                }
            }
            code::AS4_PATH => AsPath::decode(value, true)
                .map(|p| self.as4_path = Some(p))
                .is_some(),
            code::AS4_AGGREGATOR => decode_aggregator(value, true)
                .map(|a| self.as4_aggregator = Some(a))
                .is_some(),
            _ => {
                self.add_unknown(flags_byte, type_code, value, raw);
                true
            }
        };
        if !ok {
            fail(self, "malformed attribute value");
        }
    }

    fn add_unknown(&mut self, flags_byte: u8, type_code: u8, value: &[u8], raw: &[u8]) {
        if flags_byte & flags::OPTIONAL == 0 {
            // RFC 4271 §6.3: an unrecognized well-known attribute resets the session.
            self.errors.push(AttributeError {
                code: type_code,
                remedy: Remedy::Reset(2),
                data: Bytes::copy_from_slice(raw),
                reason: "unrecognized well-known attribute",
            });
        } else if flags_byte & flags::TRANSITIVE != 0 {
            // Passed on with the partial bit set (RFC 4271 §5).
            let flags_byte = (flags_byte | flags::PARTIAL) & !flags::EXTENDED_LENGTH;
            let raw = RawAttribute {
                flags: flags_byte,
                code: type_code,
                value: Bytes::copy_from_slice(value),
            };
            let mut unknown = std::mem::take(&mut self.attributes.unknown).into_vec();
            unknown.push(raw);
            self.attributes.unknown = unknown.into_boxed_slice();
        }
        // Unrecognized optional non-transitive attributes are quietly ignored.
    }
}

fn decode_aggregator(value: &[u8], four_octet: bool) -> Option<(u32, Ipv4Addr)> {
    let mut reader = Reader::new(value);
    let result = match (value.len(), four_octet) {
        (8, true) => (reader.u32().ok()?, Ipv4Addr::from(reader.u32().ok()?)),
        (6, false) => (
            u32::from(reader.u16().ok()?),
            Ipv4Addr::from(reader.u32().ok()?),
        ),
        _ => return None,
    };
    Some(result)
}

fn decode_next_hops(bytes: &[u8], family: Family) -> Option<Vec<IpAddr>> {
    let address = |chunk: &[u8]| -> Option<IpAddr> {
        match chunk.len() {
            4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(chunk).ok()?))),
            16 => Some(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(chunk).ok()?,
            ))),
            _ => None,
        }
    };
    match (family, bytes.len()) {
        (Family::Ipv6Unicast, 32) => Some(vec![address(&bytes[..16])?, address(&bytes[16..])?]),
        (Family::Ipv6Unicast, 16) | (Family::Ipv4Unicast, 4) => Some(vec![address(bytes)?]),
        // RFC 8950: IPv4 NLRI over an IPv6 next hop.
        (Family::Ipv4Unicast, 16) => Some(vec![address(bytes)?]),
        (Family::Ipv4Unicast, 32) => Some(vec![address(&bytes[..16])?, address(&bytes[16..])?]),
        (Family::Other(..), _) => Some(Vec::new()),
        _ => None,
    }
}

fn decode_mp_reach(value: &[u8], cx: &Context) -> Option<MpReach> {
    let mut reader = Reader::new(value);
    let family = Family::from_codes(reader.u16().ok()?, reader.u8().ok()?);
    let next_hop_len = usize::from(reader.u8().ok()?);
    let next_hops = decode_next_hops(reader.take(next_hop_len).ok()?, family)?;
    reader.u8().ok()?; // Reserved.
    let nlri = match family {
        Family::Other(..) => Vec::new(),
        _ => decode_prefixes(reader.rest(), family, cx.add_path_receive.contains(&family))?,
    };
    Some(MpReach {
        family,
        next_hops,
        nlri,
    })
}

fn decode_mp_unreach(value: &[u8], cx: &Context) -> Option<MpUnreach> {
    let mut reader = Reader::new(value);
    let family = Family::from_codes(reader.u16().ok()?, reader.u8().ok()?);
    let withdrawn = match family {
        Family::Other(..) => Vec::new(),
        _ => decode_prefixes(reader.rest(), family, cx.add_path_receive.contains(&family))?,
    };
    Some(MpUnreach { family, withdrawn })
}

/// Writes one attribute with the extended-length flag when the value needs it.
fn put_attribute(out: &mut BytesMut, flags_byte: u8, type_code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.put_u8(flags_byte | flags::EXTENDED_LENGTH);
        out.put_u8(type_code);
        out.put_u16(u16::try_from(value.len()).unwrap_or(u16::MAX));
    } else {
        out.put_u8(flags_byte & !flags::EXTENDED_LENGTH);
        out.put_u8(type_code);
        out.put_u8(value.len() as u8);
    }
    out.put_slice(value);
}

impl PathAttributes {
    /// Encodes the attributes in type-code order. Towards a 2-octet peer, AS numbers above
    /// 65535 become AS_TRANS and the true path travels in AS4_PATH (RFC 6793 §4.2.2).
    pub fn encode(&self, out: &mut BytesMut, cx: &Context) {
        use flags::{OPTIONAL, TRANSITIVE};
        let mut value = BytesMut::new();
        if let Some(origin) = self.origin {
            put_attribute(out, TRANSITIVE, code::ORIGIN, &[origin as u8]);
        }
        if let Some(path) = &self.as_path {
            path.encode(&mut value, cx.four_octet_as, false);
            put_attribute(out, TRANSITIVE, code::AS_PATH, &value.split());
        }
        if let Some(next_hop) = self.next_hop {
            put_attribute(out, TRANSITIVE, code::NEXT_HOP, &next_hop.octets());
        }
        if let Some(med) = self.med {
            put_attribute(out, OPTIONAL, code::MULTI_EXIT_DISC, &med.to_be_bytes());
        }
        if let Some(local_pref) = self.local_pref {
            put_attribute(out, TRANSITIVE, code::LOCAL_PREF, &local_pref.to_be_bytes());
        }
        if self.atomic_aggregate {
            put_attribute(out, TRANSITIVE, code::ATOMIC_AGGREGATE, &[]);
        }
        if let Some((asn, address)) = self.aggregator {
            if cx.four_octet_as {
                value.put_u32(asn);
            } else {
                value.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
            }
            value.put_slice(&address.octets());
            put_attribute(out, OPTIONAL | TRANSITIVE, code::AGGREGATOR, &value.split());
        }
        self.encode_lists(out, &mut value);
        self.encode_mp(out, &mut value, cx);
        self.encode_as4(out, &mut value, cx);
        for raw in &self.unknown {
            put_attribute(out, raw.flags, raw.code, &raw.value);
        }
    }

    fn encode_lists(&self, out: &mut BytesMut, value: &mut BytesMut) {
        use flags::{OPTIONAL, TRANSITIVE};
        if !self.communities.is_empty() {
            self.communities.iter().for_each(|c| value.put_u32(*c));
            put_attribute(
                out,
                OPTIONAL | TRANSITIVE,
                code::COMMUNITIES,
                &value.split(),
            );
        }
        if let Some(id) = self.originator_id {
            put_attribute(out, OPTIONAL, code::ORIGINATOR_ID, &id.octets());
        }
        if !self.cluster_list.is_empty() {
            self.cluster_list
                .iter()
                .for_each(|id| value.put_slice(&id.octets()));
            put_attribute(out, OPTIONAL, code::CLUSTER_LIST, &value.split());
        }
        if !self.extended_communities.is_empty() {
            self.extended_communities
                .iter()
                .for_each(|c| value.put_slice(c));
            put_attribute(
                out,
                OPTIONAL | TRANSITIVE,
                code::EXTENDED_COMMUNITIES,
                &value.split(),
            );
        }
        if !self.large_communities.is_empty() {
            for (global, one, two) in &self.large_communities {
                value.put_u32(*global);
                value.put_u32(*one);
                value.put_u32(*two);
            }
            put_attribute(
                out,
                OPTIONAL | TRANSITIVE,
                code::LARGE_COMMUNITIES,
                &value.split(),
            );
        }
    }

    fn encode_mp(&self, out: &mut BytesMut, value: &mut BytesMut, cx: &Context) {
        if let Some(reach) = &self.mp_reach {
            value.put_u16(reach.family.afi());
            value.put_u8(reach.family.safi());
            let mut hops = BytesMut::new();
            for hop in &reach.next_hops {
                match hop {
                    IpAddr::V4(a) => hops.put_slice(&a.octets()),
                    IpAddr::V6(a) => hops.put_slice(&a.octets()),
                }
            }
            value.put_u8(hops.len() as u8);
            value.put_slice(&hops);
            value.put_u8(0);
            encode_prefixes(value, &reach.nlri, cx.add_path_send.contains(&reach.family));
            put_attribute(out, flags::OPTIONAL, code::MP_REACH_NLRI, &value.split());
        }
        if let Some(unreach) = &self.mp_unreach {
            value.put_u16(unreach.family.afi());
            value.put_u8(unreach.family.safi());
            encode_prefixes(
                value,
                &unreach.withdrawn,
                cx.add_path_send.contains(&unreach.family),
            );
            put_attribute(out, flags::OPTIONAL, code::MP_UNREACH_NLRI, &value.split());
        }
    }

    fn encode_as4(&self, out: &mut BytesMut, value: &mut BytesMut, cx: &Context) {
        use flags::{OPTIONAL, TRANSITIVE};
        if cx.four_octet_as {
            return;
        }
        if let Some(path) = self.as_path.as_ref().filter(|p| p.needs_four_octets()) {
            path.encode(value, true, true);
            put_attribute(out, OPTIONAL | TRANSITIVE, code::AS4_PATH, &value.split());
        }
        if let Some((asn, address)) = self.aggregator.filter(|(asn, _)| *asn > 0xFFFF) {
            value.put_u32(asn);
            value.put_slice(&address.octets());
            put_attribute(
                out,
                OPTIONAL | TRANSITIVE,
                code::AS4_AGGREGATOR,
                &value.split(),
            );
        }
    }
}
