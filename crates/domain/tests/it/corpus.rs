//! A grammar-based corpus of adversarial templates: the same filter options written with every
//! quoting and escaping form FFmpeg's two levels allow, shorthand and keyed, plus hostile
//! strings. Whatever the validator accepts must run exactly as its tree says; whatever FFmpeg
//! opens must be a declared file or a system path.

use crate::oracle::{job, oracle};
use mpegflow_domain::command::{validate, Value};

/// Writes `v` for the filter level (`:` separates options): escaped, quoted, or mixed.
fn level1(v: &str) -> Vec<String> {
    let mut out = vec![v.to_owned()];
    let esc: String = v
        .chars()
        .flat_map(|c| {
            let e = matches!(c, '\\' | '\'' | ':' | ',' | ' ');
            e.then_some('\\').into_iter().chain([c])
        })
        .collect();
    out.push(esc);
    out.push(format!("'{v}'"));
    if v.len() > 2 {
        let (a, b) = v.split_at(v.len() / 2);
        out.push(format!("'{a}'{b}"));
    }
    out
}

/// Writes a filter's argument string for the graph level (`, ; [ ]` separate filters).
fn level2(args: &str) -> Vec<String> {
    let esc: String = args
        .chars()
        .flat_map(|c| {
            let e = matches!(c, '\\' | '\'' | '[' | ']' | ',' | ';');
            e.then_some('\\').into_iter().chain([c])
        })
        .collect();
    let mut out = vec![esc];
    if !args.contains('\'') {
        out.push(format!("'{args}'"));
    }
    out
}

#[test]
fn filter_values_in_every_quoting_form_run_as_parsed() {
    let j = job(&["in"], &[("out", "out.mp4")]);
    // (filter, keyed name or None for shorthand, value, rest of the args)
    let cases: &[(&str, Option<&str>, &str, &str)] = &[
        ("select", Some("expr"), "between(t,0,0.5)", ""),
        ("select", None, "lt(n,3)+eq(n,5)", ""),
        ("scale", Some("w"), "if(gt(iw,32),32,iw)", ":h=-2"),
        ("scale", None, "trunc(iw/4)*2", ":-2"),
        ("setpts", None, "PTS-STARTPTS", ""),
        ("drawbox", Some("color"), "red@0.5", ":t=2"),
        ("pad", None, "iw+2", ":ih+2:1:1:black"),
        ("eq", Some("brightness"), "0.1", ""),
    ];
    let mut runs = 0;
    for (filter, key, value, rest) in cases {
        for v1 in level1(value) {
            let args = match key {
                Some(k) => format!("{k}={v1}{rest}"),
                None => format!("{v1}{rest}"),
            };
            for v2 in level2(&args) {
                let graph = format!("{filter}={v2},format=yuv420p");
                let quoted = shell_words::quote(&graph);
                let t = format!("-i {{{{in}}}} -t 0.5 -vf {quoted} -an {{{{out}}}}");
                match validate(&t, &j.spec) {
                    Ok(cmd) => {
                        // The tree holds the value exactly, whatever the spelling.
                        let vf = cmd.files[1]
                            .options
                            .iter()
                            .find(|o| o.name == "vf")
                            .unwrap();
                        let Value::Graph(g) = &vf.value else {
                            panic!("{t}: -vf is not a graph")
                        };
                        let f = &g.chains[0][0];
                        let name = key.unwrap_or(f.options[0].0);
                        assert!(
                            f.options.iter().any(|(k, v)| *k == name && v == value),
                            "{t}: {f:?}"
                        );
                        oracle(&j, &t);
                        runs += 1;
                    }
                    Err(e) => panic!("{t}: refused: {e}"),
                }
            }
        }
    }
    assert!(runs >= 40, "{runs}");
}

