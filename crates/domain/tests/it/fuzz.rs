//! Random mutations of valid templates: the validator must never panic, and whatever it accepts
//! must render to an argv the worker's check accepts, with graphs that parse back to themselves.
//! `MPEGFLOW_FUZZ_ITERATIONS` runs it longer.

use mpegflow_domain::command::{check_rendered, filtergraph, render, IoSpec, Value};
use rand::{rngs::StdRng, Rng, SeedableRng};

const SEEDS: &[&str] = &[
    "-i {{in}} -vf scale=640:-2 {{out}} -f null {{dir}}/n",
    r#"-i {{in}} -filter_complex "[0:v]split=2[a][b];[a]scale=w='iw/2':h=-2[a1];[b]select='eq(n\,0)'[b1]" -map [a1] {{out}} -map [b1] -f image2 {{dir}}/t%02d.png"#,
    "-ss 1 -i {{in}} -c:v libx264 -x264-params keyint=5:no-cabac=1 -metadata title='a: b' {{out}} -f null {{dir}}/n",
    "-i {{in}} -af 'volume=0.5,aresample=48000' -f hls -hls_time 2 -hls_segment_filename {{dir}}/s%03d.ts {{dir}}/i.m3u8 -map 0 {{out}}",
    r"-i {{in}} -vf drawbox=x=1:y=1:w=4:h=4:color=red@0.5,pad=iw+2:ih+2:1:1:black,fps=25 -map 0:v:0 -disposition:v:0 +default {{out}} -f null {{dir}}/n",
    "-i {{in}} -f segment -segment_time 2 -segment_list {{dir}}/l.m3u8 {{dir}}/s%03d.ts -c:v libx265 -x265-params --no-sao=1 {{out}}",
];

/// Seeds whose filters read subtitle files (declared inputs `subs`, `styled`).
const SUBTITLE_SEEDS: &[&str] = &[
    "-i {{in}} -vf subtitles={{subs}},ass={{styled}} {{out}} -f null {{dir}}/n",
    r#"-i {{in}} -filter_complex "[0:v]subtitles=filename='{{subs}}':force_style=FontSize=20\,Bold=1:charenc=UTF-8,ass=f={{styled}}:shaping=simple[v]" -map [v] {{out}} -f null {{dir}}/n"#,
];

const ALPHABET: &[&str] = &[
    "{{subs}}",
    "{{styled}}",
    "subtitles=",
    "ass=",
    "fontsdir=",
    "filename=",
    "in/subs.srt",
    "'",
    "\"",
    "\\",
    ":",
    ",",
    ";",
    "[",
    "]",
    "=",
    " ",
    "\t",
    "\n",
    "-",
    "{{",
    "}}",
    "%",
    "/",
    "@",
    "+",
    "?",
    "#",
    "0",
    "x",
    "{{in}}",
    "{{out}}",
    "{{dir}}/",
    "..",
    "\u{e9}",
    "\u{202e}",
    "\\\\",
    "''",
    "-f",
    "-i",
    "movie=",
    "file:",
    "|",
    "\r",
    "$",
    "(",
    ")",
    "*",
];

fn mutate(rng: &mut StdRng, seeds: &[&str], s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    for _ in 0..rng.gen_range(1..5) {
        let at = rng.gen_range(0..=chars.len());
        match rng.gen_range(0..4) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => {
                let ins = ALPHABET[rng.gen_range(0..ALPHABET.len())];
                for (k, c) in ins.chars().enumerate() {
                    chars.insert(at + k, c);
                }
            }
            2 if at < chars.len() => {
                let end = rng.gen_range(at..=chars.len());
                let dup: Vec<char> = chars[at..end].to_vec();
                for (k, c) in dup.into_iter().enumerate() {
                    chars.insert(end + k, c);
                }
            }
            _ => {
                let other: Vec<char> = seeds[rng.gen_range(0..seeds.len())].chars().collect();
                let from = rng.gen_range(0..other.len());
                let to = rng.gen_range(from..=other.len());
                for (k, c) in other[from..to].iter().enumerate() {
                    chars.insert(at + k, *c);
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[test]
fn mutated_templates_never_panic_and_accepted_ones_round_trip() {
    let mut spec = IoSpec::default();
    spec.add_input("in", "clip.mp4").unwrap();
    spec.add_output("out", "out.mp4").unwrap();
    spec.add_output("dir", "dir/").unwrap();
    fuzz(&spec, SEEDS, 0x5eed);
}

#[test]
fn mutated_subtitle_templates_never_name_another_file() {
    let mut spec = IoSpec::default();
    spec.add_input("in", "clip.mp4").unwrap();
    spec.add_input("subs", "s.srt").unwrap();
    spec.add_input("styled", "s.ass").unwrap();
    spec.add_output("out", "out.mp4").unwrap();
    spec.add_output("dir", "dir/").unwrap();
    fuzz(&spec, SUBTITLE_SEEDS, 0x5ab5);
}

fn fuzz(spec: &IoSpec, seeds: &[&str], seed: u64) {
    let iterations: usize = std::env::var("MPEGFLOW_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50_000);
    for t in seeds {
        let argv = render(t, spec, 2).unwrap_or_else(|e| panic!("{t}: {e}"));
        check_rendered(&argv, spec).unwrap();
    }
    // A file option holds a declared input's path; map it back as the worker's check does.
    let resolve = |v: &str| {
        spec.inputs
            .keys()
            .find(|k| spec.input_path(k).as_deref() == Some(v))
            .map(|k| (k.clone(), v.to_owned()))
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    for _ in 0..iterations {
        let seed = seeds[rng.gen_range(0..seeds.len())];
        let t = mutate(&mut rng, seeds, seed);
        let Ok(argv) = render(&t, spec, 2) else {
            continue;
        };
        accepted += 1;
        check_rendered(&argv, spec).unwrap_or_else(|e| panic!("{t:?}\n{argv:?}\n{e}"));
        let cmd = mpegflow_domain::command::validate(&t, spec).unwrap();
        for o in cmd
            .globals
            .iter()
            .chain(cmd.files.iter().flat_map(|f| &f.options))
        {
            if let Value::Graph(g) = &o.value {
                assert_eq!(
                    &filtergraph::parse_with(&g.render(), &resolve).unwrap(),
                    g,
                    "{t:?}"
                );
                for f in g.filters() {
                    for alias in &f.files {
                        let path = spec.input_path(alias).unwrap();
                        assert!(f.options.iter().any(|(_, v)| *v == path), "{t:?}: {f:?}");
                    }
                    assert!(
                        !f.options.iter().any(|(k, _)| *k == "fontsdir"),
                        "{t:?}: {f:?}"
                    );
                }
            }
        }
    }
    assert!(
        accepted > iterations / 100,
        "{accepted} of {iterations} accepted"
    );
}
