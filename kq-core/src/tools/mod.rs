//! What the binary of a `kq::main!` service runs instead of its consumers, on the cluster
//! they consume from: `reset` moves a group's committed offsets (`--reset-offsets`), and
//! `redrive` pushes a dead-letter topic's messages back where they came from (`--redrive`).

mod redrive;
mod reset;

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::ClientConfig;

use crate::broker;
use crate::conf::KqConf;
use crate::registry::ConsumerRegistration;

pub(crate) use redrive::{redrive, redrive_group};
pub(crate) use reset::{reset_offsets, Position};

/// How long a tool waits for one answer from the brokers.
const BROKER_WAIT: Duration = Duration::from_secs(15);

/// Why a tool stopped.
#[derive(Debug)]
pub(crate) enum ToolError {
    /// The operator has to change something first (a group still has members, a consumer is
    /// not named): nothing was done.
    Refused(String),
    /// The brokers failed it while it ran.
    Failed(String),
}

/// A consumer the tools act on: its name and the configuration it runs with.
pub(crate) struct Target<'a> {
    pub name: &'a str,
    pub conf: &'a KqConf,
}

impl<'a> Target<'a> {
    /// The started consumers `--consumer` names: the one, or every one.
    pub fn chosen(
        started: &'a [(&'static ConsumerRegistration, KqConf)],
        chosen: Option<&str>,
    ) -> Result<Vec<Target<'a>>, ToolError> {
        let targets: Vec<_> = started
            .iter()
            .filter(|(registration, _)| chosen.is_none_or(|name| registration.name == name))
            .map(|(registration, conf)| Target {
                name: registration.name,
                conf,
            })
            .collect();
        match chosen {
            Some(name) if targets.is_empty() => {
                let names: Vec<_> = started.iter().map(|(r, _)| r.name).collect();
                Err(ToolError::Refused(format!(
                    "--consumer: no consumer `{name}` runs with this config (consumers: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )))
            }
            _ => Ok(targets),
        }
    }

    /// The consumer whose cluster and group a redrive of `topic` uses: the one `--consumer`
    /// names, or else the one whose `DeadLetterTopic` is `topic`.
    pub fn redriving(
        started: &'a [(&'static ConsumerRegistration, KqConf)],
        chosen: Option<&str>,
        topic: &str,
    ) -> Result<Target<'a>, ToolError> {
        if chosen.is_some() {
            return Ok(Target::chosen(started, chosen)?.remove(0));
        }
        let owners: Vec<_> = Target::chosen(started, None)?
            .into_iter()
            .filter(|target| target.conf.dead_letter_topic == topic)
            .collect();
        match <[_; 1]>::try_from(owners) {
            Ok([owner]) => Ok(owner),
            Err(owners) if owners.is_empty() => Err(ToolError::Refused(format!(
                "--redrive {topic}: no consumer has `DeadLetterTopic: {topic}`; name the \
                 consumer whose cluster and group to use with --consumer"
            ))),
            Err(owners) => {
                let names: Vec<_> = owners.iter().map(|target| target.name).collect();
                Err(ToolError::Refused(format!(
                    "--redrive {topic}: consumers {} all write their dead letters there; pick \
                     one with --consumer",
                    names.join(", ")
                )))
            }
        }
    }
}

impl Target<'_> {
    /// librdkafka's settings for a client of this consumer's cluster in `group`, which never
    /// commits on its own.
    fn client_config(&self, group: &str) -> Result<ClientConfig, ToolError> {
        if broker::is_embedded(&self.conf.brokers) {
            // Its data lives and dies with the service's own process.
            return Err(ToolError::Refused(format!(
                "consumer `{}` runs on the embedded broker (`Brokers: [embedded]`), which has \
                 nothing to act on outside the service's process",
                self.name
            )));
        }
        let mut config = broker::client_config(&self.conf.connection())
            .map_err(|e| ToolError::Failed(e.to_string()))?;
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        Ok(config)
    }

    /// The partitions of `topic`, from the brokers.
    fn partitions<K: ConsumerContext>(
        &self,
        client: &impl Consumer<K>,
        topic: &str,
    ) -> Result<Vec<i32>, ToolError> {
        match broker::topic_partitions(client, topic, BROKER_WAIT) {
            Ok(Some(partitions)) => Ok(partitions),
            Ok(None) => Err(ToolError::Failed(format!(
                "consumer `{}`: topic `{topic}` does not exist",
                self.name
            ))),
            Err(e) => Err(failed(self.name, format!("cannot read topic `{topic}`"), e)),
        }
    }
}

/// A failure of `consumer` while doing `what`.
fn failed(consumer: &str, what: String, error: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(format!("consumer `{consumer}`: {what}: {error}"))
}
