//! The paged KV cache: per layer, K and V as `[num_blocks, block_size, kv_heads, head_dim]`
//! (the layout the GPU backend uses). [`BlockAllocator`] (rank 0's scheduler) hands out
//! blocks (and shares full blocks of common prefixes); every rank stores K/V at the
//! slots the step's block tables name.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};

/// A sequence's blocks, in position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable(pub Vec<usize>);

/// Cache blocks: reference counts, the free list (least recently released first), and
/// with prefix caching the map from a full block's prefix-chain hash to the block
/// holding it. A released block keeps its contents and hash until it is reused.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    refs: Vec<u32>,
    hash_of: Vec<Option<u64>>,
    cached: HashMap<u64, usize>,
    free: VecDeque<usize>,
    prefix_caching: bool,
    /// Prompt tokens served from the cache, and looked up.
    pub hits: u64,
    pub queries: u64,
}

/// The hash of a full block given the hash of the blocks before it.
pub fn chain_hash(prev: u64, tokens: &[u32]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    prev.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockAllocator {
        Self::with_prefix_caching(num_blocks, block_size, false)
    }

    pub fn with_prefix_caching(
        num_blocks: usize,
        block_size: usize,
        prefix_caching: bool,
    ) -> BlockAllocator {
        BlockAllocator {
            block_size,
            refs: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            cached: HashMap::new(),
            free: (0..num_blocks).collect(),
            prefix_caching,
            hits: 0,
            queries: 0,
        }
    }

    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks no sequence holds (cached ones included: they are reusable).
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `len` positions.
    pub fn blocks_for(&self, len: usize) -> usize {
        len.div_ceil(self.block_size)
    }

    /// Grows `table` to hold `len` positions. False (and nothing taken) when blocks run out.
    pub fn reserve(&mut self, table: &mut BlockTable, len: usize) -> bool {
        let need = self.blocks_for(len).saturating_sub(table.0.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            let b = self.free.pop_front().unwrap();
            if let Some(h) = self.hash_of[b].take() {
                self.cached.remove(&h);
            }
            self.refs[b] = 1;
            table.0.push(b);
        }
        true
    }

    /// Returns a sequence's blocks; unreferenced ones become free (contents kept).
    pub fn release(&mut self, table: &mut BlockTable) {
        for b in table.0.drain(..) {
            self.refs[b] -= 1;
            if self.refs[b] == 0 {
                self.free.push_back(b);
            }
        }
    }

    /// For a new sequence (empty table): takes the cached blocks of its longest cached
    /// prefix of full blocks, leaving at least one token to compute. Returns the
    /// positions already in the cache and their chain hashes.
    pub fn match_prefix(&mut self, tokens: &[u32], table: &mut BlockTable) -> (usize, Vec<u64>) {
        let mut hashes = Vec::new();
        if !self.prefix_caching || tokens.is_empty() {
            return (0, hashes);
        }
        let bs = self.block_size;
        let full = (tokens.len() - 1) / bs;
        self.queries += tokens.len() as u64;
        let mut h = 0;
        for k in 0..full {
            h = chain_hash(h, &tokens[k * bs..(k + 1) * bs]);
            let Some(&b) = self.cached.get(&h) else { break };
            if self.refs[b] == 0 {
                self.free.retain(|&x| x != b);
            }
            self.refs[b] += 1;
            table.0.push(b);
            hashes.push(h);
        }
        self.hits += (hashes.len() * bs) as u64;
        (hashes.len() * bs, hashes)
    }

    /// Whether a sequence with `computed` positions and `hashed` registered blocks
    /// has a full block [`BlockAllocator::commit`] would register.
    pub fn has_uncommitted(&self, computed: usize, hashed: usize) -> bool {
        self.prefix_caching && (hashed + 1) * self.block_size <= computed
    }

    /// Registers the full blocks of `tokens[..computed]` not yet registered.
    pub fn commit(
        &mut self,
        tokens: &[u32],
        computed: usize,
        table: &BlockTable,
        hashes: &mut Vec<u64>,
    ) {
        if !self.prefix_caching {
            return;
        }
        let bs = self.block_size;
        while (hashes.len() + 1) * bs <= computed {
            let k = hashes.len();
            let h = chain_hash(
                hashes.last().copied().unwrap_or(0),
                &tokens[k * bs..(k + 1) * bs],
            );
            hashes.push(h);
            let b = table.0[k];
            if self.hash_of[b].is_none() && !self.cached.contains_key(&h) {
                self.cached.insert(h, b);
                self.hash_of[b] = Some(h);
            }
        }
    }
}

