//! TLS and SASL against a real broker, consumers and pushers alike.
//!
//! `scripts/test.sh --real` names the broker's secured listeners (see `scripts/broker.sh`) in
//! `KQ_TEST_TLS_BROKERS` (mutual TLS, with the certificates in `KQ_TEST_TLS_DIR`) and
//! `KQ_TEST_SASL_BROKERS` (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN, go-queue's mechanism).
//! Without those variables these tests say they were skipped.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{consumer_conf, eventually, pusher_conf, unique, Running};
use kq::{KqConf, Mechanism, Pusher, PusherConf};

/// The topic the broker is started with: the secured listeners' admin API is out of reach
/// of `kq::create_topic`, which connects without credentials.
const TOPIC: &str = "kq-secure";
const WAIT: Duration = Duration::from_secs(60);
/// How long a push to a broker that refuses the client may take to fail.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Received {
    values: Mutex<HashSet<String>>,
}

#[kq::consumer(conf = "Received")]
async fn received(state: &kq::State<Received>, _key: &str, value: &str) {
    state.values.lock().unwrap().insert(value.to_owned());
}

/// The security keys of one side of a test, applied to consumer and pusher confs alike.
#[derive(Clone, Default)]
struct Credentials {
    brokers: String,
    ca_file: String,
    cert_file: String,
    key_file: String,
    insecure_skip_verify: bool,
    username: String,
    password: String,
    mechanism: Mechanism,
}

/// Sets the connection keys of a consumer or a pusher conf: both have the same ones.
macro_rules! connect_with {
    ($conf:expr, $credentials:expr) => {{
        let (mut conf, credentials) = ($conf, $credentials);
        conf.brokers = vec![credentials.brokers.clone()];
        conf.ca_file = credentials.ca_file.clone();
        conf.cert_file = credentials.cert_file.clone();
        conf.key_file = credentials.key_file.clone();
        conf.insecure_skip_verify = credentials.insecure_skip_verify;
        conf.username = credentials.username.clone();
        conf.password = credentials.password.clone();
        conf.mechanism = credentials.mechanism;
        conf
    }};
}

impl Credentials {
    fn pusher(&self) -> PusherConf {
        connect_with!(pusher_conf(TOPIC), self)
    }

    fn consumer(&self) -> KqConf {
        connect_with!(consumer_conf(TOPIC), self)
    }
}

/// The mutual-TLS broker's address and a file of its certificate directory.
fn tls_broker() -> Option<(String, impl Fn(&str) -> String)> {
    let brokers = std::env::var("KQ_TEST_TLS_BROKERS").ok()?;
    let dir = PathBuf::from(std::env::var("KQ_TEST_TLS_DIR").ok()?);
    Some((brokers, move |file: &str| {
        dir.join(file).to_string_lossy().into_owned()
    }))
}

fn sasl_broker() -> Option<String> {
    std::env::var("KQ_TEST_SASL_BROKERS").ok()
}

fn skipped(what: &str) {
    eprintln!("skipped: no {what} broker (run scripts/test.sh --real)");
}

/// A client trusting the test CA and presenting the client certificate it signed.
fn mutual_tls() -> Option<Credentials> {
    let (brokers, file) = tls_broker()?;
    Some(Credentials {
        brokers,
        ca_file: file("ca.pem"),
        cert_file: file("client.pem"),
        key_file: file("client.key"),
        ..Credentials::default()
    })
}

fn sasl(mechanism: Mechanism, username: &str, password: &str) -> Option<Credentials> {
    Some(Credentials {
        brokers: sasl_broker()?,
        username: username.to_owned(),
        password: password.to_owned(),
        mechanism,
        ..Credentials::default()
    })
}

/// Pushes a fresh value with `credentials`, then consumes until it arrives.
async fn round_trip(credentials: &Credentials) {
    let value = unique("secured");
    let pusher = Pusher::from_conf(&credentials.pusher()).expect("pusher");
    pusher.push(value.clone()).await.expect("pushed");
    let state = Arc::new(Received::default());
    let running = Running::start("received", credentials.consumer(), &state);
    let arrived = eventually(WAIT, || state.values.lock().unwrap().contains(&value)).await;
    running.stop().await;
    assert!(arrived, "the pushed message was not consumed");
}

/// A push with `credentials` fails, rather than waiting forever or passing.
async fn push_is_refused(credentials: &Credentials) {
    let mut conf = credentials.pusher();
    // Only a refusal is bounded this tightly: a round trip through a TLS listener on a busy
    // machine can take longer.
    conf.message_timeout = REFUSED_WITHIN;
    let pusher = Pusher::from_conf(&conf).expect("pusher");
    let result = tokio::time::timeout(REFUSED_WITHIN * 4, pusher.push(unique("refused"))).await;
    let result = result.expect("the push neither failed nor succeeded");
    assert!(
        result.is_err(),
        "a push with these credentials was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_round_trips() {
    let Some(credentials) = mutual_tls() else {
        return skipped("TLS");
    };
    round_trip(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused() {
    let Some((_, file)) = tls_broker() else {
        return skipped("TLS");
    };
    let mut credentials = mutual_tls().unwrap();
    credentials.ca_file = file("other-ca.pem");
    push_is_refused(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_an_unverified_broker() {
    let Some((_, file)) = tls_broker() else {
        return skipped("TLS");
    };
    let mut credentials = mutual_tls().unwrap();
    credentials.ca_file = file("other-ca.pem");
    credentials.insecure_skip_verify = true;
    round_trip(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_its_certificate_is_refused() {
    let Some(mut credentials) = mutual_tls() else {
        return skipped("TLS");
    };
    credentials.cert_file.clear();
    credentials.key_file.clear();
    push_is_refused(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_round_trips() {
    let Some(credentials) = sasl(Mechanism::ScramSha256, "kq-scram-256", "kq-secret-256") else {
        return skipped("SASL");
    };
    round_trip(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_512_round_trips() {
    let Some(credentials) = sasl(Mechanism::ScramSha512, "kq-scram-512", "kq-secret-512") else {
        return skipped("SASL");
    };
    round_trip(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_is_refused() {
    let Some(credentials) = sasl(Mechanism::ScramSha512, "kq-scram-512", "not-the-password") else {
        return skipped("SASL");
    };
    push_is_refused(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_round_trips() {
    // go-queue's only mechanism: `Username` and `Password` without `Mechanism`.
    let Some(credentials) = sasl(Mechanism::default(), "kq-plain", "kq-secret-plain") else {
        return skipped("SASL");
    };
    round_trip(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_plain_password_is_refused() {
    let Some(credentials) = sasl(Mechanism::Plain, "kq-plain", "not-the-password") else {
        return skipped("SASL");
    };
    push_is_refused(&credentials).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_credentials_is_refused_by_the_sasl_listener() {
    let Some(credentials) = sasl(Mechanism::Plain, "", "") else {
        return skipped("SASL");
    };
    push_is_refused(&credentials).await;
}
