//! Byte-level BPE: GPT-2's byte-to-character map and merging by rank.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// GPT-2's map from bytes to printable characters: the printable Latin-1 bytes map to
/// themselves, the other 68 to U+0100 onwards in byte order (space becomes `Ġ`,
/// newline `Ċ`), so that every byte string is a string of visible characters.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut next = 0x100u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        // Both ranges are valid scalar values (below U+0144).
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

/// The merge table: a pair of token ids to its rank and the id of the merged token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Merges {
    pairs: HashMap<(u32, u32), (u32, u32)>,
}

impl Merges {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            pairs: HashMap::with_capacity(n),
        }
    }

    /// Adds a merge; an earlier one of the same pair keeps its (lower) rank.
    pub(crate) fn insert(&mut self, left: u32, right: u32, rank: u32, merged: u32) {
        self.pairs.entry((left, right)).or_insert((rank, merged));
    }

    pub(crate) fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Merges `symbols` (ids of single characters, in place) by rank: the pair of lowest
    /// rank first, the leftmost among equals, until no adjacent pair has a merge.
    pub(crate) fn apply(&self, symbols: &mut Vec<u32>) {
        let n = symbols.len();
        if n < 2 {
            return;
        }
        // A linked list over the symbols, so a merge is O(1) and the queue O(log n).
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some(&(rank, merged)) = self.pairs.get(&(symbols[i], symbols[i + 1])) {
                heap.push(Reverse((rank, i, symbols[i], symbols[i + 1], merged)));
            }
        }
        while let Some(Reverse((_, i, left, right, merged))) = heap.pop() {
            let j = next[i];
            // Stale entries: a side was merged away or changed since this was queued.
            if !alive[i] || j >= n || symbols[i] != left || symbols[j] != right {
                continue;
            }
            symbols[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[j] < n {
                prev[next[j]] = i;
            }
            if prev[i] < n {
                let p = prev[i];
                if let Some(&(rank, m)) = self.pairs.get(&(symbols[p], merged)) {
                    heap.push(Reverse((rank, p, symbols[p], merged, m)));
                }
            }
            if next[i] < n {
                let k = next[i];
                if let Some(&(rank, m)) = self.pairs.get(&(merged, symbols[k])) {
                    heap.push(Reverse((rank, i, merged, symbols[k], m)));
                }
            }
        }
        let mut out = 0;
        for i in 0..n {
            if alive[i] {
                symbols[out] = symbols[i];
                out += 1;
            }
        }
        symbols.truncate(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_map_is_a_bijection_with_gpt2_landmarks() {
        let map = byte_to_char();
        let mut seen: Vec<char> = map.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[b'a' as usize], 'a');
        assert_eq!(map[0xad], '\u{143}');
    }

    #[test]
    fn lowest_rank_merges_first_and_leftmost_among_equals() {
        // ids: a=0, b=1, ab=2, aa=3
        let mut m = Merges::with_capacity(2);
        m.insert(0, 0, 0, 3);
        m.insert(0, 1, 1, 2);
        let mut s = vec![0, 0, 0, 1];
        m.apply(&mut s);
        // "aaab": a a merges first at the left (aa, a, b), then a b.
        assert_eq!(s, vec![3, 2]);
    }
}
