//! `ce-bench`: context-engines measured against the physical limit. Every figure is a
//! median over repeated runs with its baseline measured in the same run; the table goes
//! to stdout, the plugin's logs to stderr, and the run to `bench-results/latest.json`
//! (plus `bench-results/run-<unix time>.json`) so runs can be compared.
//! Run it through `scripts/bench.sh`, which prepares runtimes, fixtures and the 1 GiB
//! archive; `ce-bench --help` lists the knobs.

#[path = "../bench/mod.rs"]
mod bench;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench::{Config, Figure};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let started = Instant::now();
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let section_limit = Duration::from_secs_f64(config.get::<f64>("section-max-min")? * 60.0);
    bench::remove_leftovers().await;

    // Cheapest first, so a budget cut hits the long repeats of the burst, not whole
    // sections; the table is printed in section order.
    let mut figures: Vec<Figure> = Vec::new();
    for section in [3u8, 4, 1, 5, 2, 6] {
        if !config.wants(section) {
            continue;
        }
        let at = Instant::now();
        eprintln!("ce-bench: section {section} starting");
        let running = async {
            match section {
                1 => bench::start::run(&config).await,
                2 => bench::burst::run(&config).await,
                3 => bench::decisions::run(&config).await,
                4 => bench::wasm::run(&config).await,
                6 => bench::swarm::run(&config).await,
                _ => bench::memory::run(&config).await,
            }
        };
        // Every step inside is bounded too; this is the backstop.
        let found = match tokio::time::timeout(section_limit, running).await {
            Ok(found) => found,
            Err(_) => vec![Figure::missing(
                section,
                format!("section {section}"),
                format!("abandoned after {section_limit:?} (--section-max-min)"),
            )],
        };
        eprintln!("ce-bench: section {section} done in {:.0} s", at.elapsed().as_secs_f64());
        figures.extend(found);
    }
    bench::remove_leftovers().await;
    figures.sort_by_key(|f| f.section);

    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let machine = bench::report::machine().await;
    print!("{}", bench::report::table(&machine, &figures, minutes));
    let run = json!({
        "format": 1,
        "started_unix": started_unix,
        "minutes": minutes,
        "machine": machine,
        "config": config.as_json(),
        "figures": figures,
    });
    let out = config.path("out");
    bench::report::write_json(&out, &run, started_unix)?;
    println!("\nJSON: {}", out.display());
    Ok(())
}
