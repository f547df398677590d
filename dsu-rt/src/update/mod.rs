//! The in-place engine, one file per stage of an update.
pub(crate) mod load;
