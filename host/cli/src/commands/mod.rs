//! One module per subcommand of `infergate`.

pub mod bootstrap;
pub mod component;
pub mod rbac;
pub mod run;
pub mod standalone;
pub mod translate;
