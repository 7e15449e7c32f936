//! The state of one coding group in the frontend, and ParM's eager decoding rule, for
//! members that are single queries or blocks of rows, under any of parm's codes.

use crate::{BerrutCode, CodeError, Decoder, LinearCode, SubtractionDecoder};

/// Which output of a coding group an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The prediction for the j-th query of the group (0-based).
    Data(usize),
    /// The l-th redundant output (0-based): parity model l's output Fp_l(P_l), or F on the
    /// l-th Berrut-blended query.
    Parity(usize),
}

/// How a coding group's redundant outputs stand in for its unavailable predictions.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupCode {
    /// ParM (SOSP 2019 §3): one parity output, per row either Fp(P) ~= sum_j F(X_j) (decoded by
    /// subtraction) or k per-query blocks (a collage parity model; decoded by taking block j).
    /// Tolerates one unavailable prediction.
    Parity,
    /// The r parity outputs of a [`LinearCode`], Fp_l(P_l) ~= sum_j c[l][j] F(X_j) (ParM §3
    /// generalised to r parities); any e <= r unavailable predictions are solved for from any
    /// e parity outputs.
    Linear(LinearCode),
    /// The S outputs of the deployed model on the Berrut-blended queries of a [`BerrutCode`]
    /// (ApproxIFER, arXiv 2109.09868, made systematic); any e <= S unavailable predictions
    /// are interpolated from the outputs that are in.
    Berrut(BerrutCode),
}

impl GroupCode {
    /// Redundant outputs per group: 1, r or S.
    pub fn redundancy(&self) -> usize {
        match self {
            GroupCode::Parity => 1,
            GroupCode::Linear(c) => c.r(),
            GroupCode::Berrut(c) => c.s(),
        }
    }

    /// Decodes one row: `redundant` holds the redundant outputs' rows (`None`: not in),
    /// `data` the members' rows (`None`: erased). Returns `(j, row)` per erased member.
    ///
    /// Errors: too many erasures for the outputs that are in, or rows of different lengths.
    fn decode_row(&self, redundant: &[Option<&[f32]>], data: &[Option<&[f32]>]) -> Result<Vec<(usize, Vec<f32>)>, CodeError> {
        match self {
            GroupCode::Parity => match redundant {
                [Some(p)] if data.iter().any(Option::is_none) => Ok(vec![SubtractionDecoder.decode(p, data)?]),
                [_] => Ok(Vec::new()),
                _ => Err(CodeError::WrongCount { expected: 1, got: redundant.len() }),
            },
            GroupCode::Linear(code) => code.decode(redundant, data),
            GroupCode::Berrut(code) => code.decode(data, redundant),
        }
    }
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
/// With several redundant outputs ([`GroupCode::Linear`], [`GroupCode::Berrut`]) the
/// outputs of every kind are rows of the same width m as a prediction.
///
/// Rule (ParM SOSP 2019 §4.2, eager decoding, generalised to any subset): a member is
/// answered as soon as its own prediction arrives, or as soon as, with e predictions not in,
/// at least e redundant outputs are (for ParM's single parity: the parity output and the
/// other k-1 predictions), whichever is first; every member not in is then decoded at once.
/// A member whose prediction failed is answered `Unavailable` once a reconstruction has
/// become impossible (more failed members than redundant outputs that have not failed, or no
/// redundancy). Every member is answered exactly once; [`GroupState::is_done`] tells when all
/// are.
#[derive(Debug, Clone)]
pub struct GroupState {
    data: Vec<Output>,
    /// Rows of each member's block.
    rows: Vec<usize>,
    /// The redundant outputs, `code.redundancy()` of them (none: unprotected).
    redundant: Vec<Output>,
    code: GroupCode,
    answered: Vec<bool>,
    /// F(0), the prediction of one all-zero row, once the group is padded.
    padding: Option<Vec<f32>>,
    /// Members that are real queries (the rest are padding slots).
    members: usize,
}

impl GroupState {
    /// A group of `k` single-row members, protected by ParM's one parity output if
    /// `has_parity`.
    pub fn new(k: usize, has_parity: bool) -> Self {
        let mut g = Self::coded(k, GroupCode::Parity);
        if !has_parity {
            g.redundant.clear();
        }
        g
    }

