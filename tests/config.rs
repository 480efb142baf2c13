//! Loading config files: go-queue's YAML unchanged, its defaults, JSON and TOML, and a clear
//! error naming the file and the key for every kind of bad input.

use std::path::PathBuf;
use std::time::Duration;

use kq::{KqConf, KqConfig as _, Offset, PusherConf};

#[derive(Debug, serde::Deserialize, kq::KqConfig)]
#[serde(rename_all = "PascalCase")]
struct Config {
    name: String,
    host: String,
    port: u16,
    kq_pusher_conf: PusherConf,
    kq_consumer_conf: KqConf,
}

/// The seed's `etc/mq.yaml`, as a go-zero service has it.
const SEED: &str = "\
Name: mq
Host: 0.0.0.0
Port: 8888

KqPusherConf:
  Brokers:
    - 127.0.0.1:9092
  Topic: payment-success

#kq
KqConsumerConf:
  Name: kqConsumer
  Brokers:
    - 127.0.1:9092
  Group: kqConsumer
  Topic: payment-success
  Offset: first
  Consumers: 8
  Processors: 8
";

/// The seed with `keys` (whole lines, indented) added to its `KqConsumerConf`.
fn seed_with(keys: &str) -> String {
    SEED.replace("  Offset: first\n", &format!("  Offset: first\n{keys}"))
}

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kq-config-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn load(name: &str, text: &str) -> Result<Config, String> {
    let file = TempFile::new(name, text);
    let config: Config = kq::load_config(&file.0).map_err(|e| e.to_string())?;
    config
        .check()
        .map_err(|problems| format!("{}: {}", file.0.display(), problems.join("; ")))?;
    Ok(config)
}

fn load_err(name: &str, text: &str) -> String {
    match load(name, text) {
        Ok(config) => panic!("{name} loaded: {config:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_seed_yaml_loads_unchanged_with_go_queue_defaults() {
    let config = load("mq.yaml", SEED).unwrap();
    assert_eq!(
        (config.name.as_str(), config.host.as_str(), config.port),
        ("mq", "0.0.0.0", 8888)
    );
    assert_eq!(config.kq_pusher_conf.brokers, ["127.0.0.1:9092"]);
    assert_eq!(config.kq_pusher_conf.topic, "payment-success");

    let c = &config.kq_consumer_conf;
    assert_eq!(c.name, "kqConsumer");
    assert_eq!(c.group, "kqConsumer");
    assert_eq!(c.offset, Offset::First);
    assert_eq!((c.conns, c.consumers, c.processors), (1, 8, 8));
    assert_eq!((c.min_bytes, c.max_bytes), (10_240, 10_485_760));
    assert!(c.force_commit);
    assert!(!c.commit_in_order);
    assert_eq!(c.commit_interval, Duration::from_secs(1));
    assert_eq!(c.queue_capacity, 1000);
    assert_eq!(c.max_wait, Duration::from_secs(1));
    assert_eq!(c.shutdown_timeout, Duration::from_millis(5500));
    assert!(c.username.is_empty() && c.password.is_empty() && c.ca_file.is_empty());
}

#[test]
fn offset_defaults_to_last() {
    let yaml = SEED.replace("  Offset: first\n", "");
    assert_eq!(
        load("mq.yaml", &yaml).unwrap().kq_consumer_conf.offset,
        Offset::Last
    );
}

#[test]
fn every_go_queue_key_is_read() {
    // The CA file must exist: it is checked like every other value.
    let ca = TempFile::new("ca.pem", "");
    let yaml = "\
Name: mq
Host: h
Port: 1
KqPusherConf: {Brokers: [b:1], Topic: t, ChunkSize: 2048, FlushInterval: 250ms, SyncPush: true}
KqConsumerConf:
  Brokers: [b:1, b:2]
  Group: g
  Topic: t
  CaFile: /etc/ca.pem
  Offset: last
  Conns: 3
  Consumers: 2
  Processors: 16
  MinBytes: 1
  MaxBytes: 2000000
  Username: u
  Password: secret
  ForceCommit: false
  CommitInOrder: true
  CommitInterval: 500ms
  QueueCapacity: 64
  MaxWait: 1m30s
"
    .replace("/etc/ca.pem", &ca.0.display().to_string());
    let config = load("mq.yml", &yaml).unwrap();
    let c = &config.kq_consumer_conf;
    assert_eq!(c.brokers, ["b:1", "b:2"]);
    assert_eq!(c.ca_file, ca.0.display().to_string());
    assert_eq!((c.conns, c.consumers, c.processors), (3, 2, 16));
    assert_eq!((c.min_bytes, c.max_bytes), (1, 2_000_000));
    assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "secret"));
    assert!(!c.force_commit);
    assert!(c.commit_in_order);
    assert_eq!(c.effective_ordering(), kq::Ordering::Partition);
    assert_eq!(c.commit_interval, Duration::from_millis(500));
    assert_eq!(c.queue_capacity, 64);
    assert_eq!(c.max_wait, Duration::from_secs(90));
    let p = &config.kq_pusher_conf;
    assert_eq!(p.chunk_size, 2048);
    assert_eq!(p.flush_interval, Duration::from_millis(250));
    assert!(p.sync_push);
}

