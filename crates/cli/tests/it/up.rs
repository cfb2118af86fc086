//! `mpegflow up` as a newcomer runs it: the real binary (target/debug/mpegflow) as a child
//! process, with its own private PostgreSQL cluster and workers, every port chosen free, and
//! its data directory under a parent only its owner may enter (mode 0700, like a home
//! directory). Every process and cluster a test starts is stopped by pid, even when it fails.

use crate::harness::{eventually, root_setup_available, tempdir::TempDir};
use mpegflow_objstore::embedded::EmbeddedConfig;
use mpegflow_objstore::{Presigner, S3Config};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mpegflow");

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Pids of processes with an argument naming `path` or a file under it.
fn processes_using(path: &Path) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0)
                        .any(|a| Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(path))
                })
                .unwrap_or(false)
        })
        .collect()
}

fn stop_pid(pid: i32, sig: i32) {
    // SAFETY: kill takes plain integers; the pid is one this test's `up` started.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A data directory for `up` under a fresh mode-0700 parent. On drop it stops whatever an
/// `up` on it may have left (the cluster named by its postmaster.pid, processes working under
/// it) and removes it, with the directory `up` placed its shared files in.
struct Place {
    parent: TempDir,
}

impl Place {
    fn new() -> Place {
        let parent = TempDir::new("mpegflow-up");
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Place { parent }
    }

    fn data(&self) -> PathBuf {
        self.parent.path().join("data")
    }

    /// Where `pg/` and `work/` live: the data directory, or where its `shared` link points.
    fn shared(&self) -> PathBuf {
        std::fs::read_link(self.data().join("shared")).unwrap_or_else(|_| self.data())
    }

    fn pgdata(&self) -> PathBuf {
        self.shared().join("pg").join("pgdata")
    }

    /// The pid in the cluster's postmaster.pid, if the file exists.
    fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.pgdata().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    fn worker_pids(&self) -> Vec<i32> {
        processes_using(&self.shared().join("work"))
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.data().join(name)).unwrap_or_default()
    }

    fn env_value(&self, name: &str) -> String {
        self.file("demo.env")
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} in demo.env"))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        for pid in self.worker_pids() {
            stop_pid(pid, libc::SIGKILL);
        }
        if let Some(pid) = self.postmaster_pid().filter(|p| alive(*p)) {
            // SIGINT: PostgreSQL's fast shutdown.
            stop_pid(pid, libc::SIGINT);
        }
        let shared = self.shared();
        if shared.starts_with(mpegflow::layout::SHARED_ROOT) {
            let _ = std::fs::remove_dir_all(&shared);
        }
    }
}

/// One `mpegflow up` child with its stderr in a file.
struct Up {
    child: Child,
    log: PathBuf,
}

impl Up {
    fn start(place: &Place, args: &[&str], env: &[(&str, &str)]) -> Up {
        Up::start_bin(Path::new(BIN), place, args, env)
    }

    fn start_bin(bin: &Path, place: &Place, args: &[&str], env: &[(&str, &str)]) -> Up {
        Up::start_with(bin, place, args, env, false)
    }

