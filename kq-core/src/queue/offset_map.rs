//! The offset map: which messages above a committed offset are finished, carried in the
//! commit's metadata, so that a restart or a partition's next owner skips them instead of
//! handling them again.
//!
//! A committed offset is the watermark, the first message not finished. While one key is held
//! (its message retrying, or out of retries under `ForceCommit: false`), the messages of the
//! other keys above it finish, and without a record of them every one would be delivered
//! again. The record is text, as Kafka's commit metadata is: `kq1:` and the URL-safe base64 of
//!
//! ```text
//! kind (1 byte) | base (varint: the committed offset) | body
//! ```
//!
//! where the body lists the finished offsets after `base`, as runs (varint lengths of
//! alternating runs, the first of offsets not finished) or as a bitset (bit `i` for offset
//! `base + 1 + i`, least significant bit first), whichever is smaller, deflated when that is
//! smaller still (the kind's bits say which). A record longer than the broker's metadata limit
//! is not written: the commit carries the plain watermark.
//!
//! Reading one never makes kq skip a message that was not finished: a record that is not
//! kq's, is of another version, does not decode, was written for another offset than the one
//! committed with it, or names an offset at or past the partition's end, is ignored whole.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read as _, Write as _};
use std::ops::Range;

use base64::Engine as _;

/// What a record starts with: kq's, version 1.
const TAG: &str = "kq1:";
/// The most metadata a broker takes per partition by default (`offset.metadata.max.bytes`).
pub(crate) const METADATA_LIMIT: usize = 4096;
/// The kind's bits: the body is a bitset (else runs), and it is deflated.
const BITSET: u8 = 1;
const DEFLATED: u8 = 2;
/// The largest body a record may inflate to: a bitset of 4 KiB of text deflated at best
/// spans a few million offsets; anything larger is not a record kq wrote.
const MAX_BODY: u64 = 1 << 20;
/// Bodies this small are not worth deflating: a commit's map is usually a few runs, stored
/// every few milliseconds, and setting up a deflate costs more than it saves.
const DEFLATE_ABOVE: usize = 256;

fn base64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A record would not fit the broker's metadata limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Encodes the offsets in `finished`, each above `base`, ascending, as the record a commit of
/// `base` carries. `None` when there are none.
pub(crate) fn encode(
    base: i64,
    finished: impl IntoIterator<Item = i64>,
) -> Result<Option<String>, TooLarge> {
    let ranges = ranges_of(base, finished);
    let Some(last) = ranges.last() else {
        return Ok(None);
    };
    let span = last.end - base - 1;
    let runs = runs_body(base, &ranges);
    // A bitset larger than the limit's worth of bits could only fit deflated, and a run list
    // already beats it there; skip building one that large.
    let bits = (span as u64).div_ceil(8);
    let bitset = (bits <= (METADATA_LIMIT as u64) * 8).then(|| bitset_body(base, &ranges, span));
    let mut best: Option<(u8, Vec<u8>)> = None;
    let mut consider = |kind: u8, body: Vec<u8>| {
        if best.as_ref().is_none_or(|(_, b)| body.len() < b.len()) {
            best = Some((kind, body));
        }
    };
    for (kind, body) in [(0, Some(runs)), (BITSET, bitset)] {
        let Some(body) = body else { continue };
        if body.len() > DEFLATE_ABOVE {
            if let Some(deflated) = deflate(&body) {
                consider(kind | DEFLATED, deflated);
            }
        }
        consider(kind, body);
    }
    let (kind, body) = best.expect("the runs are always a candidate");
    let mut payload = Vec::with_capacity(body.len() + 11);
    payload.push(kind);
    put_varint(&mut payload, base as u64);
    payload.extend_from_slice(&body);
    let text = format!("{TAG}{}", base64().encode(payload));
    if text.len() > METADATA_LIMIT {
        return Err(TooLarge);
    }
    Ok(Some(text))
}

/// Why a record was ignored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// Another version of kq's record.
    Version(String),
    /// Not base64, too short, an unknown kind, a body that does not inflate or parse.
    Corrupt(&'static str),
    /// Written for another offset than the one committed with it.
    Base { record: i64, committed: i64 },
    /// It names an offset at or past the partition's end.
    PastEnd { offset: i64, end: i64 },
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Version(tag) => write!(f, "a record of another version ({tag})"),
            Invalid::Corrupt(what) => write!(f, "a corrupt record: {what}"),
            Invalid::Base { record, committed } => write!(
                f,
                "a record for offset {record}, committed with offset {committed}"
            ),
            Invalid::PastEnd { offset, end } => write!(
                f,
                "a record naming offset {offset}, at or past the partition's end ({end})"
            ),
        }
    }
}

