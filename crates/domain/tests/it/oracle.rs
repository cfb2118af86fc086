//! Runs the real ffmpeg (`-loglevel debug`) on a rendered command in a throwaway job directory and reads back what
//! it did: the options it consumed, the filter options it set, the files it opened.

use mpegflow_domain::command::{
    filtergraph::Graph, forced_input_flags, parse_rendered, render, Command, IoSpec, Target, Value,
    FORCED_LOG_LEVEL,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Job {
    pub dir: PathBuf,
    pub spec: IoSpec,
}

impl Drop for Job {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ffmpeg(args: &[&str], cwd: &Path) {
    let st = Process::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .current_dir(cwd)
        .status()
        .expect("ffmpeg must be installed (scripts/deps.sh)");
    assert!(st.success(), "ffmpeg {args:?}");
}

/// A job directory with `in/in.mp4` (1 s, 64x48, 10 fps, sine audio) and `in/logo.png`,
/// declared as inputs `in` and `logo` as needed, and the given outputs.
pub fn job(inputs: &[&str], outputs: &[(&str, &str)]) -> Job {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "mpegflow-oracle-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let mut spec = IoSpec::default();
    for a in inputs {
        match *a {
            "in" => {
                ffmpeg(
                    &[
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=s=64x48:d=1:r=10",
                        "-f",
                        "lavfi",
                        "-i",
                        "sine=d=1",
                        "-c:v",
                        "libx264",
                        "-c:a",
                        "aac",
                        "-shortest",
                        "in/in.mp4",
                    ],
                    &dir,
                );
                spec.add_input("in", "clip.mp4").unwrap();
            }
            "logo" => {
                ffmpeg(
                    &[
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=s=16x16:d=0.1",
                        "-frames:v",
                        "1",
                        "in/logo.png",
                    ],
                    &dir,
                );
                spec.add_input("logo", "logo.png").unwrap();
                // Stored as the platform stores it: a still image without its extension.
                let path = spec.input_path("logo").unwrap();
                std::fs::rename(dir.join("in/logo.png"), dir.join(path)).unwrap();
            }
            "photo" => {
                ffmpeg(
                    &[
                        "-f",
                        "lavfi",
                        "-i",
                        "testsrc=s=16x16:d=0.1",
                        "-frames:v",
                        "1",
                        "in/photo.jpg",
                    ],
                    &dir,
                );
                spec.add_input("photo", "photo.jpg").unwrap();
                let path = spec.input_path("photo").unwrap();
                std::fs::rename(dir.join("in/photo.jpg"), dir.join(path)).unwrap();
            }
            "subs" => {
                std::fs::write(dir.join("in/subs.srt"), SRT).unwrap();
                spec.add_input("subs", "subs.srt").unwrap();
            }
            "styled" => {
                std::fs::write(dir.join("in/styled.ass"), ASS).unwrap();
                spec.add_input("styled", "styled.ass").unwrap();
            }
            other => panic!("no fixture for {other}"),
        }
    }
    for (alias, name) in outputs {
        spec.add_output(alias, name).unwrap();
        std::fs::create_dir_all(dir.join("out").join(alias)).unwrap();
    }
    Job { dir, spec }
}

pub const SRT: &str = "1\n00:00:00,000 --> 00:00:05,000\nHello from SRT\n";

pub const ASS: &str = "[Script Info]\nScriptType: v4.00+\nPlayResX: 64\nPlayResY: 48\n\n\
[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, \
BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, \
Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding\n\
Style: Default,DejaVu Sans,16,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,\
1,1,0,2,2,2,2,1\n\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, \
MarginV, Effect, Text\nDialogue: 0,0:00:00.00,0:00:05.00,Default,,0,0,0,,Hello from ASS\n";

pub struct Run {
    pub stderr: String,
    pub opened: Vec<String>,
}

/// Whether strace can watch the runs; CI installs it (scripts/deps.sh), so there a missing
/// strace fails the tests instead of silently skipping the path checks.
pub fn strace_available() -> bool {
    let ok = Process::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "strace is missing (scripts/deps.sh installs it)"
    );
    ok
}

/// Runs `ffmpeg -loglevel debug <argv>` in the job directory, under strace when it is installed.
pub fn run(job: &Job, argv: &[String]) -> Run {
    let trace = job.dir.join("strace.txt");
    let mut cmd = if strace_available() {
        let mut c = Process::new("strace");
        c.args(["-f", "-qq", "-e", "trace=%file", "-o"])
            .arg(&trace)
            .arg("ffmpeg");
        c
    } else {
        Process::new("ffmpeg")
    };
    // `-loglevel debug` first (FFmpeg's early pass takes the first one), in place of the
    // platform's level that every rendered argv starts with.
    let rest = match argv {
        [flag, level, rest @ ..] if flag == "-loglevel" && level == FORCED_LOG_LEVEL => rest,
        _ => argv,
    };
    let out = cmd
        .args(["-loglevel", "debug"])
        .args(rest)
        // The worker runs FFmpeg with an empty environment (no HOME: fontconfig has no user
        // configuration or cache to look for).
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(&job.dir)
        .output()
        .expect("ffmpeg runs");
    let opened = std::fs::read_to_string(&trace)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("execve("))
        .filter_map(|l| {
            let start = l.find('"')? + 1;
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_owned())
        })
        .filter(|p| !p.is_empty())
        .collect();
    let _ = std::fs::remove_file(&trace);
    Run {
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        opened,
    }
}

