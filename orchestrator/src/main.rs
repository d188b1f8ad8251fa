//! The `netreset` command: the daemon and its CLI (`orchestrator::cli`).

fn main() -> std::process::ExitCode {
    orchestrator::cli::main()
}
