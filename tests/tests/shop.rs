//! End-to-end (issue 14, items 6 and 7): examples/shop, an axum service whose state lives in
//! components, goes through all five updates (a handler fix, a state layout change, a new
//! route, a changed protocol between two components, all in place; then a change to `main` by
//! hand-off) while wrk drives it with 64 keep-alive connections. wrk sees no socket error and
//! no error status, and every item created before the first update reads back after the last,
//! from the new process. A background task (the sweeper) runs through every update and its
//! next run after each is the new version's code. The same run as `cargo run -p dsu-tests --bin shop-demo`, shorter.

use std::time::Duration;

use anyhow::Result;

#[test]
fn the_shop_is_updated_five_times_under_wrk_with_no_error_and_no_item_lost() -> Result<()> {
    let run = dsu_tests::shop::run(200, Duration::from_millis(700), &mut |l| eprintln!("{l}"))?;
    assert_eq!(run.steps.len(), 5);
    let engines: Vec<bool> = run
        .steps
        .iter()
        .map(|s| s.record.new_pid.is_some())
        .collect();
    assert_eq!(
        engines,
        [false, false, false, false, true],
        "the last is a hand-off"
    );
    let categories: Vec<u8> = run.steps.iter().map(|s| s.category).collect();
    assert_eq!(categories, [1, 2, 1, 2, 7]);
    assert!(run.requests > 1000, "wrk ran: {}", run.wrk);
    assert_eq!(run.socket_errors, 0, "{}", run.wrk);
    assert_eq!(run.non_2xx_3xx, 0, "{}", run.wrk);
    assert_eq!(run.items_checked, 200);
    assert_eq!(run.version, "v6");
    // The background task ran on through every update, the hand-off included, and ran each new
    // version's sweep: v4 changed what it reports.
    let sweeps: Vec<u64> = run.steps.iter().map(|s| s.sweeps).collect();
    assert!(sweeps.windows(2).all(|w| w[0] < w[1]), "{sweeps:?}");
    let counts_carts: Vec<bool> = run
        .steps
        .iter()
        .map(|s| s.report.contains("open carts"))
        .collect();
    assert_eq!(counts_carts, [false, false, true, true, true]);
    Ok(())
}
