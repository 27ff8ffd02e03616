//! Open-addressing hash table from lattice keys to dense vertex ids, used only while a lattice is
//! built: after `Lattice::new` every splat/blur/slice works on precomputed ids, so no hashing
//! happens inside mean-field iterations.
//!
//! A key is the first d coordinates of a lattice point (the last one is implied: they sum to 0),
//! each an i16 as in the reference implementation, stored with a bias of 2^15 in the 16-bit
//! lanes of a u128. Callers keep coordinates at least `LANE_MARGIN` away from the i16 limits,
//! so whole keys can be stepped to a neighbour or the next simplex corner with one u128
//! add/subtract without a lane carrying into the next. That caps the feature dimension at 8,
//! which covers position (2) + RGB (3).

/// Most feature dimensions a key can hold (8 lanes of 16 bits).
pub const MAX_KEY_LEN: usize = 8;

pub type Key = u128;

const BIAS: i32 = 1 << 15;

/// Distance to keep from the i16 limits: a corner is within d of its remainder-0 point and a
/// neighbour within d+1 of the corner.
pub const LANE_MARGIN: i32 = 2 * (MAX_KEY_LEN as i32 + 1);

/// Whether a coordinate keeps the margin.
pub fn in_range(c: i32) -> bool {
    (i16::MIN as i32 + LANE_MARGIN..=i16::MAX as i32 - LANE_MARGIN).contains(&c)
}

/// The key step that adds `v` to coordinate `lane` (`v` >= 0; subtract the result to go down).
#[inline]
pub fn lane(lane: usize, v: u32) -> Key {
    (v as Key) << (16 * lane)
}

/// The key step that adds 1 to each of the first `len` coordinates.
pub fn ones(len: usize) -> Key {
    (0..len).map(|i| lane(i, 1)).sum()
}

/// Packs lattice coordinates (each `in_range`) into one key.
pub fn pack(coords: &[i32]) -> Key {
    coords
        .iter()
        .enumerate()
        .map(|(i, &c)| lane(i, (c + BIAS) as u32))
        .sum()
}

/// Inverse of `pack` for `len` coordinates.
pub fn unpack(key: Key, len: usize, out: &mut [i32]) {
    for (i, o) in out[..len].iter_mut().enumerate() {
        *o = ((key >> (16 * i)) as u16) as i32 - BIAS;
    }
}

const EMPTY: u32 = u32::MAX;

/// Linear probing over a power-of-two table of ids, kept at most half full; the keys sit densely
/// in id order beside it (a 4-byte table stays in cache where 32-byte key slots would not).
/// Ids are handed out in insertion order, so vertex ids follow the order in which pixels first
/// touch them (raster order), which keeps splat/slice memory access local.
pub struct HashTable {
    table: Vec<u32>,
    keys: Vec<Key>,
    shift: u32,
}

impl HashTable {
    /// A table that grows as needed; `expected` only sizes the first allocation.
    pub fn with_capacity(expected: usize) -> Self {
        let cap = (2 * expected.max(8)).next_power_of_two();
        HashTable {
            table: vec![EMPTY; cap],
            keys: Vec::with_capacity(expected),
            shift: 64 - cap.trailing_zeros(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Keys in id order.
    /// The keys, in id order, without the table.
    pub fn into_keys(self) -> Vec<Key> {
        self.keys
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    #[inline]
    fn home(&self, key: Key) -> usize {
        // Fibonacci hashing of the two halves folded together: lanes differ in low bits, the
        // multiply spreads them into the high bits that pick the slot.
        let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    /// The id of `key`, inserting it with the next free id if absent. Always inlined: it runs
    /// up to d+1 times per point in `Lattice::build`, where a call cost ~8% of a refinement.
    #[inline(always)]
    pub fn find_or_insert(&mut self, key: Key) -> u32 {
        if 2 * (self.keys.len() + 1) > self.table.len() {
            self.grow();
        }
        let mask = self.table.len() - 1;
        let mut h = self.home(key);
        loop {
            let id = self.table[h];
            if id == EMPTY {
                let id = self.keys.len() as u32;
                self.table[h] = id;
                self.keys.push(key);
                return id;
            }
            if self.keys[id as usize] == key {
                return id;
            }
            h = (h + 1) & mask;
        }
    }

    /// The id of `key`, or None.
    #[inline]
    pub fn find(&self, key: Key) -> Option<u32> {
        let mask = self.table.len() - 1;
        let mut h = self.home(key);
        loop {
            let id = self.table[h];
            if id == EMPTY {
                return None;
            }
            if self.keys[id as usize] == key {
                return Some(id);
            }
            h = (h + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = self.table.len() * 2;
        self.table = vec![EMPTY; cap];
        self.shift = 64 - cap.trailing_zeros();
        let mask = cap - 1;
        for (id, &key) in self.keys.iter().enumerate() {
            let mut h = self.home(key);
            while self.table[h] != EMPTY {
                h = (h + 1) & mask;
            }
            self.table[h] = id as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn pack_round_trips_and_steps_lanes_independently() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for len in 1..=MAX_KEY_LEN {
            let m = LANE_MARGIN;
            let c: Vec<i32> = (0..len)
                .map(|_| rng.random_range(-32768 + m..=32767 - m))
                .collect();
            let mut back = vec![0; len];
            unpack(pack(&c), len, &mut back);
            assert_eq!(back, c);
            // Stepping a whole key moves each coordinate and leaves the others alone.
            let stepped = pack(&c) + ones(len) - lane(len - 1, 5);
            unpack(stepped, len, &mut back);
            let want: Vec<i32> = c
                .iter()
                .enumerate()
                .map(|(i, v)| v + 1 - if i == len - 1 { 5 } else { 0 })
                .collect();
            assert_eq!(back, want);
        }
    }

    #[test]
    fn ids_are_dense_stable_and_survive_growth() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut t = HashTable::with_capacity(4);
        let keys: Vec<Key> = (0..5000)
            .map(|_| pack(&[rng.random_range(-300..300), rng.random_range(-300..300)]))
            .collect();
        let ids: Vec<u32> = keys.iter().map(|&k| t.find_or_insert(k)).collect();
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(t.len(), distinct.len());
        for (&k, &id) in keys.iter().zip(&ids) {
            assert_eq!(t.find(k), Some(id));
            assert_eq!(t.keys()[id as usize], k);
        }
        assert_eq!(t.find(pack(&[1000, 1000])), None);
    }
}