#[test]
fn hostile_templates_are_refused_or_run_exactly_as_parsed() {
    let j = job(&["in"], &[("out", "out.mp4")]);
    let graphs = [
        r"curves=plot='\\',nullsink;amovie=/etc/passwd:f=u8",
        r"scale=w='\\',null;movie=/etc/passwd",
        r"scale='\',null;movie=/etc/passwd",
        r"scale=w=\/etc/passwd:h=-2",
        r"scale=w='\/etc/passwd':h=-2",
        r"scale=w=32:h=24'\':flags=neighbor",
        "scale=w=32:h=24:flags=neighbor\t,\nformat=yuv420p",
        "scale = w = 32 : h = 24",
        r"scale=32\:h=24",
        r"scale=32:24,sws_flags=x",
        r"select=expr='eq(n\,0)',scale=16:16",
        r"select='eq(n,0)':1,scale=16:16",
        r"drawbox=x=1:y=1:w=4:h=4:color=red@0.5:t=1,drawbox=c=ß",
        r"null[x];[x]movie=a",
        r"[0:v]null[o];[o]scale=16:16",
        r"scale=16:16[a b]",
        r"scale=16:16[a\]b]",
        "scale=w=16:h=16:flags=bicubic+print_info",
        r"paletteuse=debug_kdtree=/tmp/x",
        r"eq=contrast=1\:brightness=0.1",
        "eq=contrast='1':brightness='0.1'",
        "fps=fps=5,tile=2x2,scale=32:24",
        r"volume=0.5\,anull",
        "format=pix_fmts=yuv420p|gray",
        "scale@small=16:16,null@n,format@f=yuv420p",
        r"scale@a\@b=16:16",
        "scale@=16:16",
    ];
    let mut ran = 0;
    for g in graphs {
        let t = format!(
            "-i {{{{in}}}} -t 0.5 -vf {} -an {{{{out}}}}",
            shell_words::quote(g)
        );
        let ok = validate(&t, &j.spec).is_ok();
        let names_a_file = ["movie", "passwd", "debug_kdtree", "/tmp"]
            .iter()
            .any(|w| g.contains(w));
        assert!(!(ok && names_a_file), "{g} was accepted");
        if ok {
            oracle(&j, &t);
            ran += 1;
        }
    }
    let options = [
        "-c:v libx264 -x264-params keyint=7:min_keyint=3:no-cabac=1:bframes=2:ref=2",
        "-c:v libx265 -x265-params keyint=7:min_keyint=3:no-sao=1:bframes=2",
        "-c:v libx265 -x265-params --csv=/tmp/x",
        "-c:v libx264 -x264-params 'keyint=7:cqmfile=/etc/passwd'",
        r"-c:v libx264 -x264-params 'keyint=7\:cqmfile=/etc/passwd'",
        "-c:v libx264 -x264-params \"keyint='7:cqmfile=/etc/passwd'\"",
        "-metadata 'title=a:b=c\\d'",
        "-metadata 'comment=\u{202e}unicode ünïcödé'",
        "-metadata:s:v:0 language=eng",
        "-bsf:v h264_mp4toannexb -f mpegts",
        "-f sap",
        "-segment_format sap",
    ];
    let mut accepted = Vec::new();
    for o in options {
        let t = format!("-i {{{{in}}}} -t 0.5 {o} {{{{out}}}}");
        if validate(&t, &j.spec).is_ok() {
            accepted.push(o);
            let r = oracle(&j, &t);
            if o.contains("x264-params keyint=7") {
                for want in [
                    "keyint=7 ",
                    "keyint_min=3 ",
                    "cabac=0 ",
                    "bframes=2 ",
                    "ref=2 ",
                ] {
                    assert!(r.stderr.contains(want), "x264 did not report {want}");
                }
                assert!(!r.stderr.contains("Error parsing option"));
            }
            if o.contains("x265-params keyint=7") {
                assert!(
                    r.stderr
                        .contains("Keyframe min / max / scenecut / bias  : 3 / 7 /"),
                    "x265 did not apply keyint/min-keyint"
                );
                assert!(
                    !r.stderr
                        .lines()
                        .any(|l| l.contains("tools:") && l.contains(" sao")),
                    "x265 did not apply no-sao"
                );
                assert!(
                    !r.stderr.contains("Unknown option") && !r.stderr.contains("Invalid value")
                );
            }
            ran += 1;
        }
    }
    assert_eq!(
        accepted,
        [options[0], options[1], options[6], options[7], options[8], options[9]],
        "the corpus's well-formed option templates must be accepted, the others refused"
    );
    assert!(ran >= 12, "{ran}");
}

