//! What the patch carries, read from both versions: the changed state types (with their old
//! definitions), the transfers to generate, the `#[dsu::global]`s whose type changed, and
//! the base's components (which the runtime checks before loading the patch).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use cargo_metadata::{Metadata, Package as CargoPackage};
use dsu::package::BaseComponent;
use quote::ToTokens;
use syn::Item;

use crate::cargo::{read_package, root_target};
use crate::source::{self, CrateSource, Model};
use crate::transfer;

/// A version as cargo describes it.
pub(in crate::patch) struct Crate {
    pub(in crate::patch) meta: Metadata,
    pub(in crate::patch) pkg: CargoPackage,
    pub(in crate::patch) dir: PathBuf,
    pub(in crate::patch) root: PathBuf,
    /// The root target's name when it is a binary.
    pub(in crate::patch) bin: Option<String>,
}

pub(in crate::patch) fn load_crate(path: &Path) -> Result<Crate> {
    let (meta, pkg) = read_package(path)?;
    let target = root_target(&pkg)?;
    let dir = pkg
        .manifest_path
        .parent()
        .map(|p| p.as_std_path().to_path_buf())
        .ok_or_else(|| anyhow!("bad manifest path"))?;
    let root = target.src_path.as_std_path().to_path_buf();
    let bin = target.is_bin().then(|| target.name.clone());
    Ok(Crate {
        meta,
        pkg,
        dir,
        root,
        bin,
    })
}

/// A `#[dsu::global]` whose type changed.
pub(in crate::patch) struct RetypedGlobal {
    pub(in crate::patch) module: Vec<String>,
    pub(in crate::patch) name: String,
    /// The new type's name (a changed state type of `module`).
    pub(in crate::patch) ty: String,
    pub(in crate::patch) old_hash: u64,
    pub(in crate::patch) new_hash: u64,
}

/// One changed state type.
pub(in crate::patch) struct ChangedState {
    pub(in crate::patch) module: Vec<String>,
    pub(in crate::patch) name: String,
    pub(in crate::patch) old: Item,
    pub(in crate::patch) new: Item,
}

/// What the patch carries (owned, so NEW's trees can be edited afterwards).
pub(in crate::patch) struct Plan {
    pub(in crate::patch) changed: Vec<ChangedState>,
    /// Keys of the state types whose transfer is generated.
    pub(in crate::patch) transfers_needed: Vec<String>,
    pub(in crate::patch) base: Vec<BaseComponent>,
    /// The base's `use` items, per module (the `old` modules need them).
    pub(in crate::patch) old_uses: HashMap<Vec<String>, Vec<syn::ItemUse>>,
    pub(in crate::patch) retyped_globals: Vec<RetypedGlobal>,
}

/// Reads the plan from both versions' sources.
pub(in crate::patch) fn plan(src_old: &CrateSource, src_new: &CrateSource) -> Result<Plan> {
    let m_old = Model::of(src_old);
    let m_new = Model::of(src_new);
    let def_changed: HashSet<String> = m_new
        .states
        .iter()
        .filter(|(key, n)| {
            m_old.states.get(*key).is_some_and(|o| {
                dsu_syntax::canonical(&o.item.to_token_stream())
                    != dsu_syntax::canonical(&n.item.to_token_stream())
            })
        })
        .map(|(_, n)| n.name.clone())
        .collect();
    let all: Vec<(String, Vec<syn::Type>)> = m_new
        .states
        .values()
        .map(|n| (n.name.clone(), transfer::field_types(n.item)))
        .collect();
    let to_transfer = transfer::changed_closure(def_changed, &all);
    let mut changed = Vec::new();
    for (key, n) in &m_new.states {
        if let Some(o) = m_old.states.get(key) {
            if to_transfer.contains(&n.name) {
                changed.push(ChangedState {
                    module: n.module.clone(),
                    name: n.name.clone(),
                    old: o.item.clone(),
                    new: n.item.clone(),
                });
            }
        }
    }
    changed.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
    let changed_keys: HashSet<String> = changed
        .iter()
        .map(|c| source::key(&c.module, &c.name))
        .collect();
    let transfers_needed: Vec<String> = m_new
        .components
        .keys()
        .filter(|k| changed_keys.contains(*k) && !m_new.transfers.contains_key(*k))
        .cloned()
        .collect();
    let mut base: Vec<BaseComponent> = m_old
        .components
        .iter()
        .map(|(key, c)| BaseComponent {
            id: c.id(key),
            code: m_old.component_code(key).expect("listed"),
        })
        .collect();
    base.sort_by(|a, b| a.id.cmp(&b.id));
    let old_uses: HashMap<Vec<String>, Vec<syn::ItemUse>> = m_old.uses.clone();
    // Globals whose type changed: the type must be a changed state type of the same module.
    let globals_of = |src: &CrateSource| -> HashMap<String, (Vec<String>, String, syn::Type)> {
        src.items()
            .into_iter()
            .filter_map(|(module, _, item)| match item {
                Item::Static(st) if source::has_attr(&st.attrs, "global") => Some((
                    source::key(&module, &st.ident.to_string()),
                    (module, st.ident.to_string(), (*st.ty).clone()),
                )),
                _ => None,
            })
            .collect()
    };
    let (g_old, g_new) = (globals_of(src_old), globals_of(src_new));
    let mut retyped_globals = Vec::new();
    for (key, (module, name, nty)) in &g_new {
        let Some((_, _, oty)) = g_old.get(key) else {
            continue;
        };
        let names: HashSet<String> = changed.iter().map(|c| c.name.clone()).collect();
        let same_tokens = dsu_syntax::canonical(&oty.to_token_stream())
            == dsu_syntax::canonical(&nty.to_token_stream());
        if same_tokens && !transfer::holds_any(nty, &names) {
            continue;
        }
        let ty_name = match nty {
            syn::Type::Path(p) if p.path.segments.len() == 1 => p.path.segments[0].ident.to_string(),
            _ => bail!("global `{key}` changed type to `{}`; only a `#[dsu::state]` type named plainly can be transferred", nty.to_token_stream()),
        };
        if !changed
            .iter()
            .any(|c| c.name == ty_name && &c.module == module)
        {
            bail!("global `{key}` changed type, but `{ty_name}` is not a changed `#[dsu::state]` of the same module");
        }
        retyped_globals.push(RetypedGlobal {
            module: module.clone(),
            name: name.clone(),
            ty: ty_name,
            old_hash: dsu_syntax::token_hash(&oty.to_token_stream()),
            new_hash: dsu_syntax::token_hash(&nty.to_token_stream()),
        });
    }
    let mut transfers_needed = transfers_needed;
    for g in &retyped_globals {
        let key = source::key(&g.module, &g.ty);
        if !transfers_needed.contains(&key) {
            transfers_needed.push(key);
        }
    }
    Ok(Plan {
        changed,
        transfers_needed,
        base,
        old_uses,
        retyped_globals,
    })
}
