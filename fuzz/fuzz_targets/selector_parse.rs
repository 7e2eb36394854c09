//! The selector parser never panics; what it accepts prints a canonical form that re-parses to
//! an equivalent selector and is a fixed point after one round trip (`!(!x)` prints as Calico
//! prints it, `!!x`, which parses as `x`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_shared::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(selector) = Selector::parse(text) {
        let canonical = selector.canonical();
        let once = Selector::parse(&canonical).expect("the canonical form parses");
        assert_eq!(Selector::parse(&once.canonical()).as_ref(), Ok(&once), "{canonical:?}");
        for labels in [&[("a", "b")][..], &[], &[("ends", "s"), ("b", "y")]] {
            assert_eq!(once.matches(labels), selector.matches(labels), "{canonical:?}");
        }
    }
});
