//! The `infergate` binary: everything is in the library (`infergate_cli`).

fn main() -> anyhow::Result<()> {
    infergate_cli::main()
}
