//! The seeded checkpoints of `splitstream_models::synthetic` load as the device's
//! models: the plain ViT with its head count, the split one with its bottleneck.

use splitstream_head::device::load_model;
use splitstream_head::model::BottleneckInfo;
use splitstream_models::synthetic::{seeded_split_safetensors, seeded_vit_safetensors, DEMO_VIT};

#[test]
fn the_seeded_vit_loads_with_the_demo_shape() {
    let bytes = seeded_vit_safetensors(&DEMO_VIT, 7);
    let (model, _) = load_model("demo", bytes, "seeded", None, 1).unwrap();
    let c = model.config();
    assert_eq!(
        (c.depth, c.num_heads, c.num_classes, c.num_tokens()),
        (4, 3, 10, 50)
    );
    assert_eq!(model.bottleneck(), None);
}

#[test]
fn the_seeded_split_vit_loads_with_its_bottleneck_only() {
    let bytes = seeded_split_safetensors(&DEMO_VIT, 7, 2, 16);
    let (model, _) = load_model("demo", bytes, "seeded", None, 1).unwrap();
    assert_eq!(model.config().num_heads, 3);
    assert_eq!(
        model.bottleneck(),
        Some(BottleneckInfo { point: 2, rank: 16 })
    );
    assert!(model.split_at(1).is_err(), "only the bottleneck's point");
}
