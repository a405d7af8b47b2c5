//! The `phaul-web` example (the `phaul-web` and `phaul-archive` crates behind
//! a thin binary), as a browser and an attacker use it.
//!
//! - Refusals (no root needed): no or a wrong token, another origin or host
//!   name, bad PIDs, container names with shell characters, hostile
//!   archives — each refused with the right status and a JSON error, and
//!   nothing written outside the work directory. A small HTTP/1.1 client
//!   written here talks to it.
//! - Real migrations driven from a real browser (Debian's chromium through
//!   playwright-core, `web/e2e.mjs`): two network-namespace hosts,
//!   `phaul-service` on the target, a workload and phaul-web on the source,
//!   which is made a busy host by a throwaway tree of 200 sleeping
//!   processes. The console run filters the tree down to the workload,
//!   drops the sleeping tree to read its confirmation (root, 201
//!   processes, memory, no container, what `auto` picks and why) and backs
//!   out, then migrates the workload with the keyboard alone; the workload
//!   must then run on the target with its memory intact and its counter
//!   counting. The big run starts a stop-copy of a 1 GiB workload and
//!   cancels it (cancelled, not failed; it runs on here), then moves it for
//!   real while the bar moves at least five times. Others: the service
//!   stopped before the drag (a failure, the workload runs on), the target's
//!   CRIU failing its restores (named as the restore's failure, with CRIU's
//!   cause and its logs), a real LXC container dragged from the containers
//!   list. Screenshots: `target/web-e2e/*.png`.
//! - Both ways from one phaul-web (#15): with `phaul-service` on both hosts
//!   and `--this-host`, a workload of each host moves to the other, one
//!   through a migration run in phaul-web, the other through an order to
//!   the other host's service (the control API); memory and counters
//!   survive, the originals are gone. Through the API (with a cancel of an
//!   order, and what a pull refuses) and through the page's drags.
//! - Checkpoint to an archive and restore from it, through the API.
//!
//! The real tests need root, CRIU 4, chromium and `web/node_modules`
//! (`scripts/setup.sh` installs them); without them they are skipped with a
//! message, and fail under `CI`. They run the example binaries, which
//! `cargo test` builds; alone, run `cargo build --example phaul-web
//! --example phaul-service && cargo test --test web`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use phaul_testkit::{Hosts, LxcContainer, Workload, alive, kill_tree, require_criu, wait_until};

mod common;
use common::{example, service, service_on};
use serde_json::{Value, json};

/// The browser tests run one at a time: two chromiums and two migrations on
/// a 2-core machine only make each slower and flakier.
static E2E: Mutex<()> = Mutex::new(());

/// `target/` (where `target/web-e2e/` goes).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn key_file(dir: &Path) -> PathBuf {
    common::key_file(dir, "the web test key, long enough for the link", 0o600)
}

/// The browser tests also need chromium, node and playwright-core.
fn require_browser(test: &str) -> bool {
    if require_criu(test).is_none() {
        return false;
    }
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("/usr/bin/chromium");
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node");
    }
    if !repo().join("web/node_modules/playwright-core").is_dir() {
        missing.push("web/node_modules (npm ci --prefix web)");
    }
    if missing.is_empty() {
        return true;
    }
    phaul_testkit::unavailable(
        test,
        &format!("the browser test's tools (missing {})", missing.join(", ")),
        "run scripts/setup.sh as root",
    );
    false
}

// --- phaul-web -------------------------------------------------------------------

/// A running phaul-web and what its banner said.
struct Web {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    token: String,
    /// The URL with the `#token=` fragment.
    url: String,
    log: PathBuf,
}

