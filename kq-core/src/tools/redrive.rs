//! `--redrive <dead-letter topic>`: reads the topic with a group of its own and pushes each
//! dead letter back to the topic its `kq.source.topic` header names, with its key, value and
//! original headers, committing each batch once it is on the broker. Killed midway, the next
//! run starts from the last commit: a message may be pushed twice, never lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::future::join_all;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{failed, Target, ToolError, BROKER_WAIT};
use crate::message::Message;
use crate::pusher::Pusher;
use crate::queue::{cluster_pusher_conf, dead_letter_headers};

/// Dead letters pushed back before each commit.
const BATCH: usize = 500;

/// The group a redrive reads a consumer's dead letters with: its own, so that it never
/// shares offsets with the consumer, nor one consumer's redrive with another's.
pub(crate) fn redrive_group(group: &str) -> String {
    format!("{group}.redrive")
}

/// What a redrive did.
#[derive(Default)]
struct Tally {
    /// Messages pushed back (or, in a dry run, to push back), per source topic.
    pushed: BTreeMap<String, u64>,
    /// Messages without a source topic, left where they are.
    skipped: u64,
}

/// Pushes the dead letters of `topic` not yet redriven back to their source topics, in the
/// cluster `target` consumes from, and returns once it has read to the end of every partition;
/// with `dry_run`, lists them and neither pushes nor commits.
pub(crate) async fn redrive(
    target: &Target<'_>,
    topic: &str,
    dry_run: bool,
) -> Result<(), ToolError> {
    let group = redrive_group(&target.conf.group);
    let client: StreamConsumer = target
        .client_config(&group)?
        // Each partition reports its end, which is how a redrive knows it has caught up.
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| failed(target.name, "cannot create a client".to_owned(), e))?;
    let partitions = target.partitions(&client, topic)?;
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        // From the redrive group's commit, or the start.
        assignment
            .add_partition_offset(topic, *partition, Offset::Stored)
            .map_err(|e| failed(target.name, "cannot list the partitions".to_owned(), e))?;
    }
    client
        .assign(&assignment)
        .map_err(|e| failed(target.name, format!("cannot read `{topic}`"), e))?;
    say!(
        "redrive of {topic} with group {group}{}",
        if dry_run { " (dry run)" } else { "" }
    );

    let mut redrive = Redrive {
        target,
        topic,
        dry_run,
        client: &client,
        pushers: HashMap::new(),
        tally: Tally::default(),
        committed: 0,
    };
    // The partitions not yet read to their end.
    let mut reading: BTreeSet<i32> = partitions.into_iter().collect();
    let mut batch = Vec::with_capacity(BATCH);
    while !reading.is_empty() {
        match tokio::time::timeout(BROKER_WAIT, client.recv()).await {
            Ok(Ok(record)) => {
                reading.insert(record.partition());
                batch.push(Message::from_record(&record));
                if batch.len() < BATCH {
                    continue;
                }
            }
            // A partition at its end settles what was read so far, so that a quiet topic's
            // last messages do not wait for a full batch.
            Ok(Err(KafkaError::PartitionEOF(partition))) => {
                reading.remove(&partition);
            }
            Ok(Err(e)) => return Err(failed(target.name, format!("cannot read `{topic}`"), e)),
            Err(_) => {
                return Err(ToolError::Failed(format!(
                    "consumer `{}`: no answer from the brokers for {BROKER_WAIT:?} while reading `{topic}`",
                    target.name
                )))
            }
        }
        redrive.settle(&mut batch).await?;
    }
    redrive.settle(&mut batch).await?;
    redrive.report();
    Ok(())
}

struct Redrive<'a> {
    target: &'a Target<'a>,
    topic: &'a str,
    dry_run: bool,
    client: &'a StreamConsumer,
    /// One per source topic, made on its first message.
    pushers: HashMap<String, Pusher>,
    tally: Tally,
    committed: u64,
}

