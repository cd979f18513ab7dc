use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = portcullis::cli::Cli::parse();
    portcullis::telemetry::init_logging(cli.log_format);
    portcullis::cli::runtime()?.block_on(portcullis::cli::run(cli))
}