impl Web {
    fn start(ns: Option<&str>, target: &str, key: &Path, work: &Path, extra: &[&str]) -> Self {
        let log = work.with_extension("log");
        let mut cmd = match ns {
            Some(ns) => Hosts::command(ns, example("phaul-web")),
            None => Command::new(example("phaul-web")),
        };
        let mut child = cmd
            .args(["--listen", "127.0.0.1:0", "--target", target, "--key-file"])
            .arg(key)
            .arg("--work-dir")
            .arg(work)
            .args(extra)
            .env("PHAUL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    if let Some(u) = line.strip_prefix("phaul-web: http://") {
                        break format!("http://{u}");
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "phaul-web printed no banner ({e}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        let (base, token) = url.split_once("/#token=").expect("a URL with the token");
        Self {
            child,
            addr: base.trim_start_matches("http://").to_string(),
            token: token.to_string(),
            url,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// --- a small HTTP/1.1 client -----------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request (headers as given, plus Host, Connection: close and a
/// Content-Length unless given) and reads the whole answer.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The server may answer (and close) before reading a refused body.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .expect("a chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
    out
}

fn get(web: &Web, path: &str) -> Resp {
    http(
        &web.addr,
        "GET",
        path,
        &[("Authorization", &web.auth())],
        b"",
    )
}

fn post_json(web: &Web, path: &str, body: &Value) -> Resp {
    http(
        &web.addr,
        "POST",
        path,
        &[
            ("Authorization", &web.auth()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn assert_no_cors(r: &Resp) {
    assert!(
        !r.headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-")),
        "a CORS header: {:?}",
        r.headers
    );
}

fn assert_json_error(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: {:?}",
        r.headers
    );
    assert!(
        r.json()["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {}",
        r.text()
    );
    assert_no_cors(r);
}

// --- tar archives, written by hand ---------------------------------------------------

fn tar_entry(name: &str, typeflag: u8, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Files and directories under `dir`, recursively.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(tree(&e.path()));
            }
        }
    }
    out
}

// --- refusals --------------------------------------------------------------------------

#[test]
fn the_api_refuses_strangers_other_origins_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let work = dir.path().join("work");
    let web = Web::start(
        None,
        "127.0.0.1:1",
        &key,
        &work,
        &["--max-upload", "1048576"],
    );
    assert_eq!(web.token.len(), 64, "a 256-bit random token in hex");

    // The page itself carries no data: served without a token, locked down.
    let r = http(&web.addr, "GET", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("phaul-web"));
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_no_cors(&r);

    // No token, a wrong one, a wrong scheme: 401, on every API path.
    for path in ["/api/info", "/api/local", "/api/events", "/api/migrations"] {
        let r = http(&web.addr, "GET", path, &[], b"");
        assert_json_error(&r, 401, path);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let wrong = format!("Bearer {}", "0".repeat(64));
        let r = http(&web.addr, "GET", path, &[("Authorization", &wrong)], b"");
        assert_json_error(&r, 401, path);
        let basic = format!("Basic {}", web.token);
        let r = http(&web.addr, "GET", path, &[("Authorization", &basic)], b"");
        assert_json_error(&r, 401, path);
    }
    let r = http(
        &web.addr,
        "POST",
        "/api/migrate",
        &[("Content-Type", "application/json")],
        br#"{"pid": "1"}"#,
    );
    assert_json_error(&r, 401, "migrate without a token");

    // The token opens the API.
    let r = get(&web, "/api/info");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["target"], "127.0.0.1:1");
    assert_no_cors(&r);
    let r = get(&web, "/api/local");
    assert_eq!(r.status, 200);
    let me = r.json()["own"][0].as_i64().unwrap();
    assert!(me > 0, "phaul-web lists itself as not migratable");
    // The target is not there: a JSON error, not a hang.
    let r = get(&web, "/api/remote");
    assert_json_error(&r, 502, "remote");

    // Same origin only (even with the token); the host name must be ours.
    let auth = web.auth();
    let r = http(
        &web.addr,
        "GET",
        "/api/info",
        &[("Authorization", &auth), ("Origin", "http://evil.example")],
        b"",
    );
    assert_json_error(&r, 403, "a foreign Origin");
    let r = http(
        &web.addr,
        "POST",
        "/api/migrate",
        &[
            ("Authorization", &auth),
            ("Origin", "http://evil.example"),
            ("Content-Type", "application/json"),
        ],
        br#"{"pid": "1"}"#,
    );
    assert_json_error(&r, 403, "a foreign Origin on a POST");
    let r = http(
        &web.addr,
        "OPTIONS",
        "/api/migrate",
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_json_error(&r, 403, "a CORS preflight");
    let own = format!("http://{}", web.addr);
    let r = http(
        &web.addr,
        "GET",
        "/api/info",
        &[("Authorization", &auth), ("Origin", &own)],
        b"",
    );
    assert_eq!(r.status, 200, "our own origin: {}", r.text());
    let evil_host = format!("evil.example:{}", web.addr.rsplit(':').next().unwrap());
    let r = http(
        &web.addr,
        "GET",
        "/api/info",
        &[("Authorization", &auth), ("Host", &evil_host)],
        b"",
    );
    assert_json_error(&r, 403, "another host name (DNS rebinding)");

    // Bad PIDs: 400 with a JSON error, for migrations and checkpoints.
    let missing = (400_000..4_000_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    for pid in [
        json!("0"),
        json!("-1"),
        json!("12abc"),
        json!("1; reboot"),
        json!("$(id)"),
        json!(""),
        json!(0),
        json!(-1),
        json!(1.5),
        json!(null),
        json!(["1"]),
        json!("1"),
        json!(me),
        json!(missing),
    ] {
        for path in ["/api/migrate", "/api/checkpoint"] {
            let r = post_json(&web, path, &json!({ "pid": pid }));
            assert_json_error(&r, 400, &format!("{path} pid {pid}"));
        }
    }
    // Container names with shell characters.
    for name in ["a;b", "$(id)", "a b", "../x", "", "-rf", "a/b", "`id`"] {
        let r = post_json(&web, "/api/migrate", &json!({ "container": name }));
        assert_json_error(&r, 400, &format!("container {name:?}"));
    }
    // Other malformed requests.
    for body in [
        json!({}),
        json!({"pid": "2", "container": "a"}),
        json!({"pid": "2", "mode": "warp-speed"}),
        json!({"pid": "2", "mode": 3}),
        json!([1, 2]),
    ] {
        let r = post_json(&web, "/api/migrate", &body);
        assert_json_error(&r, 400, &format!("{body}"));
    }
    let r = http(
        &web.addr,
        "POST",
        "/api/migrate",
        &[("Authorization", &auth)],
        b"pid=1",
    );
    assert_json_error(&r, 400, "not JSON");
    // The confirmation's dry run and the file-system choice check the same.
    for body in [
        json!({"pid": "2", "fs": "nfs"}),
        json!({"pid": "2", "fs": 1}),
        json!({"pid": "2", "mode": "warp-speed"}),
        json!({"pid": "$(id)"}),
        json!({"pid": me}),
        json!({"container": "a;b"}),
        json!({}),
    ] {
        for path in ["/api/migrate", "/api/plan"] {
            let r = post_json(&web, path, &body);
            assert_json_error(&r, 400, &format!("{path} {body}"));
        }
    }
    // Nothing to cancel; nothing to clear.
    let r = post_json(&web, "/api/migrations/77/cancel", &json!({}));
    assert_json_error(&r, 404, "cancelling no migration");
    let r = http(
        &web.addr,
        "DELETE",
        "/api/migrations",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["removed"], 0);
    // This host's list carries each process's memory.
    let l = get(&web, "/api/local").json();
    let mine = l["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == me)
        .expect("phaul-web lists itself");
    assert!(mine["mem"].as_u64().unwrap() > 0, "{mine}");
    assert_eq!(
        get(&web, "/api/info").json()["fs_drivers"],
        json!(["native", "shared"])
    );
    for path in [
        "/api/checkpoints/..%2f..%2fetc/archive",
        "/api/checkpoints/ABC/archive",
        "/api/migrations/1%3Breboot",
    ] {
        let r = get(&web, path);
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        assert_no_cors(&r);
    }
    assert_eq!(get(&web, "/api/migrations").json(), json!([]));

    // Hostile archives: 400, and nothing written anywhere.
    let outside = std::env::temp_dir().join(format!("phaul-web-evil-{}", std::process::id()));
    let _ = std::fs::remove_file(&outside);
    let good = tar_entry("inventory.img", b'0', "", b"not really an image");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("../evil", tar(&[tar_entry("../evil", b'0', "", b"x")])),
        (
            "../evil after a good file",
            tar(&[good.clone(), tar_entry("../evil", b'0', "", b"x")]),
        ),
        (
            "an absolute name",
            tar(&[tar_entry(outside.to_str().unwrap(), b'0', "", b"x")]),
        ),
        (
            "a symlink",
            tar(&[tar_entry("inventory.img", b'2', "/etc/passwd", b"")]),
        ),
        (
            "a hard link",
            tar(&[tar_entry("inventory.img", b'1', "/etc/passwd", b"")]),
        ),
        (
            "a device",
            tar(&[tar_entry("inventory.img", b'3', "", b"")]),
        ),
        ("a directory", tar(&[tar_entry("sub/", b'5', "", b"")])),
        (
            "a name with a directory",
            tar(&[tar_entry("sub/evil", b'0', "", b"x")]),
        ),
        (
            "a pax header",
            tar(&[tar_entry(
                "pax",
                b'x',
                "",
                b"30 path=../../../tmp/evilpax\n",
            )]),
        ),
        ("a duplicate", tar(&[good.clone(), good.clone()])),
        ("a truncated file", {
            let mut t = tar_entry("inventory.img", b'0', "", &[7u8; 4096]);
            t.truncate(1024);
            t
        }),
        ("not a tar", b"just some bytes, not an archive".to_vec()),
        ("a garbage inventory.img", tar(std::slice::from_ref(&good))),
        (
            "no CRIU images",
            tar(&[tar_entry("hello.txt", b'0', "", b"hello")]),
        ),
    ];
    for (what, body) in cases {
        let r = http(
            &web.addr,
            "POST",
            "/api/restore",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/x-tar"),
            ],
            &body,
        );
        assert_json_error(&r, 400, what);
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("archive refused"),
            "{what}: {}",
            r.text()
        );
        assert!(!outside.exists(), "{what}: wrote {}", outside.display());
        for p in [
            dir.path().join("evil"),
            work.join("evil"),
            work.join("restores/evil"),
            std::env::temp_dir().join("evilpax"),
        ] {
            assert!(!p.exists(), "{what}: wrote {}", p.display());
        }
        let left = tree(&work.join("restores"));
        assert!(left.is_empty(), "{what}: left {left:?}");
    }
    // Too large: refused before it is read.
    let r = http(
        &web.addr,
        "POST",
        "/api/restore",
        &[("Authorization", &auth), ("Content-Length", "1048577")],
        b"",
    );
    assert_json_error(&r, 413, "an upload over --max-upload");
    let r = http(
        &web.addr,
        "POST",
        "/api/restore",
        &[("Authorization", &auth)],
        &vec![0u8; 1_100_000],
    );
    assert_json_error(&r, 413, "an upload over --max-upload, sent");
    assert!(tree(&work.join("restores")).is_empty());
    assert!(web.log().contains("refused"), "{}", web.log());
}

#[test]
fn the_help_offers_only_addresses_the_engine_accepts() {
    // The source opens a link per channel, so a file descriptor cannot
    // name the target (phaul-core refuses fd:N).
    for bin in ["phaul-web", "phaul"] {
        let mut cmd = Command::new(example(bin));
        if bin == "phaul" {
            cmd.arg("migrate");
        }
        let out = cmd.arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin}: {help}");
        assert!(help.contains("HOST:PORT or unix:PATH"), "{bin}: {help}");
        assert!(!help.contains("fd:"), "{bin}: {help}");
    }
}

#[test]
fn a_token_file_must_be_private_and_long() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    for (content, mode, expect) in [
        ("a-long-enough-token-value", 0o644, "chmod 600"),
        ("short", 0o600, "at least 16"),
        ("has spaces in the token value", 0o600, "at least 16"),
    ] {
        let tf = dir.path().join("token");
        std::fs::write(&tf, content).unwrap();
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new(example("phaul-web"))
            .args(["--listen", "127.0.0.1:0", "--target", "127.0.0.1:1"])
            .arg("--key-file")
            .arg(&key)
            .arg("--token-file")
            .arg(&tf)
            .arg("--work-dir")
            .arg(dir.path().join("work"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{content:?} {mode:o}: {err}");
    }
    // Every address needs the origin browsers use.
    let out = Command::new(example("phaul-web"))
        .args(["--listen", "0.0.0.0:0", "--target", "127.0.0.1:1"])
        .arg("--key-file")
        .arg(&key)
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-origin"));
}

// --- the browser ------------------------------------------------------------------------

struct E2e {
    ok: bool,
    result: Value,
    log: String,
}

impl E2e {
    /// Fails the test unless the script passed, with its result, its log
    /// and phaul-web's.
    fn assert_ok(&self, web: &Web) {
        assert!(
            self.ok,
            "the browser test failed: {}\n{}\nphaul-web:\n{}",
            self.result,
            self.log,
            web.log()
        );
    }
}

/// What every browser test starts with. Fields drop in order: the lock
/// last, once the hosts and files are gone.
struct Stage {
    dir: tempfile::TempDir,
    hosts: Hosts,
    key: PathBuf,
    _one: std::sync::MutexGuard<'static, ()>,
}

/// The gate (`None`: skipped, with a message), then one browser test at a
/// time, a scratch dir, two hosts and a key file.
fn stage(test: &str) -> Option<Stage> {
    if !require_browser(test) {
        return None;
    }
    let one = E2E.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new().unwrap();
    let key = key_file(dir.path());
    Some(Stage {
        dir,
        hosts,
        key,
        _one: one,
    })
}

/// Runs `web/e2e.mjs` inside host `ns`; `on_ready`, when given, runs once
/// the script has seen both trees, before it drags. `expect`: `success`,
/// `failure` or `checkpoint` (see the script).
fn e2e(ns: &str, web: &Web, pid: i32, expect: &str, on_ready: Option<&mut dyn FnMut()>) -> E2e {
    e2e_with(ns, web, pid, expect, on_ready, &[])
}

/// [`e2e`] with more of the script's environment (`PHAUL_WEB_CONTAINER`).
fn e2e_with(
    ns: &str,
    web: &Web,
    pid: i32,
    expect: &str,
    on_ready: Option<&mut dyn FnMut()>,
    envs: &[(&str, &str)],
) -> E2e {
    let shots = target_dir().join("web-e2e");
    std::fs::create_dir_all(&shots).unwrap();
    let what = if envs.iter().any(|(k, _)| *k == "PHAUL_WEB_CONTAINER") {
        format!("container-{expect}")
    } else {
        expect.to_string()
    };
    let shot = shots.join(format!("{what}.png"));
    // This run's screenshots only: NAME.png and NAME-*.png.
    for e in std::fs::read_dir(&shots).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == format!("{what}.png") || name.starts_with(&format!("{what}-")) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Hosts::command(ns, "node")
        .arg(repo().join("web/e2e.mjs"))
        .current_dir(repo())
        .env("PHAUL_WEB_URL", &web.url)
        .env("PHAUL_WEB_PID", pid.to_string())
        .env("PHAUL_WEB_EXPECT", expect)
        .env("PHAUL_WEB_SHOT", &shot)
        .envs(on_ready.is_some().then_some(("PHAUL_WEB_WAIT_GO", "1")))
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut on_ready = on_ready;
    let mut result = Value::Null;
    for line in stdout.lines().map_while(Result::ok) {
        if line == "READY" {
            if let Some(f) = on_ready.as_mut() {
                f();
            }
            if let Some(s) = stdin.as_mut() {
                writeln!(s, "GO").unwrap();
            }
        } else if let Some(r) = line.strip_prefix("RESULT ") {
            result = serde_json::from_str(r).unwrap_or(Value::Null);
        }
    }
    drop(stdin);
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(log.path()).unwrap_or_default();
    // What the script checked, shown with --nocapture.
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{log}");
    }
    let ok = status.success() && shot.exists();
    if ok {
        let png = std::fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is a PNG",
            shot.display()
        );
    }
    E2e { ok, result, log }
}

