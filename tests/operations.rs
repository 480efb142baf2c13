//! Metrics, health and readiness, scraped over HTTP as Prometheus and a probe would.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{consumer_conf, create_topic, eventually, http_get, pusher_conf, unique, Running};
use kq::observe::{self, DevServerConf};
use kq::Pusher;
use tokio::net::TcpListener;

#[derive(Default)]
struct Count(AtomicUsize);

/// How long the handler takes over the message "slow"; the others take next to nothing.
const SLOW: Duration = Duration::from_millis(300);

#[kq::consumer(conf = "Observed")]
async fn observed(count: &kq::State<Count>, _key: &str, value: &str) -> Result<(), String> {
    count.0 .0.fetch_add(1, Ordering::SeqCst);
    match value {
        "bad" => Err("cannot handle it".into()),
        "slow" => {
            tokio::time::sleep(SLOW).await;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(observe::serve(listener, DevServerConf::default()));
    // No consumer yet: alive, not ready.
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    assert_eq!(http_get(port, "/readyz").await.0, 503);
    assert_eq!(http_get(port, "/nothing").await.0, 404);

    let topic = unique("observed");
    create_topic(&topic, 2).await;
    let pusher = Pusher::from_conf(&pusher_conf(&topic)).unwrap();
    for value in ["a", "b", "c", "bad", "slow"] {
        pusher.kpush(value, value).await.unwrap();
    }

    let count = Arc::new(Count::default());
    let mut conf = consumer_conf(&topic);
    conf.retry.attempts = 2;
    conf.retry.backoff = Duration::from_millis(10);
    let running = Running::start("observed", conf, &count);

    let wait = Duration::from_secs(60);
    assert!(eventually(wait, || count.0.load(Ordering::SeqCst) >= 6).await);
    let mut ready = (0, String::new());
    for _ in 0..100 {
        ready = http_get(port, "/readyz").await;
        if ready.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert!(
        ready.1.contains("observed member 0: fetching"),
        "{}",
        ready.1
    );
    assert_eq!(http_get(port, "/healthz").await.0, 200);

    // Lag arrives with librdkafka's statistics, once a second; commits on CommitInterval.
    let labels = format!("consumer=\"observed\",topic=\"{topic}\"");
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = http_get(port, "/metrics").await.1;
        let commits = sample(&metrics, &format!("kq_commits_total{{{labels}}}"));
        if metrics.contains("kq_consumer_lag{") && commits.unwrap_or(0.0) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = |outcome: &str| {
        sample(
            &metrics,
            &format!("kq_messages_total{{{labels},outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(messages("ok"), Some(4.0), "{metrics}");
    assert_eq!(messages("retried"), Some(1.0), "{metrics}");
    assert_eq!(messages("error"), Some(1.0), "{metrics}");
    // Six handler runs: the slow one timed as long as it took, the others (the failed run and
    // its retry included) not charged with its time nor with the retry's wait.
    assert_eq!(
        sample(
            &metrics,
            "kq_handler_duration_seconds_count{consumer=\"observed\"}"
        ),
        Some(6.0),
        "{metrics}"
    );
    let seconds = sample(
        &metrics,
        "kq_handler_duration_seconds_sum{consumer=\"observed\"}",
    )
    .unwrap_or(0.0);
    assert!(seconds >= SLOW.as_secs_f64(), "{metrics}");
    let bucket = |le: &str| {
        sample(
            &metrics,
            &format!("kq_handler_duration_seconds_bucket{{le=\"{le}\",consumer=\"observed\"}}"),
        )
    };
    assert_eq!(bucket("0.1024"), Some(5.0), "{metrics}");
    assert_eq!(bucket("0.4096"), Some(6.0), "{metrics}");
    assert!(
        metrics.contains(&format!("kq_consumer_lag{{{labels},partition=")),
        "{metrics}"
    );
    assert!(
        sample(&metrics, &format!("kq_commits_total{{{labels}}}")).unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "kq_rebalances_total{consumer=\"observed\",kind=\"assign\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("kq_pusher_delivered_total{{topic=\"{topic}\"}}")
        ),
        Some(5.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("kq_in_flight{consumer=\"observed\"}"),
        "{metrics}"
    );
    // Nothing failed: nothing is held.
    assert_eq!(
        sample(&metrics, "kq_held{consumer=\"observed\"}"),
        Some(0.0),
        "{metrics}"
    );

    // A stopped consumer is no longer ready, but nothing died.
    running.stop().await;
    let (status, body) = http_get(port, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("observed member 0: stopped"), "{body}");
    assert_eq!(http_get(port, "/healthz").await.0, 200);
}
