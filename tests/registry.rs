//! Matching registered consumers to the config: a conf the config lacks, two consumers on
//! one conf, and a `State<S>` of the wrong type are all reported at start-up, together.

use std::sync::Arc;

use kq::{HandlerContext, KqConf};

#[derive(serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
struct Config {
    orders: KqConf,
    refunds: KqConf,
}

struct AppState;

#[kq::consumer(conf = "Orders")]
async fn orders(_state: &kq::State<AppState>, _key: &str, _value: &str) {}

#[kq::consumer(conf = "Orders", name = "orders_audit")]
async fn orders_again(_msg: &kq::Message) {}

#[kq::consumer(conf = "Shipments")]
async fn shipments(_key: &str, _value: &str) {}

#[kq::consumer(conf = "refunds")]
async fn refunds(_state: kq::State<String>, _msg: &kq::Message) {}

fn config() -> Config {
    let conf = |topic: &str| KqConf::new(["embedded"], "g", topic);
    Config {
        orders: conf("orders"),
        refunds: conf("refunds"),
    }
}

#[test]
fn every_registration_problem_is_reported_with_where_it_is() {
    let context = HandlerContext::new(Arc::new(AppState));
    let problems = kq::registered_queues(&config(), &context).unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let all = problems.join("\n");

    assert!(
        all.contains("consumer `orders_audit` (tests/registry.rs:")
            && all.contains("and consumer `orders` (tests/registry.rs:")
            && all.contains("both consume with `Orders`"),
        "{all}"
    );
    assert!(
        all.contains("consumer `shipments` (tests/registry.rs:")
            && all.contains("consumes with `Shipments`, which is not a KqConf field of")
            && all.contains("KqConf fields: Orders, Refunds"),
        "{all}"
    );
    assert!(
        all.contains("consumer `refunds`")
            && all.contains("takes `State<alloc::string::String>` but the service state is")
            && all.contains("AppState"),
        "{all}"
    );
}

#[test]
fn registrations_are_listed_by_name() {
    let names: Vec<_> = kq::ConsumerRegistration::all()
        .iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["orders", "orders_audit", "refunds", "shipments"]);
    let refunds = kq::ConsumerRegistration::find("refunds").unwrap();
    assert_eq!(refunds.conf, "refunds");
    assert_eq!(refunds.module_path, "registry");
}

#[test]
fn a_consumer_reads_headers_only_when_a_parameter_can_see_them() {
    let reads = |name: &str| (kq::ConsumerRegistration::find(name).unwrap().reads_headers)();
    assert!(!reads("orders"), "State, key and value");
    assert!(!reads("shipments"), "key and value");
    assert!(reads("orders_audit"), "&Message");
    assert!(reads("refunds"), "State and &Message");
}

#[test]
fn a_consumer_has_its_text_checked_as_it_is_copied_only_when_it_takes_key_or_value_as_str() {
    let reads = |name: &str| kq::ConsumerRegistration::find(name).unwrap().reads_text;
    assert!(reads("orders"), "State, key and value");
    assert!(reads("shipments"), "key and value");
    assert!(!reads("orders_audit"), "&Message");
    assert!(!reads("refunds"), "State and &Message");
}
