//! Splicing edits into source text: the patch's sources are NEW's text with a few edits
//! spliced in, never reprinted (the component macros fingerprint the tokens of their impls,
//! and those must be the tokens the analysis saw).

use std::collections::HashMap;

use syn::Item;

use crate::source::CrateSource;

/// A text edit: replace `start..end` (byte offsets; `usize::MAX` is the end of the file).
pub(in crate::patch) struct Edit {
    pub(in crate::patch) start: usize,
    pub(in crate::patch) end: usize,
    pub(in crate::patch) text: String,
}

/// Applies edits to a file's text.
pub(in crate::patch) fn splice(original: &str, mut edits: Vec<Edit>) -> String {
    let len = original.len();
    for e in &mut edits {
        e.start = e.start.min(len);
        e.end = e.end.min(len);
    }
    // From the end, so earlier offsets stay valid; insertions at one point keep their order.
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut out = original.to_string();
    let mut i = 0;
    while i < edits.len() {
        let mut j = i;
        while j + 1 < edits.len()
            && edits[j + 1].start == edits[i].start
            && edits[j + 1].end == edits[i].end
            && edits[i].start == edits[i].end
        {
            j += 1;
        }
        // Insertions at the same point, in the order they were made.
        let text: String = edits[i..=j].iter().map(|e| e.text.as_str()).collect();
        out.replace_range(edits[i].start..edits[i].end, &text);
        i = j + 1;
    }
    out
}

/// A span's position as a byte offset into the text it was parsed from.
fn offset(text: &str, at: proc_macro2::LineColumn) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(at.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line = &text[line_start..];
    line_start
        + line
            .char_indices()
            .nth(at.column)
            .map(|(i, _)| i)
            .unwrap_or(line.len())
}

/// Edits that apply everywhere: with `demote_allocator` (a patch), a user `#[global_allocator]`
/// is left out (the patch root declares the forwarding allocator; the static stays, unused),
/// and every module becomes `pub(crate)` so generated code can name items anywhere.
fn crate_wide_edits(items: &[Item], edits: &mut Vec<Edit>, demote_allocator: bool) {
    use syn::spanned::Spanned;
    for item in items {
        match item {
            Item::Static(s) if demote_allocator => {
                for a in s
                    .attrs
                    .iter()
                    .filter(|a| a.path().is_ident("global_allocator"))
                {
                    edits.push(Edit::span(
                        a.span(),
                        "/* #[global_allocator]: the host's */",
                    ));
                }
            }
            Item::Mod(m) => {
                if matches!(m.vis, syn::Visibility::Inherited) {
                    let at = m.mod_token.span;
                    edits.push(Edit::at(at.start(), "pub(crate) "));
                }
                if let Some((_, inner)) = &m.content {
                    crate_wide_edits(inner, edits, demote_allocator);
                }
            }
            _ => {}
        }
    }
}

impl Edit {
    /// Replace a span's text (resolved to offsets in `resolve`).
    fn span(span: proc_macro2::Span, text: &str) -> Edit {
        Edit {
            start: pack(span.start()),
            end: pack(span.end()),
            text: text.to_string(),
        }
    }

    fn at(at: proc_macro2::LineColumn, text: &str) -> Edit {
        Edit {
            start: pack(at),
            end: pack(at),
            text: text.to_string(),
        }
    }
}

/// Positions are recorded as line/column (packed) and turned into byte offsets per file.
fn pack(lc: proc_macro2::LineColumn) -> usize {
    PACKED | (lc.line << 24) | lc.column
}

const PACKED: usize = 1 << 62;

/// Turns packed line/column positions into byte offsets of `text`.
pub(in crate::patch) fn resolve(text: &str, edits: &mut [Edit]) {
    for e in edits {
        for p in [&mut e.start, &mut e.end] {
            if *p != usize::MAX && *p & PACKED != 0 {
                let v = *p & !PACKED;
                *p = offset(
                    text,
                    proc_macro2::LineColumn {
                        line: v >> 24,
                        column: v & 0xff_ffff,
                    },
                );
            }
        }
    }
}

/// The file and the position (packed) where items are appended to `module`: the end of the
/// file for a file's own module, before the closing brace for an inline module.
pub(in crate::patch) fn module_end(src: &CrateSource, module: &[String]) -> Option<(usize, usize)> {
    let (i, file) = src
        .files
        .iter()
        .enumerate()
        .filter(|(_, f)| module.starts_with(&f.module))
        .max_by_key(|(_, f)| f.module.len())?;
    let depth = file.module.len();
    if depth == module.len() {
        return Some((i, usize::MAX));
    }
    let mut items = &file.ast.items;
    let mut close = None;
    for seg in &module[depth..] {
        let m = items.iter().find_map(|it| match it {
            Item::Mod(m) if m.ident == seg.as_str() && m.content.is_some() => Some(m),
            _ => None,
        })?;
        let (brace, inner) = m.content.as_ref().expect("inline");
        close = Some(brace.span.close().start());
        items = inner;
    }
    close.map(|c| (i, pack(c)))
}

/// The edits every generated crate gets: the crate-wide ones of every file (see
/// `crate_wide_edits`), the lint allowances at the root, and for a patch (`in_place`) the
/// patch's loader-facing root. A hand-off is a whole program: it keeps its own allocator.
pub(in crate::patch) fn whole_crate_edits(
    src_new: &CrateSource,
    edits: &mut HashMap<usize, Vec<Edit>>,
    in_place: bool,
) {
    for (i, f) in src_new.files.iter().enumerate() {
        let e = edits.entry(i).or_default();
        crate_wide_edits(&f.ast.items, e, in_place);
    }
    let root_edits = edits.entry(0).or_default();
    root_edits.push(Edit {
        start: 0,
        end: 0,
        text: "#![allow(dead_code, unused_imports, unused_variables, unused_mut, unused_unsafe, clippy::all)]\n".into(),
    });
    if in_place {
        root_edits.push(Edit {
            start: usize::MAX,
            end: usize::MAX,
            text: "\n// Generated by cargo dsu: the patch's loader-facing root.\n::dsu::__private::patch_root! {}\n".into(),
        });
    }
}
