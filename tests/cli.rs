//! End-to-end tests of the `losa` program (spawned as a process) on the shipped retrieval model
//! (and a random-weight chat fixture for free text): generation from a prompt file and its
//! answer, `--json` output, training, evaluation and bench result files, and one-line errors
//! (no panic trace) for every kind of bad argument.

use std::process::{Command, Output};

fn losa(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_losa"))
        .args(args)
        .output()
        .expect("spawn losa")
}

/// Runs `losa` and asserts it succeeded.
fn losa_ok(args: &[&str]) -> Output {
    let out = losa(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A JSON result file.
fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn temp_file(name: &str, text: &str) -> String {
    let path = std::env::temp_dir().join(format!("losa-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// A random-weight checkpoint with the Qwen BPE tokenizer and chat template, for free text.
const UNTRAINED_CHAT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/fixtures/sdar-tiny");

#[test]
fn generates_from_a_prompt_file_with_each_attention_mode() {
    let file = format!("{SHIPPED}/example-prompt.txt");
    for mode in ["dense", "quest", "losa"] {
        let out = losa_ok(&[
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
            String::from_utf8_lossy(&out.stderr).contains("tokens in"),
            "{mode}: summary on stderr"
        );
    }
}

#[test]
fn json_output_parses_and_carries_telemetry() {
    let out = losa_ok(&[
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
        "--model",
        UNTRAINED_CHAT,
    ]);
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
    let run_dir = std::env::temp_dir().join(format!("losa-cli-bad-train-{}", std::process::id()));
    let run_dir = run_dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--out", run_dir, "--stages", "10-20:1:100"],
            "too short",
        ),
        (
            vec!["train", "--out", run_dir, "--stages", "80:1"],
            "bad stage",
        ),
        (
            vec!["train", "--out", run_dir, "--lr", "0"],
            "lr must be positive",
        ),
        (vec!["eval", "--task", "gsm8k"], "needs --data"),
        (
            vec!["eval", "--task", "gsm8k", "--data", "/no/such/test.jsonl"],
            "cannot read",
        ),
        (vec!["eval", "--lengths", "10"], "too short"),
        (
            vec!["generate", "--prompt", "x", "--dtype", "bf16"],
            "f32 only",
        ),
        (
            vec!["bench", "generate", "--shape", "tiny", "--dtype", "f16"],
            "f32 only",
        ),
        (vec!["eval", "--sweep", "--budgets", "0"], "budget"),
        (vec!["eval", "--model", "/no/such/model"], "does not exist"),
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
        // The shipped model's block is 16.
        (vec!["generate", "--prompt", "x", "--steps", "17"], "steps"),
        (
            vec!["generate", "--prompt", "x", "--active", "17"],
            "active",
        ),
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
    assert!(
        !std::path::Path::new(run_dir).join("training.json").exists(),
        "refused recipes write nothing"
    );
}

/// `losa train` writes a checkpoint that `losa eval --sweep` runs: dense, Quest at every budget
/// and LoSA at every budget and active count, on the same held-out items, into one result file.
#[test]
fn train_then_eval_sweep_writes_the_result_file() {
    let dir = std::env::temp_dir().join(format!("losa-cli-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ckpt = dir.join("ckpt");
    let ckpt = ckpt.to_str().unwrap();
    let out = losa_ok(&[
        "train",
        "--out",
        ckpt,
        "--stages",
        "80-112:2:300",
        "--hidden",
        "32",
        "--layers",
        "2",
        "--intermediate",
        "64",
        "--eval-items",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 of 2 steps done"));
    let result = dir.join("eval.json");
    losa_ok(&[
        "eval",
        "--model",
        ckpt,
        "--lengths",
        "160",
        "--items",
        "2",
        "--sweep",
        "--budgets",
        "16,32",
        "--actives",
        "1,2",
        "--dense-layers",
        "0",
        "--steps",
        "8",
        "--max-new-tokens",
        "16",
        "--out",
        result.to_str().unwrap(),
    ]);
    let report = read_json(&result);
    let runs = report["runs"].as_array().unwrap();
    let kinds: Vec<(&str, Option<u64>, Option<u64>)> = runs
        .iter()
        .map(|r| {
            (
                r["attention"].as_str().unwrap(),
                r["budget"].as_u64(),
                r["active"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("dense", None, None),
            ("quest", Some(16), None),
            ("quest", Some(32), None),
            ("losa", Some(16), Some(1)),
            ("losa", Some(16), Some(2)),
            ("losa", Some(32), Some(1)),
            ("losa", Some(32), Some(2)),
        ]
    );
    for r in runs {
        assert_eq!(r["items"], 2);
        let acc = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        if r["attention"] != "dense" {
            let d = r["mean_density"].as_f64().unwrap();
            assert!(d > 0.0 && d <= 1.0, "{r}");
            // Present when some block took a second step.
            if let Some(later) = r["mean_density_after_first_step"].as_f64() {
                assert!((0.0..=1.0).contains(&later), "{r}");
            }
        }
    }
    // A checkpoint without the task vocabulary is refused with one line.
    let out = losa(&[
        "eval",
        "--model",
        UNTRAINED_CHAT,
        "--lengths",
        "160",
        "--items",
        "1",
        "--attention",
        "dense",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not the retrieval task vocabulary"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `losa bench generate` runs every mode with the same number of steps on a random model and
/// writes one row per (prompt, mode, steps).
#[test]
fn bench_generate_writes_a_row_per_run() {
    let result = std::env::temp_dir().join(format!("losa-cli-bench-{}.json", std::process::id()));
    losa_ok(&[
        "bench",
        "generate",
        "--shape",
        "tiny",
        "--prompt-tokens",
        "96",
        "--steps",
        "2,4",
        "--blocks",
        "1",
        "--dtype",
        "f32",
        "--budget",
        "32",
        "--active",
        "2",
        "--dense-layers",
        "1",
        "--out",
        result.to_str().unwrap(),
    ]);
    let report = read_json(&result);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for r in rows {
        assert_eq!(
            r["blocks"], 1,
            "a 96-token prompt is whole blocks: one new block"
        );
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["prefill_ms"].as_f64().unwrap() > 0.0);
        // The profiled run splits the block passes into parts whose shares add up to one.
        let shares: f64 = ["attention_share", "mlp_share", "rest_share"]
            .iter()
            .map(|k| r[*k].as_f64().unwrap())
            .sum();
        assert!((shares - 1.0).abs() < 1e-9, "{shares}");
        assert!(r["parts"]["attention_ms"].as_f64().unwrap() > 0.0);
    }
    // One prefill per prompt length, shared by every mode and step count.
    assert_eq!(report["prefills"].as_array().unwrap().len(), 1);
    std::fs::remove_file(&result).unwrap();
}

/// The shipped model answers held-out retrieval prompts through `losa eval` (the normal loader,
/// tokenizer and SDAR loop, on the CPU): at 256 tokens it answered 63/64 on CUDA and 16/16 of
/// the first items here; an untrained or broken model answers none (an answer is 8 to 24 exact
/// words out of 8,192).
#[test]
fn the_shipped_model_answers_retrieval_prompts() {
    let result =
        std::env::temp_dir().join(format!("losa-cli-checkpoint-{}.json", std::process::id()));
    losa_ok(&[
        "eval",
        "--model",
        SHIPPED,
        "--lengths",
        "256",
        "--items",
        "8",
        "--attention",
        "dense",
        "--out",
        result.to_str().unwrap(),
    ]);
    let report = read_json(&result);
    let run = &report["runs"][0];
    assert_eq!(run["items"], 8);
    assert!(
        run["accuracy"].as_f64().unwrap() >= 0.75,
        "exact match {}",
        run["accuracy"]
    );
    std::fs::remove_file(&result).unwrap();
}

/// The shipped retrieval model's folder and its example prompt (the first held-out 256-token
/// item, as text).
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shipped/retrieval");

fn first_held_out_item() -> (String, String) {
    use losa_tasks::{RetrievalSpec, TaskVocab};
    let vocab = TaskVocab::new();
    let item = RetrievalSpec::new(256)
        .eval_set(&vocab, 1)
        .unwrap()
        .remove(0);
    (vocab.text(&item.prompt), vocab.text(&item.answer))
}

/// `example-prompt.txt` is the generator's first held-out item, so the README's command shows
/// a real task prompt. `LOSA_WRITE_EXAMPLE=1` rewrites it after a task-format change.
#[test]
fn the_shipped_example_prompt_is_the_first_held_out_item() {
    let path = format!("{SHIPPED}/example-prompt.txt");
    let (prompt, _) = first_held_out_item();
    if std::env::var_os("LOSA_WRITE_EXAMPLE").is_some() {
        std::fs::write(&path, format!("{prompt}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        committed.trim_end(),
        prompt,
        "rerun with LOSA_WRITE_EXAMPLE=1"
    );
}

/// `losa generate` with no `--model` runs the shipped trained model on the CPU and answers the
/// example prompt: the exact 8-24 value words of the record the question names, out of 8,192.
#[test]
fn generate_with_the_default_model_answers_a_retrieval_prompt() {
    let (_, answer) = first_held_out_item();
    let out = losa_ok(&[
        "generate",
        "--prompt-file",
        &format!("{SHIPPED}/example-prompt.txt"),
        "--max-new-tokens",
        "32",
        "--steps",
        "16",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), answer.trim(), "the record's value");
}
