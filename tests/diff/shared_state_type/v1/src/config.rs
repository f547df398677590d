//! Settings that the `Logger` and `Mailer` components both keep in their state.

/// A state type that is not itself a component.
#[dsu::state]
#[derive(Default)]
pub struct Config {
    pub verbose: bool,
}
