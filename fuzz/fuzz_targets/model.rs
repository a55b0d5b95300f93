//! Model files and PutModel bodies: any bytes are refused with an error or
//! give a model whose forest packs and scores, the vector walk agreeing
//! with the portable one, within the documented size limits (libFuzzer's
//! memory limit catches a bomb that slips through validation).
#![no_main]

use isoflow::forest::PackedForest;
use isoflow::score::cpu::CpuScorer;
use isoflow::score::{RowScore, Scorer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = isoflow::model::decode(data) else {
        return;
    };
    let Ok(forest) = PackedForest::from_model(&model) else {
        return;
    };
    let dims = model.feature_spec.as_ref().map_or(0, |s| s.features.len());
    if dims == 0 {
        return;
    }
    let rows: Vec<f32> = (0..dims * 3)
        .map(|i| [0.5, -1e6, 3.0e7][i % 3] * (i as f32 + 1.0))
        .collect();
    let mut vector = vec![RowScore::default(); 3];
    let mut portable = vec![RowScore::default(); 3];
    CpuScorer::new(forest.clone())
        .score(&rows, &mut vector)
        .expect("a packed forest scores");
    CpuScorer::portable(forest)
        .score(&rows, &mut portable)
        .expect("a packed forest scores");
    for (v, p) in vector.iter().zip(&portable) {
        assert!((0.0..=1.0).contains(&v.score), "score {}", v.score);
        assert!((v.score - p.score).abs() <= 1e-5, "{v:?} vs {p:?}");
    }
});
