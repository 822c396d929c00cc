//! The paged KV cache: per layer, K and V as `[num_blocks, block_size, kv_heads, head_dim]`
//! (the layout the GPU backend uses). [`BlockAllocator`] (rank 0's scheduler) hands out
//! blocks; every rank stores K/V at the slots the step's block tables name.

/// A sequence's blocks, in position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable(pub Vec<usize>);

/// The free list of cache blocks.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    free: Vec<usize>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize, block_size: usize) -> BlockAllocator {
        BlockAllocator {
            block_size,
            free: (0..num_blocks).rev().collect(),
            total: num_blocks,
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

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
            table.0.push(self.free.pop().unwrap());
        }
        true
    }

    /// Returns a sequence's blocks to the free list.
    pub fn release(&mut self, table: &mut BlockTable) {
        self.free.append(&mut table.0);
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
}