    /// With `own_group`, `up` leads a process group of its own, as a shell starts a command:
    /// a terminal's Ctrl-C reaches it and its workers at once.
    fn start_with(
        bin: &Path,
        place: &Place,
        args: &[&str],
        env: &[(&str, &str)],
        own_group: bool,
    ) -> Up {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = place.parent.path().join(format!("up-{n}.log"));
        let mut cmd = Command::new(bin);
        cmd.arg("up").arg("--data-dir").arg(place.data()).args(args);
        // Nothing of the test's environment: a private cluster, the embedded store, defaults.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("MPEGFLOW_") || k == "DATABASE_URL" || k == "NO_COLOR" {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("MPEGFLOW_API_ADDR", "127.0.0.1:0")
            .env("MPEGFLOW_GRPC_ADDR", "127.0.0.1:0")
            .env("MPEGFLOW_S3_ADDR", "127.0.0.1:0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if own_group {
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start target/debug/mpegflow");
        Up { child, log }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until the log shows `what` (panics, with the log, if `up` exits first).
    fn wait_for(&mut self, what: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(what) {
                return log;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("up exited ({status}) before {what:?}:\n{log}");
            }
            assert!(
                start.elapsed() < timeout,
                "no {what:?} within {timeout:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_serving(&mut self) -> String {
        self.wait_for("serving; press Ctrl-C to stop", Duration::from_secs(60))
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "up still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM (what Ctrl-C does too) and the exit status.
    fn stop(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.wait_exit(Duration::from_secs(40))
    }

    /// The value after `label` in the log, up to the next space or quote.
    fn logged_url(&self, label: &str) -> String {
        let log = self.log();
        let at = log
            .find(label)
            .unwrap_or_else(|| panic!("{label} in:\n{log}"))
            + label.len();
        log[at..]
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '"')
            .next()
            .unwrap()
            .to_owned()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a stopped `up` must leave: no PostgreSQL on its cluster, no worker, no child.
fn assert_nothing_left(place: &Place, up: &mut Up) {
    assert!(
        up.child.try_wait().unwrap().is_some(),
        "up is still running"
    );
    assert_eq!(
        place.postmaster_pid(),
        None,
        "the cluster is still running (postmaster.pid is there)"
    );
    assert_eq!(
        processes_using(&place.pgdata()),
        Vec::<i32>::new(),
        "PostgreSQL processes left on {}",
        place.pgdata().display()
    );
    assert_eq!(place.worker_pids(), Vec::<i32>::new(), "workers left");
}

/// An HTTP client that ignores proxy settings.
fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// GET /v1/jobs with `key`: the HTTP status.
async fn list_jobs_status(api: &str, key: &str) -> u16 {
    http()
        .get(format!("{api}/v1/jobs"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_from_a_data_dir_under_a_private_parent_runs_its_sample_job() {
    if !root_setup_available("running PostgreSQL and workers as other uids") {
        return;
    }
    let place = Place::new();
    // The binaries under the private parent too, as in a checkout in root's home.
    let bin = place.parent.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let worker = Path::new(BIN).with_file_name("mpegflow-worker");
    let dispatcher = Path::new(BIN).with_file_name("mpegflow-dispatcher");
    for (from, name) in [
        (Path::new(BIN), "mpegflow"),
        (worker.as_path(), "mpegflow-worker"),
        (dispatcher.as_path(), "mpegflow-dispatcher"),
    ] {
        if std::fs::hard_link(from, bin.join(name)).is_err() {
            std::fs::copy(from, bin.join(name)).unwrap();
        }
    }
    let mut up = Up::start_bin(&bin.join("mpegflow"), &place, &["--workers", "2"], &[]);
    let log = up.wait_serving();
    assert!(log.contains("sample job"), "{log}");
    let out = crate::harness::ffprobe(&place.data().join("sample-160p.mp4"));
    assert_eq!(out["streams"][0]["height"], 160, "{out}");

    // Nothing was opened to other users: the parent is still 0700. The cluster and the
    // workers' directories are where the postgres user and worker uids can reach them.
    let parent_mode = std::fs::metadata(place.parent.path()).unwrap().mode() & 0o7777;
    assert_eq!(parent_mode, 0o700);
    let shared = place.shared();
    assert!(
        shared.starts_with(mpegflow::layout::SHARED_ROOT),
        "{}",
        shared.display()
    );
    let (pg_uid, _) = mpegflow::pg::lookup_user("postgres").unwrap();
    assert_eq!(std::fs::metadata(place.pgdata()).unwrap().uid(), pg_uid);
    // The workers dropped root: each runs as a uid of its own.
    let workers = place.worker_pids();
    assert!(!workers.is_empty());
    let uids: Vec<u32> = workers
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().nth(1)?.parse().ok())
        })
        .collect();
    assert!(uids.iter().any(|&u| u != 0), "worker uids {uids:?}");

    assert!(up.stop().success(), "{}", up.log());
    assert_nothing_left(&place, &mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_up_stops_what_it_started_and_the_next_up_works() {
    let place = Place::new();
    // The API's port is taken: found only after the store and the cluster are up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut up = Up::start(&place, &["--workers", "2"], &[("MPEGFLOW_API_ADDR", &addr)]);
    let status = up.wait_exit(Duration::from_secs(60));
    let log = up.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("MPEGFLOW_API_ADDR") && log.contains(&addr),
        "the message names the setting and the address:\n{log}"
    );
    assert!(
        place.pgdata().join("PG_VERSION").exists(),
        "the cluster was started before the failure:\n{log}"
    );
    assert_nothing_left(&place, &mut up);

    // A stop requested while the sample job waits (its workers never register) stops the
    // workers too.
    let standin = place.parent.path().join("standin-worker.sh");
    std::fs::write(&standin, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
    std::fs::set_permissions(&standin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut up = Up::start(
        &place,
        &["--workers", "2"],
        &[("MPEGFLOW_WORKER_BIN", standin.to_str().unwrap())],
    );
    up.wait_for("demo org credentials", Duration::from_secs(60));
    let workers = eventually("the workers", Duration::from_secs(10), || {
        let w = place.worker_pids();
        async move { (w.len() >= 2).then_some(w) }
    })
    .await;
    let status = up.stop();
    assert_eq!(status.code(), Some(130), "{}", up.log());
    assert!(workers.iter().all(|p| !alive(*p)), "{workers:?}");
    assert_nothing_left(&place, &mut up);

    drop(taken);
    let mut up = Up::start(&place, &["--workers", "1", "--no-sample"], &[]);
    up.wait_serving();
    assert!(up.stop().success(), "{}", up.log());
    assert_nothing_left(&place, &mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_after_a_crash_recovers_its_cluster_and_workers_and_keeps_the_one_demo_key() {
    let place = Place::new();
    let mut first = Up::start(&place, &["--workers", "1", "--no-sample"], &[]);
    first.wait_serving();
    let key = place.file("demo-api-key").trim().to_owned();
    assert_eq!(key, place.env_value("MPEGFLOW_API_KEY"));
    assert_eq!(
        std::fs::metadata(place.data().join("demo-api-key"))
            .unwrap()
            .mode()
            & 0o777,
        0o600
    );
    assert_eq!(
        list_jobs_status(&place.env_value("MPEGFLOW_API_URL"), &key).await,
        200
    );
    let postmaster = place.postmaster_pid().expect("a running cluster");
    let workers = place.worker_pids();
    assert!(!workers.is_empty());

    // A crash: PostgreSQL and the workers outlive it.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.pid(), libc::SIGKILL) };
    first.wait_exit(Duration::from_secs(10));
    assert!(alive(postmaster), "the cluster outlived the crash");

    let mut second = Up::start(&place, &["--workers", "1", "--no-sample"], &[]);
    second.wait_serving();
    assert!(!alive(postmaster), "the orphaned cluster was stopped");
    assert!(workers.iter().all(|p| !alive(*p)), "orphaned workers");
    assert_eq!(
        place.file("demo-api-key").trim(),
        key,
        "the demo key is kept"
    );
    assert_eq!(
        list_jobs_status(&place.env_value("MPEGFLOW_API_URL"), &key).await,
        200
    );
    // Restarts do not pile up keys: the demo org has one live key.
    let db = sqlx::PgPool::connect(&place.env_value("DATABASE_URL"))
        .await
        .unwrap();
    let org: uuid::Uuid = place.env_value("MPEGFLOW_ORG_ID").parse().unwrap();
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL",
    )
    .bind(org)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(live, 1);

    // A second `up` on the same data directory is refused while this one runs.
    let mut third = Up::start(&place, &["--no-sample"], &[]);
    assert!(!third.wait_exit(Duration::from_secs(30)).success());
    assert!(
        third
            .log()
            .contains(&format!("another `mpegflow up` (pid {})", second.pid())),
        "{}",
        third.log()
    );
    assert!(second.child.try_wait().unwrap().is_none());

    assert!(second.stop().success(), "{}", second.log());
    assert_nothing_left(&place, &mut second);

    // A stale postmaster.pid whose pid now belongs to another live process (pids are reused
    // after a crash or a reboot): PostgreSQL alone would refuse to start ("is another
    // postmaster running?").
    let mut unrelated = Command::new("sleep").arg("60").spawn().unwrap();
    let stale = format!(
        "{}\n{}\n1700000000\n5432\n\n127.0.0.1\n  5432001  0\nready\n",
        unrelated.id(),
        place.pgdata().display()
    );
    let pid_file = place.pgdata().join("postmaster.pid");
    std::fs::write(&pid_file, stale).unwrap();
    let owner = std::fs::metadata(place.pgdata()).unwrap();
    std::os::unix::fs::chown(&pid_file, Some(owner.uid()), Some(owner.gid())).unwrap();
    let mut fourth = Up::start(&place, &["--workers", "0", "--no-sample"], &[]);
    fourth.wait_serving();
    assert!(
        matches!(unrelated.try_wait(), Ok(None)),
        "the unrelated process was left alone"
    );
    let _ = unrelated.kill();
    let _ = unrelated.wait();
    assert!(fourth.stop().success(), "{}", fourth.log());
    assert_nothing_left(&place, &mut fourth);
}

/// An embedded store on a free port with a key pair of its own, in a directory of its own;
/// stopped on drop.
struct Store {
    endpoint: String,
    cfg: EmbeddedConfig,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: TempDir,
}

impl Store {
    async fn start(bucket: &str, access_key: &str, secret_key: &str) -> Store {
        let dir = TempDir::new("mpegflow-up-s3");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cfg = EmbeddedConfig {
            root: dir.path().join("s3"),
            bucket: bucket.into(),
            access_key: access_key.into(),
            secret_key: secret_key.into(),
            body_idle_timeout: mpegflow_objstore::embedded::DEFAULT_BODY_IDLE_TIMEOUT,
        };
        let task = tokio::spawn(mpegflow_objstore::embedded::serve(
            listener,
            cfg.clone(),
            std::future::pending(),
        ));
        Store {
            endpoint,
            cfg,
            task,
            _dir: dir,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A presigner for `bucket` at `endpoint` (path style, us-east-1) with this key pair.
fn presigner(endpoint: &str, bucket: &str, access_key: &str, secret_key: &str) -> Presigner {
    Presigner::new(&S3Config {
        endpoint: endpoint.to_owned(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        path_style: true,
        access_key: access_key.into(),
        secret_key: secret_key.into(),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_s3_secret_bucket_key_or_region_fails_up_fast_naming_the_setting() {
    // An "external" store: the embedded one, with a key pair of its own.
    let store = Store::start("tenant-media", "AKUPTEST", "the-right-secret").await;
    let settings = |bucket: &'static str, access: &'static str, secret: &'static str| {
        vec![
            ("MPEGFLOW_S3_ENDPOINT", store.endpoint.clone()),
            ("MPEGFLOW_S3_REGION", "us-east-1".to_owned()),
            ("MPEGFLOW_S3_BUCKET", bucket.to_owned()),
            ("MPEGFLOW_S3_ACCESS_KEY", access.to_owned()),
            ("MPEGFLOW_S3_SECRET_KEY", secret.to_owned()),
        ]
    };
    let cases = [
        (
            settings("tenant-media", "AKUPTEST", "a-wrong-secret"),
            "MPEGFLOW_S3_SECRET_KEY is wrong",
            "SignatureDoesNotMatch",
        ),
        (
            settings("no-such-bucket", "AKUPTEST", "the-right-secret"),
            "MPEGFLOW_S3_BUCKET is wrong",
            "NoSuchBucket",
        ),
        (
            settings("tenant-media", "AKNOBODY", "the-right-secret"),
            "MPEGFLOW_S3_ACCESS_KEY is wrong",
            "NotSignedUp",
        ),
        (
            {
                let mut s = settings("tenant-media", "AKUPTEST", "the-right-secret");
                s[1].1 = "eu-west-1".to_owned();
                s
            },
            "MPEGFLOW_S3_REGION is wrong",
            "AuthorizationQueryParametersError",
        ),
    ];
    let place = Place::new();
    for (env, setting, code) in &cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut up = Up::start(&place, &["--workers", "1"], &env);
        let status = up.wait_exit(Duration::from_secs(30));
        let log = up.log();
        assert!(!status.success(), "{log}");
        assert!(
            log.contains(setting) && log.contains(code),
            "{setting} / {code}:\n{log}"
        );
        assert!(!log.contains("the-right-secret") && !log.contains("a-wrong-secret"));
        // Checked before anything else started: no cluster was even created, nothing placed.
        assert!(!place.pgdata().exists(), "{log}");
        assert!(!place.data().join("shared").exists(), "{log}");
        assert_nothing_left(&place, &mut up);
    }

    // The right settings start, and the probe leaves no object behind.
    let env = settings("tenant-media", "AKUPTEST", "the-right-secret");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut up = Up::start(&place, &["--workers", "0", "--no-sample"], &env);
    up.wait_serving();
    assert!(up.stop().success(), "{}", up.log());
    let probe_dir = store.cfg.root.join(&store.cfg.bucket).join("_mpegflow");
    let left: Vec<PathBuf> = walk(&probe_dir)
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "probe objects left: {left:?}");
    assert!(!up.log().contains("could not delete"), "{}", up.log());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A request to the store of a running `up` signed with a key pair it does not know.
async fn forged_store_request(endpoint: &str) -> u16 {
    let p = presigner(endpoint, "mpegflow", "MFFORGED", "forged");
    let url = p.get("orgs/someone/asset", Duration::from_secs(60)).url;
    http().get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_logs_carry_no_colour_codes_off_a_terminal_and_json_lines_parse() {
    let place = Place::new();

    // Text, to a file: no ESC byte, and a refused tenant request is a WARN of MpegFlow's
    // store, not an ERROR of the s3s library.
    let mut up = Up::start(&place, &["--workers", "1", "--no-sample"], &[]);
    up.wait_serving();
    let endpoint = up.logged_url("object store");
    assert_eq!(forged_store_request(&endpoint).await, 403);
    assert!(up.stop().success());
    let bytes = std::fs::read(&up.log).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!bytes.contains(&0x1b), "colour codes in:\n{text}");
    let refusal = text
        .lines()
        .find(|l| l.contains("object store refused a request"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{text}"));
    assert!(
        refusal.contains(" WARN ") && refusal.contains("mpegflow_objstore::embedded"),
        "{refusal}"
    );
    assert!(
        !text.contains(" s3s::") && !text.contains("ERROR"),
        "{text}"
    );
    // The workers' own log files carry none either.
    let mut logged = 0;
    for e in std::fs::read_dir(place.data().join("logs")).unwrap() {
        let log = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!log.contains(&0x1b), "{}", String::from_utf8_lossy(&log));
        logged += log.len();
    }
    assert!(logged > 0, "the workers logged nothing");

    // JSON: every line of stderr is a JSON object, and so is every line the workers log.
    for e in std::fs::read_dir(place.data().join("logs")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let mut up = Up::start(
        &place,
        &["--workers", "1", "--no-sample"],
        &[("MPEGFLOW_LOG_FORMAT", "json")],
    );
    up.wait_serving();
    // The worker starts beside `up`'s own serving line: wait until it has logged something.
    let logs = place.data().join("logs");
    eventually(
        "the worker's first log line",
        Duration::from_secs(60),
        || {
            let logged = std::fs::read_dir(&logs)
                .is_ok_and(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)));
            async move { logged.then_some(()) }
        },
    )
    .await;
    let endpoint = up.logged_url("object store");
    assert_eq!(forged_store_request(&endpoint).await, 403);
    assert!(up.stop().success());
    let log = up.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(events.len() >= 3, "{log}");
    for e in &events {
        assert!(e["level"].is_string() && e["target"].is_string(), "{e}");
        assert!(!e["target"].as_str().unwrap().starts_with("s3s"), "{e}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["target"] == "mpegflow_objstore::embedded"
                && e["level"] == "WARN"
                && e["fields"]["code"] == "NotSignedUp"),
        "{log}"
    );
    assert!(events
        .iter()
        .any(|e| e["fields"]["message"] == "serving; press Ctrl-C to stop"));
    let mut worker_lines = 0;
    for e in std::fs::read_dir(place.data().join("logs")).unwrap() {
        let log = std::fs::read_to_string(e.unwrap().path()).unwrap();
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a worker's log line is not JSON ({e}): {line:?}"));
            assert!(event["level"].is_string(), "{event}");
            worker_lines += 1;
        }
    }
    assert!(worker_lines > 0, "the worker logged nothing");

    // An unknown format is refused, naming the variable.
    let mut up = Up::start(&place, &["--no-sample"], &[("MPEGFLOW_LOG_FORMAT", "xml")]);
    assert!(!up.wait_exit(Duration::from_secs(10)).success());
    assert!(up.log().contains("MPEGFLOW_LOG_FORMAT"), "{}", up.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_deletes_only_plain_keys_of_an_org_or_the_probe() {
    use mpegflow_objstore::PutSpec;
    let store = Store::start("mpegflow", "AKDEL", "delete-test-secret").await;
    // Signed with the platform's own key: the store, not the signature, must refuse.
    let cfg = &store.cfg;
    let p = presigner(
        &store.endpoint,
        &cfg.bucket,
        &cfg.access_key,
        &cfg.secret_key,
    );
    let http = http();
    let ttl = Duration::from_secs(60);
    let body = b"a stored result".to_vec();
    for key in [
        "orgs/o/jobs/j/out.mp4",
        "_mpegflow/probe/n1/write-once",
        "_mpegflow/probe/../orgs/o/x",
        "elsewhere/x",
    ] {
        let put = p
            .put(
                key,
                ttl,
                &PutSpec {
                    size: body.len() as u64,
                    sha256_hex: None,
                    content_type: None,
                },
            )
            .unwrap();
        let mut req = http.put(&put.url).body(body.clone());
        for (k, v) in &put.headers {
            if k != "content-length" {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        let stored = req.send().await.unwrap().status().is_success();
        let deleted = http.delete(p.delete(key, ttl).url).send().await.unwrap();
        let read = http.get(p.get(key, ttl).url).send().await.unwrap();
        if key == "_mpegflow/probe/n1/write-once" || key == "orgs/o/jobs/j/out.mp4" {
            assert!(stored && deleted.status().is_success(), "{key}");
            assert_eq!(read.status(), 404, "{key}");
        } else {
            assert_eq!(deleted.status(), 403, "{key}");
            if stored {
                assert_eq!(read.bytes().await.unwrap(), body, "{key}");
            }
        }
    }
}

/// The `--work-dir` a process was started with.
fn work_dir_of(pid: i32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == b"--work-dir")
        .map(|w| PathBuf::from(std::ffi::OsStr::from_bytes(w[1])))
}

/// The work directories of the workers running now (a root worker's spawn helper shares its
/// worker's).
fn live_work_dirs(place: &Place) -> std::collections::BTreeSet<PathBuf> {
    place
        .worker_pids()
        .into_iter()
        .filter_map(work_dir_of)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_replaces_a_worker_that_dies_and_a_ctrl_c_replaces_none() {
    let place = Place::new();
    let mut up = Up::start_with(
        Path::new(BIN),
        &place,
        &["--workers", "2", "--no-sample"],
        &[],
        true,
    );
    up.wait_serving();
    let before = eventually("two workers", Duration::from_secs(30), || {
        let dirs = live_work_dirs(&place);
        async move { (dirs.len() == 2).then_some(dirs) }
    })
    .await;
    // The worker itself: the oldest process of its work directory.
    let victim_dir = before.iter().next().unwrap().clone();
    let victim = place
        .worker_pids()
        .into_iter()
        .filter(|&p| work_dir_of(p).as_ref() == Some(&victim_dir))
        .min()
        .unwrap();
    stop_pid(victim, libc::SIGKILL);

    // Logged with its pid and how it ended; its directory goes; a replacement runs.
    let log = up.wait_for("exited while the platform runs", Duration::from_secs(30));
    let warn = log
        .lines()
        .find(|l| l.contains("exited while the platform runs"))
        .unwrap();
    assert!(
        warn.contains(" WARN ")
            && warn.contains(&format!("pid={victim}"))
            && warn.contains("SIGKILL"),
        "{warn}"
    );
    let after = eventually("a replacement worker", Duration::from_secs(30), || {
        let dirs = live_work_dirs(&place);
        let replaced = dirs.len() == 2 && !dirs.contains(&victim_dir);
        async move { replaced.then_some(dirs) }
    })
    .await;
    assert!(!victim_dir.exists(), "{} was left", victim_dir.display());
    assert_eq!(
        after.intersection(&before).count(),
        1,
        "{before:?} {after:?}"
    );

    // A Ctrl-C at the terminal reaches `up` and its workers together: they stop, and none is
    // replaced.
    // SAFETY: signalling the process group this test's `up` leads.
    unsafe { libc::kill(-up.pid(), libc::SIGINT) };
    let status = up.wait_exit(Duration::from_secs(40));
    let log = up.log();
    assert!(status.success(), "{log}");
    assert_eq!(
        log.matches("exited while the platform runs").count(),
        1,
        "a worker stopped by Ctrl-C was replaced:\n{log}"
    );
    assert_nothing_left(&place, &mut up);
}

/// `up` starts the webhook dispatcher as a process of its own (as its own unprivileged user
/// when root, with nothing of the platform's in its environment), and it delivers a tenant's
/// event signed; stopping `up` stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_the_webhook_dispatcher_as_its_own_process_and_it_delivers_signed_events() {
    use crate::webhook_api::{Answer, Receiver};
    use mpegflow_api as api;
    let place = Place::new();
    let mut up = Up::start(
        &place,
        &["--workers", "1", "--no-sample"],
        &[("MPEGFLOW_WEBHOOK_ALLOW_LOOPBACK", "true")],
    );
    up.wait_serving();
    let keys = place.data().join(mpegflow::platform::WEBHOOK_KEYS_FILE);
    assert_eq!(std::fs::metadata(&keys).unwrap().mode() & 0o777, 0o600);
    let client = mpegflow::client::ApiClient::new(
        &place.env_value("MPEGFLOW_API_URL"),
        &place.env_value("MPEGFLOW_API_KEY"),
    );
    let mut rx = Receiver::start(Answer::Ok).await;
    let created = client
        .create_webhook(&api::WebhookIn {
            url: rx.url.clone(),
            events: Some(vec![api::EventType::JobCanceled]),
            description: None,
        })
        .await
        .unwrap();
    let dir = place.parent.path().join("clips");
    std::fs::create_dir_all(&dir).unwrap();
    let clip = crate::harness::clip(&dir, "in.mp4", 1, "160x120").await;
    let job = crate::harness::submit(
        &client,
        &clip,
        &[("out", "o.mp4")],
        "-stream_loop 50 -i {{in}} -c:v libx264 -preset veryslow {{out}}",
    )
    .await;
    client.cancel(job.id).await.unwrap();
    let got = rx.next("the job.canceled delivery").await;
    assert_eq!(got.json()["data"]["id"], job.id.to_string());
    let secret = mpegflow_domain::webhook::SigningSecret::parse(&created.secret).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    mpegflow_domain::webhook::verify(&secret, &got.signed(), &got.body, now)
        .expect("the delivery verifies");

    // The process: a child of `up`, holding none of the platform's secrets in its environment,
    // and not root when `up` is.
    let dispatcher = dispatcher_pids(up.pid());
    assert_eq!(dispatcher.len(), 1, "one dispatcher process");
    let pid = dispatcher[0];
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let environ = String::from_utf8_lossy(&environ);
    for secret_name in ["DATABASE_URL", "MPEGFLOW_S3", "MPEGFLOW_API_KEY"] {
        assert!(
            !environ.contains(secret_name),
            "{secret_name} in its environment"
        );
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|u| u.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    if mpegflow::pg::is_root() {
        assert_ne!(uid, 0, "the dispatcher runs as root");
    }
    assert!(up.stop().success(), "{}", up.log());
    assert!(!alive(pid), "the dispatcher outlived up");
    assert_nothing_left(&place, &mut up);
}

/// The `mpegflow-dispatcher` processes whose parent is `parent`.
fn dispatcher_pids(parent: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        if field("Name:").starts_with("mpegflow-dispat") && field("PPid:") == parent.to_string() {
            pids.push(pid);
        }
    }
    pids
}
