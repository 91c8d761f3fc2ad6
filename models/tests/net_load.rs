//! The one loader: which family a checkpoint is, told by its metadata or its tensor
//! names, and clear refusals for what this build does not run.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::net::{detect_family, load_net, Family, LoadNetError, NetOptions};
use splitstream_models::weights::Weights;

/// A safetensors file of zero-filled f32 tensors with `metadata`.
fn checkpoint(tensors: &[(&str, &[usize])], metadata: &[(&str, &str)]) -> Weights {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            (name.to_string(), shape.to_vec(), vec![0u8; 4 * n])
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    let meta: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta)).expect("serialise");
    Weights::from_bytes(bytes, "test checkpoint").expect("parses")
}

#[test]
fn the_family_comes_from_metadata_or_tensor_names() {
    let vit_names: &[(&str, &[usize])] = &[
        ("patch_embed.proj.weight", &[8, 3, 4, 4]),
        ("blocks.0.attn.qkv.weight", &[24, 8]),
    ];
    assert_eq!(
        detect_family(&checkpoint(vit_names, &[])).unwrap(),
        Family::Vit
    );
    let tagged = checkpoint(&[("anything", &[1])], &[("family", "vit")]);
    assert_eq!(detect_family(&tagged).unwrap(), Family::Vit);
}

#[test]
fn an_unknown_family_is_refused_naming_it_and_the_known_ones() {
    let w = checkpoint(
        &[("backbone.0.weight", &[4])],
        &[("family", "nosuchfamily")],
    );
    let err = load_net(CpuBackend::new(1).unwrap(), &w, &NetOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, LoadNetError::UnknownFamily { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("nosuchfamily") && text.contains("vit"),
        "{text}"
    );
}

#[test]
fn a_checkpoint_of_no_known_family_says_what_it_holds_and_what_to_write() {
    let w = checkpoint(&[("encoder.layer.0.weight", &[4])], &[]);
    let err = detect_family(&w).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("encoder.layer.0.weight") && text.contains("`family`"),
        "{text}"
    );
}

#[test]
fn a_vit_whose_weights_are_wrong_is_refused_through_the_loader_with_the_tensor_named() {
    // The names say ViT, the shapes cannot form one.
    let w = checkpoint(
        &[
            ("patch_embed.proj.weight", &[8, 3, 4, 4]),
            ("blocks.0.attn.qkv.weight", &[24, 8]),
        ],
        &[],
    );
    let err = load_net(CpuBackend::new(1).unwrap(), &w, &NetOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, LoadNetError::Family(_)), "{err:?}");
    assert!(err.to_string().contains("pos_embed"), "{err}");
}
