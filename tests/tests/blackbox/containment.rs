//! Guest containment: everything a guest can make the host hold is bounded, and the
//! db provider keeps answering (verified) while the `hostile` guest tries each way.
//! Every test prints the figure it measured, so a run shows the bound holding.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kmsgw_tests::*;
use serde_json::{Value, json};

use crate::guests::{sign_data, wasm_entry};

const MIB: u64 = 1 << 20;

/// A gateway with a `db` provider holding key `healthy`, and the hostile guest as
/// provider `evil` (with `limits`) holding key `evil-key`.
struct Arena {
    site: Site,
    gw: Arc<Gateway>,
    healthy: Value,
}

impl Arena {
    async fn new(limits: Value, extra: Value) -> Arena {
        let site = Site::new(Db::Sqlite).await;
        let mut evil = json!({"limits": limits});
        evil.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let gw = Arc::new(site.start_configured(&json!({"providers": [
            {"id": "db", "type": "db"},
            wasm_entry("evil", "hostile", evil),
        ]})));
        let healthy = gw.create(json!({"kid": "healthy"})).await;
        gw.create(json!({"kid": "evil-key", "provider": "evil"}))
            .await;
        Arena { site, gw, healthy }
    }

    fn watch(&self) -> SignWatcher {
        SignWatcher::start(
            self.gw.clone(),
            "healthy",
            self.healthy["publicJwk"].clone(),
            Duration::from_millis(10),
        )
    }

    async fn attack(&self, message: &str) -> (StatusCode, Value) {
        sign_data(&self.gw, "evil-key", message.as_bytes()).await
    }

    async fn metric(&self, name: &str) -> f64 {
        self.gw.metric(name).await
    }
}

