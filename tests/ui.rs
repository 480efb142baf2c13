//! Compile tests of the macros: what must compile, and what must not, with the error under
//! the offending tokens. Regenerate the expected output with `TRYBUILD=overwrite`.

#[test]
fn consumer() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/consumer/pass/*.rs");
    t.compile_fail("tests/ui/consumer/fail/*.rs");
}

#[test]
fn kq_config() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/kq_config/pass/*.rs");
    t.compile_fail("tests/ui/kq_config/fail/*.rs");
}

#[test]
fn main() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/main/pass/*.rs");
    t.compile_fail("tests/ui/main/fail/*.rs");
}
