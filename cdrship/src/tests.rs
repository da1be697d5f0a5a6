//! The shipping cycle on a temporary spool, with a database and an edge that
//! are fakes.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use super::*;

#[derive(Default)]
struct FakeStore {
    keys: HashSet<(String, String)>,
    rows: Vec<(String, EdgeCdr)>,
    fail: bool,
    calls: usize,
}

impl Store for FakeStore {
    async fn insert(&mut self, edge: &str, records: &[EdgeCdr]) -> Result<usize, StoreError> {
        self.calls += 1;
        if self.fail {
            return Err(StoreError::Other("the database is down".into()));
        }
        let mut stored = 0;
        for r in records {
            if self
                .keys
                .insert((r.sip_call_id.clone(), r.from_tag.clone()))
            {
                self.rows.push((edge.to_string(), r.clone()));
                stored += 1;
            }
        }
        Ok(stored)
    }
}

#[derive(Default)]
struct FakeRotator {
    rotations: usize,
    fail: bool,
}

impl Rotator for FakeRotator {
    async fn rotate(&mut self) -> Result<(), RotateError> {
        if self.fail {
            return Err(RotateError::Other("the edge does not answer".into()));
        }
        self.rotations += 1;
        Ok(())
    }
}

type TestShipper = Shipper<FakeStore, FakeRotator>;

fn settings(spool: &Path) -> ShipperSettings {
    let mut s = ShipperSettings::new(spool, "edge-a");
    s.grace = Duration::ZERO;
    s.min_rotate_interval = Duration::ZERO;
    s
}

fn shipper(spool: &Path) -> TestShipper {
    Shipper::new(
        settings(spool),
        FakeStore::default(),
        FakeRotator::default(),
    )
    .unwrap()
}

fn record(call_id: &str) -> String {
    format!(
        "1733600000|1733600060|60|1|{call_id}|tag-a|alice|100|subscriber|alice@example.com||pool|\
         sip:10.0.0.5:5080||1733600000.123456|1733600001.5||1733600060.250|200|tag-a|BYE\n"
    )
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The file names in the spool, sorted.
fn files(spool: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn batches(spool: &Path) -> Vec<String> {
    files(spool)
        .into_iter()
        .filter(|n| n.ends_with(".ship"))
        .collect()
}

fn call_ids(shipper: &TestShipper) -> Vec<&str> {
    shipper
        .store()
        .rows
        .iter()
        .map(|(_, r)| r.sip_call_id.as_str())
        .collect()
}

#[test]
fn spool_file_names() {
    assert_eq!(
        SpoolFile::classify("edge_cdr_3.log"),
        Some(SpoolFile::Active { rank: 3 })
    );
    assert_eq!(
        SpoolFile::classify("edge_cdr_-2.log"),
        Some(SpoolFile::Active { rank: -2 })
    );
    assert_eq!(
        SpoolFile::classify("edge_cdr_-2.log.1733600000123.ship"),
        Some(SpoolFile::Batch {
            rank: -2,
            millis: 1_733_600_000_123
        })
    );
    for other in [
        "rejected.log",
        "edge_cdr_.log",
        "edge_cdr_x.log",
        "edge_cdr_1.log.ship",
        "edge_cdr_1.log.12.ship.tmp",
        "edge_cdr_1.logx",
        "acc_cdr_1.log",
        "edge_cdr_--1.log",
    ] {
        assert_eq!(SpoolFile::classify(other), None, "{other}");
    }
}

#[tokio::test]
async fn a_sealed_file_is_shipped_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    append(&spool.join("edge_cdr_1.log"), &record("c2"));
    let mut s = shipper(spool);

    let report = s.cycle().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.renamed, 1);
    assert!(report.rotated);
    assert!(report.shipped.is_empty());
    assert_eq!(report.waiting, 1);
    assert_eq!(s.rotator().rotations, 1);
    let renamed = batches(spool);
    assert_eq!(renamed.len(), 1);
    assert!(renamed[0].starts_with("edge_cdr_1.log."), "{renamed:?}");
    assert!(!spool.join("edge_cdr_1.log").exists());

    // Kamailio reopened its file and writes the next record there
    append(&spool.join("edge_cdr_1.log"), &record("c3"));

    let report = s.cycle().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.shipped.len(), 1);
    assert_eq!(report.shipped[0].records, 2);
    assert_eq!(report.shipped[0].stored, 2);
    assert_eq!(report.shipped[0].rejected, 0);
    assert_eq!(report.stored(), 2);
    assert!(!spool.join(&renamed[0]).exists());
    assert_eq!(call_ids(&s), vec!["c1", "c2"]);
    assert!(s.store().rows.iter().all(|(edge, _)| edge == "edge-a"));
    // the new record was renamed for the next cycle
    assert_eq!(report.renamed, 1);

    let report = s.cycle().await.unwrap();
    assert_eq!(report.stored(), 1);
    assert_eq!(call_ids(&s), vec!["c1", "c2", "c3"]);
    assert_eq!(files(spool), Vec::<String>::new());
    assert_eq!(report.waiting, 0);
}

