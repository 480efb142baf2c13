//! The service's consumer run by `kq::testing` from its own `etc/mq.yaml`, on the embedded
//! broker or the one `KQ_TEST_BROKERS` names: the demo payments it pushes at start-up are
//! handled, and a payment whose downstream stays down ends in the dead-letter topic.

use std::time::Duration;

use kq::testing::{unique, TestApp};
use payment_success::config::Config;
use payment_success::svc::ServiceContext;

const CONFIG: &str = include_str!("../etc/mq.yaml");
const WAIT: Duration = Duration::from_secs(30);

/// `etc/mq.yaml` with a topic and a group of the test's own, pushed to and consumed from.
fn app() -> TestApp<Config> {
    let topic = unique("payment-success");
    TestApp::<Config>::from_yaml(CONFIG)
        .and_then(|app| app.set("KqPusherConf.Topic", &topic))
        .and_then(|app| app.set("KqConsumerConf.Topic", &topic))
        .and_then(|app| app.set("KqConsumerConf.Group", &unique("kqConsumer")))
        .expect("etc/mq.yaml loads")
}

#[tokio::test]
async fn the_demo_payments_are_handled() {
    let app = app();
    let state = ServiceContext::new(app.config()).expect("the service context");
    let running = app.start(state).await.expect("start");
    // etc/mq.yaml's `DemoPayments: 5`, pushed by the state as the service starts.
    let handled = running
        .wait_handled("payment_success", 5, WAIT)
        .await
        .expect("the demo payments");
    assert_eq!((handled.ok, handled.settled()), (5, 5), "{handled}");
    running.stop().await.expect("a clean stop");
}

#[tokio::test]
async fn a_payment_whose_downstream_stays_down_is_dead_lettered() {
    let app = app()
        .set("DemoDownKey", "order-2")
        .and_then(|app| app.set("DemoDownFor", "1h"))
        .and_then(|app| app.set("KqConsumerConf.DeadLetterTopic", &unique("payment-dlq")))
        .and_then(|app| app.set("KqConsumerConf.Retry.Attempts", "3"))
        .and_then(|app| app.set("KqConsumerConf.Retry.Backoff", "10ms"))
        .expect("the config");
    let topic = app.config().kq_consumer_conf.topic.clone();
    let state = ServiceContext::new(app.config()).expect("the service context");
    let running = app.start(state).await.expect("start");
    let handled = running
        .wait_handled("payment_success", 5, WAIT)
        .await
        .expect("every demo payment settled");
    assert_eq!(
        (handled.ok, handled.dead_lettered, handled.retried),
        (4, 1, 2),
        "{handled}"
    );
    let dead = running
        .dead_letters("payment_success", 1, WAIT)
        .await
        .expect("the dead letter");
    assert_eq!(dead[0].key_str(), Ok("order-2"));
    let header = |name| dead[0].headers().get_str(name);
    assert_eq!(header(kq::dead_letter_headers::TOPIC), Some(topic.as_str()));
    assert_eq!(header(kq::dead_letter_headers::ATTEMPTS), Some("3"));
    assert_eq!(
        header(kq::dead_letter_headers::ERROR),
        Some("downstream for order-2 is down")
    );
    running.stop().await.expect("a clean stop");
}
