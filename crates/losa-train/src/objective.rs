//! The block-diffusion objective of SDAR, on one example: the sequence is prompt + answer +
//! end-of-text filling the answer's last block. One block overlapping the answer is noised: each
//! of its answer positions is replaced by the mask token with probability `t ~ U(0, 1)` (at
//! least one); everything before it stays clean and everything after it is dropped, which is
//! exactly what the block-causal model sees when it denoises that block at inference. The loss is
//! the cross-entropy of the masked positions.

use burn::tensor::{Int, Tensor, TensorData, activation::log_softmax};
use losa_attention::LosaBackend;
use losa_models::{DlmModel, LoadError};
use rand::Rng;

/// One noised training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct NoisedExample {
    /// Input ids, a whole number of blocks, ending with the noised block.
    pub ids: Vec<u32>,
    /// Masked positions and the token each must predict.
    pub targets: Vec<(usize, u32)>,
}

/// Noises `prompt` + `answer` (the answer already ends with end of text; `filler` pads its last
/// block) for a model of block size `block`.
pub fn noise_example(
    prompt: &[u32],
    answer: &[u32],
    filler: u32,
    mask: u32,
    block: usize,
    rng: &mut impl Rng,
) -> NoisedExample {
    noise_drill(
        &[],
        &[(prompt.to_vec(), answer.to_vec())],
        filler,
        mask,
        block,
        rng,
    )
}

/// Noises `context` followed by several `(question, answer)` segments (each answer already ends
/// with end of text and is padded with `filler` to a block boundary, so the next question starts
/// a block). In every segment one block overlapping its answer is noised with its own ratio;
/// blocks before it stay clean, as they are when the sampler denoises that block. Later segments
/// ask about other records, so what they see of earlier segments does not matter to them; the
/// sequence ends with the last segment's noised block. Several segments give several targets
/// per forward pass over the shared context.
pub fn noise_drill(
    context: &[u32],
    segments: &[(Vec<u32>, Vec<u32>)],
    filler: u32,
    mask: u32,
    block: usize,
    rng: &mut impl Rng,
) -> NoisedExample {
    let mut ids: Vec<u32> = context.to_vec();
    let mut targets = Vec::new();
    let mut end = ids.len();
    for (question, answer) in segments {
        ids.extend_from_slice(question);
        let start = ids.len();
        ids.extend_from_slice(answer);
        let padded = ids.len().div_ceil(block) * block;
        ids.resize(padded, filler);
        let noised = rng.random_range(start / block..padded / block);
        let (lo, hi) = ((noised * block).max(start), (noised + 1) * block);
        let t: f64 = rng.random_range(0.0..1.0);
        let mut chosen: Vec<usize> = (lo..hi).filter(|_| rng.random_bool(t)).collect();
        if chosen.is_empty() {
            chosen.push(rng.random_range(lo..hi));
        }
        for i in chosen {
            targets.push((i, ids[i]));
            ids[i] = mask;
        }
        end = hi;
    }
    ids.truncate(end);
    NoisedExample { ids, targets }
}

/// The mean cross-entropy of the masked tokens of a batch (rows padded on the right with
/// `filler` to one length: block-causal attention keeps the padding out of every row's blocks),
/// and how many of them the argmax predicts.
pub fn masked_loss<B: LosaBackend>(
    model: &DlmModel<B>,
    rows: &[NoisedExample],
    filler: u32,
) -> Result<(Tensor<B, 1>, usize), LoadError> {
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let ids: Vec<Vec<u32>> = rows
        .iter()
        .map(|r| {
            let mut ids = r.ids.clone();
            ids.resize(len, filler);
            ids
        })
        .collect();
    let (index, target): (Vec<i64>, Vec<i64>) = rows
        .iter()
        .enumerate()
        .flat_map(|(b, r)| {
            r.targets
                .iter()
                .map(move |&(i, t)| ((b * len + i) as i64, t as i64))
        })
        .unzip();
    let n = index.len();
    if n == 0 {
        return Err(LoadError::BadInput("a batch without masked tokens".into()));
    }
    let logits = model.forward_full(&ids)?;
    let device = logits.device();
    let vocab = logits.dims()[2];
    let picked = logits.reshape([rows.len() * len, vocab]).select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n]), &device),
    );
    let target = Tensor::<B, 2, Int>::from_data(TensorData::new(target, [n, 1]), &device);
    let logp = log_softmax(picked, 1);
    let hits = logp
        .clone()
        .argmax(1)
        .equal(target.clone())
        .int()
        .sum()
        .into_scalar();
    let hits: i64 = burn::tensor::ElementConversion::elem(hits);
    Ok((logp.gather(1, target).neg().mean(), hits as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn one_answer_block_is_noised_and_the_rest_cut() {
        let mut rng = StdRng::seed_from_u64(0);
        let prompt: Vec<u32> = (10..23).collect(); // 13 tokens: the answer starts mid-block
        let answer = [50, 51, 52, 53, 54, 55, 1];
        let mut seen_blocks = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let e = noise_example(&prompt, &answer, 1, 99, 4, &mut rng);
            assert_eq!(e.ids.len() % 4, 0);
            let last_block = e.ids.len() / 4 - 1;
            seen_blocks.insert(last_block);
            assert!(!e.targets.is_empty());
            for &(i, tok) in &e.targets {
                assert_eq!(e.ids[i], 99);
                assert!(
                    i >= 13 && i / 4 == last_block,
                    "only answer positions of the block"
                );
                let clean = if i < 20 { answer[i - 13] } else { 1 };
                assert_eq!(tok, clean);
            }
            // Everything else is the clean sequence.
            for (i, &id) in e.ids.iter().enumerate() {
                if !e.targets.iter().any(|&(p, _)| p == i) {
                    let clean = if i < 13 {
                        prompt[i]
                    } else if i < 20 {
                        answer[i - 13]
                    } else {
                        1
                    };
                    assert_eq!(id, clean);
                }
            }
        }
        // Answer positions 13..20 (a whole number of blocks already): blocks 3 and 4.
        assert_eq!(seen_blocks.into_iter().collect::<Vec<_>>(), vec![3, 4]);
    }

    #[test]
    fn every_segment_gets_a_noised_block() {
        let mut rng = StdRng::seed_from_u64(1);
        let context: Vec<u32> = (10..20).collect();
        let segments = vec![(vec![30, 31], vec![50, 51, 52, 1]), (vec![32], vec![60, 1])];
        for _ in 0..100 {
            let e = noise_drill(&context, &segments, 1, 99, 4, &mut rng);
            // Segment 1: question at 10..12, answer 12..16 (block 3). Segment 2: question at
            // 16, answer 17..19, padded to 20 (block 4): the sequence ends there.
            assert_eq!(e.ids.len(), 20);
            let first: Vec<_> = e.targets.iter().filter(|(i, _)| *i < 16).collect();
            let second: Vec<_> = e.targets.iter().filter(|(i, _)| *i >= 16).collect();
            assert!(!first.is_empty() && !second.is_empty());
            assert!(first.iter().all(|(i, _)| (12..16).contains(i)));
            assert!(second.iter().all(|(i, _)| (17..20).contains(i)));
            assert_eq!(e.ids[16], 32, "the second question stays clean");
        }
    }
}
