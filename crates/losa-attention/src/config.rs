//! Attention modes and their knobs. Defaults follow `LOSA.md` (the paper's best settings where it
//! gives them, the project's choices elsewhere).

use burn::config::Config;

use crate::error::LosaError;

/// Page selection shared by Quest and LoSA: which prefix pages a query may read.
#[derive(Config, Debug, PartialEq)]
pub struct PageSelectionConfig {
    /// Tokens per page. The page bounds and the selection granularity.
    #[config(default = 16)]
    pub page_size: usize,
    /// Per-query token budget; a query keeps its top `ceil(budget / page_size)` pages.
    #[config(default = 256)]
    pub budget: usize,
    /// Always load the first page (the attention sink), on top of the budget.
    #[config(default = true)]
    pub keep_first_page: bool,
    /// Always load the last prefix page (the most recent context), on top of the budget.
    #[config(default = true)]
    pub keep_last_page: bool,
}

impl PageSelectionConfig {
    /// Pages each (query, head) selects.
    pub fn pages_per_query(&self) -> usize {
        self.budget.div_ceil(self.page_size)
    }

    /// Rejects a zero page size or a zero budget.
    pub fn validate(&self) -> Result<(), LosaError> {
        if self.page_size == 0 {
            return Err(LosaError::InvalidConfig(
                "page_size must be at least 1".into(),
            ));
        }
        if self.budget == 0 {
            return Err(LosaError::InvalidConfig(
                "budget must be at least 1 token".into(),
            ));
        }
        Ok(())
    }
}

/// Quest: every block query selects its pages at every step; the union per KV head is loaded.
#[derive(Config, Debug, PartialEq)]
pub struct QuestConfig {
    /// Page size and budget.
    pub pages: PageSelectionConfig,
    /// The first `dense_layers` layers of the model stay dense (Quest's practice).
    #[config(default = 2)]
    pub dense_layers: usize,
}

/// How LoSA decides which block rows are active at a step ≥ 1.
#[derive(Config, Debug, PartialEq)]
pub enum ActiveRows {
    /// The `k` rows whose query changed most (mean squared change over heads and dims).
    TopK(usize),
    /// Every row whose mean squared query change exceeds the threshold. Costs one small
    /// device-to-host read per layer and step (the row count decides the launch shape).
    Threshold(f32),
}

/// LoSA: only active rows recompute their prefix attention, sparsely; stable rows reuse it.
#[derive(Config, Debug, PartialEq)]
pub struct LosaConfig {
    /// Page size and budget of the active rows.
    pub pages: PageSelectionConfig,
    /// Active-row rule. The paper's best at block 16 is the top 5.
    #[config(default = "ActiveRows::TopK(5)")]
    pub active: ActiveRows,
    /// The first `dense_layers` layers of the model stay dense.
    #[config(default = 2)]
    pub dense_layers: usize,
}

impl LosaConfig {
    /// The paper's default active count scaled with the block: 5 at B = 16, 10 at B = 32.
    pub fn default_active_for_block(block: usize) -> usize {
        (block * 5).div_ceil(16).min(block)
    }
}

/// Which prefix attention a model layer runs. Chosen once in the model config.
#[derive(Config, Debug, PartialEq)]
pub enum AttentionMode {
    /// Exact attention over the whole prefix every step.
    Dense,
    /// Quest page selection for all block rows every step.
    Quest(QuestConfig),
    /// LoSA: dense step 0, sparse recomputation of active rows afterwards.
    Losa(LosaConfig),
}

// burn's `Config` derive re-emits the enum without `#[default]`, so the impl is written out.
#[allow(clippy::derivable_impls)]
impl Default for AttentionMode {
    fn default() -> Self {
        Self::Dense
    }
}

impl AttentionMode {
    /// The default LoSA mode (page 16, budget 256, top-5 active rows, two dense layers).
    pub fn losa() -> Self {
        Self::Losa(LosaConfig::new(PageSelectionConfig::new()))
    }

    /// The default LoSA mode with the active count scaled to the block (5 per 16 rows, at least
    /// one): what to use with a block smaller than 16, where top-5 is more rows than there are.
    pub fn losa_for_block(block: usize) -> Self {
        let active = LosaConfig::default_active_for_block(block)
            .max(1)
            .min(block);
        Self::Losa(
            LosaConfig::new(PageSelectionConfig::new()).with_active(ActiveRows::TopK(active)),
        )
    }

    /// The default Quest mode (page 16, budget 256, two dense layers).
    pub fn quest() -> Self {
        Self::Quest(QuestConfig::new(PageSelectionConfig::new()))
    }

    /// The mode layer `layer` runs: dense inside the leading dense layers.
    pub fn for_layer(&self, layer: usize) -> AttentionMode {
        match self {
            Self::Quest(c) if layer < c.dense_layers => Self::Dense,
            Self::Losa(c) if layer < c.dense_layers => Self::Dense,
            other => other.clone(),
        }
    }

    /// Page size whose bounds the KV cache must keep (`None` for dense).
    pub fn page_size(&self) -> Option<usize> {
        match self {
            Self::Dense => None,
            Self::Quest(c) => Some(c.pages.page_size),
            Self::Losa(c) => Some(c.pages.page_size),
        }
    }

    /// Checks the mode against a block of `block` rows.
    pub fn validate(&self, block: usize) -> Result<(), LosaError> {
        match self {
            Self::Dense => Ok(()),
            Self::Quest(c) => c.pages.validate(),
            Self::Losa(c) => {
                c.pages.validate()?;
                match c.active {
                    ActiveRows::TopK(k) if k > block => {
                        Err(LosaError::ActiveExceedsBlock { active: k, block })
                    }
                    ActiveRows::Threshold(t) if t.is_nan() || t < 0.0 => {
                        Err(LosaError::InvalidConfig(format!(
                            "active threshold must be a non-negative number, got {t}"
                        )))
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}
