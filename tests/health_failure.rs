//! A consumer that dies makes `/healthz` fail, as a liveness probe needs: here a member whose
//! client cannot start, because its CA file is not a certificate.

mod common;

use std::sync::Arc;

use common::{consumer_conf, http_get, unique, Running};
use kq::observe::{self, DevServerConf};
use tokio::net::TcpListener;

#[kq::consumer(conf = "Doomed")]
async fn doomed(_msg: &kq::Message) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumer_fails_the_health_check() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(observe::serve(listener, DevServerConf::default()));
    assert_eq!(
        http_get(port, "/healthz").await.0,
        200,
        "alive before any consumer"
    );

    let ca_file = std::env::temp_dir().join(format!("{}.pem", unique("not-a-ca")));
    std::fs::write(&ca_file, "this is not a certificate\n").unwrap();
    let mut conf = consumer_conf(&unique("doomed"));
    conf.ca_file = ca_file.display().to_string();
    let running = Running::start("doomed", conf, &Arc::new(()));
    let error = running.failure().await;
    let _ = std::fs::remove_file(&ca_file);
    assert!(error.to_string().contains("ssl.ca.location"), "{error}");

    let (status, body) = http_get(port, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("doomed member 0: failed"), "{body}");
    assert_eq!(http_get(port, "/readyz").await.0, 503);
}