    /// A group of `k` single-row members protected by `code`'s redundant outputs.
    pub fn coded(k: usize, code: GroupCode) -> Self {
        Self {
            data: vec![Output::Pending; k],
            rows: vec![1; k],
            redundant: vec![Output::Pending; code.redundancy()],
            code,
            answered: vec![false; k],
            padding: None,
            members: k,
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
        self.members = members.min(self.data.len());
        let mut answers = self.try_reconstruct();
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
        self.redundant.clear();
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
            Slot::Parity(l) => match self.redundant.get_mut(l) {
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

    /// The group's outputs checked against its code ([`crate::check_rows`]), once every
    /// prediction and every redundant output is in: the syndrome's size and, with r >= 2, the
    /// member most likely to be wrong (padding rows and slots are never blamed). `None` while
    /// an output is missing or failed, for the Berrut code (its redundant outputs are F on
    /// blended queries, not linear in the predictions), and for a per-query (collage) parity
    /// output.
    pub fn check(&self) -> Option<crate::Check> {
        let coeffs: Vec<Vec<f64>> = match &self.code {
            GroupCode::Parity => vec![vec![1.0; self.data.len()]],
            GroupCode::Linear(c) => (0..c.r()).map(|l| (0..c.k()).map(|j| c.coeff(l, j)).collect()).collect(),
            GroupCode::Berrut(_) => return None,
        };
        fn ready(o: &Output) -> Option<&[f32]> {
            if let Output::Ready(v) = o { Some(v) } else { None }
        }
        let redundant: Vec<&[f32]> = self.redundant.iter().map(ready).collect::<Option<_>>()?;
        let data: Vec<&[f32]> = self.data.iter().map(ready).collect::<Option<_>>()?;
        let n = self.rows.iter().copied().max().unwrap_or(1);
        let m = data.iter().zip(&self.rows).find(|(_, r)| **r > 0).map(|(v, r)| v.len() / r)?;
        if redundant.is_empty() || redundant.iter().any(|p| p.len() != n * m) {
            return None;
        }
        crate::check_rows(
            &coeffs,
            n,
            m,
            |j, i| self.row(j, i, m),
            |l, i| {
                let p: &[f32] = redundant[l];
                p.get(i * m..(i + 1) * m)
            },
            |j, i| j < self.members && i < self.rows[j],
        )
    }

    /// Decodes every member not in once at least as many redundant outputs are in, and
    /// answers those not answered yet.
    fn try_reconstruct(&mut self) -> Vec<Answer> {
        let missing: Vec<usize> = (0..self.data.len()).filter(|&j| !matches!(self.data[j], Output::Ready(_))).collect();
        let ready = self.redundant.iter().filter(|o| matches!(o, Output::Ready(_))).count();
        if ready == 0 || missing.is_empty() || missing.len() > ready || missing.iter().all(|&j| self.answered[j]) {
            return Vec::new();
        }
        let decoded = match (&self.code, &self.redundant[..]) {
            (GroupCode::Parity, [Output::Ready(parity)]) => self.decode(parity, missing[0]).map(|o| vec![(missing[0], o)]),
            _ => self.decode_rows(&missing),
        };
        let mut answers = Vec::new();
        for (slot, output) in decoded.unwrap_or_default() {
            if !self.answered[slot] {
                self.answered[slot] = true;
                answers.push(Answer::Reconstructed { slot, output });
            }
        }
        answers
    }

    /// ParM's one parity: member `j`'s block, row by row from the parity output and the other
    /// members' rows.
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
            let row: Option<Vec<Option<&[f32]>>> = (0..k).map(|l| if l == j { Some(None) } else { self.row(l, i, m).map(Some) }).collect();
            let (_, r) = SubtractionDecoder.decode(p, &row?).ok()?;
            block.extend(r);
        }
        Some(block)
    }

    /// Several redundant outputs (rows of width m, like a prediction): the `missing` members'
    /// blocks, row by row. In row i only the missing members that have a row i are erased;
    /// a shorter one's row i is padding, known.
    fn decode_rows(&self, missing: &[usize]) -> Option<Vec<(usize, Vec<f32>)>> {
        let n = self.rows.iter().copied().max().unwrap_or(1);
        let ready: Vec<Option<&[f32]>> =
            self.redundant.iter().map(|o| if let Output::Ready(v) = o { Some(v.as_slice()) } else { None }).collect();
        let len = ready.iter().flatten().next()?.len();
        let m = len / n;
        if m == 0 || m * n != len {
            return None;
        }
        let mut blocks: Vec<Vec<f32>> = missing.iter().map(|&j| Vec::with_capacity(self.rows[j] * m)).collect();
        for i in 0..n {
            let erased = |l: usize| missing.contains(&l) && i < self.rows[l];
            let data: Option<Vec<Option<&[f32]>>> =
                (0..self.data.len()).map(|l| if erased(l) { Some(None) } else { self.row(l, i, m).map(Some) }).collect();
            let redundant: Vec<Option<&[f32]>> = ready.iter().map(|o| o.and_then(|v| v.get(i * m..(i + 1) * m))).collect();
            for (j, row) in self.code.decode_row(&redundant, &data?).ok()? {
                blocks[missing.iter().position(|&x| x == j)?].extend(row);
            }
        }
        Some(missing.iter().copied().zip(blocks).collect())
    }

    /// Row `i` of member `l`, known: its own row, or the padding output past the end of a
    /// shorter block; `None` if that is not in or unknown.
    fn row(&self, l: usize, i: usize, m: usize) -> Option<&[f32]> {
        if i >= self.rows[l] {
            return self.padding.as_deref();
        }
        match &self.data[l] {
            Output::Ready(v) => v.get(i * m..(i + 1) * m),
            _ => None,
        }
    }

    fn give_up_hopeless(&mut self) -> Vec<Answer> {
        let failed = self.data.iter().filter(|o| **o == Output::Failed).count();
        let alive = self.redundant.iter().filter(|o| **o != Output::Failed).count();
        let mut answers = Vec::new();
        for j in 0..self.data.len() {
            if self.answered[j] || self.data[j] != Output::Failed {
                continue;
            }
            if failed > alive {
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
    fn check_needs_every_output_and_locates_with_two_parities() {
        let code = LinearCode::vandermonde(3, 2).unwrap();
        let mut g = GroupState::coded(3, GroupCode::Linear(code.clone()));
        let ys = [vec![1.0, 0.0], vec![0.0, 2.0], vec![3.0, 1.0]];
        for (j, y) in ys.iter().enumerate() {
            g.on_output(Slot::Data(j), Some(if j == 1 { vec![2.0, 0.0] } else { y.clone() }));
        }
        let parity = |l: usize| (0..2).map(|t| (0..3).map(|j| code.coeff(l, j) as f32 * ys[j][t]).sum()).collect::<Vec<f32>>();
        g.on_output(Slot::Parity(0), Some(parity(0)));
        assert_eq!(g.check(), None, "parity 1 is not in");
        g.on_output(Slot::Parity(1), Some(parity(1)));
        let check = g.check().unwrap();
        assert_eq!(check.located.map(|(j, _)| j), Some(1), "{check:?}");
        assert!(check.located.unwrap().1 > 0.999, "{check:?}");

        // A padded slot is never blamed, even when its (known) output is off.
        let mut g = GroupState::coded(3, GroupCode::Linear(code.clone()));
        g.on_output(Slot::Data(0), Some(ys[0].clone()));
        g.on_output(Slot::Data(1), Some(ys[1].clone()));
        g.fill_padding(2, &[0.0, 0.0]);
        g.on_output(Slot::Parity(0), Some(parity(0)));
        g.on_output(Slot::Parity(1), Some(parity(1)));
        assert!(g.check().unwrap().located.is_some_and(|(j, _)| j < 2));
        assert_eq!(GroupState::coded(2, GroupCode::Berrut(BerrutCode::new(2, 1).unwrap())).check(), None);
    }

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
        let a = g.on_output(Slot::Parity(0), Some(vec![10.0, 10.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 1, output: vec![6.0, 4.0] }]);
        assert!(g.is_done());
        assert!(g.on_output(Slot::Data(1), Some(vec![0.0, 0.0])).is_empty());
    }

    #[test]
    fn failure_waits_for_parity_then_reconstructs() {
        let mut g = GroupState::new(2, true);
        assert!(g.on_output(Slot::Data(0), None).is_empty());
        g.on_output(Slot::Data(1), Some(vec![1.0]));
        let a = g.on_output(Slot::Parity(0), Some(vec![5.0]));
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
        let a = g.on_output(Slot::Parity(0), Some(vec![3.0, 5.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![2.0, 4.0] }]);
        assert!(g.is_done());
    }

    #[test]
    fn per_query_parity_output_is_decoded_by_block() {
        let mut g = GroupState::new(3, true);
        g.on_output(Slot::Data(0), Some(vec![1.0, 2.0]));
        g.on_output(Slot::Data(2), Some(vec![3.0, 4.0]));
        let a = g.on_output(Slot::Parity(0), Some(vec![9.0, 9.0, 5.0, 6.0, 9.0, 9.0]));
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
        g.on_output(Slot::Parity(0), None);
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
        let a = g.on_output(Slot::Parity(0), Some(vec![10.0, 20.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![7.0, 19.0] }]);
        // The short member is the lost one: only its own row is decoded.
        let mut g = GroupState::new(2, true);
        g.set_rows(0, 2);
        g.fill_padding(2, &[1.0]);
        g.on_output(Slot::Data(0), Some(vec![4.0, 5.0]));
        let a = g.on_output(Slot::Parity(0), Some(vec![10.0, 20.0]));
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
        let a = g.on_output(Slot::Parity(0), Some(vec![5.0, 6.0, 0.0, 0.0, 7.0, 8.0, 0.0, 0.0]));
        assert_eq!(a, vec![Answer::Reconstructed { slot: 0, output: vec![5.0, 6.0, 7.0, 8.0] }]);
    }

    #[test]
    fn a_block_needing_unknown_padding_is_not_decoded() {
        let mut g = GroupState::new(2, true);
        g.set_rows(0, 2);
        g.on_output(Slot::Data(1), Some(vec![3.0]));
        assert!(g.on_output(Slot::Parity(0), Some(vec![10.0, 20.0])).is_empty());
    }

    /// F(x) = 2x on scalar queries, outputs `[1]`; Fp_l = F, so parity outputs are exact.
    fn twice(x: f32) -> Vec<f32> {
        vec![2.0 * x]
    }

    #[test]
    fn two_parities_decode_two_stragglers_at_once_and_one_eagerly() {
        let code = LinearCode::vandermonde(3, 2).unwrap();
        let xs = [1.0f32, -2.0, 0.5];
        let parity = |l: usize| twice((0..3).map(|j| code.coeff(l, j) as f32 * xs[j]).sum());
        // Members 0 and 2 stall: both come back once both parities are in.
        let mut g = GroupState::coded(3, GroupCode::Linear(code.clone()));
        g.on_output(Slot::Data(1), Some(twice(xs[1])));
        assert!(g.on_output(Slot::Parity(1), Some(parity(1))).is_empty(), "2 missing, 1 parity in");
        let a = g.on_output(Slot::Parity(0), Some(parity(0)));
        let got: Vec<(usize, f32)> = a
            .iter()
            .map(|a| match a {
                Answer::Reconstructed { slot, output } => (*slot, output[0]),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got.len(), 2);
        for (j, v) in got {
            assert!((v - 2.0 * xs[j]).abs() < 1e-4, "member {j}: {v}");
        }
        assert!(g.is_done());
        // One straggler: decoded from whichever single parity is in, with the others.
        let mut g = GroupState::coded(3, GroupCode::Linear(code.clone()));
        g.on_output(Slot::Data(0), Some(twice(xs[0])));
        g.on_output(Slot::Data(2), Some(twice(xs[2])));
        let a = g.on_output(Slot::Parity(1), Some(parity(1)));
        let [Answer::Reconstructed { slot: 1, output }] = &a[..] else { panic!("{a:?}") };
        assert!((output[0] - 2.0 * xs[1]).abs() < 1e-4);
    }

    #[test]
    fn two_parities_give_up_only_past_two_failures() {
        let code = LinearCode::vandermonde(3, 2).unwrap();
        let mut g = GroupState::coded(3, GroupCode::Linear(code.clone()));
        assert!(g.on_output(Slot::Data(0), None).is_empty());
        assert!(g.on_output(Slot::Data(1), None).is_empty(), "two failures, two parities pending");
        assert_eq!(g.on_output(Slot::Parity(0), None), vec![Answer::Unavailable { slot: 0 }, Answer::Unavailable { slot: 1 }]);
        let mut g = GroupState::coded(3, GroupCode::Linear(code));
        g.on_output(Slot::Data(0), None);
        g.on_output(Slot::Data(1), None);
        assert_eq!(g.on_output(Slot::Data(2), None).len(), 3, "three failures, two parities");
        assert!(g.is_done());
    }

    #[test]
    fn two_parities_decode_blocks_row_by_row_with_padding() {
        // Member 0: 2 rows; member 1: 1 row (its row 1 is padding, F(0) = [0]); member 2
        // absent (padding). F = identity, Fp_l = F.
        let code = LinearCode::vandermonde(3, 2).unwrap();
        let (x0, x1) = ([1.0f32, 3.0], [2.0f32]);
        let parity = |l: usize| vec![code.coeff(l, 0) as f32 * x0[0] + code.coeff(l, 1) as f32 * x1[0], code.coeff(l, 0) as f32 * x0[1]];
        let mut g = GroupState::coded(3, GroupCode::Linear(code.clone()));
        g.set_rows(0, 2);
        assert!(g.fill_padding(2, &[0.0]).is_empty());
        g.on_output(Slot::Parity(0), Some(parity(0)));
        let a = g.on_output(Slot::Parity(1), Some(parity(1)));
        assert_eq!(a.len(), 2, "{a:?}");
        for answer in a {
            let Answer::Reconstructed { slot, output } = answer else { panic!() };
            let want: &[f32] = if slot == 0 { &x0 } else { &x1 };
            assert_eq!(output.len(), want.len());
            assert!(output.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4), "{slot}: {output:?}");
        }
    }

    #[test]
    fn berrut_outputs_interpolate_stragglers() {
        // F constant: Berrut's interpolant reproduces it exactly, from any outputs in.
        let code = BerrutCode::new(3, 2).unwrap();
        let mut g = GroupState::coded(3, GroupCode::Berrut(code));
        g.on_output(Slot::Data(1), Some(vec![4.0, 5.0]));
        assert!(g.on_output(Slot::Parity(0), Some(vec![4.0, 5.0])).is_empty(), "2 missing, 1 blend in");
        let a = g.on_output(Slot::Parity(1), Some(vec![4.0, 5.0]));
        assert_eq!(a.len(), 2);
        for answer in a {
            let Answer::Reconstructed { output, .. } = answer else { panic!() };
            assert!((output[0] - 4.0).abs() < 1e-5 && (output[1] - 5.0).abs() < 1e-5, "{output:?}");
        }
    }
}
