//! A crate's sources: every module file, parsed with syn, following `mod` declarations,
//! `#[path]` and inline modules, and the dsu items found in them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dsu_syntax::is_dsu_attr;
use quote::ToTokens;
use syn::{Item, ItemImpl};

/// One parsed source file of the crate.
pub struct SourceFile {
    /// Path relative to the package directory.
    pub rel: PathBuf,
    pub ast: syn::File,
    /// Module path of the file's top level (empty for the crate root).
    pub module: Vec<String>,
}

/// All module files of a crate, crate root first.
pub struct CrateSource {
    pub package_dir: PathBuf,
    pub files: Vec<SourceFile>,
}

impl CrateSource {
    /// Parses the crate whose root file is `root` (inside `package_dir`).
    pub fn load(package_dir: &Path, root: &Path) -> Result<CrateSource> {
        let mut files = Vec::new();
        let root_rel = root
            .strip_prefix(package_dir)
            .with_context(|| format!("{} is not inside {}", root.display(), package_dir.display()))?
            .to_path_buf();
        load_file(package_dir, &root_rel, Vec::new(), true, &mut files)?;
        Ok(CrateSource {
            package_dir: package_dir.to_path_buf(),
            files,
        })
    }

    /// Every item of the crate with its module path, inline modules included.
    pub fn items(&self) -> Vec<(Vec<String>, &SourceFile, &Item)> {
        let mut out = Vec::new();
        for f in &self.files {
            collect(&f.ast.items, &f.module, f, &mut out);
        }
        out
    }
}

fn collect<'a>(
    items: &'a [Item],
    module: &[String],
    file: &'a SourceFile,
    out: &mut Vec<(Vec<String>, &'a SourceFile, &'a Item)>,
) {
    for item in items {
        out.push((module.to_vec(), file, item));
        if let Item::Mod(m) = item {
            if let Some((_, inner)) = &m.content {
                let mut sub = module.to_vec();
                sub.push(m.ident.to_string());
                collect(inner, &sub, file, out);
            }
        }
    }
}

fn load_file(
    package_dir: &Path,
    rel: &Path,
    module: Vec<String>,
    owns_dir: bool,
    out: &mut Vec<SourceFile>,
) -> Result<()> {
    let full = package_dir.join(rel);
    let text = std::fs::read_to_string(&full)
        .with_context(|| format!("cannot read {}", full.display()))?;
    let ast = syn::parse_file(&text)
        .map_err(|e| anyhow::anyhow!("{}:{}: {e}", rel.display(), e.span().start().line))?;
    // The directory that `mod x;` in this file resolves against.
    let dir = if owns_dir {
        rel.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        rel.with_extension("")
    };
    let mut children = Vec::new();
    find_mods(
        package_dir,
        &ast.items,
        &dir,
        &rel.parent().map(Path::to_path_buf).unwrap_or_default(),
        &module,
        &mut children,
    );
    out.push(SourceFile {
        rel: rel.to_path_buf(),
        ast,
        module,
    });
    for (child_rel, child_module, child_owns) in children {
        if !package_dir.join(&child_rel).exists() {
            bail!(
                "module `{}` declared in {} has no file at {}",
                child_module.join("::"),
                rel.display(),
                child_rel.display()
            );
        }
        load_file(package_dir, &child_rel, child_module, child_owns, out)?;
    }
    Ok(())
}

/// Finds `mod x;` declarations (also inside inline modules) and where their files are.
fn find_mods(
    package_dir: &Path,
    items: &[Item],
    dir: &Path,
    file_dir: &Path,
    module: &[String],
    out: &mut Vec<(PathBuf, Vec<String>, bool)>,
) {
    for item in items {
        let Item::Mod(m) = item else { continue };
        let mut sub = module.to_vec();
        sub.push(m.ident.to_string());
        let path_attr = m.attrs.iter().find_map(|a| {
            if !a.path().is_ident("path") {
                return None;
            }
            match &a.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            }
        });
        match &m.content {
            Some((_, inner)) => {
                let inner_dir = match &path_attr {
                    Some(p) => dir.join(p),
                    None => dir.join(m.ident.to_string()),
                };
                find_mods(package_dir, inner, &inner_dir, file_dir, &sub, out);
            }
            None => {
                if let Some(p) = path_attr {
                    // `#[path]` is relative to the directory of the declaring file.
                    out.push((file_dir.join(p), sub, true));
                    continue;
                }
                let name = m.ident.to_string();
                let flat = dir.join(format!("{name}.rs"));
                let nested = dir.join(&name).join("mod.rs");
                if package_dir.join(&nested).exists() && !package_dir.join(&flat).exists() {
                    out.push((nested, sub, true));
                } else {
                    out.push((flat, sub, false));
                }
            }
        }
    }
}

/// Parses the crate at `package_dir` with root file `root`.
pub fn load_crate(package_dir: &Path, root: &Path) -> Result<CrateSource> {
    CrateSource::load(package_dir, root)
}