/// Reads the record committed with offset `committed` on a partition whose next offset is
/// `end`: the finished offsets it names, as ranges. `Ok(None)` for metadata that is not a kq
/// record at all (none, or another tool's).
#[cfg(test)]
pub(crate) fn decode(
    metadata: &str,
    committed: i64,
    end: i64,
) -> Result<Option<Finished>, Invalid> {
    read(metadata, committed)?
        .map(|finished| finished.within(end))
        .transpose()
}

/// Reads the record committed with offset `committed`: the finished offsets it names, as
/// ranges, to be checked against the partition's end (`Finished::within`) before they are
/// trusted. `Ok(None)` for metadata that is not a kq record at all (none, or another tool's).
pub(crate) fn read(metadata: &str, committed: i64) -> Result<Option<Finished>, Invalid> {
    let Some(encoded) = metadata.strip_prefix(TAG) else {
        return match metadata.split_once(':') {
            Some((tag, _)) if is_kq_tag(tag) => Err(Invalid::Version(tag.to_owned())),
            _ => Ok(None),
        };
    };
    let payload = base64()
        .decode(encoded)
        .map_err(|_| Invalid::Corrupt("not base64"))?;
    let (&kind, rest) = payload.split_first().ok_or(Invalid::Corrupt("empty"))?;
    if kind & !(BITSET | DEFLATED) != 0 {
        return Err(Invalid::Corrupt("unknown kind"));
    }
    let mut rest = rest;
    let base = take_varint(&mut rest).ok_or(Invalid::Corrupt("no base"))?;
    let base = i64::try_from(base).map_err(|_| Invalid::Corrupt("base out of range"))?;
    if base != committed {
        return Err(Invalid::Base {
            record: base,
            committed,
        });
    }
    let inflated;
    let body = if kind & DEFLATED != 0 {
        inflated = inflate(rest).ok_or(Invalid::Corrupt("does not inflate"))?;
        &inflated[..]
    } else {
        rest
    };
    let ranges = if kind & BITSET != 0 {
        bitset_ranges(base, body)?
    } else {
        runs_ranges(base, body)?
    };
    Ok(Some(Finished {
        ranges: ranges.into(),
    }))
}

/// `kq` and a version number: a record of kq's, of some version.
fn is_kq_tag(tag: &str) -> bool {
    tag.strip_prefix("kq")
        .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
}

/// Offsets a previous owner finished, to be skipped as they are fetched again.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Finished {
    /// Ascending, disjoint.
    ranges: VecDeque<Range<i64>>,
}

impl Finished {
    /// Whether `offset` was finished. Offsets are asked in ascending order: what lies below
    /// is forgotten.
    pub fn take(&mut self, offset: i64) -> bool {
        while let Some(range) = self.ranges.front() {
            if offset < range.start {
                return false;
            }
            if offset < range.end {
                return true;
            }
            self.ranges.pop_front();
        }
        false
    }

    /// How many offsets it names.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|r| (r.end - r.start) as u64).sum()
    }

    /// The offset after the last it names, if any.
    pub fn end(&self) -> Option<i64> {
        self.ranges.back().map(|r| r.end)
    }

    /// Itself, if every offset it names lies before `end`, the partition's next offset.
    pub fn within(self, end: i64) -> Result<Finished, Invalid> {
        match self.end() {
            Some(after) if after > end => Err(Invalid::PastEnd {
                offset: after - 1,
                end,
            }),
            _ => Ok(self),
        }
    }
}

/// The finished offsets above `base` as ascending disjoint ranges; those at or below `base`,
/// and any out of order, are left out.
fn ranges_of(base: i64, finished: impl IntoIterator<Item = i64>) -> Vec<Range<i64>> {
    let mut ranges: Vec<Range<i64>> = Vec::new();
    for offset in finished {
        match ranges.last_mut() {
            Some(last) if offset == last.end => last.end += 1,
            Some(last) if offset < last.end => {}
            _ if offset <= base => {}
            _ => ranges.push(offset..offset + 1),
        }
    }
    ranges
}

fn runs_body(base: i64, ranges: &[Range<i64>]) -> Vec<u8> {
    let mut body = Vec::with_capacity(ranges.len() * 2);
    let mut at = base + 1;
    for range in ranges {
        put_varint(&mut body, (range.start - at) as u64);
        put_varint(&mut body, (range.end - range.start) as u64);
        at = range.end;
    }
    body
}

