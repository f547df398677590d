//! What an artifact (the host binary or a patch) declares: the distributed slices every
//! `#[dsu::component]`, `#[dsu::state]`, `#[dsu::global]` and transfer adds its descriptor to.
//! Each copy of this crate has its own slices, so a patch's list only what the patch carries.

use linkme::distributed_slice;

use super::desc::{ComponentDesc, GlobalDesc, GlobalTransferDesc, StateLayout, TransferDesc};

/// Every component of this artifact (host binary or patch).
#[distributed_slice]
pub static COMPONENTS: [&'static ComponentDesc];
/// Every state type of this artifact, including a patch's `old` copies.
#[distributed_slice]
pub static STATES: [&'static StateLayout];
/// Every `#[dsu::global]` of this artifact.
#[distributed_slice]
pub static GLOBALS: [&'static GlobalDesc];
/// Every state transfer of this artifact (only patches have any).
#[distributed_slice]
pub static TRANSFERS: [&'static TransferDesc];
/// Every global transfer of this artifact (only patches have any).
#[distributed_slice]
pub static GLOBAL_TRANSFERS: [&'static GlobalTransferDesc];