/// `(matched name, argument)` for each argument FFmpeg's `split_commandline` consumed, e.g.
/// `("c", "'libx264'")`, `("stdin", "0")`, `("input url", "'in/in.mp4'")`, `("output url", "")`.
pub fn consumed(stderr: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for chunk in stderr.split("Reading option '").skip(1) {
        let Some(m) = chunk.find(" matched as ") else {
            continue;
        };
        let rest = &chunk[m + " matched as ".len()..];
        let line = rest.lines().next().unwrap_or("");
        let line = line.strip_suffix('.').unwrap_or(line);
        if let Some(r) = line.strip_prefix("option '") {
            let name = &r[..r.find('\'').unwrap()];
            let arg = &r[r.rfind(" with argument ").unwrap() + 15..];
            out.push((name.to_owned(), arg.to_owned()));
        } else if let Some(r) = line.strip_prefix("AVOption '") {
            let name = &r[..r.find('\'').unwrap()];
            let arg = &r[r.find(" with argument ").unwrap() + 15..];
            out.push((name.to_owned(), arg.to_owned()));
        } else if let Some(r) = line.strip_prefix("input url with argument ") {
            out.push(("input url".into(), r.to_owned()));
        } else if line.starts_with("output url") {
            out.push(("output url".into(), String::new()));
        } else {
            out.push(("?".into(), line.to_owned()));
        }
    }
    out
}

/// What FFmpeg must report consuming for this rendered argv, from its tree.
pub fn expected_consumed(cmd: &Command, spec: &IoSpec) -> Vec<(String, String)> {
    let q = |s: &str| format!("'{s}'");
    let mut out = vec![
        ("loglevel".to_owned(), q("debug")),
        ("hide_banner".into(), q("1")),
        ("stdin".into(), "0".into()),
        ("stats".into(), "0".into()),
        ("y".into(), q("1")),
        ("progress".into(), q("pipe:1")),
    ];
    for o in &cmd.globals {
        out.push(o.trace(spec));
    }
    for f in &cmd.files {
        for o in &f.options {
            out.push(o.trace(spec));
        }
        match &f.target {
            Target::Input { alias } => {
                for pair in forced_input_flags().chunks(2) {
                    out.push((pair[0][1..].to_owned(), q(pair[1])));
                }
                out.push(("input url".into(), q(&spec.input_path(alias).unwrap())));
            }
            Target::Output { .. } => out.push(("output url".into(), String::new())),
        }
    }
    out
}

/// A filter's `(option, value)` settings in order.
type Settings = Vec<(String, String)>;

/// Every filter instance FFmpeg configured: (`Parsed_<name>_<index>`, settings in order).
pub fn filter_settings(stderr: &str) -> BTreeSet<(String, Vec<(String, String)>)> {
    let mut by_addr: Vec<(String, String, Settings)> = Vec::new();
    for line in stderr.lines() {
        let Some(r) = line.strip_prefix('[') else {
            continue;
        };
        let Some((ctx, rest)) = r.split_once("] Setting '") else {
            continue;
        };
        let Some((inst, addr)) = ctx.split_once(" @ ") else {
            continue;
        };
        // Filters of parsed graphs are `Parsed_<name>_<index>`, or `<name>@<instance>`; others
        // (buffer sources, auto-inserted formats) are FFmpeg's own.
        let inst = match inst.strip_prefix("Parsed_") {
            Some(i) => i,
            None if inst.contains('@') => inst,
            None => continue,
        };
        let Some((key, value)) = rest.split_once("' to value '") else {
            continue;
        };
        let value = value.strip_suffix('\'').unwrap_or(value);
        let entry = match by_addr.iter_mut().find(|(a, _, _)| a == addr) {
            Some(e) => e,
            None => {
                by_addr.push((addr.to_owned(), inst.to_owned(), Vec::new()));
                by_addr.last_mut().unwrap()
            }
        };
        entry.2.push((key.to_owned(), value.to_owned()));
    }
    by_addr.into_iter().map(|(_, i, s)| (i, s)).collect()
}

