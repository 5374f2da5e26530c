//! Behavioural tests of the event log: round trips, crash recovery at every
//! byte of a torn record, corruption detection, seq continuity, policies.

use super::*;
use crate::dataset::EventKind;
use std::fs::{self, OpenOptions};
use std::path::Path;

fn event(i: u64) -> LogEvent {
    let mut e = LogEvent::new(
        1_700_000_000 + i as i64,
        format!("user-{}", i % 3),
        format!("item-é{i}"),
        EventKind::ALL[(i % 5) as usize],
        0.5 + i as f32,
    );
    if i % 2 == 1 {
        e.device = "ios".into();
    }
    // every third event came from another node: the optional origin block
    if i % 3 == 2 {
        e.origin = Some(EventOrigin {
            node: i % 7 + 1,
            log: u64::MAX - i,
            seq: i * 10,
        });
    }
    e
}

fn events(range: std::ops::Range<u64>) -> Vec<LogEvent> {
    range.map(event).collect()
}

fn opts(fsync: FsyncPolicy, segment_bytes: u64) -> EventLogOptions {
    EventLogOptions {
        fsync,
        segment_bytes,
    }
}

fn with_seqs(mut evs: Vec<LogEvent>, first: u64) -> Vec<LogEvent> {
    for (i, e) in evs.iter_mut().enumerate() {
        e.seq = first + i as u64;
    }
    evs
}

/// Writes `n` single-event batches into one fresh segment and returns the
/// file and the byte offset where each record starts.
fn one_segment_log(dir: &Path, n: u64) -> (std::path::PathBuf, Vec<u64>) {
    let (mut w, _) = EventLogWriter::open(dir, opts(FsyncPolicy::Never, u64::MAX)).unwrap();
    let path = dir.join(segment_file_name(1));
    let mut starts = Vec::new();
    for i in 0..n {
        starts.push(if i == 0 {
            MAGIC.len() as u64
        } else {
            fs::metadata(&path).unwrap().len()
        });
        w.append_batch(&mut [event(i)]).unwrap();
    }
    w.close().unwrap();
    (path, starts)
}

fn truncate(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

#[test]
fn round_trip_across_several_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut w, report) = EventLogWriter::open(&dir, opts(FsyncPolicy::Always, 150)).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.next_seq, 1);
    let mut written = Vec::new();
    for b in 0..8u64 {
        let mut batch = events(b * 3..b * 3 + 3);
        let (first, last) = w.append_batch(&mut batch).unwrap();
        assert_eq!((first, last), (b * 3 + 1, b * 3 + 3));
        assert_eq!(batch[0].seq, first);
        written.extend(batch);
    }
    w.close().unwrap();

    let files = segment_files(&dir).unwrap();
    assert!(files.len() >= 3, "expected several segments, got {files:?}");
    // Each segment is named after the seq of its first record.
    let mut reader = EventLogReader::open(&dir).unwrap();
    let mut firsts = Vec::new();
    let mut last_file = None;
    let mut read = Vec::new();
    while let Some(e) = reader.next() {
        let e = e.unwrap();
        let file = reader.current_file().unwrap().to_path_buf();
        if last_file.as_ref() != Some(&file) {
            firsts.push((file.clone(), e.seq));
            last_file = Some(file);
        }
        read.push(e);
    }
    assert_eq!(read, written);
    for (file, seq) in firsts {
        assert_eq!(
            file.file_name().unwrap().to_str().unwrap(),
            segment_file_name(seq)
        );
    }
}

