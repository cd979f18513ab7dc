use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = portcullis::cli::Cli::parse();
    let done = portcullis::cli::runtime()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(portcullis::cli::run(cli)));
    done.unwrap_or_else(|e| {
        eprintln!("error: {}", portcullis::cli::report(&e));
        std::process::ExitCode::FAILURE
    })
}
