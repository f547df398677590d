//! Cargo-style output: status lines on stderr (`{:>12}` bold green), data on stdout.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

/// When to use colours (`--color`, else `CARGO_TERM_COLOR`, else auto).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

pub struct Shell {
    color: bool,
    quiet: bool,
}

impl Shell {
    pub fn new(choice: Option<ColorChoice>, quiet: bool) -> Shell {
        let choice = choice.or_else(|| match std::env::var("CARGO_TERM_COLOR").ok()?.as_str() {
            "always" => Some(ColorChoice::Always),
            "never" => Some(ColorChoice::Never),
            _ => Some(ColorChoice::Auto),
        });
        let color = match choice.unwrap_or(ColorChoice::Auto) {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stderr().is_terminal(),
        };
        Shell { color, quiet }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// `   Compiling foo` style.
    pub fn status(&self, verb: &str, msg: impl Display) {
        if self.quiet {
            return;
        }
        let v = self.paint("1;32", &format!("{verb:>12}"));
        let _ = writeln!(std::io::stderr(), "{v} {msg}");
    }

    /// Says that this run waits for another `cargo dsu` building the same pair in `dir`.
    pub fn waiting_for(&self, dir: &std::path::Path) {
        self.note(
            "Blocking",
            format!("waiting for another `cargo dsu` building {}", dir.display()),
        );
    }

    /// A status in yellow (something the user should look at, not an error).
    pub fn note(&self, verb: &str, msg: impl Display) {
        if self.quiet {
            return;
        }
        let v = self.paint("1;33", &format!("{verb:>12}"));
        let _ = writeln!(std::io::stderr(), "{v} {msg}");
    }

    pub fn warn(&self, msg: impl Display) {
        let w = self.paint("1;33", "warning");
        let _ = writeln!(std::io::stderr(), "{w}: {msg}");
    }

    pub fn error(&self, msg: impl Display) {
        let e = self.paint("1;31", "error");
        let _ = writeln!(std::io::stderr(), "{e}: {msg}");
    }

    /// Data: stdout.
    pub fn out(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(text.as_bytes());
        if !text.ends_with('\n') {
            let _ = o.write_all(b"\n");
        }
        let _ = o.flush();
    }
}
