//! The binary: parse the command line, set up logging, run the command, map the result to
//! an exit code (0 all good, 1 some certificate or hook failed, 2 config or usage error).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use certkeeper::cli::{Cli, Command, LogFormat};
use certkeeper::clock::{self, SharedClock};
use certkeeper::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
use certkeeper::pass::{self, RenewOptions, RunError};
use certkeeper::report;

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
    let unsafe_paths = certkeeper::check::strict_mode_violations(&cfg, path);
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
    let clock = clock::system();
    match cli.command {
        Command::Check => Ok(check(&path)),
        Command::Status { json } => status(&path, json, &clock),
        Command::Cluster {
            what: certkeeper::cli::ClusterCommand::Status { json },
        } => cluster_status(&path, json),
        Command::Run => daemon(path, clock),
        Command::Renew {
            force,
            dry_run: true,
            names,
            ..
        } => {
            let _ = force;
            Ok(dry_run(&path, &names, &clock))
        }
        Command::Renew {
            force,
            metrics_file,
            names,
            ..
        } => renew(&path, RenewOptions { force, names }, metrics_file, clock),
    }
}

/// `certkeeper check`: the config, the host checks and the owner markers.
fn check(path: &Path) -> ExitCode {
    let cfg = match Config::from_file(path) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                println!("{e}");
            }
            println!("{} problem(s) found", errs.0.len());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut problems = certkeeper::check::paths(&cfg);
    problems.extend(certkeeper::check::strict_mode_violations(&cfg, path));
    problems.extend(owner_problems(&cfg));
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
        let fallbacks: Vec<&str> = cfg
            .acme
            .fallback
            .iter()
            .map(|c| c.directory.as_str())
            .collect();
        let fallbacks = if fallbacks.is_empty() {
            String::new()
        } else {
            format!(", fallback {}", fallbacks.join(", "))
        };
        println!(
            "{}: OK ({} certificate(s), CA {}{fallbacks})",
            path.display(),
            cfg.certs.len(),
            cfg.acme.directory
        );
        ExitCode::SUCCESS
    } else {
        println!("{} problem(s) found", problems.len());
        ExitCode::from(EXIT_USAGE)
    }
}

/// Files another state_dir owns, as config errors at the certificate's path key.
fn owner_problems(cfg: &Config) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    for c in &cfg.certs {
        if let Err(e) = certkeeper::owner::check(&cfg.state_dir, c) {
            let key = match &e {
                certkeeper::owner::OwnerError::OwnedByOther { key, .. } => *key,
                _ => "cert_path",
            };
            let loc = c.loc(key);
            problems.push(ConfigError {
                file: cfg.path.clone(),
                line: loc.line,
                column: loc.column,
                key: format!("cert[{}].{key}", c.name),
                message: e.to_string(),
            });
        }
    }
    problems
}

/// `certkeeper status [--json]`.
fn status(path: &Path, json: bool, clock: &SharedClock) -> anyhow::Result<ExitCode> {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let mut rows = report::status(&cfg, clock.now());
    let watched = report::watched(&cfg, clock.now());
    let view = fleet_view(&cfg, None)?;
    if let Some(v) = &view {
        report::add_fleet(&mut rows, v);
    }
    if json {
        let all = report::json_rows(&rows, &watched);
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        if let Some(v) = &view {
            print!("{}", report::cluster_line(v));
        }
        print!("{}", report::status_table(&rows));
        print!("{}", report::fleet_lines(&rows));
        if !watched.is_empty() {
            print!("\n{}", report::watch_table(&watched));
        }
        for r in &rows {
            for w in &r.warnings {
                println!("warning: {}: {w}", r.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The fleet's view for `status` (None without `[cluster]`): a few bounded reads.
fn fleet_view(
    cfg: &certkeeper::config::Config,
    rt: Option<&tokio::runtime::Runtime>,
) -> anyhow::Result<Option<certkeeper::fleet::FleetView>> {
    let Some(c) = &cfg.cluster else {
        return Ok(None);
    };
    let fleet = certkeeper::fleet::Fleet::new(c)?;
    let view = match rt {
        Some(rt) => rt.block_on(fleet.view()),
        None => runtime()?.block_on(fleet.view()),
    };
    Ok(Some(view))
}

/// `certkeeper cluster status`: exit 1 when etcd is unavailable, 2 without `[cluster]`.
fn cluster_status(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let Some(view) = fleet_view(&cfg, None)? else {
        eprintln!(
            "error: {}: no [cluster] section: this certkeeper is not part of a fleet",
            path.display()
        );
        return Ok(ExitCode::from(2));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", report::cluster_table(&view));
    }
    Ok(if view.error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `certkeeper run`.
fn daemon(path: PathBuf, clock: SharedClock) -> anyhow::Result<ExitCode> {
    let cfg = match load(&path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    runtime()?.block_on(certkeeper::daemon::run(
        path,
        cfg,
        certkeeper::daemon::shutdown_signal(),
        clock,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `certkeeper renew --dry-run`: decide and print; no state_dir, no lock, no network.
fn dry_run(path: &Path, names: &[String], clock: &SharedClock) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let selected = match cfg.select(names) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("certkeeper: {m}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for f in report::gather(&cfg, selected, clock.now()) {
        println!("{}", report::dry_run_line(&f));
    }
    ExitCode::SUCCESS
}

/// `certkeeper renew`: one pass, the metrics file, the exit code.
fn renew(
    path: &Path,
    opts: RenewOptions,
    metrics_file: Option<PathBuf>,
    clock: SharedClock,
) -> anyhow::Result<ExitCode> {
    let cfg = match load(path) {
        Ok(c) => Arc::new(c),
        Err(code) => return Ok(code),
    };
    let rt = runtime()?;
    let result = rt.block_on(pass::renew(cfg.clone(), opts, clock.clone()));
    // Watched endpoints are probed after the pass, so a slow one never delays a renewal.
    rt.block_on(certkeeper::watched::probe_endpoints(&cfg, clock.now()));
    if let Ok(outcomes) = &result {
        let names: Vec<String> = outcomes.iter().map(|o| o.name.clone()).collect();
        rt.block_on(certkeeper::alert::after_pass(
            &cfg,
            &names,
            true,
            clock.now(),
        ));
    }
    if let Some(mf) = &metrics_file {
        let mut rows = report::status(&cfg, clock.now());
        // Fleet mode: the cluster's state as the textfile collector's series too.
        if let Some(v) = fleet_view(&cfg, Some(&rt))? {
            report::add_fleet(&mut rows, &v);
        }
        if let Err(e) =
            report::metrics::write_textfile(mf, &rows, &report::watched(&cfg, clock.now()))
        {
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
            for o in &failed {
                eprintln!("certkeeper: {}: {}", o.name, o.summary);
            }
            Ok(ExitCode::from(if failed.is_empty() {
                0
            } else {
                EXIT_FAILED
            }))
        }
        Err(RunError::Usage(m)) => {
            eprintln!("certkeeper: {m}");
            Ok(ExitCode::from(EXIT_USAGE))
        }
        Err(e) => Err(e.into()),
    }
}

/// The runtime: two workers are plenty (the work is waiting on the CA and on disks;
/// CPU-heavy steps run on blocking threads).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Every blocking task is bounded (file reads, fsyncs); a small pool spends less
        // on thread start-up and per-thread RNG set-up than the default of 512.
        .max_blocking_threads(16)
        .enable_all()
        .build()
}