#[test]
fn the_password_stays_out_of_debug_output() {
    let yaml = seed_with(
        "  Username: u\n  Password: hunter2\n  Telemetry: {OtlpHeaders: {api-key: hunter2}}\n",
    );
    let config = load("mq.yaml", &yaml).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
}

#[test]
fn json_and_toml_load_by_extension() {
    let json = r#"{"Name": "mq", "Host": "h", "Port": 1,
        "KqPusherConf": {"Brokers": ["b:1"], "Topic": "t"},
        "KqConsumerConf": {"Brokers": ["b:1"], "Group": "g", "Topic": "t", "Processors": 3}}"#;
    assert_eq!(
        load("mq.json", json).unwrap().kq_consumer_conf.processors,
        3
    );

    let toml = r#"
Name = "mq"
Host = "h"
Port = 1
[KqPusherConf]
Brokers = ["b:1"]
Topic = "t"
[KqConsumerConf]
Brokers = ["b:1"]
Group = "g"
Topic = "t"
CommitInterval = "2s"
"#;
    let config = load("mq.toml", toml).unwrap();
    assert_eq!(
        config.kq_consumer_conf.commit_interval,
        Duration::from_secs(2)
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = kq::load_config::<Config>("/nonexistent/etc/mq.yaml").unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("/nonexistent/etc/mq.yaml: cannot read"),
        "{text}"
    );
}

#[test]
fn an_unknown_extension_is_refused() {
    let e = load_err("mq.ini", SEED);
    assert!(
        e.contains("mq.ini") && e.contains("unsupported config format `.ini`"),
        "{e}"
    );
}

#[test]
fn malformed_yaml_names_the_file() {
    let e = load_err("mq.yaml", "Name: mq\nKqConsumerConf: [unclosed\n");
    assert!(e.contains("mq.yaml: cannot parse"), "{e}");
}

#[test]
fn a_wrong_type_names_the_key() {
    let e = load_err(
        "mq.yaml",
        &SEED.replace("Processors: 8", "Processors: many"),
    );
    assert!(
        e.contains("mq.yaml") && e.contains("KqConsumerConf.Processors"),
        "{e}"
    );
}

#[test]
fn a_missing_required_key_is_named() {
    let e = load_err("mq.yaml", &SEED.replace("  Group: kqConsumer\n", ""));
    assert!(e.contains("mq.yaml") && e.contains("Group"), "{e}");
}

#[test]
fn offset_accepts_only_first_or_last() {
    let e = load_err("mq.yaml", &SEED.replace("Offset: first", "Offset: middle"));
    assert!(
        e.contains("mq.yaml") && e.contains("KqConsumerConf.Offset"),
        "{e}"
    );
    assert!(e.contains("first") && e.contains("last"), "{e}");
}

