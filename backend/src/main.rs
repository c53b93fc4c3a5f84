use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let cli = pageless::cli::Cli::parse();
    if let Err(e) = pageless::cli::run(cli) {
        // Once, on stderr (the log goes there too: no second copy through it).
        log::debug!("fatal: {e:?}");
        eprintln!("pageless: error: {e}");
        std::process::exit(1);
    }
}
