//! `tributary-load`: parses the command line, runs one bounded load run on
//! a tokio runtime, prints the report table, and writes the JSON and chart
//! when asked. Exits 0 when the run completed (whatever it measured), 1 on
//! a usage or setup error.

use clap::Parser;
use tributary_load::plan::{Cli, LoadPlan};
use tributary_load::{chart, report, run};

fn main() -> anyhow::Result<()> {
    let plan = LoadPlan::from_cli(Cli::parse())?;
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
    Ok(())
}
