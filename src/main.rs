use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = portcullis::cli::Cli::parse();
    portcullis::telemetry::init_logging(cli.log_format);
    portcullis::cli::run(cli).await
}