#[tokio::test]
async fn a_failing_store_keeps_the_file_and_the_next_cycle_ships_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_0.log"), &record("c1"));
    append(&spool.join("edge_cdr_0.log"), "bad line\n");
    let mut s = shipper(spool);
    s.cycle().await.unwrap();
    let batch = batches(spool);

    s.store_mut().fail = true;
    let report = s.cycle().await.unwrap();
    assert_eq!(report.errors.len(), 1);
    assert!(report.errors[0].is_store());
    assert!(
        report.errors[0]
            .to_string()
            .contains("the database is down"),
        "{}",
        report.errors[0]
    );
    assert!(report.shipped.is_empty());
    assert_eq!(report.waiting, 1);
    assert_eq!(batches(spool), batch);
    // nothing is rejected before the records are stored
    assert!(!spool.join(REJECTED_FILE).exists());

    s.store_mut().fail = false;
    let report = s.cycle().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.stored(), 1);
    assert_eq!(report.rejected(), 1);
    assert!(batches(spool).is_empty());
    assert_eq!(
        std::fs::read_to_string(spool.join(REJECTED_FILE)).unwrap(),
        "bad line\n"
    );
}

#[tokio::test]
async fn a_failing_store_stops_the_shipping_of_the_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    append(&spool.join("edge_cdr_2.log"), &record("c2"));
    let mut s = shipper(spool);
    s.cycle().await.unwrap();
    s.store_mut().fail = true;
    let report = s.cycle().await.unwrap();
    assert_eq!(s.store().calls, 1);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(batches(spool).len(), 2);
    s.store_mut().fail = false;
    let report = s.cycle().await.unwrap();
    assert_eq!(report.shipped.len(), 2);
    assert!(batches(spool).is_empty());
}

#[tokio::test]
async fn a_failing_rotate_leaves_the_renamed_file_unsealed_until_a_rotate_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    let mut s = shipper(spool);
    s.rotator_mut().fail = true;

    let report = s.cycle().await.unwrap();
    assert_eq!(report.renamed, 1);
    assert!(!report.rotated);
    assert_eq!(report.errors.len(), 1);
    assert!(matches!(report.errors[0], ShipError::Rotate(_)));
    let batch = batches(spool);
    assert_eq!(batch.len(), 1);

    // Kamailio still writes to the renamed file: it was not told to reopen it
    append(&spool.join(&batch[0]), &record("c2"));
    let report = s.cycle().await.unwrap();
    assert!(report.shipped.is_empty());
    assert_eq!(report.waiting, 1);
    assert_eq!(s.store().calls, 0);
    assert_eq!(batches(spool), batch);

    s.rotator_mut().fail = false;
    let report = s.cycle().await.unwrap();
    assert!(report.rotated);
    assert!(report.shipped.is_empty());
    assert_eq!(report.renamed, 0);

    let report = s.cycle().await.unwrap();
    assert_eq!(report.stored(), 2);
    assert_eq!(call_ids(&s), vec!["c1", "c2"]);
    assert!(files(spool).is_empty());
}

