//! Left to right: the quota's first masked positions, starting at the first masked one.

/// Positions to commit: `first masked .. first masked + quota`, within the block.
pub fn sequential(masked: &[usize], block: usize, quota: usize) -> Vec<usize> {
    match masked.first() {
        Some(&first) => (first..(first + quota).min(block)).collect(),
        None => Vec::new(),
    }
}
