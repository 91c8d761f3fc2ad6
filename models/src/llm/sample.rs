//! Choosing the next token from logits: greedy (argmax), or temperature with nucleus
//! (top-p) sampling from a seeded generator, so that a run can be repeated.

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    /// Greedy: the largest logit (the first on ties, as `torch.argmax`).
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            rng: SplitMix64(0),
        }
    }

    /// Softmax of `logits / temperature` restricted to the smallest set of tokens whose
    /// probability reaches `top_p`; `temperature <= 0` is greedy.
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self {
            temperature,
            top_p: if top_p > 0.0 && top_p <= 1.0 {
                top_p
            } else {
                1.0
            },
            rng: SplitMix64(seed),
        }
    }

    /// Whether it is greedy (no draw: the token is the argmax whoever computes it).
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || !self.temperature.is_finite()
    }

    /// The next token of a row of logits.
    pub fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 || !self.temperature.is_finite() {
            return argmax(logits);
        }
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / f64::from(self.temperature);
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (f64::from(l - max) * inv_t).exp()))
            .filter(|(_, p)| p.is_finite())
            .collect();
        if probs.is_empty() {
            return argmax(logits);
        }
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &probs {
            kept += 1;
            mass += p.1;
            if mass >= f64::from(self.top_p) * total {
                break;
            }
        }
        let mut draw = self.rng.next_f64() * mass;
        for &(i, p) in &probs[..kept] {
            if draw < p {
                return i;
            }
            draw -= p;
        }
        probs[kept - 1].0
    }
}

/// Index of the largest value (the first on ties, as `torch.argmax`).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Vigna's SplitMix64: small, fast, and good enough to draw tokens.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(Sampler::greedy().choose(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(Sampler::new(0.0, 0.9, 1).choose(&[0.0, 2.0]), 1);
    }

    #[test]
    fn sampling_is_seeded_and_top_p_cuts_the_tail() {
        let logits = [2.0, 1.9, -5.0, -6.0];
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0.9, seed);
            (0..200).map(|_| s.choose(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        let d = draw(7);
        assert!(
            d.iter().all(|&t| t < 2),
            "top-p 0.9 keeps the two likely tokens"
        );
        assert!(d.contains(&0) && d.contains(&1));
    }
}
