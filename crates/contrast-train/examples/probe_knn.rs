use candle_core::{Device, Tensor};
use contrast_data::Normalization;
use contrast_eval::{KnnConfig, knn_accuracy};
use contrast_train::config::Config;
use contrast_train::evaluate::{Evaluator, input_shape};
use contrast_train::model::ContrastiveModel;
use contrast_train::trainer::load_data;
fn main() -> anyhow::Result<()> {
    let run = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let cfg = Config::load(&run.join("config.toml"), &[])?;
    let data = load_data(&cfg, None)?;
    let dev = Device::Cpu;
    let mut model = ContrastiveModel::new(&cfg.model, input_shape(&data.train), &dev, cfg.seed)?;
    let latest = std::fs::read_to_string(run.join("checkpoints/latest"))?;
    model.varmap.load(
        run.join("checkpoints")
            .join(latest.trim())
            .join("model.safetensors"),
    )?;
    let norm = Normalization::from_dataset(&data.train);
    let ev = Evaluator {
        norm: &norm,
        knn: &cfg.eval.knn,
        probe: &cfg.eval.probe,
        batch: 1000,
        device: &dev,
    };
    let ftr = ev.features(model.backbone.as_ref(), &data.train)?;
    let fte = ev.features(model.backbone.as_ref(), &data.test)?;
    let mean = ftr.mean_keepdim(0)?;
    let (ctr, cte) = (ftr.broadcast_sub(&mean)?, fte.broadcast_sub(&mean)?);
    for k in [20usize, 200] {
        for t in [0.1, 0.05] {
            let c = KnnConfig { k, temperature: t };
            let a = knn_accuracy(&ftr, &data.train.labels, &fte, &data.test.labels, 10, &c)?;
            let b = knn_accuracy(&ctr, &data.train.labels, &cte, &data.test.labels, 10, &c)?;
            println!("k={k} t={t}: raw {a:.4} centred {b:.4}");
        }
    }
    let _ = Tensor::zeros(1, candle_core::DType::F32, &dev)?;
    Ok(())
}