impl Redrive<'_> {
    /// Pushes `batch` back and commits past it, or in a dry run lists it.
    async fn settle(&mut self, batch: &mut Vec<Message>) -> Result<(), ToolError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pushes = Vec::with_capacity(batch.len());
        for msg in batch.iter() {
            let Some(source) = source_topic(msg) else {
                self.tally.skipped += 1;
                say!(
                    "skipped {}/{} offset {}: no {} header, so no topic to push it back to",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    dead_letter_headers::TOPIC
                );
                continue;
            };
            *self.tally.pushed.entry(source.to_owned()).or_default() += 1;
            if self.dry_run {
                say!(
                    "{}/{} offset {} -> {source}, key {}",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    msg.key().map_or_else(
                        || "none".to_owned(),
                        |key| format!("{:?}", String::from_utf8_lossy(key))
                    )
                );
                continue;
            }
            let pusher = match self.pushers.get(source) {
                Some(pusher) => pusher.clone(),
                None => {
                    let mut conf = cluster_pusher_conf(self.target.conf, source);
                    // A batch's pushes are all in flight at once: a retried request must
                    // neither write a message twice nor put it after a later one of its key.
                    conf.idempotence = true;
                    let pusher = Pusher::from_conf(&conf).map_err(|e| {
                        failed(self.target.name, format!("cannot push to `{source}`"), e)
                    })?;
                    self.pushers.insert(source.to_owned(), pusher.clone());
                    pusher
                }
            };
            pushes.push(async move {
                pusher
                    .send(msg.key(), msg.value(), Some(redriven_headers(msg)))
                    .await
            });
        }
        // All in flight at once, in order: each push queues its record on its first poll.
        for pushed in join_all(pushes).await {
            pushed.map_err(|e| {
                failed(
                    self.target.name,
                    "a push back failed; nothing of its batch is committed, and the next run \
                     pushes the batch again"
                        .to_owned(),
                    e,
                )
            })?;
        }
        if !self.dry_run {
            self.commit(batch)?;
        }
        batch.clear();
        Ok(())
    }

    /// Commits past every message of `batch`.
    fn commit(&mut self, batch: &[Message]) -> Result<(), ToolError> {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for msg in batch {
            let offset = next.entry(msg.partition()).or_default();
            *offset = (*offset).max(msg.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            list.add_partition_offset(self.topic, partition, Offset::Offset(offset))
                .map_err(|e| failed(self.target.name, "cannot list the offsets".to_owned(), e))?;
        }
        self.client.commit(&list, CommitMode::Sync).map_err(|e| {
            failed(
                self.target.name,
                format!("cannot commit on `{}`", self.topic),
                e,
            )
        })?;
        self.committed += batch.len() as u64;
        say!("committed {} message(s) so far", self.committed);
        Ok(())
    }

    fn report(&self) {
        let total: u64 = self.tally.pushed.values().sum();
        let verb = if self.dry_run {
            "to push back"
        } else {
            "pushed back"
        };
        say!(
            "{total} message(s) {verb}, {} skipped (without a {} header)",
            self.tally.skipped,
            dead_letter_headers::TOPIC
        );
        for (source, count) in &self.tally.pushed {
            say!("  {source}: {count}");
        }
    }
}

/// The topic a dead letter came from, when its header names one.
fn source_topic(msg: &Message) -> Option<&str> {
    msg.headers()
        .get_str(dead_letter_headers::TOPIC)
        .filter(|topic| !topic.is_empty())
}

/// A dead letter's headers as the message had them before it failed: without kq's (`kq.`),
/// and with the times it has now been redriven (`kq.redrives`), one more than the dead letter
/// says.
fn redriven_headers(msg: &Message) -> OwnedHeaders {
    let redrives = msg
        .headers()
        .get_str(dead_letter_headers::REDRIVES)
        .and_then(|count| count.parse::<u32>().ok())
        .unwrap_or(0)
        .saturating_add(1)
        .to_string();
    let mut headers = OwnedHeaders::new_with_capacity(msg.headers().len() + 1);
    for (key, value) in msg.headers().iter() {
        if !key.starts_with(dead_letter_headers::PREFIX) {
            headers = headers.insert(Header { key, value });
        }
    }
    headers.insert(Header {
        key: dead_letter_headers::REDRIVES,
        value: Some(redrives.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redriven_message_keeps_its_own_headers_and_counts_its_redrives() {
        use rdkafka::message::Headers as _;

        let dead = Message::new("payments-dlq", 0, 7)
            .with_header("traceparent", "00-abc-def-01")
            .with_header(dead_letter_headers::TOPIC, "payments")
            .with_header(dead_letter_headers::ERROR, "boom")
            .with_header("tenant", "acme")
            .with_header(dead_letter_headers::REDRIVES, "2");
        assert_eq!(source_topic(&dead), Some("payments"));
        let headers = redriven_headers(&dead);
        let listed: Vec<_> = headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(
            listed,
            [
                ("traceparent".to_owned(), Some(b"00-abc-def-01".to_vec())),
                ("tenant".to_owned(), Some(b"acme".to_vec())),
                ("kq.redrives".to_owned(), Some(b"3".to_vec())),
            ]
        );

        let first = Message::new("payments-dlq", 0, 8).with_header(dead_letter_headers::TOPIC, "p");
        let headers = redriven_headers(&first);
        let listed: Vec<_> = headers.iter().map(|h| (h.key, h.value)).collect();
        assert_eq!(listed, [("kq.redrives", Some(&b"1"[..]))]);
    }

    #[test]
    fn a_message_without_a_source_topic_has_nowhere_to_go() {
        assert_eq!(source_topic(&Message::new("dlq", 0, 0)), None);
        let empty = Message::new("dlq", 0, 0).with_header(dead_letter_headers::TOPIC, "");
        assert_eq!(source_topic(&empty), None);
        let binary = Message::new("dlq", 0, 0).with_header(dead_letter_headers::TOPIC, [0xff]);
        assert_eq!(source_topic(&binary), None);
    }
}