#[test]
fn a_bad_duration_names_the_key_and_the_form() {
    let yaml = seed_with("  CommitInterval: soon\n");
    let e = load_err("mq.yaml", &yaml);
    assert!(
        e.contains("mq.yaml") && e.contains("KqConsumerConf.CommitInterval"),
        "{e}"
    );
    assert!(e.contains("500ms"), "{e}");
}

#[test]
fn impossible_values_name_the_key() {
    let e = load_err("mq.yaml", &SEED.replace("Processors: 8", "Processors: 0"));
    assert!(
        e.contains("mq.yaml") && e.contains("`KqConsumerConf.Processors` must be at least 1"),
        "{e}"
    );

    let e = load_err(
        "mq.yaml",
        &SEED.replace("  Topic: payment-success\n", "  Topic: \"\"\n"),
    );
    assert!(e.contains("`KqPusherConf.Topic` must not be empty"), "{e}");
}

#[test]
fn values_beyond_what_their_setting_takes_name_the_key() {
    let consumer =
        |key_and_value: &str| load_err("mq.yaml", &seed_with(&format!("  {key_and_value}\n")));
    for (yaml, expected) in [
        (
            "MaxWait: 10m",
            "`KqConsumerConf.MaxWait` must be at most 5m0s, got 10m0s",
        ),
        (
            "CommitInterval: 25h",
            "`KqConsumerConf.CommitInterval` must be at most 24h0m0s",
        ),
        (
            "SessionTimeout: 0s",
            "`KqConsumerConf.SessionTimeout` must be at least 1ms",
        ),
        (
            "SessionTimeout: 2h",
            "`KqConsumerConf.SessionTimeout` must be at most 1h0m0s",
        ),
        // Far enough out to overflow a clock reading if it were let through.
        (
            "ShutdownTimeout: 5000000000000h",
            "`KqConsumerConf.ShutdownTimeout` must be at most 5m0s",
        ),
        (
            "Retry: {MaxBackoff: 5000000000000h}",
            "`KqConsumerConf.Retry.MaxBackoff` must be at most 24h0m0s",
        ),
        (
            "Retry: {Backoff: 25h}",
            "`KqConsumerConf.Retry.Backoff` must be at most 24h0m0s",
        ),
    ] {
        let e = consumer(yaml);
        assert!(e.contains("mq.yaml") && e.contains(expected), "{yaml}: {e}");
    }

    let pusher = |key_and_value: &str| {
        load_err(
            "mq.yaml",
            &SEED.replace(
                "  Topic: payment-success\n\n",
                &format!("  Topic: payment-success\n  {key_and_value}\n\n"),
            ),
        )
    };
    let e = pusher("FlushInterval: 1h");
    assert!(
        e.contains("`KqPusherConf.FlushInterval` must be at most 15m0s"),
        "{e}"
    );
    let e = pusher("MessageTimeout: 600h");
    assert!(
        e.contains("`KqPusherConf.MessageTimeout` must be at most 596h31m23.647s"),
        "{e}"
    );

    for (yaml, expected) in [
        (
            "MinBytes: 0",
            "`KqConsumerConf.MinBytes` must be at least 1",
        ),
        (
            "MinBytes: 100000001",
            "`KqConsumerConf.MinBytes` must be at most 100000000",
        ),
        (
            "MaxBytes: 3000000000",
            "`KqConsumerConf.MaxBytes` must be at most 2147483135",
        ),
    ] {
        let e = consumer(yaml);
        assert!(e.contains(expected), "{yaml}: {e}");
    }

    // The limits themselves are accepted.
    let at_limits = seed_with(
        "  MaxWait: 5m\n  CommitInterval: 24h\n  SessionTimeout: 1h\n  ShutdownTimeout: 5m\n  \
         Retry: {Backoff: 24h, MaxBackoff: 24h}\n",
    );
    load("mq.yaml", &at_limits).unwrap();
}

