//! Open-addressing hash table from lattice keys to dense vertex ids, used only while a lattice is
//! built: after `Lattice::new` every splat/blur/slice works on precomputed ids, so no hashing
//! happens inside mean-field iterations.
//!
//! A key is the first d coordinates of a lattice point (the last one is implied: they sum to 0),
//! each an i16 as in the reference implementation, packed into the 16-bit lanes of a u128.
//! That caps the feature dimension at 8, which covers position (2) + RGB (3).

/// Most feature dimensions a key can hold (8 lanes of 16 bits).
pub const MAX_KEY_LEN: usize = 8;

pub type Key = u128;

/// Packs lattice coordinates (each already checked to fit an i16) into one key.
pub fn pack(coords: &[i32]) -> Key {
    coords
        .iter()
        .enumerate()
        .fold(0u128, |k, (i, &c)| k | (((c as i16) as u16 as u128) << (16 * i)))
}

/// Inverse of `pack` for `len` coordinates.
pub fn unpack(key: Key, len: usize, out: &mut [i32]) {
    for (i, o) in out[..len].iter_mut().enumerate() {
        *o = ((key >> (16 * i)) as u16 as i16) as i32;
    }
}

#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    id: u32,
}

const EMPTY: u32 = u32::MAX;

/// Linear probing with a power-of-two capacity kept at most half full; ids are handed out in
/// insertion order, so vertex ids follow the order in which pixels first touch them (raster order),
/// which keeps splat/slice memory access local.
pub struct HashTable {
    slots: Vec<Slot>,
    keys: Vec<Key>,
    shift: u32,
}

impl HashTable {
    pub fn with_capacity(expected: usize) -> Self {
        let cap = (2 * expected.max(8)).next_power_of_two();
        HashTable {
            slots: vec![Slot { key: 0, id: EMPTY }; cap],
            keys: Vec::with_capacity(expected),
            shift: 64 - cap.trailing_zeros(),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Keys in id order.
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

    /// The id of `key`, inserting it with the next free id if absent.
    #[inline]
    pub fn find_or_insert(&mut self, key: Key) -> u32 {
        if 2 * (self.keys.len() + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut h = self.home(key);
        loop {
            let slot = self.slots[h];
            if slot.id == EMPTY {
                let id = self.keys.len() as u32;
                self.slots[h] = Slot { key, id };
                self.keys.push(key);
                return id;
            }
            if slot.key == key {
                return slot.id;
            }
            h = (h + 1) & mask;
        }
    }

    /// The id of `key`, or None.
    #[inline]
    pub fn find(&self, key: Key) -> Option<u32> {
        let mask = self.slots.len() - 1;
        let mut h = self.home(key);
        loop {
            let slot = self.slots[h];
            if slot.id == EMPTY {
                return None;
            }
            if slot.key == key {
                return Some(slot.id);
            }
            h = (h + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let cap = self.slots.len() * 2;
        self.slots = vec![Slot { key: 0, id: EMPTY }; cap];
        self.shift = 64 - cap.trailing_zeros();
        let mask = cap - 1;
        for (id, &key) in self.keys.iter().enumerate() {
            let mut h = self.home(key);
            while self.slots[h].id != EMPTY {
                h = (h + 1) & mask;
            }
            self.slots[h] = Slot { key, id: id as u32 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn pack_round_trips_negative_and_extreme_coordinates() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for len in 1..=MAX_KEY_LEN {
            let c: Vec<i32> = (0..len).map(|_| rng.random_range(-32768..=32767)).collect();
            let mut back = vec![0; len];
            unpack(pack(&c), len, &mut back);
            assert_eq!(back, c);
        }
    }

    #[test]
    fn ids_are_dense_stable_and_survive_growth() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut t = HashTable::with_capacity(4);
        let keys: Vec<Key> = (0..5000).map(|_| pack(&[rng.random_range(-300..300), rng.random_range(-300..300)])).collect();
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
