//! The `dynamo` binary: see `dynamo --help`.

use clap::Parser;

// glibc's malloc took about 12 % of a member's CPU under load (many small, short-lived
// buffers per request, freed on other threads); see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = dynamo::cli::Cli::parse();
    let runtime = match cli.runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(dynamo::cli::EXIT_ERROR);
        }
    };
    let code = runtime.block_on(dynamo::cli::run(cli)).unwrap_or_else(|e| {
        if dynamo::cli::is_broken_pipe(&e) {
            return 0;
        }
        eprintln!("error: {e:#}");
        dynamo::cli::exit_code_for_error(&e)
    });
    std::process::exit(code);
}
