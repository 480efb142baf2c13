//! `kq::testing`: registered consumers run from a config text, with their state, error policy
//! and dead-letter topic, on the embedded broker or the one `KQ_TEST_BROKERS` names.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use kq::testing::{unique, TestApp};

const WAIT: Duration = Duration::from_secs(30);

#[derive(serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
struct Config {
    /// What the state is built from, as a service's state reads its config.
    greeting: String,
    orders: kq::KqConf,
    #[serde(default)]
    ledger: Option<kq::KqConf>,
    #[serde(default)]
    notices: Option<kq::PusherConf>,
}

/// The config as a service would have it: its brokers and `Offset: last` are the kit's to
/// replace.
const CONFIG: &str = "
Greeting: paid
Orders:
  Brokers: [192.0.2.1:9092]
  Group: orders
  Topic: orders
  Offset: last
  DeadLetterTopic: orders-dlq
  CommitInterval: 100ms
  Retry:
    Attempts: 2
    Backoff: 10ms
    MaxBackoff: 20ms
Notices:
  Brokers: [192.0.2.1:9092]
  Topic: notices
";

#[derive(Default)]
struct Shop {
    greeting: String,
    handled: Mutex<Vec<String>>,
    fail_bad: AtomicBool,
}

#[kq::consumer(conf = "Orders")]
async fn orders(shop: &kq::State<Shop>, key: &str, value: &str) -> anyhow::Result<()> {
    if shop.fail_bad.load(Ordering::SeqCst) && value == "bad" {
        anyhow::bail!("cannot take a bad order");
    }
    shop.handled
        .lock()
        .unwrap()
        .push(format!("{}:{key}:{value}", shop.greeting));
    Ok(())
}

#[derive(serde::Deserialize)]
struct Line {
    cents: u64,
}

#[kq::consumer(conf = "Ledger")]
async fn ledger(shop: &kq::State<Shop>, lines: Vec<kq::Json<Line>>) {
    let mut handled = shop.handled.lock().unwrap();
    handled.extend(lines.iter().map(|kq::Json(line)| line.cents.to_string()));
}

/// The config with a topic, a dead-letter topic and a group of this test's own.
fn app() -> TestApp<Config> {
    TestApp::<Config>::from_yaml(CONFIG)
        .and_then(|app| app.set("Orders.Topic", &unique("orders")))
        .and_then(|app| app.set("Orders.DeadLetterTopic", &unique("orders-dlq")))
        .and_then(|app| app.set("Orders.Group", &unique("orders")))
        .expect("the config loads")
}

fn shop(config: &Config) -> Shop {
    Shop {
        greeting: config.greeting.clone(),
        ..Shop::default()
    }
}