#[test]
fn torn_tail_at_every_offset_recovers_exactly_the_complete_records() {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let (path, starts) = one_segment_log(&pristine, 3);
    let full_len = fs::metadata(&path).unwrap().len();
    let last_start = starts[2];
    let original = fs::read(&path).unwrap();
    for cut in last_start..full_len {
        let dir = tmp.path().join(format!("cut-{cut}"));
        fs::create_dir(&dir).unwrap();
        let seg = dir.join(segment_file_name(1));
        fs::write(&seg, &original[..cut as usize]).unwrap();

        // The reader tolerates the torn tail and stops before it.
        let read = read_all(&dir).unwrap();
        assert_eq!(read, with_seqs(events(0..2), 1), "reader at cut {cut}");

        let (mut w, report) = EventLogWriter::open(&dir, EventLogOptions::default()).unwrap();
        assert_eq!(report.dropped_bytes, cut - last_start, "cut {cut}");
        assert_eq!(report.dropped_records, u64::from(cut > last_start));
        assert_eq!(report.records_in_last_segment, 2);
        assert_eq!(report.next_seq, 3);
        assert_eq!(report.is_clean(), cut == last_start);
        assert_eq!(fs::metadata(&seg).unwrap().len(), last_start);
        assert_eq!(w.append_batch(&mut [event(9)]).unwrap(), (3, 3));
        w.close().unwrap();
        let mut expected = with_seqs(events(0..2), 1);
        expected.extend(with_seqs(vec![event(9)], 3));
        assert_eq!(
            read_all(&dir).unwrap(),
            expected,
            "after recovery at cut {cut}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn zero_filled_tail_is_dropped_without_counting_a_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = one_segment_log(tmp.path(), 2);
    let len = fs::metadata(&path).unwrap().len();
    truncate(&path, len + 100);
    assert_eq!(read_all(tmp.path()).unwrap().len(), 2);
    let (w, report) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    assert_eq!(report.dropped_bytes, 100);
    assert_eq!(report.dropped_records, 0);
    assert_eq!(w.next_seq(), 3);
    assert_eq!(fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn segment_with_partial_magic_is_reinitialised() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _) = one_segment_log(tmp.path(), 2);
    // A crash right after creating the next segment leaves a partial header.
    let next = tmp.path().join(segment_file_name(3));
    fs::write(&next, &MAGIC[..3]).unwrap();
    assert_eq!(read_all(tmp.path()).unwrap().len(), 2);
    let (mut w, report) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    assert_eq!(report.truncated_file.as_deref(), Some(next.as_path()));
    assert_eq!(report.dropped_records, 0);
    assert_eq!(w.append_batch(&mut events(5..6)).unwrap(), (3, 3));
    w.close().unwrap();
    assert_eq!(fs::read(&next).unwrap()[..8], MAGIC[..]);
    assert_eq!(read_all(tmp.path()).unwrap().len(), 3);
}

#[test]
fn crc_flip_in_the_middle_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, starts) = one_segment_log(tmp.path(), 3);
    let len_before = fs::metadata(&path).unwrap().len();
    // Damage the payload of the first record; intact records follow it.
    flip_byte(&path, starts[0] + 12);
    let name = segment_file_name(1);

    let err = read_all(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, EventLogError::Corrupt { offset, .. } if *offset == starts[0]),
        "{err:?}"
    );
    assert!(err.to_string().contains(&name), "{err}");

    let err = EventLogWriter::open(tmp.path(), EventLogOptions::default())
        .err()
        .expect("open must refuse a damaged middle");
    assert!(matches!(err, EventLogError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&name), "{err}");
    // Nothing was truncated.
    assert_eq!(fs::metadata(&path).unwrap().len(), len_before);
}

#[test]
fn damaged_length_with_records_behind_it_is_not_taken_for_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, starts) = one_segment_log(tmp.path(), 3);
    let mut bytes = fs::read(&path).unwrap();
    let at = starts[0] as usize;
    // A length that runs past the end of the file but is within bounds.
    bytes[at..at + 4].copy_from_slice(&60_000u32.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let err = EventLogWriter::open(tmp.path(), EventLogOptions::default())
        .err()
        .expect("a damaged length in the middle must be refused");
    assert!(
        matches!(&err, EventLogError::Corrupt { offset, .. } if *offset == starts[0]),
        "{err:?}"
    );
    assert!(matches!(
        read_all(tmp.path()),
        Err(EventLogError::Corrupt { .. })
    ));
}

