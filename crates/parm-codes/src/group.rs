//! The state of one coding group in the frontend, and ParM's eager decoding rule, for
//! members that are single queries or blocks of rows.

use crate::{Decoder, SubtractionDecoder};

/// Which output of a coding group an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The prediction for the j-th query of the group (0-based).
    Data(usize),
    /// The parity model's output Fp(P).
    Parity,
}

/// What the frontend must send back for one query of the group.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The deployed model's own prediction arrived.
    Original { slot: usize, output: Vec<f32> },
    /// The prediction was reconstructed by the decoder (and the original may be cancelled).
    Reconstructed { slot: usize, output: Vec<f32> },
    /// Neither the prediction nor a reconstruction can ever arrive.
    Unavailable { slot: usize },
}

#[derive(Debug, Clone, PartialEq)]
enum Output {
    Pending,
    Ready(Vec<f32>),
    Failed,
}

/// Tracks the k predictions and the parity output of one coding group and decides, event by
/// event, which members can be answered.
///
/// A member is a block of rows `[b, m]` (b = 1 for a single query): a request carrying a batch
/// joins as one member, its rows coded row-wise (row i of the parity query encodes row i of
/// every member, see [`crate::encode_rows`]). A member shorter than the longest, and the slots
/// of a partly filled group, are padded with all-zero queries whose known output F(0) the
/// decoder subtracts ([`GroupState::fill_padding`]).
///
/// The parity output is, per row, either Fp(P) ~= sum of the k predictions (ParM; decoded by
/// subtraction) or, from a per-query (collage) parity model, k blocks each ~= one prediction
/// (decoded by taking the block; recognised by its length, k times a prediction's).
///
/// Rule (ParM SOSP 2019 §4.2, eager decoding): a member is answered as soon as its own
/// prediction arrives, or as soon as the parity output and the other k-1 predictions are in,
/// whichever is first. A member whose prediction failed is answered `Unavailable` once a
/// reconstruction has become impossible (the parity failed, another member failed, or the
/// group has no parity). Every member is answered exactly once; [`GroupState::is_done`] tells
/// when all are.
#[derive(Debug, Clone)]
pub struct GroupState {
    data: Vec<Output>,
    /// Rows of each member's block.
    rows: Vec<usize>,
    parity: Option<Output>,
    answered: Vec<bool>,
    /// F(0), the prediction of one all-zero row, once the group is padded.
    padding: Option<Vec<f32>>,
}

impl GroupState {
    /// A group of `k` single-row members, protected by one parity output if `has_parity`.
    pub fn new(k: usize, has_parity: bool) -> Self {
        Self {
            data: vec![Output::Pending; k],
            rows: vec![1; k],
            parity: has_parity.then_some(Output::Pending),
            answered: vec![false; k],
            padding: None,
        }
    }

    /// Number of members of the group.
    pub fn k(&self) -> usize {
        self.data.len()
    }

    /// Sets the rows of `slot`'s block (1 unless set). Call before its output arrives.
    pub fn set_rows(&mut self, slot: usize, rows: usize) {
        if let Some(r) = self.rows.get_mut(slot) {
            *r = rows.max(1);
        }
    }

    /// Rows of the group's parity query: the longest block among the first `members`.
    pub fn parity_rows(&self, members: usize) -> usize {
        self.rows.iter().take(members).copied().max().unwrap_or(1)
    }

    /// True if a parity query over the first `members` members needs padding rows (a partly
    /// filled group, or blocks of different lengths), hence F(0).
    pub fn needs_padding(&self, members: usize) -> bool {
        let n = self.parity_rows(members);
        members < self.data.len() || self.rows.iter().take(members).any(|&r| r < n)
    }

    /// True once every member of the group has been answered.
    pub fn is_done(&self) -> bool {
        self.answered.iter().all(|a| *a)
    }

    /// True if the member in `slot` has been answered.
    pub fn is_answered(&self, slot: usize) -> bool {
        self.answered[slot]
    }

    /// Pads the group: slots `members..k` become blocks of all-zero queries and every member's
    /// missing rows all-zero rows, whose known output is `output` (F of one all-zero row,
    /// `[m]`); they count as available predictions for decoding and need no answer. Used for
    /// a group that still gets a parity query. Returns the answers this makes possible.
    pub fn fill_padding(&mut self, members: usize, output: &[f32]) -> Vec<Answer> {
        let n = self.parity_rows(members);
        for j in members..self.data.len() {
            self.data[j] = Output::Ready(output.repeat(n));
            self.rows[j] = n;
            self.answered[j] = true;
        }
        self.padding = Some(output.to_vec());
        let mut answers: Vec<Answer> = self.try_reconstruct().into_iter().collect();
        answers.extend(self.give_up_hopeless());
        answers
    }

