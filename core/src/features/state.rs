//! Per-key state as records: what a changelog carries, so that another
//! process (or this one, restarted) can take a partition's keys up where
//! they were.
//!
//! Each record is one key of one table: the partition owning it, the
//! table, the key's fingerprint and its state as bytes (or none: the key
//! was evicted). A detector reports the records of the keys it changed
//! since it was last asked ([`crate::detector::Detector::take_state`]) and
//! takes such records back ([`crate::detector::Detector::restore_state`]).
//! Fingerprints are only meaningful between processes that hash keys
//! alike ([`crate::input::key::pin_key_seeds`]).

use super::slots::{Changed, Fingerprint, Owner, SlotTable};

/// The table of the score smoother, after every feature's.
pub const SMOOTHER_TABLE: u16 = u16::MAX;

/// One key's state in one table.
#[derive(Clone, Debug, PartialEq)]
pub struct StateRecord {
    /// The partition owning the key.
    pub owner: Owner,
    /// Which table of the detector holds it.
    pub table: u16,
    /// The key's fingerprint within the table.
    pub key: Fingerprint,
    /// Where its state lies in [`StateChanges::bytes`]; `None` for a key
    /// evicted (its state is gone).
    pub value: Option<std::ops::Range<usize>>,
}

/// Records of changed keys, their states in one buffer.
#[derive(Clone, Debug, Default)]
pub struct StateChanges {
    /// One per key changed or evicted, evictions of a table before its
    /// changes.
    pub records: Vec<StateRecord>,
    /// The states, back to back.
    pub bytes: Vec<u8>,
}

impl StateChanges {
    /// The state of `record`; `None` for an eviction.
    pub fn value(&self, record: &StateRecord) -> Option<&[u8]> {
        record.value.clone().map(|r| &self.bytes[r])
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds the changes `table` reports as table `id`; `write` appends the
    /// state of a slot.
    pub(crate) fn add_table(
        &mut self,
        id: u16,
        table: &mut SlotTable,
        write: impl FnMut(usize, &mut Vec<u8>),
    ) {
        self.add_changes(id, table.take_changes(), write);
    }

    /// Adds `changes` of table `id`; `write` appends the state of a slot.
    pub(crate) fn add_changes(
        &mut self,
        id: u16,
        changes: Vec<Changed>,
        mut write: impl FnMut(usize, &mut Vec<u8>),
    ) {
        for Changed { owner, key, slot } in changes {
            let value = slot.map(|slot| {
                let start = self.bytes.len();
                write(slot as usize, &mut self.bytes);
                start..self.bytes.len()
            });
            self.records.push(StateRecord {
                owner,
                table: id,
                key,
                value,
            });
        }
    }
}

/// A record read back: one key's state in one table.
#[derive(Clone, Copy, Debug)]
pub struct Restored<'a> {
    /// The partition owning the key.
    pub owner: Owner,
    /// Which table holds it.
    pub table: u16,
    /// The key's fingerprint.
    pub key: Fingerprint,
    /// Its state, as [`StateChanges`] wrote it.
    pub value: &'a [u8],
}

/// Appends `values` to `out`, little-endian.
pub(crate) fn put_f64s(out: &mut Vec<u8>, values: &[f64]) {
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The f64s of `bytes` when there are exactly `n`.
pub(crate) fn f64s(bytes: &[u8], n: usize) -> Option<impl Iterator<Item = f64> + '_> {
    (bytes.len() == n * 8).then(|| {
        bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
    })
}

/// A stable 64-bit hash (FNV-1a) of `bytes`: the version of a detector's
/// state layout, the same in every process and build.
pub fn layout_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        // Parts are delimited, so ("ab", "c") and ("a", "bc") differ.
        h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
    }
    h
}