/// The K/V storage of one rank (its KV heads, its pipeline stage's layers).
pub struct KvCache {
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(
        layers: usize,
        num_blocks: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> KvCache {
        let n = num_blocks * block_size * kv_heads * head_dim;
        KvCache {
            block_size,
            kv_heads,
            head_dim,
            k: (0..layers).map(|_| vec![0.0; n]).collect(),
            v: (0..layers).map(|_| vec![0.0; n]).collect(),
        }
    }

    /// Bytes of one block across this rank's layers (K and V).
    pub fn block_bytes(
        layers: usize,
        block_size: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> usize {
        2 * layers * block_size * kv_heads * head_dim * 4
    }

    fn offset(&self, table: &BlockTable, pos: usize) -> usize {
        let block = table.0[pos / self.block_size];
        (block * self.block_size + pos % self.block_size) * self.kv_heads * self.head_dim
    }

    /// Stores K and V (`[kv_heads, head_dim]` each) of one token.
    pub fn write(&mut self, layer: usize, table: &BlockTable, pos: usize, k: &[f32], v: &[f32]) {
        let o = self.offset(table, pos);
        let n = self.kv_heads * self.head_dim;
        self.k[layer][o..o + n].copy_from_slice(k);
        self.v[layer][o..o + n].copy_from_slice(v);
    }

    /// K and V of one token at `pos` (`[kv_heads, head_dim]` each).
    pub fn read(&self, layer: usize, table: &BlockTable, pos: usize) -> (&[f32], &[f32]) {
        let o = self.offset(table, pos);
        let n = self.kv_heads * self.head_dim;
        (&self.k[layer][o..o + n], &self.v[layer][o..o + n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_reserved_and_released() {
        let mut a = BlockAllocator::new(4, 2);
        let mut c = KvCache::new(1, 4, 2, 1, 2);
        let mut t = BlockTable::default();
        assert!(a.reserve(&mut t, 3));
        assert_eq!(t.0.len(), 2);
        c.write(0, &t, 2, &[1.0, 2.0], &[3.0, 4.0]);
        assert_eq!(c.read(0, &t, 2), (&[1.0, 2.0][..], &[3.0, 4.0][..]));
        let mut u = BlockTable::default();
        assert!(!a.reserve(&mut u, 7), "3 blocks needed, 2 free");
        assert!(u.0.is_empty());
        a.release(&mut t);
        assert_eq!(a.free_blocks(), 4);
    }

    #[test]
    fn prefix_blocks_are_shared_then_evicted() {
        let mut a = BlockAllocator::with_prefix_caching(4, 2, true);
        let toks = [1, 2, 3, 4, 5];
        let mut t = BlockTable::default();
        assert_eq!(a.match_prefix(&toks, &mut t).0, 0);
        assert!(a.reserve(&mut t, 5));
        let mut hashes = vec![];
        a.commit(&toks, 5, &t, &mut hashes);
        assert_eq!(hashes.len(), 2);
        let mut u = BlockTable::default();
        let (hit, _) = a.match_prefix(&toks, &mut u);
        assert_eq!((hit, &u.0[..]), (4, &t.0[..2]));
        a.release(&mut t);
        a.release(&mut u);
        assert_eq!(a.free_blocks(), 4);
        let mut w = BlockTable::default();
        assert_eq!(
            a.match_prefix(&[1, 2, 3, 4, 9], &mut w).0,
            4,
            "still cached after release"
        );
        a.release(&mut w);
        let mut big = BlockTable::default();
        assert!(a.reserve(&mut big, 8), "cached blocks are reusable");
        let mut x = BlockTable::default();
        assert_eq!(a.match_prefix(&toks, &mut x).0, 0, "evicted");
    }
}
