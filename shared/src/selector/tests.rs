use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn labels(spec: &str) -> BTreeMap<String, String> {
    spec.split_whitespace()
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("test labels are key=value");
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// (selector, label sets it matches, label sets it does not match). Label sets are written
/// `k=v k2=v2`; `-` is the empty set.
const CASES: &[(&str, &[&str], &[&str])] = &[
    ("", &["-", "a=b"], &[]),
    ("   ", &["-"], &[]),
    ("all()", &["-", "a=b"], &[]),
    ("all( )", &["-"], &[]),
    ("global()", &["-", "x=y"], &[]),
    ("a == 'b'", &["a=b", "a=b c=d"], &["-", "a=c", "b=b"]),
    ("a == \"b\"", &["a=b"], &["a=bb"]),
    ("a=='b'", &["a=b"], &["a=B"]),
    ("a != 'b'", &["-", "a=c", "c=b"], &["a=b"]),
    ("a!=\"b\"", &["a=x"], &["a=b"]),
    ("has(a)", &["a=", "a=x"], &["-", "b=a"]),
    ("has( a )", &["a=1"], &["-"]),
    ("!has(a)", &["-", "b=1"], &["a=1"]),
    ("! has(a)", &["b=1"], &["a=1"]),
    ("!!has(a)", &["a=1"], &["-"]),
    ("!!!has(a)", &["-"], &["a=1"]),
    ("a in {'x', 'y'}", &["a=x", "a=y"], &["-", "a=z", "b=x"]),
    ("a in {'x','y',}", &["a=y"], &["a=xy"]),
    ("a in {}", &[], &["-", "a=x"]),
    ("a not in {'x', 'y'}", &["-", "a=z", "b=x"], &["a=x", "a=y"]),
    ("a notin {'x'}", &["a=y"], &["a=x"]),
    ("a not  in {'x'}", &["a=y"], &["a=x"]),
    ("a not in {}", &["-", "a=x"], &[]),
    ("!a in {'a'}", &["a=b", "-"], &["a=a"]),
    ("a contains 'ell'", &["a=hello"], &["-", "a=help"]),
    ("a contains ''", &["a=", "a=x"], &["-"]),
    ("a starts with 'he'", &["a=hello"], &["-", "a=the"]),
    ("a startswith 'he'", &["a=he"], &["a=h"]),
    ("a ends with 'lo'", &["a=hello"], &["-", "a=lot"]),
    ("a endswith 'lo'", &["a=lo"], &["a=l"]),
    (
        "a == 'b' && c == 'd'",
        &["a=b c=d", "a=b c=d e=f"],
        &["a=b", "c=d", "a=x c=d"],
    ),
    (
        "a == 'b' || c == 'd'",
        &["a=b", "c=d", "a=b c=d"],
        &["-", "a=d c=b"],
    ),
    (
        "a == 'b' && c == 'd' || e == 'f'",
        &["a=b c=d", "e=f"],
        &["a=b", "c=d e=g"],
    ),
    (
        "a == 'b' || c == 'd' && e == 'f'",
        &["a=b", "c=d e=f"],
        &["c=d", "e=f"],
    ),
    (
        "(a == 'b' || c == 'd') && e == 'f'",
        &["a=b e=f", "c=d e=f"],
        &["a=b", "c=d"],
    ),
    (
        "!(a == 'b' || c == 'd')",
        &["-", "a=x c=y"],
        &["a=b", "c=d"],
    ),
    (
        "!a == 'b' && c == 'd'",
        &["c=d", "a=x c=d"],
        &["a=b c=d", "-"],
    ),
    ("!(a == 'b') && !(c == 'd')", &["-"], &["a=b", "c=d"]),
    ("((a == 'b'))", &["a=b"], &["a=c"]),
    ("has(a) && !has(b)", &["a=1"], &["a=1 b=1", "b=1"]),
    ("has(a) || has(b)", &["a=1", "b=1"], &["c=1"]),
    ("all() && a == 'b'", &["a=b"], &["-"]),
    ("all() || a == 'b'", &["-"], &[]),
    ("!all()", &[], &["-", "a=b"]),
    ("app == 'frontend'", &["app=frontend"], &["app=backend"]),
    (
        "environment == 'production'",
        &["environment=production"],
        &["environment=staging"],
    ),
    (
        "isolation == 'enabled'",
        &["isolation=enabled"],
        &["isolation=disabled", "-"],
    ),
    ("role == 'reader'", &["role=reader"], &["role=admin"]),
    (
        "app == 'payment-service'",
        &["app=payment-service"],
        &["app=payment"],
    ),
    (
        "projectcalico.org/namespace == 'default'",
        &["projectcalico.org/namespace=default"],
        &["projectcalico.org/namespace=kube-system"],
    ),
    (
        "k8s-app in {'kube-dns', 'coredns'}",
        &["k8s-app=coredns"],
        &["k8s-app=dns"],
    ),
    (
        "has(projectcalico.org/namespace)",
        &["projectcalico.org/namespace=x"],
        &["-"],
    ),
    (
        "tier == 'db' && env in {'prod', 'staging'} && !has(quarantine)",
        &["tier=db env=prod"],
        &["tier=db env=prod quarantine=1", "tier=db env=dev"],
    ),
    ("a_b.c/d-e == 'v'", &["a_b.c/d-e=v"], &["a_b.c/d-e=w"]),
    ("in == 'x'", &["in=x"], &["in=y"]),
    ("has(in)", &["in=1"], &["-"]),
    ("contains contains 'x'", &["contains=axb"], &["contains=b"]),
    ("inside in {'a'}", &["inside=a"], &["inside=b"]),
    ("a == 'it\"s'", &["a=it\"s"], &["a=its"]),
    ("a == \"it's\"", &["a=it's"], &["a=its"]),
    ("a == ''", &["a="], &["-", "a=x"]),
    ("a != ''", &["a=x", "-"], &["a="]),
    ("1 == '2'", &["1=2"], &["1=1"]),
    ("a\t==\t'b'", &["a=b"], &["a=c"]),
    (
        "(has(a) || has(b)) && (has(c) || has(d))",
        &["a=1 c=1", "b=1 d=1"],
        &["a=1 b=1", "c=1 d=1"],
    ),
    ("!(has(a) && has(b))", &["a=1", "b=1", "-"], &["a=1 b=1"]),
    (
        "a in {'x'} || a not in {'x', 'y'}",
        &["a=x", "a=z", "-"],
        &["a=y"],
    ),
    (
        "x starts with 'a' && x ends with 'z'",
        &["x=abcz", "x=az"],
        &["x=abc", "x=bz"],
    ),
    (
        "a == 'b' && (c == 'd' || (e == 'f' && !has(g)))",
        &["a=b c=d", "a=b e=f"],
        &["a=b e=f g=1", "c=d"],
    ),
];

#[test]
fn table_of_selectors() {
    assert!(CASES.len() >= 60, "the table keeps at least 60 selectors");
    for (text, matching, non_matching) in CASES {
        let selector =
            Selector::parse(text).unwrap_or_else(|err| panic!("{text:?} should parse: {err}"));
        for set in *matching {
            let labels = if *set == "-" {
                BTreeMap::new()
            } else {
                labels(set)
            };
            assert!(selector.matches(&labels), "{text:?} should match {set:?}");
        }
        for set in *non_matching {
            let labels = if *set == "-" {
                BTreeMap::new()
            } else {
                labels(set)
            };
            assert!(
                !selector.matches(&labels),
                "{text:?} should not match {set:?}"
            );
        }
        // The canonical form parses back to the same selector.
        let canonical = selector.canonical();
        assert_eq!(
            Selector::parse(&canonical).as_ref(),
            Ok(&selector),
            "{text:?} -> {canonical:?}"
        );
    }
}

#[test]
fn bad_selectors_name_the_column() {
    let bad: &[(&str, usize)] = &[
        ("app = 'x'", 5),
        ("b == b", 6),
        ("b", 2),
        ("'b' == a", 1),
        ("()", 2),
        ("foo in \"\"", 8),
        ("a == 'b' &&", 12),
        ("a == 'b' ||", 12),
        ("&& a == 'b'", 1),
        ("a == 'b' & c == 'd'", 10),
        ("a == 'b' | c == 'd'", 10),
        ("has (a)", 5),
        ("has()", 5),
        ("has(a", 6),
        ("all(x)", 5),
        ("a == 'b", 6),
        ("a in {'x' 'y'}", 11),
        ("a in {'x',,}", 11),
        ("a in 'x'", 6),
        ("(a == 'b'", 10),
        ("a == 'b')", 9),
        ("a == 'b' c == 'd'", 10),
        ("a ==", 5),
        ("a == 'b'\n&& c == 'd'", 9),
        ("!", 2),
        ("a contains", 11),
        ("a startswith b", 14),
        ("a ~= 'b'", 3),
    ];
    for (text, column) in bad {
        let err = Selector::parse(text).expect_err(&format!("{text:?} should not parse"));
        assert_eq!(err.column, *column, "{text:?}: {err}");
    }
    let err = Selector::parse("app = 'x'").unwrap_err();
    assert!(
        err.to_string().contains("equality is written `==`"),
        "{err}"
    );
}

#[test]
fn canonical_forms_follow_calico() {
    let cases = [
        ("", "all()"),
        ("a=='b'", "a == \"b\""),
        ("a == 'it\"s'", "a == 'it\"s'"),
        ("a in {'y', 'x', 'y'}", "a in {\"x\", \"y\"}"),
        ("a notin {'x'}", "a not in {\"x\"}"),
        ("a startswith 'x'", "a starts with \"x\""),
        ("a endswith 'x'", "a ends with \"x\""),
        ("b == 'y' && a == 'x'", "(b == \"y\" && a == \"x\")"),
        (
            "a == 'x' || b == 'y' && c == 'z'",
            "(a == \"x\" || (b == \"y\" && c == \"z\"))",
        ),
        ("!(a == 'x' && b == 'y')", "!(a == \"x\" && b == \"y\")"),
        ("!!has(a)", "has(a)"),
        ("has( a )", "has(a)"),
        ("((a == 'x'))", "a == \"x\""),
    ];
    for (input, canonical) in cases {
        assert_eq!(
            Selector::parse(input).unwrap().canonical(),
            canonical,
            "{input:?}"
        );
    }
}

#[test]
fn unique_id_matches_calicos_vector() {
    assert_eq!(
        Selector::parse("").unwrap().unique_id(),
        "s:5y5I3VdRZfDU01O--xXAPx2yxCQQqMf0M6IWug"
    );
    // Operand order is part of the identity, as in Calico.
    let ab = Selector::parse("a == 'x' && b == 'y'").unwrap().unique_id();
    let ba = Selector::parse("b == 'y' && a == 'x'").unwrap().unique_id();
    assert_ne!(ab, ba);
}

/// The canonical text re-parses to an equivalent selector, and after one round trip it is a
/// fixed point. (Not an identity: `!(!x)` prints as Calico prints it, `!!x`, which parses as
/// `x` because a run of `!` collapses.)
fn canonical_round_trip_holds(selector: &Selector) -> bool {
    let Ok(once) = Selector::parse(&selector.canonical()) else {
        return false;
    };
    let fixed = Selector::parse(&once.canonical()).as_ref() == Ok(&once);
    let label_sets = [
        labels("a=b"),
        labels("a=x b=y"),
        BTreeMap::new(),
        labels("ends=s c=d in=x"),
    ];
    fixed
        && label_sets
            .iter()
            .all(|set| once.matches(set) == selector.matches(set))
}

#[test]
fn double_negation_prints_as_calico_prints_it() {
    // Found by the fuzzer: `!(!x)` is Not(Not(x)); Calico's canonical form is `!!x`.
    let selector = Selector::parse("!(!ends starts with 'q')").unwrap();
    assert_eq!(selector.canonical(), "!!ends starts with \"q\"");
    assert!(canonical_round_trip_holds(&selector));
    assert!(selector.matches(&labels("ends=quux")) && !selector.matches(&labels("ends=x")));
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let deep = format!("{}a == 'b'{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(Selector::parse(&deep).is_err());
    let negations = format!("{}has(a)", "!".repeat(100_000));
    assert!(Selector::parse(&negations).is_ok());
}

proptest! {
    #[test]
    fn parser_never_panics(input in "\\PC{0,80}") {
        let _ = Selector::parse(&input);
    }

    #[test]
    fn parser_never_panics_on_selector_like_text(
        input in "[a-c !&|(){},'\"=]{0,10}(has\\(|all\\(|in |not in |starts with |==|!=|a|'x'|\\{|\\}){0,12}"
    ) {
        if let Ok(selector) = Selector::parse(&input) {
            prop_assert!(canonical_round_trip_holds(&selector), "{:?}", input);
        }
    }
}
