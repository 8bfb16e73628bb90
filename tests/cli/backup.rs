//! A backup as the Helm chart's CronJob takes it: `export --config` on the
//! store of a running server that keeps appending, then `import` into a
//! fresh store, whose own export is the backup byte for byte.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::helpers::{command, run, wait};

/// One HTTP/1.1 request on a fresh connection; the response status.
fn send(address: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

fn config(dir: &Path, name: &str, mode: &str, data: &Path, address: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[server]\nbind_address = \"{address}\"\nshutdown_delay_secs = 0\n\n\
             [storage]\nmode = \"{mode}\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .expect("write config");
    path.display().to_string()
}

fn export_beside_a_running_server_restores_byte_for_byte(mode: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let address = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("address").to_string()
    };
    let live = config(
        dir.path(),
        "live.toml",
        mode,
        &dir.path().join("live"),
        &address,
    );
    // The server logs a line per request; a pipe nobody reads would fill
    // and stall it, so its output goes to a file read on failure.
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("create the server log");
    let server = command(dir.path(), &["serve", "--config", &live], &[])
        .stdout(log.try_clone().expect("clone the log file"))
        .stderr(log)
        .spawn()
        .expect("spawn the server");
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while send(&address, "GET", "/readyz", "text/plain", b"") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "{mode}: the server never became ready\n{}",
            server_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let streams: [(&str, &str, &[&[u8]]); 3] = [
        (
            "/v1/stream/orders",
            "application/json",
            &[b"{\"id\":1}", b"[{\"id\":2},{\"id\":3}]"],
        ),
        (
            "/v1/stream/log",
            "text/plain",
            &[b"first\n", &[0, 159, 146, 150, 255]],
        ),
        ("/v1/stream/busy", "text/plain", &[b"start\n"]),
    ];
    for (path, content_type, appends) in streams {
        assert_eq!(
            send(&address, "PUT", path, content_type, b""),
            Some(201),
            "{mode} PUT {path}"
        );
        for body in appends {
            assert_eq!(
                send(&address, "POST", path, content_type, body),
                Some(204),
                "{mode} POST {path}"
            );
        }
    }
    // A writer that keeps appending while the backup runs, as in production.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, address) = (stop.clone(), address.clone());
        std::thread::spawn(move || {
            let mut appended = 0;
            while !stop.load(Ordering::Relaxed) {
                if send(&address, "POST", "/v1/stream/busy", "text/plain", b"more\n") == Some(204) {
                    appended += 1;
                }
            }
            appended
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let backup = dir.path().join("backup.jsonl");
    let exported = run(
        dir.path(),
        &[
            "export",
            "--config",
            &live,
            "--output",
            backup.to_str().expect("utf8"),
        ],
        &[],
    );
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().expect("writer");
    let signalled = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(signalled.success());
    let stopped = wait(server, Duration::from_secs(30));
    assert_eq!(exported.code, Some(0), "{mode}: {exported:#?}");
    assert!(
        exported.stderr.contains("exported 3 streams"),
        "{mode}: {exported:#?}"
    );
    assert!(
        appended > 0,
        "{mode}: nothing was appended during the export"
    );
    assert_eq!(
        stopped.code,
        Some(0),
        "{mode}: {stopped:#?}\n{}",
        server_log()
    );

    // Restore into a fresh store; its export is the backup, byte for byte.
    let restored = config(
        dir.path(),
        "restored.toml",
        mode,
        &dir.path().join("restored"),
        &address,
    );
    let imported = run(
        dir.path(),
        &[
            "import",
            "--config",
            &restored,
            backup.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(imported.code, Some(0), "{mode}: {imported:#?}");
    assert!(
        imported.stderr.contains("imported 3 streams"),
        "{mode}: {imported:#?}"
    );
    let again = run(dir.path(), &["export", "--config", &restored], &[]);
    assert_eq!(again.code, Some(0), "{mode}: {again:#?}");
    let original = std::fs::read(&backup).expect("read backup");
    assert!(
        again.stdout.as_bytes() == original.as_slice(),
        "{mode}: the restored store exports differently:\n{}\n---\n{}",
        again.stdout,
        String::from_utf8_lossy(&original)
    );
}

#[test]
fn file_store_exported_beside_its_server_restores_byte_for_byte() {
    export_beside_a_running_server_restores_byte_for_byte("file-durable");
}

#[test]
fn acid_store_exported_beside_its_server_restores_byte_for_byte() {
    export_beside_a_running_server_restores_byte_for_byte("acid");
}
