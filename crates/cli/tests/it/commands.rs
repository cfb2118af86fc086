use crate::harness::*;
use mpegflow_api::{self as api, JobState};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_command_forms_name_the_argument_and_filter_graphs_pass() {
    let tp = TestPlatform::start(0, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let job = |command: &str| {
        api::JobIn::new(
            [("in", asset.id)],
            [("out", "out.mp4"), ("hls", "hls/")],
            command,
        )
        .unwrap()
    };
    let tail = "-f hls -hls_segment_filename {{hls}}/s_%03d.ts {{hls}}/index.m3u8";

    let refused_commands = [
        ("-i /etc/passwd {{out}}", "/etc/passwd"),
        (
            "-i http://127.0.0.1:1/x.mp4 {{out}}",
            "http://127.0.0.1:1/x.mp4",
        ),
        ("-i concat:{{in}}|{{in}} {{out}}", "concat:{{in}}|{{in}}"),
        ("-i file:{{in}} {{out}}", "file:{{in}}"),
        ("-i {{in}} ../../out.mp4", "../../out.mp4"),
        ("-i {{in}} /tmp/out.mp4", "/tmp/out.mp4"),
        ("-i {{in}} {{secret}}", "{{secret}}"),
        (
            "-i {{in}} -vf movie=/etc/passwd {{out}}",
            "movie=/etc/passwd",
        ),
        (
            "-i {{in}} -filter_complex_script x {{out}}",
            "-filter_complex_script",
        ),
        ("-f lavfi -i {{in}} {{out}}", "-f"),
        (
            "-i {{in}} -dump_attachment:t x {{out}}",
            "-dump_attachment:t",
        ),
    ];
    for (command, arg) in refused_commands {
        let full = format!("{command} {tail}");
        let problem = refused(client.submit(&job(&full)).await);
        assert_eq!(problem.status, 400, "{full}: {problem:?}");
        assert_eq!(problem.code, "invalid_command", "{full}: {problem:?}");
        assert_eq!(
            problem.argument.as_deref(),
            Some(arg),
            "{full}: {problem:?}"
        );
        assert!(problem.detail.contains(arg), "{problem:?}");
    }

    let accepted = [
        "-i {{in}} -vf scale=160:-2 {{out}}",
        "-i {{in}} -vf 'scale=w=320:h=-2:flags=bicubic,fps=25,format=yuv420p' -c:v libx264 {{out}}",
        "-i {{in}} -filter_complex '[0:v]split=2[a][b];[a]scale=160:-2[a1];[b]scale=80:-2[b1];[a1][b1]overlay=10:10[v]' -map '[v]' {{out}}",
        "-ss 0:00:00.5 -i {{in}} -t 0.5 -af 'volume=0.5' -metadata title='a: b' {{out}}",
    ];
    for command in accepted {
        let full = format!("{command} -map 0 {tail}");
        let answer = client
            .call(Method::POST, "/v1/jobs", Some(&job(&full)), &[])
            .await
            .unwrap();
        assert_eq!(answer.status, 201, "{full}: {}", answer.body);
        let argv = answer.json::<api::Job>().unwrap().argv;
        assert!(argv.iter().any(|a| a == "out/out/out.mp4"), "{argv:?}");
    }

    // The same Idempotency-Key replays the first job; with another body it conflicts.
    let body = job(&format!("-i {{{{in}}}} {{{{out}}}} {tail}"));
    let a1 = client
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&body),
            &[("idempotency-key", "k1")],
        )
        .await
        .unwrap();
    let a2 = client
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&body),
            &[("idempotency-key", "k1")],
        )
        .await
        .unwrap();
    assert_eq!((a1.status, a2.status), (201, 200));
    assert_eq!(
        a1.json::<api::Job>().unwrap().id,
        a2.json::<api::Job>().unwrap().id
    );
    let other = job(&format!("-i {{{{in}}}} -an {{{{out}}}} {tail}"));
    let a3 = client
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&other),
            &[("idempotency-key", "k1")],
        )
        .await
        .unwrap();
    assert_eq!(a3.status, 409, "{}", a3.body);
    assert_eq!(a3.problem().status, 409, "{}", a3.body);
    tp.stop().await;
}

/// The parser-differential breach classes of issue 6, through the real API: each is refused
/// with `invalid_command` naming the argument, and a graph written with FFmpeg's quoting runs
/// with the canonical argv the platform rendered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_differential_payloads_are_refused_through_the_api() {
    let tp = TestPlatform::start(1, test_control_config()).await;
    let client = tp.org("acme").await;
    let input = clip(tp.dir.path(), "a.mp4", 1, "160x120").await;
    let asset = client.upload(&input).await.unwrap();
    let job =
        |command: &str| api::JobIn::new([("in", asset.id)], [("out", "out.wav")], command).unwrap();
    let refused_commands = [
        (
            r#"-i {{in}} -af "curves=plot='\\\\',nullsink;amovie=/etc/passwd:f=u8" {{out}}"#,
            r"curves=plot='\\',nullsink;amovie=/etc/passwd:f=u8",
        ),
        (
            "-fix_sub_duration -vstats_file {{out}} -i {{in}} {{out}}",
            "-vstats_file",
        ),
        ("-fix_sub_duration -report -i {{in}} {{out}}", "-report"),
        (
            "-i {{in}} -c:v libx264 -x264-params cqmfile=/etc/passwd {{out}}",
            "cqmfile=/etc/passwd",
        ),
        (
            r"-i {{in}} -af volume=\\/etc/passwd {{out}}",
            r"volume=\/etc/passwd",
        ),
        (
            "-i {{in}} -vf paletteuse=debug_kdtree=/tmp/x {{out}}",
            "paletteuse=debug_kdtree=/tmp/x",
        ),
        ("-i {{in}} -f sap {{out}}", "-f"),
        ("-i {{in}} -f segment -segment_format sap {{out}}", "sap"),
    ];
    for (command, arg) in refused_commands {
        let problem = refused(client.submit(&job(command)).await);
        assert_eq!(problem.status, 400, "{command}: {problem:?}");
        assert_eq!(problem.code, "invalid_command", "{command}: {problem:?}");
        assert_eq!(
            problem.argument.as_deref(),
            Some(arg),
            "{command}: {problem:?}"
        );
    }
    let answer = client
        .call(
            Method::POST,
            "/v1/jobs",
            Some(&job(
                r"-i {{in}} -vn -af 'volume='\''0.5'\'',aresample=8000' {{out}}",
            )),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let submitted: api::Job = answer.json().unwrap();
    let argv = &submitted.argv;
    assert!(
        argv.iter()
            .any(|a| a == "volume=volume=0.5,aresample=sample_rate=8000"),
        "{argv:?}"
    );
    // The worker re-parses the rendered argv, requires the same rendering, and runs it.
    let done = client.wait(submitted.id, |_| {}).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    tp.stop().await;
}
