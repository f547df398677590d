//! The in-place engine, one file per stage of an update, in the order they run: `verify` (the
//! signature), `validate` (toolchain, program, base), `load` (the library, at a path of its
//! own), `plan` (what changes, checked against the running state; `poison` refuses to carry a poisoned state on unless asked), `wait` (the policy),
//! `prepare` (prepare to die, until every affected component is ready), `transfer` (new states
//! from the old), `swap` (new tables installed), `check` (`migrate`, then `health_check`; `staging` holds
//! the files `migrate` writes), and `commit` (or roll back), then `convert` (the background pass over lazy maps). `record` is what the history keeps of each update; `fault` injects failures for tests.
pub(crate) mod check;
pub(crate) mod commit;
pub(crate) mod convert;
pub(crate) mod facts;
pub(crate) mod fault;
pub(crate) mod load;
pub(crate) mod plan;
pub(crate) mod poison;
pub(crate) mod prepare;
pub(crate) mod record;
pub(crate) mod staging;
pub(crate) mod swap;
pub(crate) mod transfer;
pub(crate) mod validate;
pub(crate) mod verify;
pub(crate) mod wait;
