//! Exit codes of `cargo dsu` (a contract for scripts and rollout controllers).

/// Success: the package was written (`diff`), the update can be applied (`check`), the update
/// committed (`apply`), the status was read (`status`).
pub const SUCCESS: i32 = 0;
/// An error: bad input, a build failure, an unreachable process.
pub const ERROR: i32 = 1;
/// `diff`/`check`: the update cannot be applied: in place nor by hand-off, or not by the engine
/// forced with `--engine` (the report says why).
/// `apply`: the process did not commit the update (refused, aborted, rolled back, given up).
pub const REFUSED: i32 = 2;
/// `apply`: the process staged the update; it applies when an operator commits it.
pub const STAGED: i32 = 3;
