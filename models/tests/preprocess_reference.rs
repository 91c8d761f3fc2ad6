//! The DeiT eval transform against the tensors timm fed its models (`input` in the
//! reference: astronaut.png then chelsea.png).

mod common;

use splitstream_models::preprocess::{load_batch, EvalTransform};
use splitstream_models::weights::Weights;

use common::reference_dir;

#[test]
fn deit_eval_transform_matches_timm_input() {
    let Some(dir) = reference_dir("preprocess") else {
        return;
    };
    let reference = Weights::from_file(dir.join("vit_micro.expected.safetensors")).unwrap();
    let want = reference.get("input", &[2, 3, 224, 224]).unwrap();
    let paths = [dir.join("astronaut.png"), dir.join("chelsea.png")];
    let got = load_batch(&paths, &EvalTransform::deit(224)).unwrap();
    assert_eq!(got.shape(), want.shape());
    // One 8-bit step of the source image, after normalisation (largest for the
    // smallest std).
    let step = 1.0 / 255.0 / 0.224_f32.min(0.225).min(0.229);
    let per_image = 3 * 224 * 224;
    for (i, name) in ["astronaut", "chelsea"].iter().enumerate() {
        let range = i * per_image..(i + 1) * per_image;
        let (g, w) = (&got.data()[range.clone()], &want.data()[range]);
        let max = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let off = g
            .iter()
            .zip(w)
            .filter(|(a, b)| (*a - *b).abs() > 1e-5)
            .count();
        println!(
            "{name}: max |diff| {max:e} ({:.2} pixel steps), {off} values differ",
            max / step
        );
        // The resize reproduces PIL's fixed-point arithmetic, so the pixels are the same
        // and only float rounding in the normalisation could differ.
        assert!(
            max <= 1e-6,
            "{name}: max |diff| {max} ({} pixel steps)",
            max / step
        );
    }
}
