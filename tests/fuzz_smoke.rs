//! A smoke run of every fuzz target (`fuzz/`, entry points in `fuzz/targets/`) on the stable
//! toolchain: each replays its corpus (fixed crashes included) and any crash
//! cargo fuzz saved locally, then mutations of the corpus. The long runs are `scripts/fuzz` (cargo fuzz).

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

/// Mutated inputs per target: a few seconds in a debug build.
const MUTATIONS: usize = 3_000;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let fuzz = support::root().join("fuzz");
    let folders: Vec<PathBuf> = vec![fuzz.join("corpus").join(target), fuzz.join("artifacts").join(target)];
    let mut inputs = Vec::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            inputs.push(std::fs::read(entry.path()).expect("a corpus file"));
        }
    }
    assert!(!inputs.is_empty(), "no corpus for {target}");
    inputs
}

/// A byte-level mutation of one of `seeds`, as a fuzzer makes them.
fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut input = seeds[rng.gen_range(0..seeds.len())].clone();
    for _ in 0..rng.gen_range(1..8) {
        let len = input.len();
        match rng.gen_range(0..6) {
            0 if len > 0 => {
                let i = rng.gen_range(0..len);
                input[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if len > 0 => input.truncate(rng.gen_range(0..len)),
            2 => {
                let i = rng.gen_range(0..=len);
                let interesting: &[&[u8]] = &[b"{", b"}", b"[", b"]", b"\"", b"\\u0000", b"-0", b"1e999", b",", b":"];
                let piece = interesting[rng.gen_range(0..interesting.len())];
                input.splice(i..i, piece.iter().copied());
            }
            3 if len > 1 => {
                let (a, b) = (rng.gen_range(0..len), rng.gen_range(0..len));
                let (from, to) = (a.min(b), a.max(b));
                let copy = input[from..to].to_vec();
                let at = rng.gen_range(0..=len);
                input.splice(at..at, copy);
            }
            4 => input.extend((0..rng.gen_range(0..16)).map(|_| rng.gen::<u8>())),
            _ => {
                let i = rng.gen_range(0..=len);
                input.insert(i, rng.gen());
            }
        }
    }
    input
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations_of_it() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for (name, target) in eligo_fuzz_targets::TARGETS {
        let seeds = inputs(name);
        for input in &seeds {
            target(input);
        }
        for _ in 0..MUTATIONS {
            target(&mutate(&mut rng, &seeds));
        }
        println!("fuzz smoke: {name}: {} corpus inputs, {MUTATIONS} mutations, no crash", seeds.len());
    }
}

#[test]
fn every_fuzz_target_has_a_cargo_fuzz_binary() {
    let manifest = std::fs::read_to_string(support::root().join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in eligo_fuzz_targets::TARGETS {
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml lacks the target {name}");
    }
}
