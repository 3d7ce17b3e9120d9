//! `tributary-load`: parses the command line, runs one bounded load run on
//! a tokio runtime, prints the report table, and writes the JSON and chart
//! when asked. Exits 0 when the run completed (whatever it measured), 1 on
//! a usage or setup error.

use clap::Parser;
use tributary_load::plan::{Cli, LoadPlan};
use tributary_load::{chart, report, run};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.compare.is_empty() {
        return compare(&cli.compare);
    }
    raise_open_files_limit();
    let plan = LoadPlan::from_cli(cli)?;
    let require_all_holding = plan.require_all_holding;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(plan.threads)
        .enable_all()
        .build()?;
    let json = plan.json.clone();
    let chart_path = plan.chart.clone();
    let report = runtime.block_on(run::execute(plan))?;
    // Tasks aborted at the deadline may still hold sockets: drop them now.
    runtime.shutdown_background();
    print!("{}", report::table(&report));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = chart_path {
        chart::draw(&path, &report.timeline, "tributary-load")?;
    }
    if require_all_holding && !report.all_holding() {
        std::process::exit(3);
    }
    Ok(())
}

fn compare(files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for f in files {
        let text = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        let name = f.file_stem().map_or_else(
            || f.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        reports.push((name, serde_json::from_slice(&text)?));
    }
    print!("{}", report::compare_table(&reports));
    Ok(())
}

/// Thousands of connections need thousands of descriptors: take the hard
/// limit as the soft one.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
