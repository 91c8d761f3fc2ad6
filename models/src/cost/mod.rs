//! The cache-aware cost model: what each op costs ([`op`]), a backend that records it
//! while a model runs ([`Counting`]), machine profiles ([`Profile`], TOML), the
//! prediction of an op's time from a profile ([`CostModel`]) and the probes that
//! measure this machine ([`probe`]). See `docs/costmodel.md`.

pub mod counting;
pub mod op;
pub mod predict;
pub mod probe;
pub mod profile;

pub use counting::{Counting, OpRecord};
pub use op::{OpCost, OpKind};
pub use predict::{CostModel, OpPrediction, Target};
pub use profile::{Profile, ProfileError};

/// Groups a pass's ops into segments: `bounds[k]` is the number of non-transfer ops
/// before split point `k` (from counting `head(x, point k)`), so segment `k` holds the
/// ops between point `k - 1` and point `k`, and a last segment holds the rest. Uploads
/// and readbacks belong to no segment. Returns, per op of `ops`, its segment (`None`
/// for transfers).
pub fn segment_of(ops: &[OpCost], bounds: &[usize]) -> Vec<Option<usize>> {
    let mut seen = 0usize;
    ops.iter()
        .map(|c| {
            if c.kind.is_transfer() {
                return None;
            }
            let seg = bounds.iter().take_while(|&&b| b <= seen).count();
            seen += 1;
            Some(seg)
        })
        .collect()
}
