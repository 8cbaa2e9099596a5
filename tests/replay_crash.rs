//! Crash safety of file replay: SIGKILL at random moments, restart, and the final state equals
//! an uninterrupted replay exactly, with no dead letter lost or doubled.

mod common;

use std::time::Duration;

use common::*;

fn all_rows(store: &std::path::Path) -> String {
    run_ok(&[
        "query",
        "--store",
        path_str(store),
        "--format",
        "csv",
        "SELECT * FROM customers ORDER BY customer_id",
    ])
}

/// SIGKILLs that must land while replay runs (DESIGN.md, Targets: crash safety).
const KILLS: usize = 20;

#[test]
fn killed_replays_resume_to_the_exact_state() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    run_ok(&[
        "generate",
        "--customers",
        "4000",
        "--days",
        "400",
        "--seed",
        "11",
        "--bad-rate",
        "0.01",
        "--duplicate-rate",
        "0.01",
        "--segment-spec-rate",
        "0.2",
        "--out",
        path_str(&events),
    ]);

    // The oracle: one uninterrupted replay.
    let clean = dir.path().join("clean.redb");
    let clean_dead = dir.path().join("clean-dead.jsonl");
    run_ok(&[
        "replay",
        "--input",
        path_str(&events),
        "--store",
        path_str(&clean),
        "--dead-letter",
        path_str(&clean_dead),
    ]);
    let expected = all_rows(&clean);
    let expected_dead = std::fs::read_to_string(&clean_dead).unwrap();
    assert!(
        expected.lines().count() > 4000,
        "the data set has customers"
    );

    let store = dir.path().join("crashy.redb");
    let dead = dir.path().join("crashy-dead.jsonl");
    let mut kills_mid_run = 0;
    let mut delay_ms = 40u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..80 {
        if kills_mid_run >= KILLS {
            break;
        }
        let mut child = patron()
            .env("PATRON__CHECKPOINT__MAX_EVENTS", "700")
            .args([
                "replay",
                "--input",
                path_str(&events),
                "--store",
                path_str(&store),
                "--dead-letter",
                path_str(&dead),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(delay_ms + rng % (delay_ms + 1)));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills_mid_run += 1;
        } else {
            // It finished before the kill: the remaining work is small, so strike sooner.
            delay_ms = (delay_ms / 2).max(5);
            if child.wait().unwrap().success() && delay_ms == 5 {
                break;
            }
        }
    }
    assert!(
        kills_mid_run >= KILLS,
        "only {kills_mid_run} kills landed while replay was running"
    );
    run_ok(&[
        "replay",
        "--input",
        path_str(&events),
        "--store",
        path_str(&store),
        "--dead-letter",
        path_str(&dead),
    ]);
    let actual = all_rows(&store);
    assert!(
        actual == expected,
        "state after {kills_mid_run} kills differs from the uninterrupted replay"
    );
    assert_eq!(
        std::fs::read_to_string(&dead).unwrap(),
        expected_dead,
        "dead letters exactly once"
    );
}

#[test]
fn a_file_split_in_two_replays_to_the_same_state_as_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    run_ok(&[
        "generate",
        "--customers",
        "500",
        "--days",
        "200",
        "--seed",
        "3",
        "--out",
        path_str(&events),
    ]);
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = lines.split_at(lines.len() / 2);
    let (pa, pb) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&pa, a.join("\n") + "\n").unwrap();
    std::fs::write(&pb, b.join("\n") + "\n").unwrap();
    let whole = dir.path().join("whole.redb");
    let parts = dir.path().join("parts.redb");
    run_ok(&[
        "replay",
        "--input",
        path_str(&events),
        "--store",
        path_str(&whole),
    ]);
    // Second half first: arrival order must not matter.
    run_ok(&[
        "replay",
        "--input",
        path_str(&pb),
        "--store",
        path_str(&parts),
    ]);
    run_ok(&[
        "replay",
        "--input",
        path_str(&pa),
        "--store",
        path_str(&parts),
    ]);
    assert_eq!(all_rows(&parts), all_rows(&whole));
}
