//! Property tests: for a linear F, the parity model Fp = F reconstructs exactly (ParM §3.1),
//! and the group state machine answers every query exactly once whatever the event order.

use parm_codes::{AdditionEncoder, Answer, Decoder, Encoder, GroupState, Slot, SubtractionDecoder};
use proptest::prelude::*;

fn linear(w: &[f32], x: &[f32], m: usize) -> Vec<f32> {
    let n = x.len();
    (0..m).map(|r| (0..n).map(|c| w[r * n + c] * x[c]).sum()).collect()
}

fn group(k: usize, n: usize) -> impl Strategy<Value = Vec<Vec<f32>>> {
    prop::collection::vec(prop::collection::vec(-1.0f32..1.0, n), k)
}

proptest! {
    #[test]
    fn linear_model_reconstructs_exactly(
        (queries, lost) in (1usize..8, 1usize..12)
            .prop_flat_map(|(k, n)| (group(k, n), 0..k)),
        m in 1usize..6,
    ) {
        let (k, n) = (queries.len(), queries[0].len());
        let w: Vec<f32> = (0..m * n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        let parity = AdditionEncoder::new(k).unwrap().encode(&refs).unwrap();
        let outputs: Vec<Vec<f32>> = queries.iter().map(|q| linear(&w, q, m)).collect();
        let avail: Vec<Option<&[f32]>> = outputs.iter().enumerate()
            .map(|(i, o)| (i != lost).then_some(o.as_slice())).collect();
        let (j, rec) = SubtractionDecoder.decode(&linear(&w, &parity, m), &avail).unwrap();
        prop_assert_eq!(j, lost);
        for (a, b) in rec.iter().zip(&outputs[lost]) {
            prop_assert!((a - b).abs() < 1e-4 * (k as f32) * (n as f32));
        }
    }

    #[test]
    fn every_query_answered_exactly_once(
        k in 1usize..6,
        order in prop::collection::vec((0usize..7, any::<bool>()), 0..20),
    ) {
        let mut g = GroupState::new(k, true);
        let mut count = vec![0usize; k];
        // Deliver events in a random order, each slot possibly failing; then finish the rest.
        let slots: Vec<(Slot, bool)> = order.iter().map(|&(s, ok)| {
            (if s % (k + 1) == k { Slot::Parity(0) } else { Slot::Data(s % (k + 1)) }, ok)
        }).chain((0..k).map(|j| (Slot::Data(j), true))).chain([(Slot::Parity(0), true)]).collect();
        for (slot, ok) in slots {
            for a in g.on_output(slot, ok.then(|| vec![1.0])) {
                let s = match a { Answer::Original { slot, .. } | Answer::Reconstructed { slot, .. }
                    | Answer::Unavailable { slot } => slot };
                count[s] += 1;
            }
        }
        prop_assert!(g.is_done());
        prop_assert!(count.iter().all(|&c| c == 1), "answers per query: {:?}", count);
    }
}

#[test]
fn encoder_rejects_bad_groups() {
    let e = AdditionEncoder::new(2).unwrap();
    assert!(e.encode(&[&[1.0]]).is_err());
    assert!(e.encode(&[&[1.0], &[1.0, 2.0]]).is_err());
    assert!(AdditionEncoder::new(0).is_err());
    assert!(SubtractionDecoder.decode(&[1.0], &[None, None]).is_err());
    assert!(SubtractionDecoder.decode(&[1.0], &[Some(&[1.0][..]), Some(&[1.0][..])]).is_err());
}