#[test]
fn torn_record_in_a_segment_that_is_not_the_last_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = EventLogWriter::open(tmp.path(), opts(FsyncPolicy::Never, 1)).unwrap();
    for i in 0..3 {
        w.append_batch(&mut [event(i)]).unwrap();
    }
    w.close().unwrap();
    let files = segment_files(tmp.path()).unwrap();
    assert_eq!(files.len(), 3);
    let len = fs::metadata(&files[0]).unwrap().len();
    truncate(&files[0], len - 3);
    let err = read_all(tmp.path()).unwrap_err();
    assert!(matches!(err, EventLogError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&segment_file_name(1)), "{err}");
}

#[test]
fn missing_segment_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = EventLogWriter::open(tmp.path(), opts(FsyncPolicy::Never, 1)).unwrap();
    for i in 0..3 {
        w.append_batch(&mut [event(i)]).unwrap();
    }
    w.close().unwrap();
    fs::remove_file(tmp.path().join(segment_file_name(2))).unwrap();
    let err = read_all(tmp.path()).unwrap_err();
    assert!(
        matches!(err, EventLogError::MissingSegment { expected: 2, .. }),
        "{err:?}"
    );
}

#[test]
fn reopen_continues_seq_numbering() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    assert_eq!(w.append_batch(&mut events(0..5)).unwrap(), (1, 5));
    w.close().unwrap();
    let (mut w, report) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    assert!(report.is_clean());
    assert_eq!(report.next_seq, 6);
    assert_eq!(report.segments, 1);
    assert_eq!(w.append_batch(&mut events(5..7)).unwrap(), (6, 7));
    w.close().unwrap();
    let seqs: Vec<u64> = read_all(tmp.path())
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}

#[test]
fn every_fsync_policy_keeps_data_on_clean_close() {
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::IntervalMs(5),
        FsyncPolicy::Never,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (mut w, _) = EventLogWriter::open(tmp.path(), opts(policy, 300)).unwrap();
        for b in 0..4 {
            w.append_batch(&mut events(b * 4..b * 4 + 4)).unwrap();
            w.maybe_sync_due().unwrap();
        }
        w.close().unwrap();
        assert_eq!(
            read_all(tmp.path()).unwrap(),
            with_seqs(events(0..16), 1),
            "{policy}"
        );
        // Dropping without close must not lose data either.
        let (mut w, _) = EventLogWriter::open(tmp.path(), opts(policy, 300)).unwrap();
        w.append_batch(&mut events(16..18)).unwrap();
        drop(w);
        assert_eq!(read_all(tmp.path()).unwrap().len(), 18, "{policy}");
    }
}

#[test]
fn invalid_events_reject_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    let cases: Vec<(LogEvent, &str)> = vec![
        (
            LogEvent::new(1, "bad\nuser", "i", EventKind::View, 1.0),
            "user id",
        ),
        (LogEvent::new(1, "u", "", EventKind::View, 1.0), "item id"),
        (
            LogEvent::new(1, "u", "x".repeat(70_000), EventKind::View, 1.0),
            "item id",
        ),
        (
            LogEvent::new(1, "u", "i", EventKind::View, f32::NAN),
            "weight",
        ),
        (
            LogEvent {
                device: "tab\there".into(),
                ..LogEvent::new(1, "u", "i", EventKind::View, 1.0)
            },
            "device",
        ),
    ];
    for (bad, field) in cases {
        let mut batch = vec![event(0), bad, event(1)];
        let err = w.append_batch(&mut batch).unwrap_err();
        match &err {
            EventLogError::InvalidEvent {
                index, field: f, ..
            } => {
                assert_eq!((*index, *f), (1, field));
            }
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
        assert!(err
            .to_string()
            .contains("nothing from this batch was written"));
    }
    assert_eq!(w.next_seq(), 1);
    // Nothing reached the disk, and the writer still works.
    assert!(read_all(tmp.path()).unwrap().is_empty());
    assert_eq!(w.append_batch(&mut events(0..1)).unwrap(), (1, 1));
}

