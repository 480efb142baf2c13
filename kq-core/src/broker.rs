//! Connecting to brokers: the librdkafka settings shared by consumers and pushers, and the
//! embedded in-process broker behind `Brokers: [embedded]`.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;

use crate::conf::Connection;
use crate::error::Error;

/// The broker list entry that selects the embedded broker.
pub use crate::conf::EMBEDDED;

/// Partitions of a topic the embedded broker creates on first use.
pub const EMBEDDED_PARTITIONS: i32 = 8;

/// A librdkafka configuration with bootstrap servers, client id and security set.
pub(crate) fn client_config(connection: &Connection<'_>) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap_servers(connection.brokers)?);
    if !connection.name.is_empty() {
        config.set("client.id", connection.name);
    }
    let protocol = match (connection.uses_tls(), connection.uses_sasl()) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    config.set("security.protocol", protocol);
    if !connection.ca_file.is_empty() {
        config.set("ssl.ca.location", connection.ca_file);
    }
    if !connection.cert_file.is_empty() {
        config
            .set("ssl.certificate.location", connection.cert_file)
            .set("ssl.key.location", connection.key_file);
    }
    if connection.insecure_skip_verify {
        config
            .set("enable.ssl.certificate.verification", "false")
            .set("ssl.endpoint.identification.algorithm", "none");
    }
    if connection.uses_sasl() {
        config
            .set("sasl.mechanism", connection.mechanism.keyword())
            .set("sasl.username", connection.username)
            .set("sasl.password", connection.password);
    }
    Ok(config)
}

/// Creates `topic` on first use when this connection goes to the embedded broker; a
/// cluster's topics are the cluster's business.
pub(crate) fn ensure_embedded_topic(connection: &Connection<'_>, topic: &str) -> Result<(), Error> {
    if is_embedded(connection.brokers) {
        EmbeddedBroker::get()?.create_topic(topic, EMBEDDED_PARTITIONS)?;
    }
    Ok(())
}

/// The partitions of `topic` in the brokers' metadata, or `None` when it does not exist (or
/// has no partition yet).
pub(crate) fn topic_partitions<K: ConsumerContext>(
    client: &impl Consumer<K>,
    topic: &str,
    wait: Duration,
) -> KafkaResult<Option<Vec<i32>>> {
    let metadata = client.fetch_metadata(Some(topic), wait)?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    match found.error().map(RDKafkaErrorCode::from) {
        None if !found.partitions().is_empty() => {
            Ok(Some(found.partitions().iter().map(|p| p.id()).collect()))
        }
        None | Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(None),
        Some(code) => Err(KafkaError::MetadataFetch(code)),
    }
}

pub(crate) fn is_embedded(brokers: &[String]) -> bool {
    matches!(brokers, [only] if only == EMBEDDED)
}

fn bootstrap_servers(brokers: &[String]) -> Result<String, Error> {
    if is_embedded(brokers) {
        Ok(EmbeddedBroker::get()?.bootstrap_servers().to_owned())
    } else {
        Ok(brokers.join(","))
    }
}

/// The in-process Kafka-protocol broker (librdkafka's mock cluster), one per process.
///
/// Every pusher and consumer of the process whose broker list is `[embedded]` talks to it.
/// It keeps at most 5 MiB per partition and silently drops older data past that: it is meant
/// for quickstarts, examples and tests, not for volume.
pub struct EmbeddedBroker {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
}

enum Command {
    CreateTopic {
        topic: String,
        partitions: i32,
        done: mpsc::Sender<Result<(), String>>,
    },
    SetUp {
        up: bool,
        done: mpsc::Sender<Result<(), String>>,
    },
}

static EMBEDDED_BROKER: OnceLock<Result<EmbeddedBroker, String>> = OnceLock::new();