fn error_text(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

/// Bytes of the SQLite database, its WAL and shared memory.
fn database_bytes(data_dir: &Path) -> u64 {
    std::fs::read_dir(data_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kmsgw.db"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_write_past_its_storage_quota() {
    let _serial = GUEST_SERIAL.lock().await;
    let quota = MIB;
    let arena = Arena::new(
        json!({"instances": 1, "storageBytes": quota, "storageEntries": 1000}),
        json!({}),
    )
    .await;
    let watcher = arena.watch();
    let before = database_bytes(&arena.site.data_dir());

    // 200 values of 64 KiB: 12.5 MiB, or 17 MiB sealed.
    let (status, body) = arena.attack("store:200").await;
    let growth = database_bytes(&arena.site.data_dir()) - before;
    println!(
        "storage: {status} {:.200}; database grew by {growth} bytes",
        error_text(&body)
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let stored: u64 = error_text(&body)
        .strip_prefix("stored ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!(stored < 16, "{body}");
    assert!(
        error_text(&body).contains("storage quota") && error_text(&body).contains("bytes"),
        "{body}"
    );
    assert!(growth < 4 * quota, "database grew by {growth} bytes");
    let used = arena
        .metric(r#"kmsgw_guest_storage_bytes{provider="evil"}"#)
        .await;
    assert!(used > 0.0 && used <= quota as f64, "usage {used}");

    // A refused write leaves what was stored: the guest's key still signs.
    let evil = arena.gw.get("/keys/evil-key").await.1;
    let signature = arena.gw.sign("evil-key", b"after the quota").await;
    assert_verifies(&evil["publicJwk"], b"after the quota", &signature);
    assert!(watcher.finish().await.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_cannot_store_more_entries_than_its_quota() {
    let _serial = GUEST_SERIAL.lock().await;
    let arena = Arena::new(json!({"instances": 1, "storageEntries": 4}), json!({})).await;
    // The guest already holds one entry: its key.
    let (status, body) = arena.attack("store:10").await;
    println!("entries: {status} {body}");
    assert!(
        error_text(&body).starts_with("stored 3 values, then")
            && error_text(&body).contains("4 entries"),
        "{body}"
    );
    let entries = arena
        .metric(r#"kmsgw_guest_storage_entries{provider="evil"}"#)
        .await;
    assert_eq!(entries, 4.0);
    // Deleting frees an entry for the next write.
    assert_eq!(
        arena.gw.delete("/keys/evil-key").await.0,
        StatusCode::NO_CONTENT
    );
    arena
        .gw
        .create(json!({"kid": "evil-2", "provider": "evil"}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_log_lines_are_cut_escaped_and_rate_limited() {
    let _serial = GUEST_SERIAL.lock().await;
    let (line_bytes, per_second) = (512, 20);
    let arena = Arena::new(
        json!({"instances": 1, "logLineBytes": line_bytes, "logLinesPerSecond": per_second}),
        json!({}),
    )
    .await;
    let watcher = arena.watch();
    let before = arena.gw.log_text().len();
    let started = Instant::now();
    // 3000 lines of 100 kB (300 MB), each opening with a forged gateway line.
    let (status, body) = arena.attack("log:3000:100000").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One more line after a second: it carries the note of what was dropped.
    arena.attack("log:1:10").await;
    let elapsed = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = arena.gw.log_text();
    let added = &log[before..];
    let guest_lines: Vec<&str> = added.lines().filter(|l| l.contains("guest:")).collect();
    let longest = added.lines().map(str::len).max().unwrap_or(0);
    println!(
        "log: {status}, {} bytes added, {} guest lines, longest line {longest} bytes, in {elapsed:.1} s",
        added.len(),
        guest_lines.len()
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let allowed = per_second as f64 * (1.0 + elapsed) + 2.0;
    assert!(
        (guest_lines.len() as f64) <= allowed,
        "{} lines",
        guest_lines.len()
    );
    assert!(longest < line_bytes + 400, "a line of {longest} bytes");
    assert!(
        added.len() < 64 * 1024,
        "the log grew by {} bytes",
        added.len()
    );
    // The forged line never starts a line of its own; it shows escaped.
    assert!(
        !added.lines().any(|l| l.starts_with("2026-01-01T00:00:00")
            || l.contains("FORGED") && !l.contains("guest:")),
        "a guest forged a log line"
    );
    assert!(
        guest_lines
            .iter()
            .any(|l| l.contains(r"innocent\n2026-01-01T00:00:00")),
        "{added:.2000}"
    );
    let note = added
        .lines()
        .find(|l| l.contains("guest log lines dropped"))
        .unwrap_or_else(|| panic!("no note of dropped lines: {added:.2000}"));
    println!("note: {note}");
    let dropped = arena
        .metric(r#"kmsgw_guest_log_lines_dropped_total{provider="evil"}"#)
        .await;
    assert!(dropped >= 2900.0, "{dropped} dropped");
    assert!(watcher.finish().await.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_guest_answers_are_short_502s_and_store_nothing() {
    let _serial = GUEST_SERIAL.lock().await;
    let arena = Arena::new(json!({"instances": 1}), json!({})).await;
    let watcher = arena.watch();
    let log_before = arena.gw.log_text().len();

    // A 4 MiB error message: cut before it reaches the client or the log.
    let (status, body) = arena.attack("error:4194304").await;
    let size = body.to_string().len();
    println!("error message: {status}, body {size} bytes");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:.300}");
    assert!(size < 1024, "a {size}-byte answer");
    assert!(error_text(&body).contains("cut"), "{body}");

    // A 4 MiB signature.
    let (status, body) = arena.attack("bigsig:4194304").await;
    println!("signature: {status} {body}");
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.to_string().len() < 1024);

    // A 4 MiB external id, and a 4 MiB public JWK: nothing is stored.
    for kid in ["bigid-1", "bigjwk-1"] {
        let (status, body) = arena
            .gw
            .post("/keys", json!({"kid": kid, "provider": "evil"}))
            .await;
        println!("{kid}: {status} {body}");
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:.300}");
        assert!(body.to_string().len() < 1024);
        assert_eq!(
            arena.gw.get(&format!("/keys/{kid}")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let log_growth = arena.gw.log_text().len() - log_before;
    println!("log grew by {log_growth} bytes");
    assert!(log_growth < 32 * 1024, "log grew by {log_growth} bytes");
    let (_, keys) = arena.gw.get("/keys").await;
    assert!(keys.to_string().len() < 4096, "{keys:.300}");
    assert!(watcher.finish().await.len() >= 2);
}

/// A loopback HTTP server for guests to reach: `POST` bodies are read and counted,
/// `GET /big` answers 256 MiB, `GET /hang` holds the connection without answering.
struct Sink {
    authority: String,
    received: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// The most connections open at once.
    peak: Arc<AtomicUsize>,
}

impl Sink {
    fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let authority = listener.local_addr().unwrap().to_string();
        let received = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (counted, opened, most) = (received.clone(), open.clone(), peak.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counted, opened, most) = (counted.clone(), opened.clone(), most.clone());
                std::thread::spawn(move || {
                    most.fetch_max(opened.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    let _ = serve(stream, &counted);
                    opened.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Sink {
            authority,
            received,
            open,
            peak,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }
}

/// Serves one connection until the peer closes it.
fn serve(mut stream: TcpStream, received: &AtomicUsize) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf[..1])?;
            if n == 0 {
                return Ok(());
            }
            head.push(buf[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        let mut left = length;
        while left > 0 {
            let n = stream.read(&mut buf[..left.min(64 * 1024)])?;
            if n == 0 {
                return Ok(());
            }
            received.fetch_add(n, Ordering::SeqCst);
            left -= n;
        }
        if head.starts_with("get /hang") {
            // Never answer; wait for the peer to go away.
            while stream.read(&mut buf)? > 0 {}
            return Ok(());
        }
        if head.starts_with("get /big") {
            let size = 256 * MIB as usize;
            write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n")?;
            let chunk = vec![b'b'; 64 * 1024];
            for _ in 0..size / chunk.len() {
                stream.write_all(&chunk)?;
            }
        } else {
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
        }
    }
}

/// Resets the peak RSS of `pid` (`VmHWM`) to its current RSS.
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_bodies_are_bounded_in_both_directions() {
    let _serial = GUEST_SERIAL.lock().await;
    let sink = Sink::start();
    let arena = Arena::new(
        json!({"instances": 2, "memoryMb": 32, "timeoutMs": 5000,
               "httpRequestBytes": MIB, "httpResponseBytes": MIB}),
        json!({"allowedHosts": [sink.authority]}),
    )
    .await;
    let watcher = arena.watch();
    let pid = arena.gw.pid();
    let rss = proc_kib(pid, "VmRSS");
    reset_peak_rss(pid);

    let (status, body) = arena
        .attack(&format!("upload:256:{}", sink.url("/upload")))
        .await;
    let peak = proc_kib(pid, "VmHWM");
    println!(
        "upload of 256 MiB: {status} {}; the sink received {} bytes; peak RSS {} KiB over {rss} KiB",
        error_text(&body),
        sink.received.load(Ordering::SeqCst),
        peak.saturating_sub(rss)
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(error_text(&body).contains("HttpRequestBodySize"), "{body}");
    assert!(sink.received.load(Ordering::SeqCst) as u64 <= MIB);
    assert!(peak < rss + 32 * 1024, "peak RSS {peak} KiB");

    let (status, body) = arena
        .attack(&format!("download:{}", sink.url("/big")))
        .await;
    let peak = proc_kib(pid, "VmHWM");
    println!(
        "download of 256 MiB: {status} {}; peak RSS {} KiB over {rss} KiB",
        error_text(&body),
        peak.saturating_sub(rss)
    );
    assert!(error_text(&body).contains("HttpResponseBodySize"), "{body}");
    assert!(peak < rss + 48 * 1024, "peak RSS {peak} KiB");
    assert!(watcher.finish().await.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_resources_and_requests_do_not_outlive_the_call_that_made_them() {
    let _serial = GUEST_SERIAL.lock().await;
    let sink = Sink::start();
    let arena = Arena::new(
        json!({"instances": 2, "memoryMb": 32, "resources": 100, "httpConcurrent": 4}),
        json!({"allowedHosts": [sink.authority]}),
    )
    .await;
    let watcher = arena.watch();
    let pid = arena.gw.pid();
    let (rss, fds) = (proc_kib(pid, "VmRSS"), open_fds(pid));

    // 3000 header sets of 100 KiB, kept alive: the table stops the guest.
    for round in 0..3 {
        let (status, body) = arena.attack("hoard:3000").await;
        println!(
            "hoard round {round}: {status} {:.200}; RSS {} KiB over {rss} KiB",
            error_text(&body),
            proc_kib(pid, "VmRSS").saturating_sub(rss)
        );
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    }
    assert!(proc_kib(pid, "VmRSS") < rss + 32 * 1024);

    // 50 requests left pending for 300 ms: at most 4 reach the network, and none
    // survives the call.
    let (status, body) = arena
        .attack(&format!("fanout:50:{}", sink.url("/hang")))
        .await;
    println!(
        "fan-out of 50: {status} {}; {} descriptors over {fds}; {} connections at once at the sink",
        error_text(&body),
        open_fds(pid).saturating_sub(fds),
        sink.peak.load(Ordering::SeqCst)
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(error_text(&body).contains("started 50 requests"), "{body}");
    assert!((1..=4).contains(&sink.peak.load(Ordering::SeqCst)));

    // 1000 requests never waited for: the table stops the guest.
    let (status, body) = arena
        .attack(&format!("fanout:1000:{}", sink.url("/hang")))
        .await;
    println!("fan-out of 1000: {status} {}", error_text(&body));
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(error_text(&body).contains("crashed"), "{body}");
    // Neither call left a connection behind.
    let deadline = Instant::now() + Duration::from_secs(2);
    while sink.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "after the call: {} connections open at the sink, {} descriptors over {fds}",
        sink.open.load(Ordering::SeqCst),
        open_fds(pid).saturating_sub(fds)
    );
    assert_eq!(sink.open.load(Ordering::SeqCst), 0);
    assert!(open_fds(pid) <= fds + 4, "{} descriptors", open_fds(pid));
    // The guest is still usable.
    let evil = arena.gw.get("/keys/evil-key").await.1;
    let signature = arena.gw.sign("evil-key", b"still honest").await;
    assert_verifies(&evil["publicJwk"], b"still honest", &signature);
    assert!(watcher.finish().await.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_memory_stays_within_instances_times_memory_plus_a_fixed_overhead() {
    let _serial = GUEST_SERIAL.lock().await;
    // The invariant, as the README states it: peak RSS ≤ RSS when idle +
    // instances × memoryMb + FIXED, whatever the guest does.
    const FIXED_KIB: u64 = 64 * 1024;
    let (instances, memory_mb) = (2, 32);
    let sink = Sink::start();
    let arena = Arena::new(
        json!({"instances": instances, "memoryMb": memory_mb, "timeoutMs": 5000}),
        json!({"allowedHosts": [sink.authority]}),
    )
    .await;
    let watcher = arena.watch();
    let pid = arena.gw.pid();
    let idle = proc_kib(pid, "VmRSS");
    reset_peak_rss(pid);
    let bound = idle + instances * memory_mb * 1024 + FIXED_KIB;

    let attacks = [
        "hoard:3000".to_owned(),
        "oom".to_owned(),
        format!("upload:256:{}", sink.url("/upload")),
        format!("download:{}", sink.url("/big")),
        format!("fanout:1000:{}", sink.url("/hang")),
        format!("fanout:50:{}", sink.url("/hang")),
        "log:2000:100000".to_owned(),
        "error:8000000".to_owned(),
        "bigsig:8000000".to_owned(),
        "store:100".to_owned(),
    ];
    for round in 0..3 {
        // Two at a time, so both instances misbehave at once.
        for pair in attacks.chunks(2) {
            for (status, body) in
                futures::future::join_all(pair.iter().map(|m| arena.attack(m))).await
            {
                assert!(
                    status.is_client_error() || status.is_server_error(),
                    "{body:.300}"
                );
            }
        }
        println!(
            "round {round}: peak RSS {} KiB (idle {idle} KiB, bound {bound} KiB)",
            proc_kib(pid, "VmHWM")
        );
    }
    let peak = proc_kib(pid, "VmHWM");
    assert!(
        peak <= bound,
        "peak RSS {peak} KiB exceeds {bound} KiB (idle {idle} + {instances} × {memory_mb} MiB + 64 MiB)"
    );
    assert!(watcher.finish().await.len() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn db_signs_are_answered_under_1024_descriptors_while_a_guest_hoards_connections() {
    let _serial = GUEST_SERIAL.lock().await;
    let sink = Sink::start();
    let arena = Arena::new(
        json!({"instances": 2, "timeoutMs": 1000}),
        json!({"allowedHosts": [sink.authority]}),
    )
    .await;
    let pid = arena.gw.pid().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--nofile=1024:1024", "--pid", &pid])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limited.success());

    // Each sign on a new connection: a gateway out of descriptors cannot accept one.
    let watch = || {
        SignWatcher::start_on_new_connections(
            arena.gw.clone(),
            "healthy",
            arena.healthy["publicJwk"].clone(),
            Duration::from_millis(5),
        )
    };
    let calm = watch();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let calm = calm.finish().await;

    let watcher = watch();
    let message = format!("fanout:50:{}", sink.url("/hang"));
    let started = Instant::now();
    let mut peak_fds = 0;
    while started.elapsed() < Duration::from_secs(5) {
        let attacks = (0..4).map(|_| arena.attack(&message));
        for (status, body) in futures::future::join_all(attacks).await {
            assert!(status.is_server_error(), "{body}");
        }
        peak_fds = peak_fds.max(open_fds(arena.gw.pid()));
    }
    let attacked = watcher.finish().await;
    println!(
        "db signs: calm p50 {:?} p99 {:?} ({} signs); under attack p50 {:?} p99 {:?} max {:?} ({} signs); peak {peak_fds} descriptors",
        quantile(&calm, 0.5),
        quantile(&calm, 0.99),
        calm.len(),
        quantile(&attacked, 0.5),
        quantile(&attacked, 0.99),
        quantile(&attacked, 1.0),
        attacked.len()
    );
    assert!(attacked.len() >= 100, "{} signs", attacked.len());
    assert!(quantile(&attacked, 0.99) < Duration::from_millis(250));
    assert!(peak_fds < 256, "{peak_fds} descriptors open");
}

async fn audit_records(gw: &Gateway, kid: &str) -> Vec<Value> {
    let (status, page) = gw.get(&format!("/audit?kid={kid}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["records"].as_array().unwrap().clone()
}

async fn assert_retracted(gw: &Gateway, kid: &str) {
    assert_eq!(
        gw.get(&format!("/keys/{kid}")).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, jwks) = gw.get("/.well-known/jwks.json").await;
    assert!(
        !jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid),
        "{jwks}"
    );
    let last = audit_records(gw, kid).await.pop().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("force-delete"), Some("ok")),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_delete_retracts_a_key_its_backend_refuses_to_delete() {
    let _serial = GUEST_SERIAL.lock().await;
    let arena = Arena::new(json!({"instances": 1}), json!({})).await;
    let gw = &arena.gw;
    gw.create(json!({"kid": "sticky-1", "provider": "evil"}))
        .await;

    let (status, body) = gw.delete("/keys/sticky-1").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(gw.get("/keys/sticky-1").await.0, StatusCode::OK);

    let (status, body) = gw.delete("/keys/sticky-1?force=true").await;
    println!("forced: {status} {body}");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kid"], "sticky-1");
    assert_eq!(body["backendDeleted"], false);
    assert!(
        body["mayRemain"]
            .as_str()
            .unwrap()
            .contains("never deletes keys"),
        "{body}"
    );
    assert_retracted(gw, "sticky-1").await;

    // A key whose backend agrees: forced or not, nothing remains.
    let (status, body) = gw.delete("/keys/evil-key?force=true").await;
    assert_eq!(
        (status, &body["backendDeleted"]),
        (StatusCode::OK, &json!(true))
    );
    assert!(body["mayRemain"].is_null(), "{body}");
    assert_retracted(gw, "evil-key").await;
    let (status, _) = gw.delete("/keys/evil-key?force=true").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = gw.delete("/keys/healthy?force=maybe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_delete_retracts_a_key_whose_provider_is_no_longer_configured() {
    let _serial = GUEST_SERIAL.lock().await;
    let site = Site::new(Db::Sqlite).await;
    let with_guest = json!({"providers": [
        {"id": "db", "type": "db"},
        wasm_entry("soft", "soft_signer", json!({"limits": {"instances": 1}})),
    ]});
    let gw = site.start_configured(&with_guest);
    gw.create(json!({"kid": "orphan", "provider": "soft"}))
        .await;
    let kept = gw.create(json!({"kid": "kept"})).await;
    assert!(gw.stop().success());

    let gw = site.start_configured(&json!({"providers": [{"id": "db", "type": "db"}]}));
    let (status, body) = gw.delete("/keys/orphan").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "provider_not_configured");

    let (status, body) = gw.delete("/keys/orphan?force=true").await;
    println!("forced: {status} {body}");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["provider"], &body["backendDeleted"]),
        (&json!("soft"), &json!(false))
    );
    assert!(
        body["mayRemain"]
            .as_str()
            .unwrap()
            .contains("not configured"),
        "{body}"
    );
    assert_retracted(&gw, "orphan").await;
    let signature = gw.sign("kept", b"unaffected").await;
    assert_verifies(&kept["publicJwk"], b"unaffected", &signature);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_reads_a_file_gets_nothing() {
    // The host links `wasi:filesystem` (JavaScript engines import it) with no
    // directory: whatever path a guest names, it reaches no file.
    let _serial = GUEST_SERIAL.lock().await;
    let arena = Arena::new(json!({}), json!({})).await;
    let secret = arena.site.data_dir().join("master.key");
    for path in [
        "/etc/hostname",
        "/proc/self/environ",
        secret.to_str().unwrap(),
        "master.key",
        ".",
    ] {
        let (status, body) = arena.attack(&format!("readfile:{path}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("cannot read"),
            "{path}: {body}"
        );
    }
}