    /// Closes a coding group that will get no parity query, e.g. a partly filled group flushed
    /// after the group timeout: only its first `members` slots exist and an unavailable
    /// prediction can no longer be reconstructed. Returns the answers this settles.
    pub fn close_without_parity(&mut self, members: usize) -> Vec<Answer> {
        self.data.truncate(members);
        self.rows.truncate(members);
        self.answered.truncate(members);
        self.parity = None;
        self.give_up_hopeless()
    }

    /// Records an output (`Some`, `[rows, m]` for a member, `[n, ...]` for the parity) or a
    /// definitive failure (`None`) for `slot`, and returns the answers this makes possible.
    /// Events for a slot that already has a result, or that does not exist, are ignored.
    pub fn on_output(&mut self, slot: Slot, output: Option<Vec<f32>>) -> Vec<Answer> {
        let cell = match slot {
            Slot::Data(j) => match self.data.get_mut(j) {
                Some(cell) => cell,
                None => return Vec::new(),
            },
            Slot::Parity => match &mut self.parity {
                Some(cell) => cell,
                None => return Vec::new(),
            },
        };
        if *cell != Output::Pending {
            return Vec::new();
        }
        *cell = match output {
            Some(o) => Output::Ready(o),
            None => Output::Failed,
        };
        let mut answers = Vec::new();
        if let Slot::Data(j) = slot
            && let (Output::Ready(o), false) = (&self.data[j], self.answered[j])
        {
            self.answered[j] = true;
            answers.push(Answer::Original { slot: j, output: o.clone() });
        }
        answers.extend(self.try_reconstruct());
        answers.extend(self.give_up_hopeless());
        answers
    }

    fn try_reconstruct(&mut self) -> Option<Answer> {
        let Some(Output::Ready(parity)) = &self.parity else { return None };
        let missing: Vec<usize> = (0..self.data.len()).filter(|&j| !matches!(self.data[j], Output::Ready(_))).collect();
        let &[j] = missing.as_slice() else { return None };
        if self.answered[j] {
            return None;
        }
        let output = self.decode(parity, j)?;
        self.answered[j] = true;
        Some(Answer::Reconstructed { slot: j, output })
    }

    /// Member `j`'s block, row by row from the parity output and the other members' rows.
    fn decode(&self, parity: &[f32], j: usize) -> Option<Vec<f32>> {
        let k = self.data.len();
        let n = self.rows.iter().copied().max().unwrap_or(1);
        let m = (0..k).find_map(|l| match &self.data[l] {
            Output::Ready(v) => Some(v.len() / self.rows[l]),
            _ => None,
        });
        let per_row = parity.len() / n;
        // No other prediction to measure a row by (k = 1): a summed-target parity row is one.
        let m = m.or_else(|| self.padding.as_ref().map(Vec::len)).unwrap_or(per_row);
        if m == 0 || per_row * n != parity.len() {
            return None;
        }
        let mut block = Vec::with_capacity(self.rows[j] * m);
        for i in 0..self.rows[j] {
            let p = &parity[i * per_row..(i + 1) * per_row];
            // A per-query (collage) parity model: k blocks of m values, block j ~= F(X_j).
            if k > 1 && per_row == k * m {
                block.extend_from_slice(&p[j * m..(j + 1) * m]);
                continue;
            }
            let row: Option<Vec<Option<&[f32]>>> = (0..k).map(|l| self.row(l, i, m, l == j)).collect();
            let (_, r) = SubtractionDecoder.decode(p, &row?).ok()?;
            block.extend(r);
        }
        Some(block)
    }

    /// Row `i` of member `l` as a decoding input: `Some(None)` for the erased member, the
    /// padding output past the end of a shorter block, `None` if that is needed but unknown.
    fn row(&self, l: usize, i: usize, m: usize, erased: bool) -> Option<Option<&[f32]>> {
        if erased {
            return Some(None);
        }
        match &self.data[l] {
            Output::Ready(v) if i < self.rows[l] => v.get(i * m..(i + 1) * m).map(Some),
            Output::Ready(_) => self.padding.as_deref().map(Some),
            _ => None,
        }
    }

