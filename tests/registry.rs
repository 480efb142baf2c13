//! Matching registered consumers to the config: a conf the config lacks (with the field it is
//! likely a typo of), two consumers on one conf or with one name, and a `State<S>` of the
//! wrong type are all reported at start-up, together.

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

mod billing {
    // The same name as the consumer above, and a typo of a conf key.
    #[kq::consumer(conf = "Refund")]
    async fn refunds(_key: &str, _value: &str) {}
}

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
    assert_eq!(problems.len(), 5, "{problems:#?}");
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
        all.contains("consumer `refunds` (tests/registry.rs:")
            && all.contains("takes `State<alloc::string::String>` but the service state is")
            && all.contains("AppState"),
        "{all}"
    );
    let same_name = problems
        .iter()
        .find(|p| p.contains("have the same name"))
        .expect("two consumers named `refunds`");
    assert_eq!(
        same_name
            .matches("consumer `refunds` (tests/registry.rs:")
            .count(),
        2,
        "{same_name}"
    );
    assert!(
        all.contains("consumes with `Refund`, which is not a KqConf field of")
            && all.contains("KqConf fields: Orders, Refunds); did you mean `Refunds`?"),
        "{all}"
    );
}

#[test]
fn registrations_are_listed_by_name() {
    let names: Vec<_> = kq::__private::ConsumerRegistration::all()
        .iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        ["orders", "orders_audit", "refunds", "refunds", "shipments"]
    );
    let refunds = kq::__private::ConsumerRegistration::find("refunds").unwrap();
    assert_eq!(refunds.conf, "refunds");
    assert_eq!(refunds.module_path, "registry");
}

#[test]
fn a_consumer_reads_headers_only_when_a_parameter_can_see_them() {
    let reads = |name: &str| {
        (kq::__private::ConsumerRegistration::find(name)
            .unwrap()
            .reads_headers)()
    };
    assert!(!reads("orders"), "State, key and value");
    assert!(!reads("shipments"), "key and value");
    assert!(reads("orders_audit"), "&Message");
    assert!(reads("refunds"), "State and &Message");
}

#[test]
fn a_consumer_has_its_text_checked_as_it_is_copied_only_when_it_takes_key_or_value_as_str() {
    let reads = |name: &str| {
        kq::__private::ConsumerRegistration::find(name)
            .unwrap()
            .reads_text
    };
    assert!(reads("orders"), "State, key and value");
    assert!(reads("shipments"), "key and value");
    assert!(!reads("orders_audit"), "&Message");
    assert!(!reads("refunds"), "State and &Message");
}
