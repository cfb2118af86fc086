//! Every allowlisted filter, with every allowlisted option keyed and with all its positional
//! (shorthand) values, run through FFmpeg: the options FFmpeg sets must be exactly the tree's,
//! which checks the shorthand order of the table against the filters' real declared order.

use crate::arity::sample;
use crate::oracle::{expected_settings, filter_settings, job, run};
use mpegflow_domain::command::filters::{FilterSpec, FILTERS};
use mpegflow_domain::command::grammar::G;
use mpegflow_domain::command::{parse_rendered, render};

const AUDIO: &[&str] = &[
    "atrim",
    "asetpts",
    "asettb",
    "asplit",
    "anull",
    "aselect",
    "volume",
    "aresample",
    "aformat",
    "loudnorm",
    "amix",
    "amerge",
    "atempo",
    "afade",
    "apad",
    "acrossfade",
    "highpass",
    "lowpass",
    "adelay",
    "acopy",
    "areverse",
];

fn inputs(name: &str) -> usize {
    match name {
        "overlay" | "hstack" | "vstack" | "xstack" | "xfade" | "amix" | "acrossfade" | "amerge" => {
            2
        }
        _ => 1,
    }
}

fn value(f: &FilterSpec, key: &str) -> String {
    match (f.name, key) {
        (_, "inputs") => "2".into(),
        ("concat", "n") => "1".into(),
        ("concat", "a") => "0".into(),
        _ => sample(f.option(key).unwrap().1),
    }
}

/// `-filter_complex` text feeding `n` copies of the input's video or audio into `body`.
fn graph(f: &FilterSpec, args: &str) -> String {
    let (src, split) = if AUDIO.contains(&f.name) {
        ("[0:a]", "asplit")
    } else {
        ("[0:v]", "split")
    };
    let call = if args.is_empty() {
        f.name.to_owned()
    } else {
        format!("{}={args}", f.name)
    };
    match inputs(f.name) {
        1 => format!("{src}{call}"),
        n => {
            let labels: String = (0..n).map(|i| format!("[i{i}]")).collect();
            format!("{src}{split}={n}{labels};{labels}{call}")
        }
    }
}

#[test]
fn every_filter_option_and_shorthand_is_set_as_the_tree_says() {
    let plain = job(&["in"], &[("out", "out.nut")]);
    // Filters that read a subtitle file get one as a declared input.
    let with_srt = job(&["in", "subs"], &[("out", "out.nut")]);
    let with_ass = job(&["in", "styled"], &[("out", "out.nut")]);
    let mut runs = 0;
    let mut failures = Vec::new();
    for f in FILTERS {
        let j = match f.name {
            "subtitles" => &with_srt,
            "ass" => &with_ass,
            _ => &plain,
        };
        let file = if f.name == "ass" {
            "{{styled}}"
        } else {
            "{{subs}}"
        };
        let keyed: Vec<String> = f
            .options
            .iter()
            // One name for the file: its alias (f) sets the same field.
            .filter(|(k, g)| *g != G::InputFile || *k == "filename")
            .map(|(k, g)| match g {
                G::InputFile => format!("{k}={file}"),
                _ => format!("{k}={}", value(f, k)),
            })
            .collect();
        let positional: Vec<String> = f
            .positional
            .iter()
            .map(|k| match f.option(k).unwrap().1 {
                G::InputFile => file.to_owned(),
                _ => value(f, k),
            })
            .collect();
        for args in [keyed.join(":"), positional.join(":")] {
            let g = graph(f, &args);
            let t = format!(
                "-i {{{{in}}}} -t 0.3 -filter_complex {} -f nut {{{{out}}}}",
                shell_words::quote(&g)
            );
            let argv = match render(&t, &j.spec, 1) {
                Ok(a) => a,
                Err(e) => {
                    failures.push(format!("{t}: {e}"));
                    continue;
                }
            };
            let cmd = parse_rendered(&argv, &j.spec).unwrap();
            let r = run(j, &argv);
            let seen = filter_settings(&r.stderr);
            let want = expected_settings(&cmd);
            if !want.iter().all(|w| seen.contains(w)) {
                failures.push(format!(
                    "{}: FFmpeg set {seen:?}\n  the tree says {want:?}\n  {}",
                    f.name,
                    r.stderr
                        .lines()
                        .filter(|l| l.contains("rror") || l.contains("nvalid"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ));
            }
            runs += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(runs, 2 * FILTERS.len());
}
