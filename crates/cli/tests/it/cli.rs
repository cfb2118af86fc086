//! The `mpegflow` command as a user runs it: the real binary against a real platform, its
//! stdout, stderr and exit codes.

use crate::harness::*;
use mpegflow::client::ApiClient;
use mpegflow_api as api;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use uuid::Uuid;

/// The binary with a clean environment: a home of its own (no saved login unless a test
/// makes one), and the given API settings.
struct Cli {
    home: PathBuf,
    url: String,
    key: String,
}

impl Cli {
    async fn new(tp: &TestPlatform, org: &str) -> (Cli, ApiClient) {
        let (_, key) = tp.platform.store().create_org(org).await.unwrap();
        let home = tp.path(&format!("home-{org}"));
        std::fs::create_dir_all(&home).unwrap();
        let cli = Cli {
            home,
            url: tp.platform.api_url.clone(),
            key: key.expose().to_owned(),
        };
        let client = ApiClient::new(&cli.url, &cli.key);
        (cli, client)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_mpegflow"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("MPEGFLOW_API_URL", &self.url)
            .env("MPEGFLOW_API_KEY", &self.key)
            .current_dir(&self.home)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Asserts that `o`'s stderr says `what`.
fn assert_stderr_says(o: &Output, what: &str) {
    let stderr = text(&o.stderr);
    assert!(stderr.contains(what), "{what:?} not in: {stderr}");
}

/// The ids of a `jobs list` or `assets list` table (the first column under the header).
fn table_ids(o: &Output) -> Vec<String> {
    let table = text(&o.stdout);
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("ID ")),
        "no header: {table}"
    );
    lines
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect()
}

/// The cursor of the next page that a one-page `<list>` names on stderr, if it names one.
fn next_page(o: &Output, list: &str) -> Option<String> {
    let prefix = format!("more: mpegflow {list} --cursor ");
    text(&o.stderr)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
}

/// `mpegflow run -i <input> -o <output> <flags…> -- <command…>`.
fn run_args<'a>(
    input: &'a str,
    output: &'a str,
    flags: &[&'a str],
    command: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["run", "-i", input, "-o", output];
    args.extend(flags);
    args.push("--");
    args.extend(command);
    args
}

/// The platform, a CLI user of org "acme" with its API client, and a clip in the user's home.
async fn start(workers: usize, seconds: u32, size: &str) -> (TestPlatform, Cli, ApiClient, String) {
    let tp = TestPlatform::start(workers, test_control_config()).await;
    let (cli, client) = Cli::new(&tp, "acme").await;
    let input = clip(&cli.home, "in.mp4", seconds, size).await;
    let input_arg = format!("in={}", input.display());
    (tp, cli, client, input_arg)
}