#[test]
fn fields_are_found_by_serde_name_and_rust_name() {
    let config = load("mq.yaml", SEED).unwrap();
    assert!(config.kq_conf("KqConsumerConf").is_some());
    assert!(config.kq_conf("kq_consumer_conf").is_some());
    assert!(
        config.kq_conf("KqPusherConf").is_none(),
        "a PusherConf is not a KqConf"
    );
    assert!(config.pusher_conf("KqPusherConf").is_some());
    assert!(config.kq_conf("Name").is_none());
    assert!(config.kq_conf("Missing").is_none());
}

#[test]
fn serde_renames_are_honoured() {
    #[derive(serde::Deserialize, kq::KqConfig)]
    #[serde(rename_all = "camelCase")]
    struct Renamed {
        orders_conf: KqConf,
        #[serde(rename = "Payments")]
        payments_conf: KqConf,
    }
    let json = r#"{"ordersConf": {"Brokers": ["b:1"], "Group": "g", "Topic": "orders"},
                   "Payments": {"Brokers": ["b:1"], "Group": "g", "Topic": "payments"}}"#;
    let file = TempFile::new("renamed.json", json);
    let config: Renamed = kq::load_config(&file.0).unwrap();
    assert_eq!(config.kq_conf("ordersConf").unwrap().topic, "orders");
    assert_eq!(config.kq_conf("orders_conf").unwrap().topic, "orders");
    assert_eq!(config.kq_conf("Payments").unwrap().topic, "payments");
    assert!(config.kq_conf("paymentsConf").is_none());
    assert_eq!(config.kq_confs().len(), 2);
}

#[test]
fn security_keys_are_read_for_consumers_and_pushers() {
    let ca = TempFile::new("ca.pem", "-----BEGIN CERTIFICATE-----\n");
    let ca = ca.0.display().to_string();
    let security = format!(
        "  CaFile: {ca}\n  CertFile: {ca}\n  KeyFile: {ca}\n  InsecureSkipVerify: true\n  \
         Username: u\n  Password: p\n  Mechanism: SCRAM-SHA-512\n"
    );
    let yaml = seed_with(&security).replace(
        "  Topic: payment-success\n\n",
        &format!("  Topic: payment-success\n{security}\n"),
    );
    let config = load("mq.yaml", &yaml).unwrap();
    let c = &config.kq_consumer_conf;
    let p = &config.kq_pusher_conf;
    for (ca_file, cert_file, key_file, skip, mechanism) in [
        (
            &c.ca_file,
            &c.cert_file,
            &c.key_file,
            c.insecure_skip_verify,
            c.mechanism,
        ),
        (
            &p.ca_file,
            &p.cert_file,
            &p.key_file,
            p.insecure_skip_verify,
            p.mechanism,
        ),
    ] {
        assert_eq!((ca_file, cert_file, key_file), (&ca, &ca, &ca));
        assert!(skip);
        assert_eq!(mechanism, kq::Mechanism::ScramSha512);
    }
    assert!(
        !c.tls && !p.tls,
        "TLS follows from the files, `Tls` stays as written"
    );
}

#[test]
fn security_mistakes_name_the_key() {
    let e = load_err("mq.yaml", &seed_with("  Mechanism: SCRAM-SHA-1\n"));
    assert!(e.contains("KqConsumerConf.Mechanism"), "{e}");
    assert!(
        e.contains("SCRAM-SHA-256") && e.contains("SCRAM-SHA-512"),
        "{e}"
    );

    let e = load_err("mq.yaml", &seed_with("  CaFile: /nonexistent/ca.pem\n"));
    assert!(
        e.contains("`KqConsumerConf.CaFile` cannot be read from `/nonexistent/ca.pem`"),
        "{e}"
    );

    let key = TempFile::new("client.key", "");
    let e = load_err(
        "mq.yaml",
        &seed_with(&format!("  KeyFile: {}\n", key.0.display())),
    );
    assert!(
        e.contains("`KqConsumerConf.CertFile` is needed with `KeyFile`"),
        "{e}"
    );

    let e = load_err("mq.yaml", &seed_with("  Mechanism: SCRAM-SHA-256\n"));
    assert!(e.contains("`KqConsumerConf.Username` must be set"), "{e}");
}

