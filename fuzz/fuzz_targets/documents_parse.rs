//! Parsing a file of resource documents never panics; what parses re-serializes and parses
//! back to the same resources.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_shared::resource::document::parse_documents;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(resources) = parse_documents(text) {
        for resource in resources {
            let json = resource.to_value().to_string();
            let again = parse_documents(&json).expect("a parsed resource serializes to a valid document");
            assert_eq!(again, vec![resource]);
        }
    }
});