    fn give_up_hopeless(&mut self) -> Vec<Answer> {
        let failed = self.data.iter().filter(|o| **o == Output::Failed).count();
        let parity_lost = !matches!(self.parity, Some(Output::Pending | Output::Ready(_)));
        let mut answers = Vec::new();
        for j in 0..self.data.len() {
            if self.answered[j] || self.data[j] != Output::Failed {
                continue;
            }
            if parity_lost || failed > 1 {
                self.answered[j] = true;
                answers.push(Answer::Unavailable { slot: j });
            }
        }
        answers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originals_are_answered_at_once() {
        let mut g = GroupState::new(2, true);
        let a = g.on_output(Slot::Data(1), Some(vec![1.0]));
        assert_eq!(a, vec![Answer::Original { slot: 1, output: vec![1.0] }]);
        assert!(!g.is_done());
    }

    #[test]
    fn straggler_is_reconstructed_eagerly_and_late_original_ignored() {
        let mut g = GroupState::new(3, true);
        g.on_output(Slot::Data(0), Some(vec![1.0, 2.0]));
        g.on_output(Slot::Data(2), Some(vec![3.0, 4.0]));
        let a = g.on_output(Slot::Parity, Some(vec![10.0, 10.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 1, output: vec![6.0, 4.0] }]);
        assert!(g.is_done());
        assert!(g.on_output(Slot::Data(1), Some(vec![0.0, 0.0])).is_empty());
    }

    #[test]
    fn failure_waits_for_parity_then_reconstructs() {
        let mut g = GroupState::new(2, true);
        assert!(g.on_output(Slot::Data(0), None).is_empty());
        g.on_output(Slot::Data(1), Some(vec![1.0]));
        let a = g.on_output(Slot::Parity, Some(vec![5.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![4.0] }]);
    }

    #[test]
    fn partial_group_without_parity() {
        let mut g = GroupState::new(3, true);
        assert!(g.on_output(Slot::Data(0), None).is_empty());
        g.on_output(Slot::Data(1), Some(vec![1.0]));
        assert_eq!(g.close_without_parity(2), vec![Answer::Unavailable { slot: 0 }]);
        assert!(g.is_done());
    }

    #[test]
    fn padded_group_reconstructs_its_one_member() {
        let mut g = GroupState::new(2, true);
        assert!(g.fill_padding(1, &[1.0, 1.0]).is_empty());
        let a = g.on_output(Slot::Parity, Some(vec![3.0, 5.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![2.0, 4.0] }]);
        assert!(g.is_done());
    }

    #[test]
    fn per_query_parity_output_is_decoded_by_block() {
        let mut g = GroupState::new(3, true);
        g.on_output(Slot::Data(0), Some(vec![1.0, 2.0]));
        g.on_output(Slot::Data(2), Some(vec![3.0, 4.0]));
        let a = g.on_output(Slot::Parity, Some(vec![9.0, 9.0, 5.0, 6.0, 9.0, 9.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 1, output: vec![5.0, 6.0] }]);
    }

    #[test]
    fn two_failures_are_unavailable() {
        let mut g = GroupState::new(3, true);
        assert!(g.on_output(Slot::Data(0), None).is_empty());
        let a = g.on_output(Slot::Data(2), None);
        assert_eq!(a, vec![Answer::Unavailable { slot: 0 }, Answer::Unavailable { slot: 2 }]);
        g.on_output(Slot::Data(1), Some(vec![1.0]));
        assert!(g.is_done());
    }

    #[test]
    fn failure_without_parity_is_unavailable() {
        let mut g = GroupState::new(2, false);
        assert_eq!(g.on_output(Slot::Data(0), None), vec![Answer::Unavailable { slot: 0 }]);
        let mut g = GroupState::new(2, true);
        g.on_output(Slot::Parity, None);
        assert_eq!(g.on_output(Slot::Data(1), None), vec![Answer::Unavailable { slot: 1 }]);
    }

    #[test]
    fn blocks_are_decoded_row_by_row() {
        // Member 0 has 2 rows, member 1 one row (its second row is padding, F(0) = [1]).
        let mut g = GroupState::new(2, true);
        g.set_rows(0, 2);
        assert_eq!(g.parity_rows(2), 2);
        assert!(g.needs_padding(2));
        assert!(g.fill_padding(2, &[1.0]).is_empty());
        g.on_output(Slot::Data(1), Some(vec![3.0]));
        let a = g.on_output(Slot::Parity, Some(vec![10.0, 20.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![7.0, 19.0] }]);
        // The short member is the lost one: only its own row is decoded.
        let mut g = GroupState::new(2, true);
        g.set_rows(0, 2);
        g.fill_padding(2, &[1.0]);
        g.on_output(Slot::Data(0), Some(vec![4.0, 5.0]));
        let a = g.on_output(Slot::Parity, Some(vec![10.0, 20.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 1, output: vec![6.0] }]);
    }

    #[test]
    fn equal_blocks_need_no_padding_and_collage_blocks_decode() {
        let mut g = GroupState::new(2, true);
        g.set_rows(0, 2);
        g.set_rows(1, 2);
        assert!(!g.needs_padding(2));
        assert!(g.needs_padding(1));
        g.on_output(Slot::Data(1), Some(vec![1.0, 2.0, 3.0, 4.0]));
        // Per-query parity rows: [block 0, block 1] per row, m = 2.
        let a = g.on_output(Slot::Parity, Some(vec![5.0, 6.0, 0.0, 0.0, 7.0, 8.0, 0.0, 0.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![5.0, 6.0, 7.0, 8.0] }]);
    }

    #[test]
    fn a_block_needing_unknown_padding_is_not_decoded() {
        let mut g = GroupState::new(2, true);
        g.set_rows(0, 2);
        g.on_output(Slot::Data(1), Some(vec![3.0]));
        assert!(g.on_output(Slot::Parity, Some(vec![10.0, 20.0])).is_empty());
    }
}