fn runs_ranges(base: i64, mut body: &[u8]) -> Result<Vec<Range<i64>>, Invalid> {
    let mut ranges = Vec::new();
    let mut at = base
        .checked_add(1)
        .ok_or(Invalid::Corrupt("base out of range"))?;
    while !body.is_empty() {
        let gap = take_varint(&mut body).ok_or(Invalid::Corrupt("truncated run"))?;
        let run = take_varint(&mut body).ok_or(Invalid::Corrupt("truncated run"))?;
        let start = offset_after(at, gap)?;
        let end = offset_after(start, run)?;
        if run == 0 {
            return Err(Invalid::Corrupt("empty run"));
        }
        ranges.push(start..end);
        at = end;
    }
    Ok(ranges)
}

fn bitset_body(base: i64, ranges: &[Range<i64>], span: i64) -> Vec<u8> {
    let mut body = vec![0u8; (span as usize).div_ceil(8)];
    for offset in ranges.iter().flat_map(Clone::clone) {
        let bit = (offset - base - 1) as usize;
        body[bit / 8] |= 1 << (bit % 8);
    }
    body
}

fn bitset_ranges(base: i64, body: &[u8]) -> Result<Vec<Range<i64>>, Invalid> {
    let first = base
        .checked_add(1)
        .ok_or(Invalid::Corrupt("base out of range"))?;
    let mut ranges: Vec<Range<i64>> = Vec::new();
    for (index, &byte) in body.iter().enumerate() {
        for bit in (0..8).filter(|bit| byte & (1 << bit) != 0) {
            let offset = offset_after(first, (index * 8 + bit) as u64)?;
            match ranges.last_mut() {
                Some(last) if last.end == offset => last.end += 1,
                _ => ranges.push(offset..offset + 1),
            }
        }
    }
    Ok(ranges)
}

/// `at + by`, refused past the largest offset.
fn offset_after(at: i64, by: u64) -> Result<i64, Invalid> {
    i64::try_from(by)
        .ok()
        .and_then(|by| at.checked_add(by))
        .ok_or(Invalid::Corrupt("offset out of range"))
}

fn deflate(body: &[u8]) -> Option<Vec<u8>> {
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).ok()?;
    encoder.finish().ok()
}

