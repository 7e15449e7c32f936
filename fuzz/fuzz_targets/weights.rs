//! The model weights loader: a burnpack file's bytes loaded into the architecture its metadata
//! describes, with every validation (`parm_nn::weights::load_net_bytes`). The metadata is a
//! small MLP 4-3-2; the seed corpus holds its real weights file.
#![no_main]

use burn::tensor::Device;
use libfuzzer_sys::fuzz_target;
use parm_nn::meta::ModelMeta;
use parm_nn::MlpConfig;

fuzz_target!(|data: &[u8]| {
    let mlp = MlpConfig { input: 4, hidden: vec![3], classes: 2 };
    let meta = ModelMeta::untrained(mlp, "fuzz");
    let device = Device::flex();
    if let Ok(net) = parm_nn::weights::load_net_bytes(&meta, data.to_vec(), &device, "fuzz") {
        // A model that loads must also run.
        let p = parm_nn::Predictor::new(net, meta);
        let out = p.infer(&[0.5; 8], 2).expect("a loaded model runs");
        assert_eq!(out.len(), 4);
    }
});
