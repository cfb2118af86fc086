//! Every option of the allowlist, rendered with a sample value and run: FFmpeg's trace must show
//! it consumed exactly the arguments the table says (its real arity in the installed FFmpeg,
//! not what `-h full` claims), matched the way the table says.

use crate::oracle::{consumed, expected_consumed, job, run};
use mpegflow_domain::command::grammar::G;
use mpegflow_domain::command::options::{Kind, Scope, OPTIONS};
use mpegflow_domain::command::{parse_rendered, render};

pub fn sample(g: G) -> String {
    match g {
        G::Int(a, b) => (if a <= 1 && 1 <= b { 1 } else { a }).to_string(),
        G::Num => "1".into(),
        G::Rate => "100k".into(),
        G::Dur => "0.5".into(),
        G::Size => "32x24".into(),
        G::Fps => "10".into(),
        G::Ratio => "4/3".into(),
        G::Kw(w) | G::List(w) => w[0].into(),
        G::Flags(w) => format!("+{}", w[0]),
        G::Expr => "1".into(),
        G::Color => "red".into(),
        G::FourCc => "avc1".into(),
        G::Delays => "10".into(),
        G::Numbers => "1".into(),
        G::StackLayout => "0_0".into(),
        G::Map => "0".into(),
        G::MetaMap => "0".into(),
        G::Metadata => "title=x".into(),
        G::KeyFrames => "0.5".into(),
        G::InputFile => "{{subs}}".into(),
        G::AssStyle => "FontSize=20".into(),
    }
}

#[test]
fn every_allowed_option_is_consumed_as_the_table_says() {
    let j = job(&["in"], &[("out", "out.mp4"), ("hls", "hls/")]);
    let mut checked = 0;
    for o in OPTIONS {
        let input = o.scope == Scope::Input;
        let value = match o.kind {
            Kind::Flag => None,
            Kind::Value(g) => Some(sample(g)),
            Kind::Codec => Some(if input { "h264" } else { "libx264" }.to_owned()),
            Kind::Format => Some(if input { "mov" } else { "mp4" }.to_owned()),
            Kind::Muxer => Some("mpegts".into()),
            Kind::Graph if o.name == "af" => Some("anull".into()),
            Kind::Graph => Some("null".into()),
            Kind::X264Params | Kind::X265Params => Some("keyint=5".into()),
            Kind::Bsf => Some("null".into()),
            Kind::OutputEntry => Some("{{hls}}/s_%d.ts".into()),
            Kind::FileName => Some("x.m3u8".into()),
        };
        let opt = match &value {
            Some(v) => format!("-{} '{v}'", o.name),
            None => format!("-{}", o.name),
        };
        let template = if input {
            format!("{opt} -i {{{{in}}}} -t 0.2 {{{{out}}}} -t 0.2 {{{{hls}}}}/i.m3u8")
        } else {
            format!("-i {{{{in}}}} -t 0.2 {opt} {{{{out}}}} -t 0.2 {{{{hls}}}}/i.m3u8")
        };
        let argv = render(&template, &j.spec, 1).unwrap_or_else(|e| panic!("{template}: {e}"));
        let cmd = parse_rendered(&argv, &j.spec).unwrap();
        let r = run(&j, &argv);
        assert_eq!(
            consumed(&r.stderr),
            expected_consumed(&cmd, &j.spec),
            "-{}: FFmpeg's trace disagrees with the table\n{}",
            o.name,
            r.stderr
        );
        checked += 1;
    }
    assert_eq!(checked, OPTIONS.len());
}

#[test]
fn ffmpeg_5_1_arities_that_the_help_text_misstates() {
    // `-fix_sub_duration` is a flag; `-reinit_filter`, `-copytb`, `-top`, `-fps_mode` and
    // `-filter_threads` take a value. Run each with a probe argument after it and see whether
    // FFmpeg consumed the probe as the option's value.
    let j = job(&[], &[]);
    for (name, takes_value) in [
        ("fix_sub_duration", false),
        ("reinit_filter", true),
        ("copytb", true),
        ("top", true),
        ("fps_mode", true),
        ("filter_threads", true),
        ("autorotate", true),
        ("shortest", false),
    ] {
        let r = run(&j, &[format!("-{name}"), "PROBE".into()]);
        let c = consumed(&r.stderr);
        let want = if takes_value { "'PROBE'" } else { "'1'" };
        assert!(
            c.iter().any(|(n, a)| n == name && a == want),
            "-{name}: {c:?}"
        );
        let table = OPTIONS.iter().find(|o| o.name == name).unwrap();
        assert_eq!(
            table.kind != Kind::Flag,
            takes_value,
            "-{name} in the table"
        );
    }
}
