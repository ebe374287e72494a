//! Bad user input: every binary answers with one clear line naming the problem and a
//! non-zero exit — never a panic, never a stack of messages to dig through.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use shoal_proto::Ticket;
use shoal_tests::process::{binary, test_dir};

/// Runs `program args…` to its end (bounded in time) and returns stderr; asserts it failed
/// with exactly one line that names the problem.
fn fails_with(program: &str, args: &[&str], envs: &[(&str, &Path)], dir: &Path, needle: &str) -> String {
    let mut child = Command::new(binary(program))
        .args(args)
        // No display unless a case gives one (the screen source needs it).
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .env("RUST_LOG", "warn")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the binary");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("waiting").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} was still running after 30 s instead of failing");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collecting output");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{program} {args:?} succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "{program} {args:?} panicked: {stderr}");
    // (A flag the parser refuses also gets its pointer to --help.)
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information, try '--help'"))
        .collect();
    assert_eq!(lines.len(), 1, "{program} {args:?} should say one line, said: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(needle), "expected {needle:?} in: {stderr}");
    stderr
}

/// A well-formed ticket for a stream nobody broadcasts.
fn ticket() -> String {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    Ticket::new(key, "nobody", vec![SocketAddr::from(([127, 0, 0, 1], 9))]).to_string()
}

#[test]
fn a_malformed_ticket_is_named() {
    let dir = test_dir("bad-ticket");
    fails_with(
        "shoal-peer",
        &["--ticket", "shoal1!!"],
        &[],
        &dir,
        "is not a valid shoal ticket",
    );
    fails_with(
        "shoal-gateway",
        &["--ticket", "http://x"],
        &[],
        &dir,
        "starts with \"shoal1\"",
    );
    fails_with(
        "shoal-peer",
        &["--ticket-file", "missing.ticket"],
        &[],
        &dir,
        "cannot read ticket file missing.ticket",
    );
}

#[test]
fn a_malformed_config_file_is_named_with_its_line() {
    let dir = test_dir("bad-config");
    std::fs::write(dir.join("peer.toml"), "# a relay\nupload_kbps = 4000\nlisten = [\n").unwrap();
    fails_with(
        "shoal-peer",
        &["--config", "peer.toml"],
        &[],
        &dir,
        "config file peer.toml is not valid TOML (line 3)",
    );
}

#[test]
fn an_address_in_use_is_named() {
    let dir = test_dir("addr-in-use");
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let quic = udp.local_addr().unwrap().to_string();
    let ticket = ticket();
    fails_with(
        "shoal-peer",
        &["--ticket", &ticket, "--listen", &quic],
        &[],
        &dir,
        "cannot listen on",
    );
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let http = tcp.local_addr().unwrap().to_string();
    fails_with(
        "shoal-gateway",
        &["--ticket", &ticket, "--listen", "127.0.0.1:0", "--http", &http],
        &[],
        &dir,
        "cannot serve HTTP on",
    );
    fails_with(
        "shoal-broadcaster",
        &["--key", "b.key", "--listen", &quic],
        &[],
        &dir,
        "cannot listen on",
    );
}

#[test]
fn a_key_file_that_is_shared_or_not_a_key_is_refused() {
    let dir = test_dir("bad-key");
    std::fs::write(dir.join("open.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    std::fs::set_permissions(dir.join("open.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    fails_with(
        "shoal-broadcaster",
        &["--key", "open.key"],
        &[],
        &dir,
        "can be read by other users",
    );
    std::fs::write(dir.join("junk.key"), "not a key\n").unwrap();
    std::fs::set_permissions(dir.join("junk.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    fails_with(
        "shoal-broadcaster",
        &["--key", "junk.key"],
        &[],
        &dir,
        "does not hold a shoal stream key",
    );
}

#[test]
fn a_ticket_with_no_address_and_nothing_else_is_named() {
    let dir = test_dir("bare-ticket");
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let bare = Ticket::new(key, "bare", vec![]).to_string();
    fails_with(
        "shoal-gateway",
        &["--ticket", &bare, "--http", "127.0.0.1:0"],
        &[],
        &dir,
        "the ticket lists no address: add --dht",
    );
}

#[test]
fn hardware_the_machine_lacks_is_named() {
    let dir = test_dir("no-hardware");
    fails_with(
        "shoal-broadcaster",
        &["--key", "b.key", "--source", "v4l2:/dev/video-none"],
        &[],
        &dir,
        "no camera at /dev/video-none",
    );
    fails_with(
        "shoal-broadcaster",
        &["--key", "b.key", "--source", "screen"],
        &[],
        &dir,
        "screen capture needs an X display",
    );
    // (Where VA-API exists, asking for it is fine: this case is about machines without it.)
    let vaapi = Command::new("gst-inspect-1.0")
        .args(["--exists", "vaapih264enc"])
        .status()
        .is_ok_and(|s| s.success());
    if !vaapi {
        fails_with(
            "shoal-broadcaster",
            &["--key", "b.key", "--encoder", "vaapi"],
            &[],
            &dir,
            "--encoder vaapi: no VA-API H.264 encoder",
        );
    }
}

#[test]
fn a_source_that_cannot_be_played_is_named() {
    let dir = test_dir("bad-source");
    fails_with(
        "shoal-broadcaster",
        &["--key", "b.key", "--source", "camera"],
        &[],
        &dir,
        "unknown source \"camera\"",
    );
    fails_with(
        "shoal-broadcaster",
        &["--key", "b.key", "--source", "file:nowhere.mp4"],
        &[],
        &dir,
        "cannot open source file nowhere.mp4",
    );
    std::fs::write(dir.join("notes.txt"), "these are not frames\n".repeat(100)).unwrap();
    fails_with(
        "shoal-broadcaster",
        &[
            "--key",
            "b.key",
            "--source",
            "file:notes.txt",
            "--ticket-file",
            "notes.ticket",
        ],
        &[],
        &dir,
        "source file notes.txt",
    );
    // No ticket is handed out for a stream that never started.
    assert!(!dir.join("notes.ticket").exists());
}

#[test]
fn a_missing_gstreamer_plugin_is_named_with_its_package() {
    let dir = test_dir("no-plugins");
    let empty = dir.join("plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let registry = dir.join("registry.bin");
    fails_with(
        "shoal-broadcaster",
        &["--key", "b.key"],
        &[
            ("GST_PLUGIN_SYSTEM_PATH_1_0", &empty),
            ("GST_PLUGIN_PATH_1_0", &empty),
            ("GST_REGISTRY_1_0", &registry),
        ],
        &dir,
        "install gstreamer1.0-plugins-",
    );
}