#[test]
fn empty_batch_is_an_empty_range_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    assert_eq!(w.append_batch(&mut []).unwrap(), (1, 0));
    assert!(segment_files(tmp.path()).unwrap().is_empty());
}

#[test]
fn second_writer_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_w, _) = EventLogWriter::open(tmp.path(), EventLogOptions::default()).unwrap();
    let err = EventLogWriter::open(tmp.path(), EventLogOptions::default())
        .err()
        .expect("second writer must be refused");
    assert!(matches!(err, EventLogError::Locked { .. }), "{err:?}");
}

#[test]
fn bad_magic_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join(segment_file_name(1)), b"NOTALOG!more").unwrap();
    assert!(matches!(
        EventLogWriter::open(tmp.path(), EventLogOptions::default()).err(),
        Some(EventLogError::Corrupt { offset: 0, .. })
    ));
    assert!(matches!(
        read_all(tmp.path()),
        Err(EventLogError::Corrupt { offset: 0, .. })
    ));
}

#[test]
fn fsync_policy_reads_from_toml_strings_and_tables() {
    #[derive(serde::Deserialize)]
    struct Conf {
        fsync: FsyncPolicy,
    }
    let parse = |s: &str| toml::from_str::<Conf>(s).map(|c| c.fsync);
    assert_eq!(parse(r#"fsync = "always""#).unwrap(), FsyncPolicy::Always);
    assert_eq!(parse(r#"fsync = "never""#).unwrap(), FsyncPolicy::Never);
    assert_eq!(
        parse(r#"fsync = "interval:50ms""#).unwrap(),
        FsyncPolicy::IntervalMs(50)
    );
    assert_eq!(
        parse(r#"fsync = "interval:2s""#).unwrap(),
        FsyncPolicy::IntervalMs(2000)
    );
    assert_eq!(
        parse("fsync = { interval_ms = 50 }").unwrap(),
        FsyncPolicy::IntervalMs(50)
    );
    for bad in [
        r#"fsync = "sometimes""#,
        r#"fsync = "interval:0ms""#,
        r#"fsync = "interval:50""#,
        "fsync = { interval_ms = 0 }",
    ] {
        assert!(parse(bad).is_err(), "{bad} should be refused");
    }
    for p in [
        FsyncPolicy::Always,
        FsyncPolicy::Never,
        FsyncPolicy::IntervalMs(250),
    ] {
        assert_eq!(p.to_string().parse::<FsyncPolicy>().unwrap(), p);
    }
    let opts: EventLogOptions = toml::from_str("segment_bytes = 1024").unwrap();
    assert_eq!(opts.fsync, FsyncPolicy::Always);
    assert_eq!(opts.segment_bytes, 1024);
}

#[test]
fn segment_names_sort_like_their_seqs() {
    assert_eq!(segment_file_name(1), "events-00000000000000000001.log");
    assert_eq!(
        segment::parse_segment_name(&segment_file_name(u64::MAX)),
        Some(u64::MAX)
    );
    assert_eq!(segment::parse_segment_name("events-1.log"), None);
    assert_eq!(segment::parse_segment_name("LOCK"), None);
    assert!(segment_file_name(9) < segment_file_name(10));
}

#[test]
fn writer_reader_and_errors_can_move_between_threads() {
    // The serving node hands the writer to an actor and errors to anyhow.
    fn is_send<T: Send>() {}
    fn is_send_sync<T: Send + Sync + 'static>() {}
    is_send::<EventLogWriter>();
    is_send::<EventLogReader>();
    is_send_sync::<EventLogError>();
}

#[test]
fn open_after_skips_whole_segments_below_the_position() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut w, _) = EventLogWriter::open(&dir, opts(FsyncPolicy::Never, 150)).unwrap();
    for b in 0..8u64 {
        w.append_batch(&mut events(b * 3..b * 3 + 3)).unwrap();
    }
    w.close().unwrap();
    assert!(segment_files(&dir).unwrap().len() >= 3);
    for after in [0u64, 1, 5, 11, 23, 24, 100] {
        let seqs: Vec<u64> = EventLogReader::open_after(&dir, after)
            .unwrap()
            .map(|e| e.unwrap().seq)
            .collect();
        // nothing above `after` is skipped, and whole segments below are
        let first = seqs.first().copied().unwrap_or(u64::MAX);
        assert!(
            first <= after + 1 || seqs.is_empty(),
            "after {after}: {seqs:?}"
        );
        let above: Vec<u64> = seqs.into_iter().filter(|&s| s > after).collect();
        let want: Vec<u64> = (after + 1..=24).collect();
        assert_eq!(above, want, "after {after}");
    }
    let all: Vec<u64> = EventLogReader::open_after(&dir, 0)
        .unwrap()
        .map(|e| e.unwrap().seq)
        .collect();
    assert_eq!(all, (1..=24).collect::<Vec<u64>>());
}

#[test]
fn fsync_policy_refusals_say_which_rule_was_broken() {
    assert_eq!(
        "sometimes".parse::<FsyncPolicy>(),
        Err(FsyncPolicyError::Unknown("sometimes".into()))
    );
    assert_eq!(
        "interval:0s".parse::<FsyncPolicy>(),
        Err(FsyncPolicyError::ZeroInterval("interval:0s".into()))
    );
    let err = "interval:0ms".parse::<FsyncPolicy>().unwrap_err();
    assert!(err.to_string().contains("use \"always\""), "{err}");
    let table = toml::from_str::<EventLogOptions>("fsync = { interval_ms = 0 }").unwrap_err();
    assert!(table.to_string().contains("interval_ms is zero"), "{table}");
}

#[test]
fn a_payload_that_is_not_an_event_gives_the_decode_case() {
    use segment::{decode_payload, DecodeError};
    let mut record = Vec::new();
    segment::encode_record(&event(7), &mut record);
    let payload = &record[segment::RECORD_HEADER_LEN as usize..];
    assert_eq!(decode_payload(payload).unwrap(), event(7));
    assert!(matches!(
        decode_payload(&payload[..payload.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    let mut longer = payload.to_vec();
    longer.push(0);
    assert_eq!(decode_payload(&longer), Err(DecodeError::TrailingBytes(1)));
    let mut bad_kind = payload.to_vec();
    bad_kind[16] = 200; // after seq (8) and ts (8)
    assert_eq!(
        decode_payload(&bad_kind),
        Err(DecodeError::UnknownKind(200))
    );
    // a forwarded event: the origin block after the device
    let forwarded = event(8);
    assert!(forwarded.origin.is_some());
    let mut record = Vec::new();
    segment::encode_record(&forwarded, &mut record);
    let payload = &record[segment::RECORD_HEADER_LEN as usize..];
    assert_eq!(decode_payload(payload).unwrap(), forwarded);
    // the same event written without it (as before the block existed)
    let mut plain_record = Vec::new();
    segment::encode_record(
        &LogEvent {
            origin: None,
            ..forwarded.clone()
        },
        &mut plain_record,
    );
    assert_eq!(plain_record.len() + 25, record.len());
    let plain = decode_payload(&plain_record[segment::RECORD_HEADER_LEN as usize..]).unwrap();
    assert_eq!(plain.origin, None);
    assert_eq!(plain.seq, forwarded.seq);
    assert_eq!(
        decode_payload(&payload[..payload.len() - 1]),
        Err(DecodeError::TrailingBytes(24))
    );
    let mut unknown = payload.to_vec();
    let tag_at = unknown.len() - 25;
    unknown[tag_at] = 2;
    assert_eq!(decode_payload(&unknown), Err(DecodeError::UnknownBlock(2)));
}