async fn asset_count(client: &ApiClient) -> usize {
    client
        .list_assets(&api::ListAssetsQuery {
            cursor: None,
            limit: Some(200),
        })
        .await
        .unwrap()
        .assets
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_json_no_wait_wait_and_download_through_the_binary() {
    let (tp, cli, client, input_arg) = start(1, 1, "160x120").await;

    // --json: the finished job on stdout, parseable as the API's Job, outputs written.
    let out = cli
        .run(&run_args(
            &input_arg,
            "out=result/o.mp4",
            &["--json"],
            &["-i {{in}} -c:v libx264 -preset ultrafast {{out}}"],
        ))
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let job: api::Job = serde_json::from_slice(&out.stdout).expect("--json prints a Job");
    assert_eq!(job.state, api::JobState::Succeeded);
    let file = &job.outputs[&api::Alias::parse("out").unwrap()].files[0];
    let written = std::fs::read(cli.home.join("result/o.mp4")).unwrap();
    assert_eq!(sha256_hex(&written), file.sha256.as_str());
    // Off a terminal, progress is plain lines (no escape codes).
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("submitted") && stderr.contains("succeeded"),
        "{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    // What was written, as media.
    assert!(stderr.contains("h264 160x120"), "{stderr}");

    // --no-wait: the id on stdout, then `jobs wait` and `jobs download`.
    let out = cli
        .run(&run_args(
            &input_arg,
            "out=o.mkv",
            &["--no-wait"],
            &["-i", "{{in}}", "-c", "copy", "{{out}}"],
        ))
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let id: Uuid = text(&out.stdout)
        .trim()
        .parse()
        .expect("--no-wait prints the job id");
    let out = cli.run(&["jobs", "wait", &id.to_string(), "--json"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let waited: api::Job = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((waited.id, waited.state), (id, api::JobState::Succeeded));
    let out = cli
        .run(&["jobs", "download", &id.to_string(), "fetched"])
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let bytes = std::fs::read(cli.home.join("fetched/o.mkv")).unwrap();
    let recorded = &waited.outputs[&api::Alias::parse("out").unwrap()].files[0];
    assert_eq!(sha256_hex(&bytes), recorded.sha256.as_str());

    // `jobs list` has a header and both jobs; `--json` pages parse.
    let out = cli.run(&["jobs", "list"]).await;
    let listing = text(&out.stdout);
    assert!(listing.starts_with("ID "), "{listing}");
    assert!(listing.contains(&id.to_string()) && listing.contains(&job.id.to_string()));
    let out = cli
        .run(&["jobs", "list", "--limit", "1", "--all", "--json"])
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let pages: Vec<api::JobList> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(pages.iter().map(|p| p.jobs.len()).sum::<usize>(), 2);

    // One page at a time: the newest job, and on stderr the command for the next page, which
    // `--cursor` follows to the older job and a last page that names none.
    let out = cli.run(&["jobs", "list", "--limit", "1"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(table_ids(&out), [id.to_string()]);
    let next = next_page(&out, "jobs list").expect("a next page");
    let out = cli
        .run(&["jobs", "list", "--limit", "1", "--cursor", &next])
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(table_ids(&out), [job.id.to_string()]);
    assert_eq!(next_page(&out, "jobs list"), None, "{}", text(&out.stderr));

    // `assets list` pages the same way: two uploads and two outputs, newest first.
    let out = cli.run(&["assets", "list"]).await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let all = table_ids(&out);
    assert_eq!(all.len(), 4, "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).starts_with("ID "),
        "{}",
        text(&out.stdout)
    );
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = vec!["assets", "list", "--limit", "3"];
        if let Some(c) = &cursor {
            args.extend(["--cursor", c.as_str()]);
        }
        let out = cli.run(&args).await;
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        paged.extend(table_ids(&out));
        match next_page(&out, "assets list") {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let out = cli
        .run(&["assets", "list", "--limit", "3", "--all", "--json"])
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    let pages: Vec<api::AssetList> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap();
    let json_ids: Vec<String> = pages
        .iter()
        .flat_map(|p| p.assets.iter().map(|a| a.id.to_string()))
        .collect();
    assert_eq!((pages.len(), json_ids), (2, all));
    assert_eq!(
        client.job(id).await.unwrap().state,
        api::JobState::Succeeded
    );
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong_and_nothing_is_uploaded_for_a_refused_command() {
    let (tp, cli, client, input_arg) = start(0, 1, "160x120").await;

    // A refused template: exit 2, the argument named, and not one byte uploaded.
    let out = cli
        .run(&run_args(
            &input_arg,
            "out=o.mp4",
            &[],
            &["-i {{in}} -badopt 1 {{out}}"],
        ))
        .await;
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert_stderr_says(&out, "\"-badopt\"");
    assert_eq!(
        asset_count(&client).await,
        0,
        "a refused command uploaded its input"
    );

    // A repeated alias is refused before anything happens.
    let out = cli
        .run(&run_args(
            &input_arg,
            "out=o.mp4",
            &["-i", &input_arg],
            &["-i {{in}} {{out}}"],
        ))
        .await;
    assert_eq!(code(&out), 2);
    assert_stderr_says(&out, "given twice");

    // Not found, bad key, bad URL, server unreachable, bad flag.
    let missing = Uuid::now_v7().to_string();
    assert_eq!(code(&cli.run(&["jobs", "show", &missing]).await), 4);
    let mut bad_key = cli.command(&["jobs", "list"]);
    bad_key.env("MPEGFLOW_API_KEY", format!("mfk_{}", "a".repeat(43)));
    let out = bad_key.output().await.unwrap();
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "no header before a refusal");
    let mut no_scheme = cli.command(&["jobs", "list"]);
    no_scheme.env("MPEGFLOW_API_URL", "127.0.0.1:8080");
    let out = no_scheme.output().await.unwrap();
    assert_eq!(code(&out), 2);
    assert_stderr_says(&out, "http://");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut unreachable = cli.command(&["jobs", "list"]);
    unreachable.env("MPEGFLOW_API_URL", &dead);
    assert_eq!(code(&unreachable.output().await.unwrap()), 5);
    assert_eq!(
        code(&cli.run(&["jobs", "list", "--state", "cancelled"]).await),
        2
    );

    // A pool without a live worker: said before the job waits.
    tp.platform
        .store()
        .create_pool("empty", None)
        .await
        .unwrap();
    let out = cli
        .run(&run_args(
            &input_arg,
            "out=o.mp4",
            &["--pool", "empty", "--no-wait"],
            &["-i {{in}} {{out}}"],
        ))
        .await;
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_stderr_says(&out, "pool empty has no live worker");
    let out = cli.run(&["pools", "list"]).await;
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("empty ") && l.ends_with(" 0")),
        "{}",
        text(&out.stdout)
    );

    // Help documents the exit codes; completions are generated.
    let out = cli.run(&["run", "--help"]).await;
    assert!(text(&out.stdout).contains("Exit codes:"));
    let out = cli.run(&["completions", "bash"]).await;
    assert_eq!(code(&out), 0);
    assert!(text(&out.stdout).contains("mpegflow"));
    tp.stop().await;
}

/// Ctrl-C asks the server to cancel the job, says so, and the job ends canceled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_cancels_the_job_on_the_server() {
    let (tp, cli, client, input_arg) = start(1, 30, "640x360").await;
    let child = cli
        .command(&run_args(
            &input_arg,
            "out=o.mp4",
            &[],
            &["-i {{in}} -c:v libx264 -preset veryslow {{out}}"],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = eventually("the job to run", Duration::from_secs(60), || async {
        let page = client
            .list_jobs(&api::ListJobsQuery::default())
            .await
            .ok()?;
        page.jobs
            .into_iter()
            .find(|j| j.state == api::JobState::Running)
    })
    .await;
    let pid = child.id().unwrap() as i32;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("run exits after Ctrl-C")
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("canceling job {}", running.id)),
        "{stderr}"
    );
    assert_eq!(
        client.job(running.id).await.unwrap().state,
        api::JobState::Canceled
    );
    tp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_saves_the_settings_privately_and_later_commands_use_them() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let (cli, _) = Cli::new(&tp, "acme").await;
    let mut login = cli.command(&["login", "--api-url", &cli.url]);
    login
        .env_remove("MPEGFLOW_API_KEY")
        .env_remove("MPEGFLOW_API_URL")
        .stdin(Stdio::piped());
    let mut child = login
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{}\n", cli.key).as_bytes())
            .await
            .unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let saved = cli.home.join(".config/mpegflow/config.toml");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&saved).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let mut list = cli.command(&["pools", "list"]);
    list.env_remove("MPEGFLOW_API_KEY")
        .env_remove("MPEGFLOW_API_URL");
    let out = list.output().await.unwrap();
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("default"));
    // The saved key goes only to the server it was saved for: another URL gets no key at all.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let mut other = cli.command(&["pools", "list"]);
    other.env_remove("MPEGFLOW_API_KEY").env(
        "MPEGFLOW_API_URL",
        format!("http://{}", elsewhere.local_addr().unwrap()),
    );
    let out = other.output().await.unwrap();
    assert_eq!(code(&out), 2, "{}", text(&out.stderr));
    assert_stderr_says(&out, "the saved login is for");
    assert!(
        elsewhere.accept().is_err(),
        "the command connected to another server"
    );
    // A wrong key is refused at login and saves nothing new.
    std::fs::remove_file(&saved).unwrap();
    let mut bad = cli.command(&[
        "login",
        "--api-url",
        &cli.url,
        "--api-key",
        &format!("mfk_{}", "b".repeat(43)),
    ]);
    bad.env_remove("MPEGFLOW_API_KEY");
    assert_eq!(code(&bad.output().await.unwrap()), 3);
    assert!(!Path::new(&saved).exists());
    tp.stop().await;
}

/// `login` sends the key it is given to the server before saving it: over plain http to
/// another machine it says so first, as every other command does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_warns_before_sending_a_key_over_plain_http_to_another_machine() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let (cli, _) = Cli::new(&tp, "acme").await;
    // 0.0.0.0 is not a loopback address; nothing answers on port 1, so nothing is saved.
    let mut login = cli.command(&["login", "--api-url", "http://0.0.0.0:1"]);
    login.env_remove("MPEGFLOW_API_URL");
    let out = login.output().await.unwrap();
    assert_ne!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("plain http"),
        "no warning: {}",
        text(&out.stderr)
    );
    assert!(!cli.home.join(".config/mpegflow/config.toml").exists());
    tp.stop().await;
}

/// A saved login the CLI cannot read (edited by hand: a misspelt field, a value without quotes)
/// is refused naming the file and the line, without printing the line: it may hold the key,
/// and stderr ends up in terminals' scrollback and CI logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_saved_login_is_refused_without_printing_the_key() {
    let home = tempdir::TempDir::new("mpegflow-cli-config");
    let config = home.path().join(".config/mpegflow");
    std::fs::create_dir_all(&config).unwrap();
    let secret = format!("mfk_{}", "s".repeat(43));
    for saved in [
        format!("api_url = \"http://127.0.0.1:1\"\napi_kye = \"{secret}\"\n"),
        format!("api_url = \"http://127.0.0.1:1\"\napi_key = {secret}\n"),
        format!("api_url = \"http://127.0.0.1:1\"\napi_key = \"{secret}\n"),
    ] {
        std::fs::write(config.join("config.toml"), &saved).unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mpegflow"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .args(["pools", "list"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(code(&out), 2, "{stderr}");
        assert!(stderr.contains("config.toml"), "{stderr}");
        assert!(stderr.contains("line 2"), "{stderr}");
        assert!(
            !stderr.contains(&secret[..12]),
            "the key was printed: {stderr}"
        );
    }
}