/// A throwaway tree of sleeping processes in host `ns` (a shell and its
/// `sleep` children), so that the source is a busy host; killed on drop.
struct Sleepers {
    child: Child,
    /// The shell's PID: the tree's root.
    pid: i32,
}

/// Processes the busy host must list (the issue's "about 200").
const BUSY: usize = 200;

impl Sleepers {
    fn start(ns: &str, n: usize) -> Self {
        let child = Hosts::command(ns, "sh")
            .args([
                "-c",
                &format!("for i in $(seq {n}); do sleep 600 & done; wait"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // nsenter execs the shell in place: the child is the root.
        let pid = i32::try_from(child.id()).unwrap();
        let mut me = Self { child, pid };
        let children = format!("/proc/{pid}/task/{pid}/children");
        let all = wait_until(Duration::from_secs(30), || {
            let kids = std::fs::read_to_string(&children).ok()?;
            (kids.split_whitespace().count() >= n).then_some(())
        });
        if all.is_none() {
            me.stop();
            panic!("the {n} sleepers did not start");
        }
        me
    }

    fn stop(&mut self) {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .unwrap_or_default();
        for k in kids.split_whitespace().filter_map(|k| k.parse().ok()) {
            kill_tree(k);
        }
        kill_tree(self.pid);
        let _ = self.child.wait();
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The workload runs on the target, with its memory and its counter, and
/// the source's copy ended; the API says the same.
/// `cleared`: the page cleared the finished migrations, so the server
/// must list none.
fn assert_moved_by_page(
    w: &mut Workload,
    hosts: &Hosts,
    web: &Web,
    run: &E2e,
    before: u64,
    cleared: bool,
) {
    let new = i32::try_from(run.result["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(alive(new), "PID {new} runs");
    assert!(
        Hosts::runs_in(&hosts.tgt, new),
        "PID {new} is in the target host"
    );
    assert_eq!(w.memory_intact(new), Some(true), "its memory checksum");
    assert!(
        w.counter_passes(before, Duration::from_secs(10)).is_some(),
        "its counter goes on"
    );
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    assert!(
        wait_until(Duration::from_secs(20), || (!alive(w.pid)).then_some(())).is_some(),
        "the source copy ended"
    );
    let m = get_in(&hosts.src, web, "/api/migrations");
    if cleared {
        assert_eq!(m, json!([]), "the page's clear reached the server");
        return;
    }
    let last = m.as_array().unwrap().last().unwrap();
    assert_eq!(last["status"], "succeeded", "{m}");
    assert_eq!(last["target_pid"], new);
    assert!(last["report"]["downtime_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn on_a_busy_host_the_console_filters_confirms_and_migrates_by_keyboard() {
    let Some(Stage {
        dir, hosts, key, ..
    }) = stage("on_a_busy_host_the_console_filters_confirms_and_migrates_by_keyboard")
    else {
        return;
    };
    let (mut svc, addr) = service(&hosts, &key, dir.path(), &[]);
    let sleepers = Sleepers::start(&hosts.src, BUSY);
    let mut w = Workload::start_in(Some(&hosts.src), 64).unwrap();
    let web = Web::start(Some(&hosts.src), &addr, &key, &dir.path().join("web"), &[]);
    let before = w.counter().unwrap();

    let tree = sleepers.pid.to_string();
    let min = BUSY.to_string();
    let run = e2e_with(
        &hosts.src,
        &web,
        w.pid,
        "console",
        None,
        &[("PHAUL_WEB_TREE", &tree), ("PHAUL_WEB_MIN_PROCS", &min)],
    );
    run.assert_ok(&web);
    assert!(run.result["processes"].as_u64().unwrap() >= BUSY as u64);
    assert!(
        run.result["confirm"]["facts"]
            .as_str()
            .unwrap()
            .contains(&format!("{} processes", BUSY + 1)),
        "the confirmation counts the shell and its sleepers: {}",
        run.result
    );
    // Backing out of the confirmation moved nothing: the sleepers are here.
    assert!(alive(sleepers.pid) && Hosts::runs_in(&hosts.src, sleepers.pid));
    assert_moved_by_page(&mut w, &hosts, &web, &run, before, true);
    svc.stop();
}

#[test]
fn a_one_gib_stop_copy_is_cancelled_then_moves_with_a_moving_bar() {
    let Some(Stage {
        dir, hosts, key, ..
    }) = stage("a_one_gib_stop_copy_is_cancelled_then_moves_with_a_moving_bar")
    else {
        return;
    };
    let (mut svc, addr) = service(&hosts, &key, dir.path(), &[]);
    let _sleepers = Sleepers::start(&hosts.src, BUSY);
    let mut w = Workload::start_in(Some(&hosts.src), 1024).unwrap();
    let web = Web::start(Some(&hosts.src), &addr, &key, &dir.path().join("web"), &[]);
    let before = w.counter().unwrap();
    let min = BUSY.to_string();
    let run = e2e_with(
        &hosts.src,
        &web,
        w.pid,
        "big",
        None,
        &[("PHAUL_WEB_MIN_PROCS", &min)],
    );
    run.assert_ok(&web);
    assert!(
        run.result["bar"].as_array().unwrap().len() >= 5,
        "{}",
        run.result
    );
    assert_eq!(run.result["mode"], "stop-copy", "{}", run.result);
    assert_moved_by_page(&mut w, &hosts, &web, &run, before, false);
    svc.stop();
}

#[test]
fn a_restore_failing_on_the_target_is_named_as_such_in_the_page() {
    let test = "a_restore_failing_on_the_target_is_named_as_such_in_the_page";
    let Some(Stage {
        dir, hosts, key, ..
    }) = stage(test)
    else {
        return;
    };
    let bin = require_criu(test).expect("checked by the stage");
    let failing = criu_failing_restores(dir.path(), &bin);
    let (mut svc, addr) = service(
        &hosts,
        &key,
        dir.path(),
        &["--criu".as_ref(), failing.as_os_str()],
    );
    let _sleepers = Sleepers::start(&hosts.src, BUSY);
    let w = Workload::start_in(Some(&hosts.src), 32).unwrap();
    let web = Web::start(Some(&hosts.src), &addr, &key, &dir.path().join("web"), &[]);
    let run = e2e(&hosts.src, &web, w.pid, "restore-failure", None);
    run.assert_ok(&web);
    // The source runs on, untouched; the API names the restore.
    assert!(alive(w.pid) && Hosts::runs_in(&hosts.src, w.pid));
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    assert_eq!(w.memory_intact(w.pid), Some(true));
    let m = get_in(&hosts.src, &web, "/api/migrations");
    assert_eq!(m[0]["status"], "failed", "{m}");
    assert_eq!(m[0]["failed_phase"], "restore", "{m}");
    let logs = m[0]["logs"].as_str().expect("the source's kept logs");
    assert!(Path::new(logs).is_dir(), "{logs}");
    svc.stop();
}

/// A stand-in in front of the real CRIU whose restores fail for real: it
/// runs CRIU with a configuration naming an LSM profile this kernel lacks,
/// which only a restore reads.
fn criu_failing_restores(dir: &Path, bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.join("restore-fails.conf");
    std::fs::write(&conf, "lsm-profile apparmor:phaul-test\n").unwrap();
    let path = dir.join("criu-failing-restores");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nCRIU_CONFIG_FILE={} exec {} \"$@\"\n",
            conf.display(),
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn dragging_an_lxc_container_onto_the_target_migrates_it_for_real() {
    let Some(Stage {
        dir, hosts, key, ..
    }) = stage("dragging_an_lxc_container_onto_the_target_migrates_it_for_real")
    else {
        return;
    };
    let (src, tgt) = (dir.path().join("lxc-src"), dir.path().join("lxc-tgt"));
    std::fs::create_dir_all(&tgt).unwrap();
    let (mut svc, addr) = service(
        &hosts,
        &key,
        dir.path(),
        &["--lxcpath".as_ref(), tgt.as_os_str()],
    );
    let name = format!("phweb{}", std::process::id() % 100_000);
    let mut ct = LxcContainer::start(Some(&hosts.src), &src, &name).unwrap();
    ct.also.push((tgt.clone(), Some(hosts.tgt.clone())));
    std::fs::write(
        src.join(&name).join("rootfs/etc/phaul-marker"),
        "dragged along",
    )
    .unwrap();
    let before = LxcContainer::counter_in(&src, &name).unwrap();
    let lxc_arg = src.to_str().unwrap();
    let web = Web::start(
        Some(&hosts.src),
        &addr,
        &key,
        &dir.path().join("web"),
        &["--lxcpath", lxc_arg],
    );

    let run = e2e_with(
        &hosts.src,
        &web,
        1,
        "success",
        None,
        &[("PHAUL_WEB_CONTAINER", &name)],
    );
    run.assert_ok(&web);
    // auto: both hosts have lazy pages, and LXC restores lazily (42cae12).
    assert_eq!(run.result["mode"], "post-copy", "{}", run.result);
    // LXC runs it on the target, with its files, counting on from where it
    // was (the counter lives in the shell's memory); the source's is gone.
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.tgt), &tgt, &name).as_deref(),
        Some("RUNNING")
    );
    assert!(!src.join(&name).exists(), "the source's container is gone");
    assert_eq!(
        std::fs::read_to_string(tgt.join(&name).join("rootfs/etc/phaul-marker")).unwrap(),
        "dragged along"
    );
    let c1 = LxcContainer::counter_in(&tgt, &name).unwrap();
    assert!(c1 >= before, "the counter went back: {c1} < {before}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            LxcContainer::counter_in(&tgt, &name).filter(|c| *c > c1)
        })
        .is_some(),
        "the counter does not move on the target"
    );
    svc.stop();
}

#[test]
fn a_migration_to_a_stopped_service_fails_in_the_page_and_the_source_keeps_running() {
    let Some(Stage {
        dir, hosts, key, ..
    }) = stage("a_migration_to_a_stopped_service_fails_in_the_page_and_the_source_keeps_running")
    else {
        return;
    };
    let (mut svc, addr) = service(&hosts, &key, dir.path(), &[]);
    let w = Workload::start_in(Some(&hosts.src), 32).unwrap();
    let web = Web::start(Some(&hosts.src), &addr, &key, &dir.path().join("web"), &[]);

    let mut stop = || svc.stop();
    let run = e2e(&hosts.src, &web, w.pid, "failure", Some(&mut stop));
    run.assert_ok(&web);
    assert_eq!(run.result["status"], "failed");
    // The workload still runs on the source, untouched.
    assert!(alive(w.pid));
    assert!(Hosts::runs_in(&hosts.src, w.pid));
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    assert_eq!(w.memory_intact(w.pid), Some(true));
    let m = get_in(&hosts.src, &web, "/api/migrations");
    assert_eq!(m[0]["status"], "failed", "{m}");
    assert!(
        m[0]["error"]
            .as_str()
            .unwrap()
            .contains("link to the other host"),
        "{m}"
    );
}

#[test]
fn the_page_checkpoints_downloads_and_restores_an_archive() {
    let Some(Stage {
        dir, hosts, key, ..
    }) = stage("the_page_checkpoints_downloads_and_restores_an_archive")
    else {
        return;
    };
    let mut w = Workload::start_in(Some(&hosts.src), 32).unwrap();
    let web = Web::start(
        Some(&hosts.src),
        &format!("{}:7070", hosts.tgt_ip),
        &key,
        &dir.path().join("web"),
        &[],
    );
    let before = w.counter().unwrap();
    let run = e2e(&hosts.src, &web, w.pid, "checkpoint", None);
    run.assert_ok(&web);
    let new = i32::try_from(run.result["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(alive(new), "the restored PID {new} runs");
    assert!(!alive(w.pid), "the original was stopped by the checkpoint");
    assert!(Hosts::runs_in(&hosts.src, new), "restored on this host");
    assert_eq!(w.memory_intact(new), Some(true));
    assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
}

/// A POST of JSON from inside host `ns`: its status and body.
fn post_in(ns: &str, web: &Web, path: &str, body: &Value) -> (u16, Value) {
    let (addr, auth, path, body) = (web.addr.clone(), web.auth(), path.to_string(), body.clone());
    phaul_testkit::in_netns(ns, move || async move {
        let r = http(
            &addr,
            "POST",
            &path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        );
        (r.status, r.json())
    })
    .join()
    .unwrap()
}

/// Starts a migration through the API and waits for its end; its state.
fn migrate_in(ns: &str, web: &Web, body: &Value) -> Value {
    let (status, r) = post_in(ns, web, "/api/migrate", body);
    assert_eq!(status, 202, "{body}: {r}\n{}", web.log());
    let path = format!("/api/migrations/{}", r["id"]);
    wait_until(Duration::from_secs(240), || {
        let m = get_in(ns, web, &path);
        (m["status"] != "running").then_some(m)
    })
    .expect("the migration ended")
}

/// Both hosts run `phaul-service`; phaul-web runs in the source host and
/// knows both (`--target` the other's, `--this-host` its own). Fields drop
/// in order: the processes before the hosts they run in.
struct BothWays {
    svc: [common::Killed; 2],
    web: Web,
    stage: Stage,
}

fn both_ways(test: &str, browser: bool) -> Option<BothWays> {
    let stage = if browser {
        stage(test)?
    } else {
        require_criu(test)?;
        let one = E2E.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let key = key_file(dir.path());
        Stage {
            dir,
            hosts: Hosts::new().unwrap(),
            key,
            _one: one,
        }
    };
    let (h, key, dir) = (&stage.hosts, &stage.key, stage.dir.path());
    let (svc_a, a) = service_on(&h.src, &h.src_ip, key, dir, "a");
    let (svc_b, b) = service_on(&h.tgt, &h.tgt_ip, key, dir, "b");
    let web = Web::start(
        Some(&h.src),
        &b,
        key,
        &dir.join("web"),
        &["--this-host", &a],
    );
    Some(BothWays {
        svc: [svc_a, svc_b],
        web,
        stage,
    })
}

/// `w` (whose counter read `before`) runs as `new` in host `ns` with its
/// memory, counts on, and its original is gone.
fn assert_moved_to(w: &mut Workload, ns: &str, new: i32, before: u64) {
    let old = w.pid;
    w.adopt(new);
    assert!(Hosts::runs_in(ns, new), "PID {new} runs in {ns}");
    assert_eq!(w.memory_intact(new), Some(true), "its memory checksum");
    assert!(
        w.counter_passes(before, Duration::from_secs(10)).is_some(),
        "its counter goes on"
    );
    assert!(
        wait_until(Duration::from_secs(20), || (!alive(old)).then_some(())).is_some(),
        "the original {old} ended"
    );
}

#[test]
fn the_api_moves_trees_both_ways_through_the_owners_service() {
    let Some(mut bw) = both_ways(
        "the_api_moves_trees_both_ways_through_the_owners_service",
        false,
    ) else {
        return;
    };
    let (hosts, web) = (&bw.stage.hosts, &bw.web);
    let src = hosts.src.clone();
    let mut on_a = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let mut on_b = Workload::start_in(Some(&hosts.tgt), 16).unwrap();
    let info = get_in(&src, web, "/api/info");
    assert_eq!(info["pull"], true, "{info}");

    // What a pull refuses, before anything is sent: the other host's init,
    // a PID it does not run, a file-system driver (its service picks its
    // own), a dry run (the control API has none).
    let b_pid = on_b.pid;
    for (body, expect) in [
        (json!({"pid": 1, "from": "remote"}), "init"),
        (
            json!({"pid": "12; reboot", "from": "remote"}),
            "positive decimal",
        ),
        (
            json!({"pid": on_a.pid, "from": "remote"}),
            "does not run on",
        ),
        (
            json!({"pid": b_pid, "from": "remote", "fs": "native"}),
            "fs is for",
        ),
        (json!({"pid": b_pid, "from": "elsewhere"}), "from must be"),
    ] {
        let (status, r) = post_in(&src, web, "/api/migrate", &body);
        assert_eq!(status, 400, "{body}: {r}");
        assert!(r["error"].as_str().unwrap().contains(expect), "{body}: {r}");
    }
    let (status, r) = post_in(
        &src,
        web,
        "/api/plan",
        &json!({"pid": b_pid, "from": "remote"}),
    );
    assert_eq!(status, 400, "{r}");

    // Out: A's workload to B, run in phaul-web.
    let before = on_a.counter().unwrap();
    let m = migrate_in(&src, web, &json!({ "pid": on_a.pid }));
    assert_eq!(m["status"], "succeeded", "{m}\n{}", web.log());
    assert_eq!(m["direction"], "out");
    let new = i32::try_from(m["target_pid"].as_i64().unwrap()).unwrap();
    assert_moved_to(&mut on_a, &hosts.tgt, new, before);

    // In: B's workload to A, by an order to B's service; its events fed
    // the same state (phases, mode, downtime).
    let before = on_b.counter().unwrap();
    let m = migrate_in(&src, web, &json!({ "pid": on_b.pid, "from": "remote" }));
    assert_eq!(m["status"], "succeeded", "{m}\n{}", web.log());
    assert_eq!(m["direction"], "in");
    assert!(
        m["mode"].is_string() && m["downtime_ms"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    assert!(
        m["expected_bytes"].as_u64().unwrap() > 0,
        "B's service counted it: {m}"
    );
    assert!(!m["migration_id"].as_str().unwrap().is_empty(), "{m}");
    let new = i32::try_from(m["target_pid"].as_i64().unwrap()).unwrap();
    assert_moved_to(&mut on_b, &hosts.src, new, before);

    // A cancelled order: B's service rolls back, the tree runs on at B.
    let big = Workload::start_in(Some(&hosts.tgt), 256).unwrap();
    let body = json!({ "pid": big.pid, "from": "remote", "mode": "stop-copy" });
    let (status, r) = post_in(&src, web, "/api/migrate", &body);
    assert_eq!(status, 202, "{r}\n{}", web.log());
    let a_log = bw.stage.dir.path().join("a/service.err");
    let reached = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&a_log)
            .ok()
            .filter(|s| s.contains("migration session opened"))
            .map(drop)
    });
    assert!(reached.is_some(), "the order never reached A's service");
    let (status, c) = post_in(
        &src,
        web,
        &format!("/api/migrations/{}/cancel", r["id"]),
        &json!({}),
    );
    assert_eq!(status, 200, "{c}");
    let path = format!("/api/migrations/{}", r["id"]);
    let m = wait_until(Duration::from_secs(120), || {
        let m = get_in(&src, web, &path);
        (m["status"] != "running").then_some(m)
    })
    .unwrap();
    assert_eq!(m["status"], "cancelled", "{m}\n{}", web.log());
    assert!(Hosts::runs_in(&hosts.tgt, big.pid), "it runs on B");
    let c = big.counter().unwrap();
    assert!(big.counter_passes(c, Duration::from_secs(10)).is_some());
    assert_eq!(big.memory_intact(big.pid), Some(true));
    for s in &mut bw.svc {
        s.stop();
    }
}

#[test]
fn the_page_drags_one_tree_there_and_another_back() {
    let Some(mut bw) = both_ways("the_page_drags_one_tree_there_and_another_back", true) else {
        return;
    };
    let (hosts, web) = (&bw.stage.hosts, &bw.web);
    let mut on_a = Workload::start_in(Some(&hosts.src), 32).unwrap();
    let mut on_b = Workload::start_in(Some(&hosts.tgt), 32).unwrap();
    let (before_a, before_b) = (on_a.counter().unwrap(), on_b.counter().unwrap());
    let remote = on_b.pid.to_string();
    let run = e2e_with(
        &hosts.src,
        web,
        on_a.pid,
        "both",
        None,
        &[("PHAUL_WEB_REMOTE_PID", &remote)],
    );
    run.assert_ok(web);
    let there = i32::try_from(run.result["target_pid"].as_i64().unwrap()).unwrap();
    let here = i32::try_from(run.result["pulled_pid"].as_i64().unwrap()).unwrap();
    assert_moved_to(&mut on_a, &hosts.tgt, there, before_a);
    assert_moved_to(&mut on_b, &hosts.src, here, before_b);
    let m = get_in(&hosts.src, web, "/api/migrations");
    let dirs: Vec<_> = m
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["direction"].clone(), m["status"].clone()))
        .collect();
    assert_eq!(
        dirs,
        [
            (json!("out"), json!("succeeded")),
            (json!("in"), json!("succeeded"))
        ],
        "{m}"
    );
    for s in &mut bw.svc {
        s.stop();
    }
}

/// A GET from inside host `ns` (phaul-web listens on that host's loopback).
fn get_in(ns: &str, web: &Web, path: &str) -> Value {
    let (addr, auth, path) = (web.addr.clone(), web.auth(), path.to_string());
    phaul_testkit::in_netns(ns, move || async move {
        http(&addr, "GET", &path, &[("Authorization", &auth)], b"").json()
    })
    .join()
    .unwrap()
}

// --- checkpoint and restore ------------------------------------------------------------

#[test]
fn a_checkpoint_downloads_as_an_archive_that_restores() {
    let test = "a_checkpoint_downloads_as_an_archive_that_restores";
    if require_criu(test).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let work = dir.path().join("work");
    let web = Web::start(None, "127.0.0.1:1", &key, &work, &[]);
    let mut w = Workload::start(16).unwrap();

    // Leave running: the workload goes on; the archive is offered.
    let r = post_json(&web, "/api/checkpoint", &json!({ "pid": w.pid }));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), web.log());
    let cp = r.json();
    assert_eq!(cp["left_running"], true);
    assert!(cp["files"].as_u64().unwrap() > 3, "{cp}");
    assert!(alive(w.pid));
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    let a = get(&web, cp["archive"].as_str().unwrap());
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/x-tar"));
    assert_eq!(a.body.len() as u64, cp["bytes"].as_u64().unwrap());
    assert_eq!(&a.body[257..263], b"ustar\0");
    assert!(
        a.header("content-disposition")
            .is_some_and(|d| d.contains("attachment"))
    );
    // The same thing twice at once is refused; here, one after the other, fine.

    // Stop after checkpoint: the original ends, the archive restores it.
    let before = w.counter().unwrap();
    let r = post_json(
        &web,
        "/api/checkpoint",
        &json!({ "pid": w.pid.to_string(), "stop": true }),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), web.log());
    let cp = r.json();
    assert_eq!(cp["left_running"], false);
    assert!(
        wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some(),
        "the original ended"
    );
    let a = get(&web, cp["archive"].as_str().unwrap());
    assert_eq!(a.status, 200);
    let r = http(
        &web.addr,
        "POST",
        "/api/restore",
        &[
            ("Authorization", &web.auth()),
            ("Content-Type", "application/x-tar"),
        ],
        &a.body,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), web.log());
    let new = i32::try_from(r.json()["pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(alive(new));
    assert_eq!(w.memory_intact(new), Some(true));
    assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
    // The restore's directory is gone.
    assert!(tree(&work.join("restores")).is_empty());
}