#[test]
fn a_telemetry_endpoint_with_a_path_is_refused() {
    // go-zero's default batcher is Jaeger, whose endpoint is a URL with a path.
    let yaml = seed_with("  Telemetry: {Endpoint: \"http://jaeger:14268/api/traces\"}\n");
    let e = load_err("mq.yaml", &yaml);
    assert!(
        e.contains("`KqConsumerConf.Telemetry.Endpoint` must be `host:port`"),
        "{e}"
    );
}

#[cfg(not(feature = "opentelemetry"))]
#[test]
fn a_telemetry_endpoint_needs_the_opentelemetry_feature() {
    let yaml = seed_with("  Telemetry: {Endpoint: \"127.0.0.1:4318\"}\n");
    let e = load_err("mq.yaml", &yaml);
    assert!(
        e.contains(
            "`KqConsumerConf.Telemetry.Endpoint` needs kq built with its `opentelemetry` feature"
        ),
        "{e}"
    );
}

#[cfg(feature = "opentelemetry")]
#[test]
fn telemetry_endpoints_take_https_host_and_port_and_ipv6() {
    for endpoint in [
        "https://otel.example:4318",
        "https://otel.example",
        "otel.example:4318",
        "[::1]:4318",
        "http://[::1]:4318",
        "https://[::1]:4318",
    ] {
        let yaml = seed_with(&format!("  Telemetry: {{Endpoint: \"{endpoint}\"}}\n"));
        let config = load("mq.yaml", &yaml).unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_eq!(
            config.kq_consumer_conf.telemetry.unwrap().endpoint,
            endpoint
        );
    }

    let ca = TempFile::new("otel-ca.pem", "");
    let yaml = seed_with(&format!(
        "  Telemetry: {{Endpoint: \"otel:4318\", OtlpHttpSecure: true, CaFile: {}}}\n",
        ca.0.display()
    ));
    let telemetry = load("mq.yaml", &yaml)
        .unwrap()
        .kq_consumer_conf
        .telemetry
        .unwrap();
    assert!(telemetry.otlp_http_secure);
    assert_eq!(telemetry.ca_file, ca.0.display().to_string());
}

#[test]
fn telemetry_tls_mistakes_name_the_key() {
    let telemetry = |keys: &str| seed_with(&format!("  Telemetry: {{{keys}}}\n"));
    let e = load_err(
        "mq.yaml",
        &telemetry("Endpoint: \"otel:4318\", CaFile: /nonexistent/otel-ca.pem"),
    );
    assert!(
        e.contains(
            "`KqConsumerConf.Telemetry.CaFile` cannot be read from `/nonexistent/otel-ca.pem`"
        ),
        "{e}"
    );

    let e = load_err(
        "mq.yaml",
        &telemetry("Endpoint: \"http://otel:4318\", OtlpHttpSecure: true"),
    );
    assert!(
        e.contains(
            "`KqConsumerConf.Telemetry.OtlpHttpSecure` asks for HTTPS while `Endpoint` says `http://`"
        ),
        "{e}"
    );

    let ca = TempFile::new("otel-ca.pem", "");
    let e = load_err(
        "mq.yaml",
        &telemetry(&format!(
            "Endpoint: \"http://otel:4318\", CaFile: {}",
            ca.0.display()
        )),
    );
    assert!(
        e.contains(
            "`KqConsumerConf.Telemetry.CaFile` asks for HTTPS while `Endpoint` says `http://`"
        ),
        "{e}"
    );

    let e = load_err("mq.yaml", &telemetry("Endpoint: \"::1:4318\""));
    assert!(
        e.contains("`KqConsumerConf.Telemetry.Endpoint` must be `host:port`, got `::1:4318`: an IPv6 address goes in brackets"),
        "{e}"
    );
}
