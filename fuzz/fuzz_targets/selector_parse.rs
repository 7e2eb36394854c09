//! The selector parser never panics, and what it accepts prints a canonical form that parses
//! back to the same selector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_shared::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(selector) = Selector::parse(text) {
        let canonical = selector.canonical();
        assert_eq!(Selector::parse(&canonical).as_ref(), Ok(&selector), "{canonical:?}");
        let _ = selector.matches([("a", "b")].as_slice());
    }
});
