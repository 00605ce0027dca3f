//! The binary: parse the command line, set up logging, run the command, map the result to
//! an exit code (0 all good, 1 some certificate or hook failed, 2 config or usage error).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use certkeeper::cli::{Cli, Command, LogFormat};
use certkeeper::config::{Config, DEFAULT_CONFIG_PATH};
use certkeeper::renew::{self, RenewOptions, RunError};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(&cli);
    certkeeper::install_crypto_provider();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("certkeeper: error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("CERTKEEPER_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,certkeeper={level}")));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("CERTKEEPER_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let cfg = Config::from_file(path).map_err(|errs| {
        for e in &errs.0 {
            eprintln!("certkeeper: config error: {e}");
        }
        ExitCode::from(EXIT_USAGE)
    })?;
    let unsafe_paths = certkeeper::config::strict_mode_violations(&cfg, path);
    if !unsafe_paths.is_empty() {
        for e in &unsafe_paths {
            eprintln!("certkeeper: config error: {e}");
        }
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config_path(&cli);
    match cli.command {
        Command::Check => {
            let cfg = match Config::from_file(&path) {
                Ok(c) => c,
                Err(errs) => {
                    for e in &errs.0 {
                        println!("{e}");
                    }
                    println!("{} problem(s) found", errs.0.len());
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            let mut problems = cfg.check_paths();
            problems.extend(certkeeper::config::strict_mode_violations(&cfg, &path));
            for c in &cfg.certs {
                if let Err(e) = certkeeper::owner::check(&cfg.state_dir, c) {
                    let key = match &e {
                        certkeeper::owner::OwnerError::OwnedByOther { key, .. } => *key,
                        _ => "cert_path",
                    };
                    let loc = c.loc(key);
                    problems.push(certkeeper::config::ConfigError {
                        file: cfg.path.clone(),
                        line: loc.line,
                        column: loc.column,
                        key: format!("cert[{}].{key}", c.name),
                        message: e.to_string(),
                    });
                }
            }
            for p in &problems {
                println!("{p}");
            }
            // Warnings, not errors: `renew` repairs these through the store.
            for c in &cfg.certs {
                for w in certkeeper::inventory::mode_warnings(&c.files(), c.key_mode) {
                    println!("warning: certificate {}: {w} (renew repairs it)", c.name);
                }
            }
            if problems.is_empty() {
                println!(
                    "{}: OK ({} certificate(s), CA {})",
                    path.display(),
                    cfg.certs.len(),
                    cfg.acme.directory
                );
                Ok(ExitCode::SUCCESS)
            } else {
                println!("{} problem(s) found", problems.len());
                Ok(ExitCode::from(EXIT_USAGE))
            }
        }
        Command::Status { json } => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rows = renew::status(&cfg, time::OffsetDateTime::now_utc());
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", renew::status_table(&rows));
                for r in &rows {
                    for w in &r.warnings {
                        println!("warning: {}: {w}", r.name);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(certkeeper::daemon::run(
                path,
                cfg,
                certkeeper::daemon::shutdown_signal(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Renew {
            force,
            dry_run,
            metrics_file,
            names,
        } => {
            let cfg = match load(&path) {
                Ok(c) => Arc::new(c),
                Err(code) => return Ok(code),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let opts = RenewOptions {
                force,
                dry_run,
                names,
            };
            let result = rt.block_on(renew::renew(cfg.clone(), opts));
            if let Some(mf) = &metrics_file
                && !dry_run
            {
                let rows = renew::status(&cfg, time::OffsetDateTime::now_utc());
                if let Err(e) = certkeeper::metrics::write_textfile(mf, &rows) {
                    eprintln!(
                        "certkeeper: cannot write metrics file {}: {e}",
                        mf.display()
                    );
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
            }
            match result {
                Ok(outcomes) => {
                    let failed: Vec<_> = outcomes.iter().filter(|o| !o.ok).collect();
                    if failed.is_empty() {
                        Ok(ExitCode::SUCCESS)
                    } else {
                        for o in &failed {
                            eprintln!("certkeeper: {}: {}", o.name, o.summary);
                        }
                        Ok(ExitCode::from(EXIT_FAILED))
                    }
                }
                Err(RunError::Usage(m)) => {
                    eprintln!("certkeeper: {m}");
                    Ok(ExitCode::from(EXIT_USAGE))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
