use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = backend::cli::Cli::parse();
    if let Err(e) = backend::cli::run(cli) {
        log::error!("{e}");
        eprintln!("pageless: error: {e}");
        std::process::exit(1);
    }
}