/// A `#[dsu::state]` type.
pub struct StateItem<'a> {
    pub module: Vec<String>,
    pub name: String,
    pub item: &'a Item,
    pub file: &'a SourceFile,
}

impl StateItem<'_> {
    pub fn key(&self) -> String {
        key(&self.module, &self.name)
    }
}

/// `a::b::Name`, or `Name` at the root.
pub fn key(module: &[String], name: &str) -> String {
    if module.is_empty() {
        name.to_string()
    } else {
        format!("{}::{name}", module.join("::"))
    }
}

/// A `#[dsu::component]` impl.
pub struct Component {
    pub module: Vec<String>,
    /// The impl as the macro sees it: without its `#[dsu::component]` attribute.
    pub item: ItemImpl,
    /// `#[dsu::component(id = "...")]`.
    pub explicit_id: Option<String>,
}

impl Component {
    /// The identity the runtime gives the component (see `ComponentDesc::id`).
    pub fn id(&self, key: &str) -> String {
        self.explicit_id.clone().unwrap_or_else(|| key.to_string())
    }
}

/// The dsu items of a crate.
pub struct Model<'a> {
    pub states: HashMap<String, StateItem<'a>>,
    /// Components: key of the self type -> the impl (without its `#[dsu::component]`).
    pub components: HashMap<String, Component>,
    /// `#[dsu::transfer]` functions: key of the type they produce.
    pub transfers: HashMap<String, String>,
    /// `use` items by module.
    pub uses: HashMap<Vec<String>, Vec<syn::ItemUse>>,
}

impl<'a> Model<'a> {
    pub fn of(src: &'a CrateSource) -> Model<'a> {
        let mut m = Model {
            states: HashMap::new(),
            components: HashMap::new(),
            transfers: HashMap::new(),
            uses: HashMap::new(),
        };
        for (module, file, item) in src.items() {
            let state = match item {
                Item::Struct(s) if has_attr(&s.attrs, "state") => Some(&s.ident),
                Item::Enum(e) if has_attr(&e.attrs, "state") => Some(&e.ident),
                _ => None,
            };
            if let Some(ident) = state {
                let name = ident.to_string();
                m.states.insert(
                    key(&module, &name),
                    StateItem {
                        module,
                        name,
                        item,
                        file,
                    },
                );
                continue;
            }
            match item {
                Item::Impl(i) if has_attr(&i.attrs, "component") => {
                    if let syn::Type::Path(p) = &*i.self_ty {
                        if let Some(seg) = p.path.segments.last() {
                            let explicit_id = i
                                .attrs
                                .iter()
                                .find(|a| is_dsu_attr(a.path(), "component"))
                                .and_then(component_id);
                            let mut item = i.clone();
                            item.attrs.retain(|a| !is_dsu_attr(a.path(), "component"));
                            m.components.insert(
                                key(&module, &seg.ident.to_string()),
                                Component {
                                    module: module.clone(),
                                    item,
                                    explicit_id,
                                },
                            );
                        }
                    }
                }
                Item::Fn(f) if has_attr(&f.attrs, "transfer") => {
                    if let syn::ReturnType::Type(_, t) = &f.sig.output {
                        if let Some(target) = produced_type(t) {
                            m.transfers
                                .insert(key(&module, &target), f.sig.ident.to_string());
                        }
                    }
                }
                Item::Use(u) => m.uses.entry(module).or_default().push(u.clone()),
                _ => {}
            }
        }
        m
    }

    /// The code fingerprint the component macro computes for the component `key`.
    pub fn component_code(&self, key: &str) -> Option<u64> {
        self.components
            .get(key)
            .map(|c| dsu_syntax::token_hash(&c.item.to_token_stream()))
    }
}

/// The `id = "..."` of a `#[dsu::component(...)]` attribute, read as the macro reads it.
fn component_id(attr: &syn::Attribute) -> Option<String> {
    let syn::Meta::List(list) = &attr.meta else {
        return None;
    };
    let args = dsu_syntax::Args::parse(
        list.tokens.clone(),
        "component",
        dsu_syntax::keys::COMPONENT,
    )
    .ok()?;
    args.value(dsu_syntax::keys::COMPONENT_ID)
        .map(|l| l.value())
}

pub fn has_attr(attrs: &[syn::Attribute], name: &str) -> bool {
    attrs.iter().any(|a| is_dsu_attr(a.path(), name))
}

/// `Store` for `Store`, `Result<Store, E>`, `crate::a::Store`.
fn produced_type(t: &syn::Type) -> Option<String> {
    let syn::Type::Path(p) = t else { return None };
    let last = p.path.segments.last()?;
    if last.ident == "Result" {
        if let syn::PathArguments::AngleBracketed(a) = &last.arguments {
            if let Some(syn::GenericArgument::Type(inner)) = a.args.first() {
                return produced_type(inner);
            }
        }
        return None;
    }
    Some(last.ident.to_string())
}
