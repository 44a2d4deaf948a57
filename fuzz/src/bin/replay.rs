//! Stable replay of the fuzz targets (no libFuzzer, no nightly): every target over its committed
//! corpus, then deterministic mutations of it. Not coverage-guided; it proves the targets build
//! and run on stable and catches regressions on the corpus and its neighbourhood.
//!
//! ```text
//! replay [--mutations N] [--seed S] [TARGET...]   corpus + N mutations per target (default 5000)
//! replay TARGET FILE...                           one target over the given inputs (a crash file)
//! ```
//!
//! Run from anywhere: paths are relative to this crate (`fuzz/`). A failing input is written to
//! `fuzz/artifacts/TARGET/replay-crash-HASH` and the run exits with status 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use shardcast_fuzz::mutate::{mutate, parse_dict};
use shardcast_fuzz::{fnv, Rng, Target, TARGETS};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read_dir_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Run one input; on a panic save it and say where.
fn run_one(t: &Target, input: &[u8], what: &str) -> bool {
    let ok = std::panic::catch_unwind(|| (t.run)(input)).is_ok();
    if !ok {
        let dir = crate_dir().join("artifacts").join(t.name);
        let path = dir.join(format!("replay-crash-{:016x}", fnv(input)));
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
        match saved {
            Ok(()) => eprintln!(
                "{}: {what} failed; input saved to {}",
                t.name,
                path.display()
            ),
            Err(e) => eprintln!("{}: {what} failed; could not save it: {e}", t.name),
        }
    }
    ok
}

fn replay_target(t: &Target, mutations: usize, seed: u64) -> bool {
    let start = Instant::now();
    let corpus = read_dir_files(&crate_dir().join("corpus").join(t.name));
    let dict = std::fs::read_to_string(crate_dir().join("dict").join(format!("{}.dict", t.name)))
        .map(|s| parse_dict(&s))
        .unwrap_or_default();
    if corpus.is_empty() {
        eprintln!("{}: no corpus in fuzz/corpus/{}", t.name, t.name);
        return false;
    }
    for (i, input) in corpus.iter().enumerate() {
        if !run_one(t, input, &format!("corpus input {i}")) {
            return false;
        }
    }
    let mut rng = Rng::new(seed ^ fnv(t.name.as_bytes()));
    for i in 0..mutations {
        let input = mutate(&corpus, &dict, &mut rng, t.max_len);
        if !run_one(t, &input, &format!("mutation {i}")) {
            return false;
        }
    }
    println!(
        "replay {:<14} {:>4} corpus inputs + {mutations} mutations: ok in {:.1}s",
        t.name,
        corpus.len(),
        start.elapsed().as_secs_f64()
    );
    true
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut mutations = 5000;
    let mut seed = 0u64;
    let mut names = Vec::new();
    while !args.is_empty() {
        let a = args.remove(0);
        let mut value = |flag: &str| -> u64 {
            let v = if args.is_empty() {
                None
            } else {
                Some(args.remove(0))
            };
            v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{flag} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--mutations" => mutations = value("--mutations") as usize,
            "--seed" => seed = value("--seed"),
            "-h" | "--help" => {
                println!("replay [--mutations N] [--seed S] [TARGET...] | replay TARGET FILE...");
                return ExitCode::SUCCESS;
            }
            _ => names.push(a),
        }
    }
    let by_name = |n: &str| TARGETS.iter().find(|t| t.name == n);
    // `replay TARGET FILE...`: the given inputs only.
    if names.len() >= 2 && by_name(&names[0]).is_some() && Path::new(&names[1]).is_file() {
        let t = by_name(&names[0]).expect("checked");
        let mut ok = true;
        for file in &names[1..] {
            let input = std::fs::read(file).unwrap_or_else(|e| {
                eprintln!("{file}: {e}");
                std::process::exit(2)
            });
            ok &= run_one(t, &input, file);
        }
        println!(
            "replay {}: {} input(s), {}",
            t.name,
            names.len() - 1,
            if ok { "ok" } else { "FAILED" }
        );
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let chosen: Vec<&Target> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in &names {
            match by_name(n) {
                Some(t) => v.push(t),
                None => {
                    eprintln!(
                        "unknown target {n}; targets: {}",
                        TARGETS.iter().map(|t| t.name).collect::<Vec<_>>().join(" ")
                    );
                    return ExitCode::from(2);
                }
            }
        }
        v
    };
    println!("stable replay mode (no libFuzzer): corpus + {mutations} deterministic mutations per target, seed {seed}");
    for t in chosen {
        if !replay_target(t, mutations, seed) {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
