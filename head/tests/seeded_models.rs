//! The seeded checkpoints of `splitstream_models::synthetic` load as the device's
//! models: the plain ViT cut at every block, the split one at its bottleneck only.

use splitstream_head::device::load_model;
use splitstream_models::net::OutputKind;
use splitstream_models::synthetic::{seeded_split_safetensors, seeded_vit_safetensors, DEMO_VIT};

#[test]
fn the_seeded_vit_loads_with_the_demo_shape() {
    let bytes = seeded_vit_safetensors(&DEMO_VIT, 7);
    let (model, _) = load_model("demo", bytes, "seeded", None, 1).unwrap();
    let net = model.net();
    assert_eq!(model.max_depth(), 4);
    let names: Vec<&str> = net.split_points().iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["embed", "block0", "block1", "block2", "block3"]);
    assert_eq!(net.split_points()[1].shape, [50, 96]);
    assert_eq!(net.output(), OutputKind::ClassLogits { classes: 10 });
    assert_eq!(model.bottleneck(), None);
}

#[test]
fn the_seeded_split_vit_loads_with_its_bottleneck_only() {
    let bytes = seeded_split_safetensors(&DEMO_VIT, 7, 2, 16);
    let (model, _) = load_model("demo", bytes, "seeded", None, 1).unwrap();
    let b = model.bottleneck().expect("a bottleneck");
    assert_eq!(
        (b.depth, b.bottleneck, b.name.as_str(), b.shape.as_slice()),
        (2, Some(16), "block1-bottleneck", &[50, 16][..])
    );
    assert_eq!(model.net().split_points().len(), 1);
    assert!(model.split_at(1).is_err(), "only the bottleneck's point");
}
