//! End-to-end tests of the `losa` program (spawned as a process) on the shipped small model:
//! generation from a prompt file, `--json` output, and one-line errors (no panic trace) for
//! every kind of bad argument.

use std::process::{Command, Output};

fn losa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_losa"))
        .args(args)
        .output()
        .expect("spawn losa")
}

fn temp_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("losa-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn generates_from_a_prompt_file_with_each_attention_mode() {
    let file = temp_file("prompt", "Find the value of key alpha.");
    for mode in ["dense", "quest", "losa"] {
        let out = losa(&[
            "generate",
            "--prompt-file",
            &file,
            "--max-new-tokens",
            "8",
            "--attention",
            mode,
            "--active",
            "2",
        ]);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("tokens in"),
            "{mode}: summary on stderr"
        );
    }
}

#[test]
fn json_output_parses_and_carries_telemetry() {
    let out = losa(&[
        "generate",
        "--prompt",
        "The key of the vault is",
        "--max-new-tokens",
        "12",
        "--json",
        "--chat",
        "--steps",
        "2",
        "--active",
        "2",
        "--dense-layers",
        "0",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let generation = &json["generation"];
    assert!(json["text"].is_string());
    assert!(
        json["prompt_tokens"].as_u64().unwrap() > 5,
        "the chat template wraps the prompt"
    );
    assert!(generation["tokens"].as_array().unwrap().len() <= 12);
    let blocks = generation["blocks"].as_array().unwrap();
    assert!(!blocks.is_empty());
    let step = &blocks[0]["steps"][0];
    assert!(step["committed"].as_u64().unwrap() >= 1);
    assert!(
        step["density"].is_number(),
        "LoSA steps report their KV density"
    );
}

#[test]
fn bad_arguments_exit_nonzero_with_one_line() {
    let long = temp_file("long", &"alpha beta gamma delta ".repeat(3000));
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["generate", "--prompt", "x", "--policy", "fastest"],
            "unknown policy",
        ),
        (
            vec!["generate", "--prompt", "x", "--block-size", "0"],
            "block size",
        ),
        (vec!["generate", "--prompt", "x", "--budget", "0"], "budget"),
        (
            vec!["generate", "--prompt", "x", "--page-size", "0"],
            "page_size",
        ),
        (vec!["generate", "--prompt", "x", "--steps", "9"], "steps"),
        (vec!["generate", "--prompt", "x", "--active", "9"], "active"),
        (vec!["generate", "--prompt", "   "], "empty"),
        (vec!["generate", "--prompt-file", &long], "exceed"),
        (
            vec!["generate", "--prompt", "x", "--max-new-tokens", "100000"],
            "exceed",
        ),
        (
            vec!["generate", "--model", "/no/such/model", "--prompt", "x"],
            "does not exist",
        ),
        (
            vec!["generate", "--prompt-file", "/no/such/file"],
            "cannot read",
        ),
        (
            vec!["generate", "--prompt", "x", "--temperature=-1"],
            "temperature",
        ),
        (vec!["generate", "--bogus"], "unexpected argument"),
        (vec!["generate", "--steps", "many"], "invalid value"),
    ];
    for (args, want) in cases {
        let out = losa(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr:?} should mention {want:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
