//! The state of one coding group in the frontend, and ParM's eager decoding rule.

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
/// event, which queries can be answered.
///
/// The parity output is either Fp(P) ~= sum of the k predictions (ParM; decoded by
/// subtraction) or, from a per-query parity model, k blocks each ~= one prediction (decoded by
/// taking the block; recognised by its length, k times a prediction's).
///
/// Rule (ParM SOSP 2019 §4.2, eager decoding): a query is answered as soon as its own
/// prediction arrives, or as soon as the parity output and the other k-1 predictions are in,
/// whichever is first. A query whose prediction failed is answered `Unavailable` once a
/// reconstruction has become impossible (the parity failed, another member failed, or the
/// group has no parity). Every query is answered exactly once; [`GroupState::is_done`] tells
/// when all are.
#[derive(Debug, Clone)]
pub struct GroupState {
    data: Vec<Output>,
    parity: Option<Output>,
    answered: Vec<bool>,
}

impl GroupState {
    /// A group of `k` queries, protected by one parity output if `has_parity`.
    pub fn new(k: usize, has_parity: bool) -> Self {
        Self {
            data: vec![Output::Pending; k],
            parity: has_parity.then_some(Output::Pending),
            answered: vec![false; k],
        }
    }

    /// Number of queries in the group.
    pub fn k(&self) -> usize {
        self.data.len()
    }

    /// True once every query of the group has been answered.
    pub fn is_done(&self) -> bool {
        self.answered.iter().all(|a| *a)
    }

    /// True if the query in `slot` has been answered.
    pub fn is_answered(&self, slot: usize) -> bool {
        self.answered[slot]
    }

    /// Fills slots `members..k` with padding queries whose known output is `output` (e.g. F of
    /// an all-zero query): they count as available predictions for decoding and need no
    /// answer. Used for a partly filled group that still gets a parity query. Returns the
    /// answers this makes possible.
    pub fn fill_padding(&mut self, members: usize, output: &[f32]) -> Vec<Answer> {
        for j in members..self.data.len() {
            self.data[j] = Output::Ready(output.to_vec());
            self.answered[j] = true;
        }
        let mut answers: Vec<Answer> = self.try_reconstruct().into_iter().collect();
        answers.extend(self.give_up_hopeless());
        answers
    }

    /// Closes a coding group that will get no parity query, e.g. a partly filled group flushed
    /// after the group timeout: only its first `members` slots exist and an unavailable
    /// prediction can no longer be reconstructed. Returns the answers this settles.
    pub fn close_without_parity(&mut self, members: usize) -> Vec<Answer> {
        self.data.truncate(members);
        self.answered.truncate(members);
        self.parity = None;
        self.give_up_hopeless()
    }

    /// Records an output (`Some`) or a definitive failure (`None`) for `slot`, and returns the
    /// answers this makes possible. Events for a slot that already has a result, or that does
    /// not exist, are ignored.
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
        if let Slot::Data(j) = slot {
            if let (Output::Ready(o), false) = (&self.data[j], self.answered[j]) {
                self.answered[j] = true;
                answers.push(Answer::Original { slot: j, output: o.clone() });
            }
        }
        answers.extend(self.try_reconstruct());
        answers.extend(self.give_up_hopeless());
        answers
    }

    fn try_reconstruct(&mut self) -> Option<Answer> {
        let Some(Output::Ready(parity)) = &self.parity else { return None };
        let outputs: Vec<Option<&[f32]>> = self
            .data
            .iter()
            .map(|o| match o {
                Output::Ready(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect();
        // A per-query parity model (k blocks of m values, block j ~= F(X_j); parm's recipe)
        // is decoded by taking block j; a summed-target one (m values) by subtraction.
        let m = outputs.iter().flatten().map(|o| o.len()).next();
        let missing: Vec<usize> = (0..outputs.len()).filter(|&i| outputs[i].is_none()).collect();
        let (j, output) = match (m, missing.as_slice()) {
            (Some(m), &[j]) if outputs.len() > 1 && parity.len() == outputs.len() * m => {
                (j, parity[j * m..(j + 1) * m].to_vec())
            }
            _ => SubtractionDecoder.decode(parity, &outputs).ok()?,
        };
        if self.answered[j] {
            return None;
        }
        self.answered[j] = true;
        Some(Answer::Reconstructed { slot: j, output })
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
}