#[tokio::test]
async fn rejected_lines_end_up_in_rejected_log() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    let good = record("c1");
    let wrong_version = record("c2").replacen("|60|1|", "|60|9|", 1);
    let cut_off = &record("c3")[..30];
    append(
        &spool.join("edge_cdr_1.log"),
        &format!("{good}only|three|fields\n{wrong_version}{cut_off}"),
    );
    append(&spool.join(REJECTED_FILE), "from before\n");
    let mut s = Shipper::new(
        ShipperSettings {
            kamailio_stopped: true,
            ..settings(spool)
        },
        FakeStore::default(),
        FakeRotator::default(),
    )
    .unwrap();
    let report = s.cycle().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.shipped.len(), 1);
    assert_eq!(report.shipped[0].records, 1);
    assert_eq!(report.shipped[0].rejected, 3);
    assert_eq!(call_ids(&s), vec!["c1"]);
    assert_eq!(
        std::fs::read_to_string(spool.join(REJECTED_FILE)).unwrap(),
        format!("from before\nonly|three|fields\n{wrong_version}{cut_off}\n")
    );
    assert_eq!(files(spool), vec![REJECTED_FILE.to_string()]);
}

#[tokio::test]
async fn a_file_of_bad_lines_only_needs_no_database() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), "garbage\n");
    let mut s = shipper(spool);
    s.store_mut().fail = true;
    s.cycle().await.unwrap();
    let report = s.cycle().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert_eq!(report.rejected(), 1);
    assert_eq!(s.store().calls, 0);
    assert_eq!(files(spool), vec![REJECTED_FILE.to_string()]);
}

#[tokio::test]
async fn an_empty_active_file_is_not_renamed_and_nothing_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    std::fs::write(spool.join("edge_cdr_-2.log"), "").unwrap();
    std::fs::write(spool.join("unrelated.txt"), "x\n").unwrap();
    let mut s = shipper(spool);
    let report = s.cycle().await.unwrap();
    assert!(report.is_clean());
    assert_eq!(report.renamed, 0);
    assert!(!report.rotated);
    assert_eq!(s.rotator().rotations, 0);
    assert_eq!(
        files(spool),
        vec!["edge_cdr_-2.log".to_string(), "unrelated.txt".to_string()]
    );
}

#[tokio::test]
async fn kamailio_stopped_ships_active_and_left_over_files_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    append(&spool.join("edge_cdr_-2.log"), &record("c2"));
    append(&spool.join("edge_cdr_1.log.1000.ship"), &record("c0"));
    std::fs::write(spool.join("edge_cdr_3.log"), "").unwrap();
    let mut s = Shipper::new(
        ShipperSettings {
            kamailio_stopped: true,
            // no grace and no rotation wait when nothing writes any more
            grace: Duration::from_secs(3600),
            min_rotate_interval: Duration::from_secs(3600),
            ..settings(spool)
        },
        FakeStore::default(),
        FakeRotator {
            fail: true,
            ..FakeRotator::default()
        },
    )
    .unwrap();
    let report = s.cycle().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert!(!report.rotated);
    assert_eq!(report.renamed, 2);
    assert_eq!(report.shipped.len(), 3);
    assert_eq!(report.waiting, 0);
    // the oldest batch first
    assert_eq!(call_ids(&s)[0], "c0");
    let mut ids = call_ids(&s);
    ids.sort();
    assert_eq!(ids, vec!["c0", "c1", "c2"]);
    assert_eq!(files(spool), vec!["edge_cdr_3.log".to_string()]);
}

#[tokio::test]
async fn a_batch_left_by_an_earlier_run_waits_for_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log.1000.ship"), &record("c0"));
    let mut s = shipper(spool);
    s.rotator_mut().fail = true;
    let report = s.cycle().await.unwrap();
    assert!(report.shipped.is_empty());
    assert_eq!(report.errors.len(), 1);
    s.rotator_mut().fail = false;
    let report = s.cycle().await.unwrap();
    assert!(report.rotated);
    assert!(report.shipped.is_empty());
    let report = s.cycle().await.unwrap();
    assert_eq!(report.stored(), 1);
    assert!(files(spool).is_empty());
}

