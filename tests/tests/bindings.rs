//! The bindings apps use (bindings/, uniffi): the Python module generated from the built
//! library and loaded by a real Python, which starts a broadcaster it feeds ffmpeg's MPEG-TS,
//! starts a viewer on its ticket, plays the viewer's URL with ffmpeg, reads stats and events,
//! and stops both (tests/python/test_bindings.py). The Kotlin and Swift sources are generated
//! from the same library; they cannot be compiled on this machine (no kotlinc, no swiftc), so
//! this checks that they are generated and name the API.

use std::path::Path;
use std::process::Command;

use shoal_tests::process::{bin_dir, binary, test_dir};

/// Generates the bindings for `language` into `out`.
fn generate(language: &str, out: &Path) {
    let library = bin_dir().join("libshoal_ffi.so");
    assert!(
        library.exists(),
        "{} is missing: build the workspace first",
        library.display()
    );
    let status = Command::new(binary("uniffi-bindgen"))
        .args(["generate", "--library"])
        .arg(&library)
        .args(["--language", language, "--out-dir"])
        .arg(out)
        .status()
        .expect("uniffi-bindgen runs");
    assert!(status.success(), "generating the {language} bindings failed");
}

/// Every file under `dir`, read.
fn sources(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).expect("generated directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            text += &sources(&path);
        } else if let Ok(s) = std::fs::read_to_string(&path) {
            text += &s;
        }
    }
    text
}

#[test]
fn python_plays_a_stream_through_the_binding_and_stops_it() {
    let dir = test_dir("bindings-python");
    generate("python", &dir);
    std::fs::copy(bin_dir().join("libshoal_ffi.so"), dir.join("libshoal_ffi.so")).expect("library beside the module");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/test_bindings.py");
    let out = Command::new("python3")
        .arg(&script)
        .env("PYTHONPATH", &dir)
        .current_dir(&dir)
        .output()
        .expect("python3 runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "the Python test failed:\n{stderr}\n{stdout}");
    let line = stdout.lines().last().unwrap_or_default();
    eprintln!("{line}");
    let result: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    let first = result["first_segment_s"].as_f64().expect("first segment time");
    assert!(first < 15.0, "the first segment took {first} s: {result}");
    assert!(result["frames_played"].as_u64().unwrap_or(0) > 50, "{result}");
}

#[test]
fn kotlin_and_swift_sources_are_generated_from_the_same_library() {
    let dir = test_dir("bindings-mobile");
    for (language, names) in [
        ("kotlin", ["fun `startViewer`", "fun `playlistUrl`", "fun `pushTs`"]),
        ("swift", ["func startViewer(", "func playlistUrl(", "func pushTs("]),
    ] {
        let out = dir.join(language);
        generate(language, &out);
        let text = sources(&out);
        for name in names {
            assert!(text.contains(name), "the {language} bindings have no {name}");
        }
    }
}