/// Inflates at most `MAX_BODY` bytes: a record that would be larger is not one kq wrote.
fn inflate(deflated: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    flate2::read::DeflateDecoder::new(deflated)
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .ok()?;
    (body.len() as u64 <= MAX_BODY).then_some(body)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, &byte) in input.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so that failures repeat.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn all(mut finished: Finished) -> Vec<i64> {
        let mut offsets = Vec::new();
        while let Some(range) = finished.ranges.pop_front() {
            offsets.extend(range);
        }
        offsets
    }

    fn round_trip(base: i64, finished: &[i64]) -> Option<Vec<i64>> {
        let text = encode(base, finished.iter().copied()).unwrap()?;
        assert!(text.len() <= METADATA_LIMIT);
        let end = finished.last().map_or(base + 1, |last| last + 1);
        Some(all(decode(&text, base, end).unwrap().unwrap()))
    }

    #[test]
    fn nothing_finished_is_no_record() {
        assert_eq!(encode(10, []), Ok(None));
        assert_eq!(encode(10, [3, 10]), Ok(None), "none above the base");
    }

    #[test]
    fn random_completion_sets_round_trip() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..2000 {
            let base = rng.below(1 << 40) as i64;
            let span = 1 + rng.below([10, 1000, 30_000][case % 3]);
            // Dense, sparse and in between.
            let density = rng.below(101);
            let finished: Vec<i64> = (1..=span as i64)
                .filter(|_| rng.below(100) < density)
                .map(|i| base + i)
                .collect();
            match encode(base, finished.iter().copied()) {
                Ok(Some(text)) => {
                    let end = base + span as i64 + 1;
                    let decoded = decode(&text, base, end).unwrap().unwrap();
                    assert_eq!(all(decoded), finished, "case {case}");
                }
                Ok(None) => assert!(finished.is_empty(), "case {case}"),
                // Only a large, irregular set may not fit.
                Err(TooLarge) => assert!(span > 4000, "case {case}: span {span}"),
            }
        }
    }

    #[test]
    fn one_held_key_among_many_fits() {
        // A key held at the watermark while 63 others finish: one message in 64 waits.
        let finished: Vec<i64> = (1..20_000)
            .filter(|i| i % 64 != 0)
            .map(|i| 500 + i)
            .collect();
        let text = encode(500, finished.iter().copied()).unwrap().unwrap();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert_eq!(round_trip(500, &finished), Some(finished));
    }

    #[test]
    fn a_record_too_large_is_refused() {
        let mut rng = Rng(42);
        let finished: Vec<i64> = (1..200_000).filter(|_| rng.below(2) == 0).collect();
        assert_eq!(encode(0, finished), Err(TooLarge));
    }

    #[test]
    fn what_is_not_a_record_of_this_version_is_ignored() {
        assert_eq!(decode("", 5, 10), Ok(None));
        assert_eq!(decode("someone else's note", 5, 10), Ok(None));
        assert_eq!(decode("kqx:abc", 5, 10), Ok(None));
        assert_eq!(
            decode("kq2:AAAA", 5, 10),
            Err(Invalid::Version("kq2".into()))
        );
    }

    #[test]
    fn a_record_for_another_offset_or_past_the_end_is_refused() {
        let text = encode(100, [102, 103, 110]).unwrap().unwrap();
        assert_eq!(
            decode(&text, 101, 200),
            Err(Invalid::Base {
                record: 100,
                committed: 101
            })
        );
        assert_eq!(
            decode(&text, 100, 110),
            Err(Invalid::PastEnd {
                offset: 110,
                end: 110
            })
        );
        assert!(decode(&text, 100, 111).unwrap().is_some());
    }

    #[test]
    fn corrupt_and_hostile_records_are_refused() {
        let payload = |bytes: &[u8]| format!("{TAG}{}", base64().encode(bytes));
        let mut base = Vec::new();
        put_varint(&mut base, 7);
        let cases = [
            "kq1:***".to_owned(),
            payload(&[]),
            payload(&[0x80]),
            payload(&[4, 7]),
            payload(&[
                0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ]),
            // A run starting far past any offset.
            payload(
                &[
                    &[0u8][..],
                    &base,
                    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1],
                ]
                .concat(),
            ),
            // A run of no offsets, and a truncated one.
            payload(&[&[0u8][..], &base, &[1, 0]].concat()),
            payload(&[&[0u8][..], &base, &[1]].concat()),
            // A body that does not inflate.
            payload(&[&[DEFLATED][..], &base, &[1, 2, 3]].concat()),
        ];
        for case in &cases {
            assert!(
                matches!(decode(case, 7, i64::MAX), Err(Invalid::Corrupt(_))),
                "{case}: {:?}",
                decode(case, 7, i64::MAX)
            );
        }
        // A bomb: a small deflated body that inflates past any record's size.
        let bomb = deflate(&vec![0xff; 4 << 20]).unwrap();
        let bomb = payload(&[&[BITSET | DEFLATED][..], &base, &bomb].concat());
        assert_eq!(
            decode(&bomb, 7, i64::MAX),
            Err(Invalid::Corrupt("does not inflate"))
        );
    }

    #[test]
    fn random_bytes_never_name_an_offset_at_or_below_the_base_nor_past_the_end() {
        let mut rng = Rng(7);
        for _ in 0..5000 {
            let len = rng.below(40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if let Some(kind) = bytes.first_mut() {
                *kind &= BITSET | DEFLATED;
            }
            let text = format!("{TAG}{}", base64().encode(&bytes));
            for committed in [0, 1, 1000] {
                if let Ok(Some(finished)) = decode(&text, committed, 5000) {
                    let offsets = all(finished);
                    assert!(offsets.iter().all(|&o| o > committed && o < 5000), "{text}");
                }
            }
        }
    }

    #[test]
    fn finished_offsets_are_taken_in_order() {
        let text = encode(10, [12, 13, 15]).unwrap().unwrap();
        let mut finished = decode(&text, 10, 16).unwrap().unwrap();
        assert_eq!(finished.len(), 3);
        assert_eq!(finished.end(), Some(16));
        let taken: Vec<bool> = (10..17).map(|o| finished.take(o)).collect();
        assert_eq!(taken, [false, false, true, true, false, true, false]);
    }

    #[test]
    fn varints_round_trip_and_refuse_overflow() {
        for value in [0, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut input = &out[..];
            assert_eq!(take_varint(&mut input), Some(value));
            assert!(input.is_empty());
        }
        let mut overflow: &[u8] = &[0xff; 11];
        assert_eq!(take_varint(&mut overflow), None);
    }
}