#[test]
fn output_muxers_are_the_guessed_allowed_ones_and_stay_in_declared_outputs() {
    use mpegflow_domain::command::options::MUXER_BY_EXTENSION;
    use std::process::Command as Process;
    // The extension table is what the installed FFmpeg really guesses.
    let j = job(&[], &[]);
    for (ext, muxer) in MUXER_BY_EXTENSION {
        let out = Process::new("ffmpeg")
            .args([
                "-hide_banner",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=s=16x16:d=0.1",
            ])
            .args([
                "-f",
                "lavfi",
                "-i",
                "sine=d=0.1",
                "-frames:v",
                "1",
                "-t",
                "0.1",
            ])
            .arg(format!("x.{ext}"))
            .current_dir(&j.dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("Output #0, {muxer}, to ")),
            ".{ext} should pick {muxer}:\n{stderr}"
        );
    }
    // A multi-file muxer on a file output, or a guessed muxer that is not allowed, is refused;
    // into a directory output every file it writes is a declared one.
    let j = job(&["in"], &[("out", "out.mp4"), ("dir", "dir/")]);
    for t in [
        "-i {{in}} -t 1 -f hls -hls_time 0.5 {{out}} -f null {{dir}}/x",
        "-i {{in}} -t 1 -f dash -seg_duration 0.5 {{out}} -f null {{dir}}/x",
    ] {
        assert!(validate(t, &j.spec).is_err(), "{t}");
    }
    let j2 = job(&["in"], &[("out", "meta.ffmeta")]);
    assert!(validate("-i {{in}} {{out}}", &j2.spec).is_err());
    for t in [
        "-i {{in}} -t 1 {{out}} -t 1 -f hls -hls_time 0.5 {{dir}}/index.m3u8",
        "-i {{in}} -t 1 {{out}} -t 1 -f dash -seg_duration 0.5 {{dir}}/index.mpd",
        "-i {{in}} -t 1 {{out}} -t 0.3 -f image2 {{dir}}/f%02d.png",
    ] {
        let r = oracle(&j, t);
        assert!(
            r.opened.iter().any(|p| p.starts_with("out/dir/")),
            "{t}: wrote nothing into the directory"
        );
    }
}

#[test]
fn subtitle_filters_read_the_declared_file_and_system_fonts_only() {
    let j = job(&["in", "subs", "styled"], &[("out", "out.mp4")]);
    for t in [
        "-i {{in}} -vf subtitles={{subs}},ass={{styled}} -t 0.5 {{out}}",
        r"-i {{in}} -vf 'subtitles=filename={{subs}}:force_style=FontSize=20\,Bold=1:charenc=UTF-8,ass=f={{styled}}:shaping=simple' -t 0.5 {{out}}",
    ] {
        let r = oracle(&j, t);
        for file in ["in/subs.srt", "in/styled.ass"] {
            assert!(
                r.opened.iter().any(|p| p.ends_with(file)),
                "{t}: FFmpeg never opened {file}: {:?}",
                r.opened
            );
        }
        if crate::oracle::strace_available() {
            assert!(
                r.opened.iter().any(|p| p.starts_with("/usr/share/fonts/")),
                "{t}: libass loaded no system font: {:?}",
                r.opened
            );
        }
    }
}

#[test]
fn still_images_are_read_by_their_content_not_by_image2() {
    let j = job(&["in", "logo", "photo"], &[("out", "out.mp4")]);
    let r = oracle(
        &j,
        "-i {{in}} -i {{logo}} -i {{photo}} -filter_complex '[0:v][1:v]overlay=2:2[a];[a][2:v]overlay=20:2' -t 0.5 {{out}}",
    );
    for (demuxer, path) in [("png_pipe", "in/logo"), ("jpeg_pipe", "in/photo")] {
        assert!(
            r.stderr.contains(&format!("{demuxer}, from '{path}'")),
            "{path} not read by {demuxer}: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("image2"), "{}", r.stderr);
}
