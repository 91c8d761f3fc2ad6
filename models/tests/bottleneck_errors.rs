//! Bad bottleneck checkpoints are refused with errors that name the tensor, and a
//! split model refuses split points and metadata that do not fit. Every case edits the
//! parity fixture (`tests/data/bottleneck_fixture.safetensors`) in memory.

use std::collections::HashMap;
use std::path::PathBuf;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::bottleneck::{Bottleneck, BottleneckLoadError};
use splitstream_models::split::SplitMetadata;
use splitstream_models::vit::VitOptions;
use splitstream_models::vit::{SplitLoadError, SplitModel};
use splitstream_models::weights::Weights;
use splitstream_models::Backend;

/// One tensor of a file: name, shape, f32 values.
type Entry = (String, Vec<usize>, Vec<f32>);

fn fixture() -> (Vec<Entry>, HashMap<String, String>) {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bottleneck_fixture.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut entries: Vec<Entry> = st
        .iter()
        .map(|(name, v)| {
            let data = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name.to_string(), v.shape().to_vec(), data)
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    (entries, metadata)
}

/// The fixture's ViT and token bottleneck only (no `fixture.*`, no other bottlenecks),
/// edited by `edit`, as weights.
fn split_file(edit: impl FnOnce(&mut Vec<Entry>)) -> Weights {
    let (mut entries, metadata) = fixture();
    entries.retain(|(n, _, _)| {
        !n.starts_with("fixture.") && !n.starts_with("linear_") && !n.starts_with("conv_")
    });
    edit(&mut entries);
    to_weights(&entries, metadata)
}

/// Only the tensors under `prefix`, edited by `edit`.
fn bottleneck_file(prefix: &str, edit: impl FnOnce(&mut Vec<Entry>)) -> Weights {
    let (mut entries, metadata) = fixture();
    let dotted = format!("{prefix}.");
    entries.retain(|(n, _, _)| n.starts_with(&dotted));
    edit(&mut entries);
    to_weights(&entries, metadata)
}

fn to_weights(entries: &[Entry], metadata: HashMap<String, String>) -> Weights {
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = entries
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = raw
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
    Weights::from_bytes(bytes, "edited fixture").unwrap()
}

fn remove(entries: &mut Vec<Entry>, name: &str) {
    let before = entries.len();
    entries.retain(|(n, _, _)| n != name);
    assert_eq!(entries.len(), before - 1, "{name} not in the fixture");
}

fn reshape(entries: &mut [Entry], name: &str, shape: Vec<usize>) {
    let entry = entries.iter_mut().find(|(n, _, _)| n == name).unwrap();
    let numel = shape.iter().product();
    entry.2.resize(numel, 0.5);
    entry.1 = shape;
}

fn add(entries: &mut Vec<Entry>, name: &str, shape: Vec<usize>) {
    let numel = shape.iter().product();
    entries.push((name.to_string(), shape, vec![0.25; numel]));
}

fn load(
    weights: &Weights,
    prefix: &str,
) -> Result<Option<Bottleneck<CpuBackend>>, BottleneckLoadError> {
    Bottleneck::load(&CpuBackend::new(1).unwrap(), weights, prefix)
}

fn load_split(
    weights: &Weights,
    point: Option<usize>,
) -> Result<SplitModel<CpuBackend>, SplitLoadError> {
    let metadata = SplitMetadata {
        split: Some(1),
        rank: Some(8),
        num_heads: Some(2),
    };
    SplitModel::load_with_metadata(
        CpuBackend::new(1).unwrap(),
        weights,
        &VitOptions::default(),
        point,
        &metadata,
    )
}

fn message<T>(r: Result<T, impl std::fmt::Display>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_encoder_bias_is_an_error_naming_it() {
    let w = split_file(|e| remove(e, "bottleneck.encoder.bias"));
    let m = message(load_split(&w, None));
    assert!(m.contains("no tensor bottleneck.encoder.bias"), "{m}");
}

#[test]
fn missing_mlp_half_is_an_error_naming_it() {
    let w = split_file(|e| remove(e, "bottleneck.decoder.fc2.weight"));
    let m = message(load_split(&w, None));
    assert!(m.contains("bottleneck.decoder.fc2.weight"), "{m}");
}

#[test]
fn token_bottleneck_without_a_decoder_names_both_decoder_forms() {
    let w = bottleneck_file("linear_bottleneck", |e| {
        remove(e, "linear_bottleneck.decoder.weight");
        remove(e, "linear_bottleneck.decoder.bias");
    });
    let m = message(load(&w, "linear_bottleneck"));
    assert!(
        m.contains("linear_bottleneck.decoder.weight") && m.contains("fc1"),
        "{m}"
    );
}

#[test]
fn mis_shaped_decoder_weight_is_an_error_naming_it_and_its_shape() {
    let w = split_file(|e| reshape(e, "bottleneck.decoder.fc2.weight", vec![32, 63]));
    let m = message(load_split(&w, None));
    assert!(
        m.contains("bottleneck.decoder.fc2.weight") && m.contains("[32, 63]"),
        "{m}"
    );
    assert!(m.contains("[32, 64]"), "{m}");
}

#[test]
fn encoder_of_another_width_than_the_vit_is_refused() {
    let w = split_file(|e| {
        reshape(e, "bottleneck.encoder.weight", vec![8, 16]);
        reshape(e, "bottleneck.decoder.fc2.weight", vec![16, 64]);
        reshape(e, "bottleneck.decoder.fc2.bias", vec![16]);
    });
    let m = message(load_split(&w, None));
    assert!(m.contains("16 channels") && m.contains("32"), "{m}");
}

#[test]
fn unexpected_tensor_under_the_prefix_is_an_error_naming_it() {
    let w = split_file(|e| add(e, "bottleneck.decoder.norm.weight", vec![32]));
    let m = message(load_split(&w, None));
    assert!(m.contains("bottleneck.decoder.norm.weight"), "{m}");
    // Both decoder forms at once: the linear one is left over.
    let w = split_file(|e| {
        add(e, "bottleneck.decoder.weight", vec![32, 8]);
        add(e, "bottleneck.decoder.bias", vec![32]);
    });
    let m = message(load_split(&w, None));
    assert!(m.contains("bottleneck.decoder.weight"), "{m}");
}

#[test]
fn tensors_under_the_prefix_without_an_encoder_are_an_error() {
    let w = bottleneck_file("linear_bottleneck", |e| {
        remove(e, "linear_bottleneck.encoder.weight");
    });
    let m = message(load(&w, "linear_bottleneck"));
    assert!(m.contains("linear_bottleneck.encoder.weight"), "{m}");
}

#[test]
fn no_tensors_under_the_prefix_is_no_bottleneck() {
    let w = bottleneck_file("conv_bottleneck", |_| {});
    assert!(load(&w, "bottleneck").unwrap().is_none());
    assert!(load(&w, "conv_bottleneck").unwrap().is_some());
}

#[test]
fn conv_layer_at_an_odd_index_is_unexpected() {
    let w = bottleneck_file("conv_bottleneck", |e| {
        add(e, "conv_bottleneck.encoder.1.weight", vec![12])
    });
    let m = message(load(&w, "conv_bottleneck"));
    assert!(
        m.contains("conv_bottleneck.encoder.1.weight") && m.contains("even"),
        "{m}"
    );
}

#[test]
fn conv_decoder_that_does_not_undo_the_encoder_is_refused() {
    // Without its last two layers the decoder ends at 16 channels but upsamples once
    // less than the encoder downsamples... keep the channels, drop one upsampling.
    let w = bottleneck_file("conv_bottleneck", |e| {
        remove(e, "conv_bottleneck.decoder.4.weight");
        remove(e, "conv_bottleneck.decoder.4.bias");
        remove(e, "conv_bottleneck.decoder.2.weight");
        remove(e, "conv_bottleneck.decoder.2.bias");
    });
    let m = message(load(&w, "conv_bottleneck"));
    assert!(
        m.contains("2 stride-2 transposed convolution(s)") && m.contains("it has 1"),
        "{m}"
    );
}

#[test]
fn conv_encoder_with_an_even_kernel_is_refused() {
    let w = bottleneck_file("conv_bottleneck", |e| {
        reshape(e, "conv_bottleneck.encoder.0.weight", vec![12, 16, 2, 2])
    });
    let m = message(load(&w, "conv_bottleneck"));
    assert!(
        m.contains("conv_bottleneck.encoder.0.weight") && m.contains("k odd"),
        "{m}"
    );
}

#[test]
fn conv_input_whose_sides_do_not_divide_is_an_error_not_a_panic() {
    let w = bottleneck_file("conv_bottleneck", |_| {});
    let be = CpuBackend::new(1).unwrap();
    let b = Bottleneck::load(&be, &w, "conv_bottleneck")
        .unwrap()
        .unwrap();
    let x = be
        .upload(&splitstream_models::HostTensor::zeros([1, 16, 6, 6]).unwrap())
        .unwrap();
    let m = message(b.encode(&x));
    assert!(m.contains("multiples of 4"), "{m}");
    let code = be
        .upload(&splitstream_models::HostTensor::zeros([1, 5, 2, 2]).unwrap())
        .unwrap();
    assert!(b.decode(&code).is_err());
}

#[test]
fn split_point_other_than_the_bottlenecks_is_refused() {
    let w = split_file(|_| {});
    let m = message(load_split(&w, Some(2)));
    assert!(m.contains("made for split point 1"), "{m}");
    let w = split_file(|_| {});
    assert_eq!(load_split(&w, Some(1)).unwrap().point(), 1);
}

#[test]
fn split_point_past_the_last_block_is_refused() {
    let w = split_file(|e| e.retain(|(n, _, _)| !n.starts_with("bottleneck.")));
    let m = message(load_split(&w, Some(3)));
    assert!(
        m.contains("split point 3 does not exist") && m.contains("0..=2"),
        "{m}"
    );
}

#[test]
fn rank_in_metadata_must_match_the_encoder() {
    let w = split_file(|_| {});
    let metadata = SplitMetadata {
        split: Some(1),
        rank: Some(4),
        num_heads: Some(2),
    };
    let m = message(SplitModel::load_with_metadata(
        CpuBackend::new(1).unwrap(),
        &w,
        &VitOptions::default(),
        None,
        &metadata,
    ));
    assert!(m.contains("rank 4") && m.contains("8 outputs"), "{m}");
}

#[test]
fn split_model_reads_split_and_heads_from_file_metadata() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/bottleneck_fixture.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let meta = SplitMetadata::from_safetensors(&bytes).unwrap();
    assert_eq!(
        meta,
        SplitMetadata {
            split: Some(1),
            rank: Some(8),
            num_heads: Some(2)
        }
    );
    assert!(SplitMetadata::from_safetensors(&bytes[..20]).is_err());
    // Weights carry their metadata: load takes the point and heads from it.
    let w = split_file(|_| {});
    let model = SplitModel::load(
        CpuBackend::new(1).unwrap(),
        &w,
        &VitOptions::default(),
        None,
    );
    assert_eq!(model.unwrap().point(), 1);
    // Without metadata or a point, a split model cannot be placed.
    let (mut entries, _) = fixture();
    entries.retain(|(n, _, _)| {
        !n.starts_with("fixture.") && !n.starts_with("linear_") && !n.starts_with("conv_")
    });
    let w = to_weights(&entries, HashMap::new());
    let options = VitOptions {
        num_heads: Some(2),
        ..Default::default()
    };
    let m = message(SplitModel::load(
        CpuBackend::new(1).unwrap(),
        &w,
        &options,
        None,
    ));
    assert!(m.contains("no split point"), "{m}");
}