impl EmbeddedBroker {
    /// The process's embedded broker, started on first use.
    pub fn get() -> Result<&'static EmbeddedBroker, Error> {
        EMBEDDED_BROKER
            .get_or_init(EmbeddedBroker::start)
            .as_ref()
            .map_err(|e| Error::Embedded(e.clone()))
    }

    // The mock cluster is a raw librdkafka handle that may not cross threads, so one thread owns
    // it for the life of the process and serves the few operations kq needs over a channel.
    fn start() -> Result<EmbeddedBroker, String> {
        let (started_tx, started_rx) = mpsc::channel();
        let (commands, command_rx) = mpsc::channel::<Command>();
        thread::Builder::new()
            .name("kq-embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = started_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(cluster.bootstrap_servers()));
                for command in command_rx {
                    match command {
                        Command::CreateTopic {
                            topic,
                            partitions,
                            done,
                        } => {
                            let result = create_mock_topic(&cluster, &topic, partitions);
                            let _ = done.send(result);
                        }
                        Command::SetUp { up, done } => {
                            let result = if up {
                                cluster.broker_up(-1)
                            } else {
                                cluster.broker_down(-1)
                            };
                            let _ = done.send(result.map_err(|e| e.to_string()));
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start its thread: {e}"))?;
        let bootstrap = started_rx
            .recv()
            .map_err(|_| "its thread ended during start-up".to_owned())??;
        tracing::info!(bootstrap = %bootstrap, "embedded broker started");
        Ok(EmbeddedBroker {
            bootstrap,
            commands,
        })
    }

    /// The `host:port` list clients connect to.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic with this many partitions; a topic that exists already is left as it is.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        self.call(|done| Command::CreateTopic {
            topic: topic.to_owned(),
            partitions,
            done,
        })
    }

    /// Takes the broker down (`false`): connections drop and new ones are refused, until it is
    /// brought up again (`true`). For tests of how clients ride out an outage.
    pub fn set_up(&self, up: bool) -> Result<(), Error> {
        self.call(|done| Command::SetUp { up, done })
    }

    fn call(
        &self,
        command: impl FnOnce(mpsc::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), Error> {
        let (done, result) = mpsc::channel();
        self.commands
            .send(command(done))
            .map_err(|_| Error::Embedded("its thread has ended".into()))?;
        result
            .recv()
            .map_err(|_| Error::Embedded("its thread has ended".into()))?
            .map_err(Error::Embedded)
    }
}

fn create_mock_topic(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    match cluster.create_topic(topic, partitions, 1) {
        Ok(()) => Ok(()),
        Err(rdkafka::error::KafkaError::MockCluster(
            rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
        )) => Ok(()),
        Err(e) => Err(format!("cannot create topic `{topic}`: {e}")),
    }
}

/// Creates a topic with `partitions` partitions, unless it exists: on the embedded broker for
/// `[embedded]`, otherwise through the cluster's admin API (replication factor 1).
pub async fn create_topic(brokers: &[String], topic: &str, partitions: i32) -> Result<(), Error> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;

    if is_embedded(brokers) {
        return EmbeddedBroker::get()?.create_topic(topic, partitions);
    }
    let connection = Connection::plain("", brokers);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(&connection)?.create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(rdkafka::error::KafkaError::AdminOp(code).into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::Mechanism;

    fn settings(connection: &Connection<'_>) -> ClientConfig {
        client_config(connection).unwrap()
    }

    #[test]
    fn keys_choose_the_security_protocol() {
        let brokers = ["b:9092".to_owned()];
        let plain = Connection::plain("", &brokers);
        assert_eq!(settings(&plain).get("security.protocol"), Some("plaintext"));

        let sasl = Connection {
            username: "u",
            password: "p",
            ..Connection::plain("", &brokers)
        };
        let config = settings(&sasl);
        assert_eq!(config.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(config.get("sasl.mechanism"), Some("PLAIN"));
        assert_eq!(config.get("sasl.username"), Some("u"));

        let sasl_tls = Connection {
            tls: true,
            mechanism: Mechanism::ScramSha256,
            ..sasl
        };
        let config = settings(&sasl_tls);
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("ssl.ca.location"), None, "the system's CAs");
        assert_eq!(
            config.get("enable.ssl.certificate.verification"),
            None,
            "verified unless asked otherwise"
        );

        let skip = Connection {
            ca_file: "/ca.pem",
            insecure_skip_verify: true,
            ..Connection::plain("", &brokers)
        };
        let config = settings(&skip);
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("ssl.ca.location"), Some("/ca.pem"));
        assert_eq!(
            config.get("enable.ssl.certificate.verification"),
            Some("false")
        );
        assert_eq!(
            config.get("ssl.endpoint.identification.algorithm"),
            Some("none")
        );
    }
}