/// What the tree says each filter of each graph is set to.
pub fn expected_settings(cmd: &Command) -> BTreeSet<(String, Vec<(String, String)>)> {
    let graphs = cmd
        .globals
        .iter()
        .chain(cmd.files.iter().flat_map(|f| f.options.iter()))
        .filter_map(|o| match &o.value {
            Value::Graph(g) => Some(g),
            _ => None,
        });
    let mut out = BTreeSet::new();
    for g in graphs {
        add_graph(&mut out, g);
    }
    out
}

fn add_graph(out: &mut BTreeSet<(String, Vec<(String, String)>)>, g: &Graph) {
    for (i, f) in g.filters().enumerate() {
        if f.options.is_empty() {
            continue;
        }
        out.insert((
            match &f.instance {
                Some(inst) => format!("{}@{inst}", f.name),
                None => format!("{}_{i}", f.name),
            },
            f.options
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        ));
    }
}

/// Paths outside the job that FFmpeg and the shared libraries it links open at start-up,
/// whatever the command (the time zone when a muxer dates its output): the loader and libraries, glibc/gcrypt/gnutls/selinux configuration
/// probes, and CPU/NUMA topology. None of them depends on the template.
const SYSTEM_PREFIXES: &[&str] = &[
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib64/",
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/gcrypt/",
    "/etc/gnutls/config",
    "/etc/selinux/config",
    "/selinux",
    "/sys/fs/selinux",
    "/proc/filesystems",
    "/proc/self/",
    "/proc/sys/crypto/fips_enabled",
    "/sys/devices/system/cpu/",
    "/sys/devices/system/node",
    "/dev/null",
    // glibc's time zone, read by localtime() (the dash muxer dates its manifest).
    "/etc/localtime",
    "/usr/share/zoneinfo/",
    // Fonts and fontconfig's configuration and cache, read by libass for subtitles=/ass=.
    "/etc/fonts",
    "/usr/share/fonts",
    "/usr/share/fontconfig",
    "/var/cache/fontconfig",
    "/usr/local/share/fonts",
];

/// Where fontconfig looks for a user's own configuration, fonts and cache. FFmpeg runs with an
/// empty environment, so with no HOME these resolve under `/`; they exist on no machine of
/// ours (checked below), and the jail gives no access to them (nor to anything else under `/`).
const PER_USER_FONTCONFIG: &[&str] = &[
    "/.config/fontconfig/",
    "/.cache/fontconfig/",
    "/.local/share/fonts",
];

/// Checks every path FFmpeg opened: inside `in/`, inside a declared output, or a system path.
pub fn check_paths(job: &Job, run: &Run) {
    for p in &run.opened {
        let rel = if p.starts_with('/') {
            match Path::new(p).strip_prefix(&job.dir) {
                Ok(r) => r.to_string_lossy().into_owned(),
                Err(_) => {
                    if let Some(user) = PER_USER_FONTCONFIG.iter().find(|s| p.starts_with(*s)) {
                        assert!(
                            !Path::new(user).exists(),
                            "{user} exists: fontconfig would read it"
                        );
                        continue;
                    }
                    assert!(
                        SYSTEM_PREFIXES.iter().any(|s| p.starts_with(s)),
                        "ffmpeg opened {p} outside the job and the system paths"
                    );
                    continue;
                }
            }
        } else {
            p.clone()
        };
        assert!(
            !rel.split('/').any(|c| c == ".."),
            "ffmpeg opened {rel} with .."
        );
        let ok = rel
            .strip_prefix("in/")
            .is_some_and(|n| job.spec.inputs.keys().any(|a| n.starts_with(a.as_str())))
            || rel
                .strip_prefix("out/")
                .is_some_and(|r| job.spec.output_of(r).is_some());
        assert!(ok, "ffmpeg opened {rel}, not a declared input or output");
    }
}

/// Renders `template`, runs it, and requires FFmpeg's trace to match the tree.
pub fn oracle(job: &Job, template: &str) -> Run {
    let argv = render(template, &job.spec, 1).unwrap_or_else(|e| panic!("{template}: {e}"));
    let cmd = parse_rendered(&argv, &job.spec).unwrap();
    let run = run(job, &argv);
    assert_eq!(
        consumed(&run.stderr),
        expected_consumed(&cmd, &job.spec),
        "{template}\nargv {argv:?}"
    );
    let seen = filter_settings(&run.stderr);
    let want = expected_settings(&cmd);
    assert!(
        want.is_subset(&seen) && seen.iter().all(|s| want.contains(s)),
        "{template}\nFFmpeg set {seen:#?}\nthe tree says {want:#?}\n{}",
        run.stderr
    );
    check_paths(job, &run);
    run
}