#[tokio::test]
async fn rotations_are_spaced_from_each_other_and_from_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    let mut s = Shipper::new(
        ShipperSettings {
            min_rotate_interval: Duration::from_millis(300),
            ..settings(spool)
        },
        FakeStore::default(),
        FakeRotator::default(),
    )
    .unwrap();
    // just started: the previous shipper may have rotated a moment ago
    let report = s.cycle().await.unwrap();
    assert_eq!(report.renamed, 0);
    assert_eq!(s.rotator().rotations, 0);
    assert!(spool.join("edge_cdr_1.log").exists());

    tokio::time::sleep(Duration::from_millis(350)).await;
    let report = s.cycle().await.unwrap();
    assert!(report.rotated);
    assert_eq!(s.rotator().rotations, 1);

    append(&spool.join("edge_cdr_1.log"), &record("c2"));
    let report = s.cycle().await.unwrap();
    assert_eq!(report.stored(), 1);
    assert_eq!(report.renamed, 0);
    assert_eq!(s.rotator().rotations, 1);

    tokio::time::sleep(Duration::from_millis(350)).await;
    let report = s.cycle().await.unwrap();
    assert_eq!(report.renamed, 1);
    assert_eq!(s.rotator().rotations, 2);
}

#[tokio::test]
async fn a_sealed_file_waits_out_the_grace_time() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    let mut s = Shipper::new(
        ShipperSettings {
            grace: Duration::from_millis(300),
            ..settings(spool)
        },
        FakeStore::default(),
        FakeRotator::default(),
    )
    .unwrap();
    assert!(s.cycle().await.unwrap().rotated);
    let report = s.cycle().await.unwrap();
    assert!(report.shipped.is_empty());
    assert_eq!(report.waiting, 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(s.cycle().await.unwrap().stored(), 1);
}

#[tokio::test]
async fn a_record_shipped_twice_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log.1000.ship"), &record("c1"));
    append(&spool.join("edge_cdr_1.log.2000.ship"), &record("c1"));
    let mut s = shipper(spool);
    s.cycle().await.unwrap();
    let report = s.cycle().await.unwrap();
    assert_eq!(report.shipped.len(), 2);
    assert_eq!(report.shipped[0].stored, 1);
    assert_eq!(report.shipped[1].records, 1);
    assert_eq!(report.shipped[1].stored, 0);
    assert_eq!(s.store().rows.len(), 1);
}

#[tokio::test]
async fn drain_rotates_waits_and_ships_everything_written_before() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path();
    append(&spool.join("edge_cdr_1.log"), &record("c1"));
    append(&spool.join("edge_cdr_2.log.1000.ship"), &record("c0"));
    let mut s = Shipper::new(
        ShipperSettings {
            grace: Duration::from_millis(100),
            min_rotate_interval: Duration::from_millis(100),
            ..settings(spool)
        },
        FakeStore::default(),
        FakeRotator::default(),
    )
    .unwrap();
    let report = s.drain().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.errors);
    assert!(report.rotated);
    assert_eq!(report.stored(), 2);
    assert_eq!(report.waiting, 0);
    assert!(files(spool).is_empty());
}

#[tokio::test]
async fn an_unreadable_spool_fails_the_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = shipper(&dir.path().join("missing"));
    let e = s.cycle().await.unwrap_err();
    assert!(
        e.to_string().starts_with("cannot read the spool directory"),
        "{e}"
    );
}

#[test]
fn the_edge_name_must_fit_the_table() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "a\nb"] {
        let settings = ShipperSettings::new(dir.path(), bad);
        assert!(settings.validate().is_err(), "{bad:?}");
    }
    assert!(ShipperSettings::new(dir.path(), "e".repeat(64))
        .validate()
        .is_err());
    assert!(ShipperSettings::new(dir.path(), "e".repeat(63))
        .validate()
        .is_ok());
}

#[test]
fn the_configuration_hides_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = ShipperConfig::new(
        ShipperSettings::new(dir.path(), "edge-a"),
        "postgres://sipstack:s3cret-pw@db:5432/sipstack",
    )
    .with_rpc(
        "http://127.0.0.1:5071/RPC",
        Some("t0ken-t0ken-t0ken".into()),
    );
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(!shown.contains("t0ken"), "{shown}");
    let shipper = config.shipper().unwrap();
    let shown = format!("{shipper:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(!shown.contains("t0ken"), "{shown}");
}

#[test]
fn a_running_kamailio_needs_an_rpc_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = ShipperConfig::new(ShipperSettings::new(dir.path(), "edge-a"), "host=db");
    assert!(matches!(config.shipper(), Err(ShipError::Config(_))));
    let mut config = config;
    config.settings.kamailio_stopped = true;
    assert!(config.shipper().is_ok());
}
