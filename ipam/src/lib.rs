//! twill-ipam: Twill's IP address management, Calico's model.
//!
//! Pools (`IPPool`) are cut into blocks (/26 and /122 by default) that nodes claim with an
//! affinity; a node allocates from its own blocks, claims a new one when they are full, and
//! borrows from other nodes' blocks unless `strictAffinity`. Addresses belong to handles
//! (`<network>.<containerID>` for pods) and are released by handle or by address;
//! `IPReservation`s are never handed out.
//!
//! Layers:
//! - [`block`] (pure): `(Block, Request) -> (Block, Allocation)` and releases.
//! - [`pool`] (pure): which pools a request may use, block order per node, object names.
//! - [`check`] (pure): the consistency report (leaks, unallocated endpoint addresses).
//! - `runtime` (edge, feature `runtime`): the compare-and-swap retry loop against the
//!   datastore, the host-wide lock, the leak GC.
//!
//! Guarantees: an address is never handed out twice (every write is a compare-and-swap on
//! the block, in one transaction with the handle); nothing outside a pool or reserved is
//! handed out; a failed or interrupted allocation leaves either everything or nothing.

pub mod block;
pub mod check;
#[cfg(feature = "runtime")]
pub mod gc;
pub mod pool;
#[cfg(feature = "runtime")]
pub mod runtime;

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (what IPAM writes) into seconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || bytes[10] != b'T'
        || bytes[19] != b'Z'
    {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    // Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm).
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_is_read_as_written() {
        assert_eq!(super::parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        // 2026-11-30T20:35:18Z, from `date -d 2026-11-30T20:35:18Z +%s`.
        assert_eq!(
            super::parse_rfc3339("2026-11-30T20:35:18Z"),
            Some(1_796_070_918)
        );
        assert_eq!(
            super::parse_rfc3339("2000-02-29T12:00:00Z"),
            Some(951_825_600)
        );
        assert_eq!(super::parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }
}
