//! `--reset-offsets first|last|<time>`: commits, for each chosen consumer's group, the offset
//! of that position in every partition of its topic, as Kafka's
//! `kafka-consumer-groups --reset-offsets` does, and refuses while the group has members.

use std::fmt;
use std::str::FromStr;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{failed, Target, ToolError, BROKER_WAIT};

/// Where a reset moves a group's offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Position {
    /// The first offset each partition still holds.
    First,
    /// Each partition's end: only messages written from now on are consumed.
    Last,
    /// The first offset whose timestamp is at or after this time (milliseconds since the
    /// Unix epoch), or the end where there is none.
    Time {
        /// The time as given, for the report.
        given: String,
        millis: i64,
    },
}

impl FromStr for Position {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        use time::format_description::well_known::Rfc3339;

        match text {
            "first" => return Ok(Position::First),
            "last" => return Ok(Position::Last),
            _ => {}
        }
        let time = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            format!(
                "`{text}` is neither `first`, `last` nor an RFC 3339 time such as \
                 2026-12-01T09:30:00Z ({e})"
            )
        })?;
        let millis = i64::try_from(time.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .filter(|millis| *millis >= 0)
            .ok_or_else(|| format!("`{text}` is before 1970, when no Kafka record can be"))?;
        Ok(Position::Time {
            given: text.to_owned(),
            millis,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::First => f.write_str("first"),
            Position::Last => f.write_str("last"),
            Position::Time { given, .. } => f.write_str(given),
        }
    }
}

/// What a reset does to one consumer's group.
struct Plan<'a> {
    target: &'a Target<'a>,
    client: BaseConsumer,
    /// Per partition: the offset committed now (none if nothing is), and the new one.
    moves: Vec<(i32, Option<i64>, i64)>,
}

/// Resets the offsets of every target's group on its topic to `position`, printing each
/// partition's old and new offset; with `dry_run`, only prints. Nothing is committed when
/// any group still has members.
pub(crate) fn reset_offsets(
    targets: &[Target<'_>],
    position: &Position,
    dry_run: bool,
) -> Result<(), ToolError> {
    let mut plans = Vec::with_capacity(targets.len());
    // Every group is checked before any is moved: a reset of some groups and not others
    // would leave the service half replayed.
    for target in targets {
        let client: BaseConsumer = target
            .client_config(&target.conf.group)?
            .create()
            .map_err(|e| failed(target.name, "cannot create a client".to_owned(), e))?;
        refuse_if_active(target, &client)?;
        let moves = moves(target, &client, position)?;
        plans.push(Plan {
            target,
            client,
            moves,
        });
    }
    for plan in &plans {
        let conf = plan.target.conf;
        say!(
            "consumer {}: group {}, topic {}, reset to {position}{}",
            plan.target.name,
            conf.group,
            conf.topic,
            if dry_run { " (dry run)" } else { "" }
        );
        for (partition, old, new) in &plan.moves {
            let old = old.map_or_else(|| "none".to_owned(), |offset| offset.to_string());
            say!("  partition {partition}: {old} -> {new}");
        }
    }
    if dry_run {
        say!("dry run: nothing committed");
        return Ok(());
    }
    // Checked again as late as possible: a member that joined since would have its position
    // moved under it.
    for plan in &plans {
        refuse_if_active(plan.target, &plan.client)?;
    }
    for plan in &plans {
        let mut list = TopicPartitionList::new();
        for (partition, _, new) in &plan.moves {
            // Without metadata: an offset map kq committed with the old offset names
            // messages of the old position, and must not be read as the new one's.
            list.add_partition_offset(&plan.target.conf.topic, *partition, Offset::Offset(*new))
                .map_err(|e| failed(plan.target.name, "cannot list the offsets".to_owned(), e))?;
        }
        plan.client.commit(&list, CommitMode::Sync).map_err(|e| {
            failed(
                plan.target.name,
                format!("group {} refused the new offsets", plan.target.conf.group),
                e,
            )
        })?;
    }
    say!("committed");
    Ok(())
}

/// Refuses a group with members: they would go on from their own positions and commit
/// them over the reset.
fn refuse_if_active(target: &Target<'_>, client: &BaseConsumer) -> Result<(), ToolError> {
    let group = &target.conf.group;
    let groups = client
        .fetch_group_list(Some(group), BROKER_WAIT)
        .map_err(|e| failed(target.name, format!("cannot describe group {group}"), e))?;
    let members: usize = groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum();
    if members > 0 {
        return Err(ToolError::Refused(format!(
            "group {group} (consumer {}) has {members} active member(s); stop the service \
             before resetting its offsets",
            target.name
        )));
    }
    Ok(())
}

/// Each partition's committed offset and the offset `position` names.
fn moves(
    target: &Target<'_>,
    client: &BaseConsumer,
    position: &Position,
) -> Result<Vec<(i32, Option<i64>, i64)>, ToolError> {
    let topic = target.conf.topic.as_str();
    let partitions = target.partitions(client, topic)?;
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = client.committed_offsets(list, BROKER_WAIT).map_err(|e| {
        failed(
            target.name,
            "cannot read the committed offsets".to_owned(),
            e,
        )
    })?;
    let at_time = match position {
        Position::Time { millis, .. } => {
            let mut list = TopicPartitionList::new();
            for partition in &partitions {
                list.add_partition_offset(topic, *partition, Offset::Offset(*millis))
                    .map_err(|e| failed(target.name, "cannot list the times".to_owned(), e))?;
            }
            Some(
                client
                    .offsets_for_times(list, BROKER_WAIT)
                    .map_err(|e| failed(target.name, "cannot look the time up".to_owned(), e))?,
            )
        }
        _ => None,
    };
    let mut moves = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let old = match committed
            .find_partition(topic, partition)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(offset)) => Some(offset),
            _ => None,
        };
        let (low, high) = client
            .fetch_watermarks(topic, partition, BROKER_WAIT)
            .map_err(|e| failed(target.name, format!("cannot read partition {partition}"), e))?;
        let new = match position {
            Position::First => low,
            Position::Last => high,
            // No record at or after the time: from the end on.
            Position::Time { .. } => match at_time
                .as_ref()
                .and_then(|list| list.find_partition(topic, partition))
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => offset.clamp(low, high),
                _ => high,
            },
        };
        moves.push((partition, old, new));
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_first_last_or_an_rfc_3339_time() {
        assert_eq!("first".parse(), Ok(Position::First));
        assert_eq!("last".parse(), Ok(Position::Last));
        let at = |text: &str| match text.parse::<Position>() {
            Ok(Position::Time { millis, .. }) => Ok(millis),
            other => Err(format!("{other:?}")),
        };
        assert_eq!(at("1970-01-01T00:00:01Z"), Ok(1000));
        assert_eq!(at("2026-12-01T09:30:00.250Z"), Ok(1_796_117_400_250));
        // The offset counts: 10:30 at +01:00 is 09:30 in UTC.
        assert_eq!(at("2026-12-01T10:30:00+01:00"), Ok(1_796_117_400_000));
        for wrong in [
            "First",
            "",
            "2026-12-01",
            "yesterday",
            "1969-12-31T23:59:59Z",
        ] {
            let error = wrong.parse::<Position>().expect_err(wrong);
            assert!(error.contains(&format!("`{wrong}`")), "{error}");
        }
    }
}