#[tokio::test]
async fn a_registered_consumer_runs_with_its_state_on_the_test_broker() {
    let app = app().only(["orders"]);
    let orders = app.config().orders.clone();
    assert_eq!(orders.brokers, kq::testing::brokers());
    assert_eq!(orders.offset, kq::Offset::First);
    assert_eq!(
        app.config().notices.as_ref().map(|n| n.brokers.clone()),
        Some(kq::testing::brokers())
    );
    let state = shop(app.config());
    let running = app.start(state).await.expect("start");
    assert_eq!(running.consumers(), ["orders"]);

    for n in 1..=3 {
        running
            .push("orders", &format!("order-{n}"), format!("{n}00"))
            .await
            .expect("push");
    }
    let handled = running
        .wait_handled("orders", 3, WAIT)
        .await
        .expect("three handled");
    assert_eq!((handled.ok, handled.settled()), (3, 3), "{handled}");
    let mut seen = running.state().handled.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["paid:order-1:100", "paid:order-2:200", "paid:order-3:300"]
    );
    running.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn what_fails_for_good_is_read_back_from_the_dead_letter_topic() {
    let app = app().only(["orders"]);
    let state = shop(app.config());
    state.fail_bad.store(true, Ordering::SeqCst);
    let running = app.start(state).await.expect("start");
    let topic = running.conf("orders").unwrap().topic.clone();

    running.push("orders", "a", "good").await.expect("push");
    running.push("orders", "b", "bad").await.expect("push");
    let handled = running
        .wait_handled("orders", 2, WAIT)
        .await
        .expect("both settled");
    assert_eq!(
        (handled.ok, handled.dead_lettered, handled.retried),
        (1, 1, 1),
        "{handled}"
    );

    let dead = running
        .dead_letters("orders", 1, WAIT)
        .await
        .expect("the dead letter");
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.key(), Some(&b"b"[..]));
    assert_eq!(letter.value(), Some(&b"bad"[..]));
    let header = |name| letter.headers().get_str(name);
    assert_eq!(header(kq::dead_letter_headers::TOPIC), Some(topic.as_str()));
    assert_eq!(header(kq::dead_letter_headers::ATTEMPTS), Some("2"));
    assert_eq!(
        header(kq::dead_letter_headers::ERROR),
        Some("cannot take a bad order")
    );
    running.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_wait_that_runs_out_says_what_it_waited_for_and_what_it_saw() {
    let running = app()
        .only(["orders"])
        .start(Shop::default())
        .await
        .expect("start");
    running.push("orders", "a", "one").await.expect("push");
    running.wait_handled("orders", 1, WAIT).await.expect("one");
    let error = running
        .wait_handled("orders", 5, Duration::from_secs(1))
        .await
        .expect_err("only one message was pushed");
    assert!(error.is_timeout(), "{error}");
    assert_eq!(
        error.to_string(),
        "timed out after 1s waiting for 5 message(s) settled by `orders` \
         (1 ok, 0 failed, 0 dead-lettered, 0 retries so far)"
    );

    let error = running
        .wait_until("the moon", Duration::from_millis(200), || false)
        .await
        .expect_err("never");
    assert!(
        error
            .to_string()
            .starts_with("timed out after 200ms waiting for the moon (`orders`: 1 ok, 0 failed"),
        "{error}"
    );
    let empty = unique("empty");
    let error = running
        .read_topic(&empty, 1, Duration::from_secs(1))
        .await
        .expect_err("nothing there");
    assert!(error.is_timeout(), "{error}");

    let error = running.handled("order").expect_err("a typo");
    assert_eq!(
        error.to_string(),
        "no consumer `order` runs in this test (running: orders)"
    );
    let error = running
        .dead_letters("orders", 1, Duration::from_millis(1))
        .await
        .map(|_| ());
    // Its topic has none, and does not exist until it does.
    assert!(error.is_err_and(|e| e.is_timeout()));
    running.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_batch_consumer_counts_an_element_that_does_not_decode() {
    let ledger = unique("ledger");
    let app = TestApp::<Config>::from_yaml(&format!(
        "{CONFIG}Ledger:
  Brokers: [192.0.2.1:9092]
  Group: {ledger}
  Topic: {ledger}
  ForceCommit: true
  Retry:
    Attempts: 1
"
    ))
    .expect("the config loads")
    .only(["ledger"]);
    let state = shop(app.config());
    let running = app.start(state).await.expect("start");
    for value in [r#"{"cents":1}"#, "not json", r#"{"cents":3}"#] {
        running.push("ledger", "k", value).await.expect("push");
    }
    let handled = running
        .wait_handled("ledger", 3, WAIT)
        .await
        .expect("all three settled, the undecodable one too");
    assert_eq!((handled.ok, handled.failed), (2, 1), "{handled}");
    assert_eq!(*running.state().handled.lock().unwrap(), ["1", "3"]);
    running.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_start_reports_what_a_service_start_would() {
    // The state's type is checked against the handlers', as `kq::main!` does.
    let error = app()
        .only(["orders"])
        .start(String::from("not a shop"))
        .await
        .map(|_| ())
        .expect_err("a state of another type");
    assert!(
        error
            .to_string()
            .contains("the handler takes `State<testing::Shop>` but the service state is `alloc::string::String`"),
        "{error}"
    );

    // `Ledger` is optional and absent here: its consumer cannot be chosen.
    let error = app()
        .only(["ledger"])
        .start(Shop::default())
        .await
        .map(|_| ())
        .expect_err("no Ledger block");
    assert!(
        error.to_string().contains("no consumer `ledger` to start"),
        "{error}"
    );

    let error = TestApp::<Config>::from_yaml(&CONFIG.replace("Attempts: 2", "Attempts: 0"))
        .map(|_| ())
        .expect_err("a bad value");
    assert!(
        error.to_string().contains("Orders.Retry.Attempts"),
        "{error}"
    );

    let error = TestApp::<Config>::from_yaml("Orders: [")
        .map(|_| ())
        .expect_err("not YAML");
    assert!(error.to_string().starts_with("the config: "), "{error}");
}

#[tokio::test]
async fn a_wait_fails_at_once_with_the_error_of_a_consumer_that_failed() {
    // The consumer's client cannot start: its CA file is not a certificate.
    let ca_file = std::env::temp_dir().join(format!("{}.pem", unique("not-a-ca")));
    std::fs::write(&ca_file, "this is not a certificate\n").unwrap();
    let app = app()
        .set("Orders.CaFile", &ca_file.display().to_string())
        .expect("the config loads")
        .only(["orders"]);
    let running = app.start(Shop::default()).await.expect("start");
    let started = std::time::Instant::now();
    let error = running
        .wait_handled("orders", 1, WAIT)
        .await
        .expect_err("the consumer failed");
    let _ = std::fs::remove_file(&ca_file);
    assert!(
        started.elapsed() < WAIT / 2,
        "at once: {:?}",
        started.elapsed()
    );
    assert!(!error.is_timeout(), "{error}");
    assert!(
        error.to_string().starts_with("consumer `orders` failed: ")
            && error.to_string().ends_with(
                " while waiting for 1 message(s) settled by `orders` \
                 (0 ok, 0 failed, 0 dead-lettered, 0 retries so far)"
            ),
        "{error}"
    );
    let error = running.stop().await.expect_err("the stop reports it");
    assert!(
        error.to_string().starts_with("consumer `orders` failed: "),
        "{error}"
    );
}

#[tokio::test]
async fn a_config_value_runs_as_given() {
    let topic = unique("orders");
    let mut orders = kq::KqConf::new(kq::testing::brokers(), unique("orders"), &topic);
    orders.offset = kq::Offset::First;
    let config = Config {
        greeting: "given".to_owned(),
        orders,
        ledger: None,
        notices: None,
    };
    let app = TestApp::from_config(config).expect("a valid config");
    let error = TestApp::from_config(Config {
        greeting: String::new(),
        orders: kq::KqConf::new(kq::testing::brokers(), "", &topic),
        ledger: None,
        notices: None,
    })
    .map(|_| ())
    .expect_err("an empty group");
    assert!(error.to_string().contains("`Orders.Group`"), "{error}");
    let error = TestApp::from_config(shopless_config())
        .and_then(|app| app.set("Orders.Topic", "elsewhere"))
        .map(|_| ())
        .expect_err("no text to change");
    assert!(
        error.to_string().starts_with("cannot set `Orders.Topic`"),
        "{error}"
    );

    let state = shop(app.config());
    let running = app.only(["orders"]).start(state).await.expect("start");
    running.push("orders", "k", "v").await.expect("push");
    running.wait_handled("orders", 1, WAIT).await.expect("one");
    assert_eq!(*running.state().handled.lock().unwrap(), ["given:k:v"]);
    running.stop().await.expect("a clean stop");
}

fn shopless_config() -> Config {
    Config {
        greeting: String::new(),
        orders: kq::KqConf::new(kq::testing::brokers(), "g", "t"),
        ledger: None,
        notices: None,
    }
}
