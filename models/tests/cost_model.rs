//! The cost model: FLOP and byte counts of known ops, the counting backend on a real
//! model, profile files (round trip, clear refusals, the hand-written ones), and the
//! prediction's shape (monotone in size, DVFS as designed). All fast.

use std::path::PathBuf;

use splitstream_models::backend::cpu::CpuBackend;
use splitstream_models::backend::{Activation, Backend};
use splitstream_models::cost::probe;
use splitstream_models::cost::{
    segment_of, CostModel, Counting, OpCost, OpKind, Profile, ProfileError, Target,
};
use splitstream_models::net::{load_net, NetOptions};
use splitstream_models::synthetic::{seeded_vit_safetensors, DEMO_VIT};
use splitstream_models::weights::Weights;
use splitstream_models::HostTensor;

fn profiles_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/profiles")
}

fn pi4() -> Profile {
    Profile::load(profiles_dir().join("raspberry_pi4.toml")).expect("the Pi 4 profile loads")
}

#[test]
fn gemm_flops_are_exact() {
    // linear: [B, M, K] x [N, K]^T -> 2 * B * M * N * K, weight N * K (+ N bias)
    let c = OpCost::linear(&[2, 7, 5], 5, 3, true, Activation::Gelu);
    assert_eq!(c.kind, OpKind::Linear);
    assert_eq!(c.flops, 2 * 2 * 7 * 3 * 5);
    assert_eq!(c.weight_bytes, (3 * 5 + 3) * 4);
    assert_eq!(c.in_bytes, 2 * 7 * 5 * 4);
    assert_eq!(c.out_bytes, 2 * 7 * 3 * 4);
    // matmul: [4, M, K] x [4, K, N]
    let c = OpCost::matmul(&[4, 6, 9], &[4, 9, 11], &[4, 6, 11]);
    assert_eq!(c.flops, 2 * 4 * 6 * 11 * 9);
    assert_eq!(c.weight_bytes, 0);
    assert_eq!(c.in_bytes, (4 * 6 * 9 + 4 * 9 * 11) * 4);
    // conv: [1, 8, 10, 10] -> [1, 16, 5, 5], 3x3 kernel, dense
    let c = OpCost::conv2d(&[1, 8, 10, 10], &[1, 16, 5, 5], [16, 8, 3, 3], false);
    assert_eq!(c.kind, OpKind::Conv2d);
    assert_eq!(c.flops, 2 * 25 * 16 * 8 * 9);
    assert_eq!(c.weight_bytes, 16 * 8 * 9 * 4);
    // depthwise: one input channel per group
    let c = OpCost::conv2d(&[1, 16, 10, 10], &[1, 16, 10, 10], [16, 1, 3, 3], true);
    assert_eq!(c.kind, OpKind::DepthwiseConv2d);
    assert_eq!(c.flops, 2 * 100 * 16 * 9);
    assert_eq!(c.weight_bytes, (16 * 9 + 16) * 4);
    // fused attention on qkv [B, N, 3D] with H heads: 4 B N^2 D + 5 B H N^2
    let c = OpCost::attention(&[2, 10, 3 * 12], 3);
    assert_eq!(c.flops, 4 * 2 * 100 * 12 + 5 * 2 * 3 * 100);
    assert_eq!(c.out_bytes, 2 * 10 * 12 * 4);
}

#[test]
fn causal_attention_counts_the_triangle() {
    // 4 queries from position 0, causal: 1 + 2 + 3 + 4 = 10 visible keys per head.
    let be = Counting::new(CpuBackend::new(1).expect("cpu"), false);
    let q = be
        .upload(&HostTensor::new([1, 4, 2, 8], vec![0.1; 64]).expect("q"))
        .expect("up");
    let k = be
        .upload(&HostTensor::new([1, 6, 1, 8], vec![0.2; 48]).expect("k"))
        .expect("up");
    be.take();
    let spec = splitstream_models::backend::AttentionSpec {
        scale: 0.5,
        kv_len: 4,
        causal: Some(0),
    };
    be.attention_gqa(&q, &k, &k, spec).expect("runs");
    let log = be.take();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].cost.kind, OpKind::AttentionGqa);
    assert_eq!(log[0].cost.flops, 2 * 10 * (4 * 8 + 5));
    // Only the kv_len keys and values taking part are read.
    assert_eq!(log[0].cost.in_bytes, (4 * 2 * 8 + 2 * 4 * 8) * 4);
}

#[test]
fn the_counting_backend_records_real_calls_and_changes_no_result() {
    let plain = CpuBackend::new(1).expect("cpu");
    let be = Counting::new(plain.clone(), true);
    let w = HostTensor::new([3, 4], (0..12).map(|i| i as f32 * 0.1).collect()).expect("w");
    let x = HostTensor::new([2, 4], (0..8).map(|i| i as f32).collect()).expect("x");
    let layer = be.prepare_linear(&w, None).expect("prepare");
    let xd = be.upload(&x).expect("up");
    let y = be.linear(&xd, &layer, Activation::Relu).expect("linear");
    let y = be.readback(&y).expect("readback");
    let log = be.take();
    let kinds: Vec<OpKind> = log.iter().map(|r| r.cost.kind).collect();
    assert_eq!(kinds, [OpKind::Upload, OpKind::Linear, OpKind::Readback]);
    assert_eq!(
        log[1].cost,
        OpCost::linear(&[2, 4], 4, 3, false, Activation::Relu)
    );
    assert!(log.iter().all(|r| r.seconds.is_some_and(|s| s >= 0.0)));
    assert!(be.take().is_empty(), "take empties the log");
    // The same numbers as the plain backend.
    let pl = plain.prepare_linear(&w, None).expect("prepare");
    let want = plain
        .readback(
            &plain
                .linear(&plain.upload(&x).expect("up"), &pl, Activation::Relu)
                .expect("linear"),
        )
        .expect("readback");
    assert_eq!(y.data(), want.data());
}

#[test]
fn a_whole_vit_counts_its_gemms_exactly() {
    let spec = DEMO_VIT;
    let weights =
        Weights::from_bytes(seeded_vit_safetensors(&spec, 3), "synthetic").expect("weights");
    let be = Counting::new(CpuBackend::new(1).expect("cpu"), false);
    let net = load_net(be.clone(), &weights, &NetOptions::default()).expect("loads");
    be.take();
    let s = spec.image_size;
    let x = HostTensor::new([1, 3, s, s], vec![0.5; 3 * s * s]).expect("x");
    net.forward(&x, None).expect("forward");
    let log = be.take();
    let gemm: u64 = log
        .iter()
        .filter(|r| r.cost.kind.is_gemm())
        .map(|r| r.cost.flops)
        .sum();
    let (d, p) = (spec.embed_dim as u64, spec.patch_size as u64);
    let patches = (s as u64 / p).pow(2);
    let n = patches + 1;
    let h = spec.num_heads as u64;
    let embed = 2 * patches * d * 3 * p * p;
    let block = 2 * n * d * 3 * d // qkv
        + 4 * n * n * d + 5 * h * n * n // attention
        + 2 * n * d * d // proj
        + 2 * 2 * n * d * 4 * d; // fc1, fc2
    let head = 2 * d * spec.num_classes as u64;
    assert_eq!(gemm, embed + spec.depth as u64 * block + head);
    // Split points group the ops: the head at each point is a prefix of the pass.
    let points: Vec<String> = net.split_points().iter().map(|p| p.name.clone()).collect();
    let mut bounds = Vec::new();
    for p in &points {
        net.head(&x, p, None).expect("head");
        bounds.push(
            be.take()
                .iter()
                .filter(|r| !r.cost.kind.is_transfer())
                .count(),
        );
    }
    assert!(bounds.windows(2).all(|w| w[0] <= w[1]), "{bounds:?}");
    let costs: Vec<OpCost> = log.iter().map(|r| r.cost).collect();
    let seg = segment_of(&costs, &bounds);
    let last = seg.iter().flatten().max().copied();
    assert_eq!(
        last,
        Some(points.len()),
        "the tail after the last point is a segment"
    );
    assert!(seg
        .iter()
        .zip(&costs)
        .all(|(s, c)| s.is_none() == c.kind.is_transfer()));
}

#[test]
fn profiles_round_trip_through_toml() {
    for name in [
        "raspberry_pi4.toml",
        "jetson_orin_nano.toml",
        "snapdragon865_a77.toml",
    ] {
        let p = Profile::load(profiles_dir().join(name)).expect(name);
        let again = Profile::from_toml(&p.to_toml().expect("writes")).expect("reads back");
        assert_eq!(p, again, "{name}");
        assert!(p.backend.cpu.is_some(), "{name} has a CPU fit");
        assert!(!p.machine.source.is_empty());
    }
}

fn refusal(text: &str) -> String {
    match Profile::from_toml(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_profiles_are_refused_with_the_reason() {
    let good = pi4().to_toml().expect("toml");
    assert!(refusal("not = [toml").contains("not valid"));
    let e = refusal(&good.replace("[machine]", "[machine]\nwheels = 4"));
    assert!(e.contains("wheels"), "{e}");
    let e = refusal(&good.replace("level = \"DRAM\"", "level = \"L4\""));
    assert!(e.contains("last memory level must be DRAM"), "{e}");
    let e = refusal(&good.replace("gflops = 12.0", "gflops = -1.0"));
    assert!(e.contains("gflops must be a positive number"), "{e}");
    let e = refusal(&good.replace("size_bytes = 1048576", "size_bytes = 1024"));
    assert!(e.contains("not larger than the one inside it"), "{e}");
    let e = refusal(&good.replace("isa = \"neon\"\ngemm", "isa = \"sve\"\ngemm"));
    assert!(e.contains("\"sve\" has no [[compute]] row"), "{e}");
    let e = refusal(&good.replace("cores = 4", "cores = 0"));
    assert!(e.contains("cores must be at least 1"), "{e}");

    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("none.toml");
    assert!(matches!(
        Profile::load(&missing),
        Err(ProfileError::Io { .. })
    ));
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).expect("write");
    assert!(matches!(
        Profile::load(&big),
        Err(ProfileError::TooLarge { .. })
    ));
    let named = dir.path().join("bad.toml");
    std::fs::write(&named, "x = ").expect("write");
    let e = Profile::load(&named).expect_err("bad").to_string();
    assert!(e.contains("bad.toml"), "the error names the file: {e}");
}

#[test]
fn predictions_grow_with_size_and_follow_the_clock() {
    for name in [
        "raspberry_pi4.toml",
        "jetson_orin_nano.toml",
        "snapdragon865_a77.toml",
    ] {
        let p = Profile::load(profiles_dir().join(name)).expect(name);
        let cores = p.machine.cores;
        let cm = CostModel::new(&p, Target::Cpu { threads: cores }).expect("model");
        // Monotone in size: linear layers and adds growing from L1 to DRAM. (Adds on
        // one thread: on several, the step where the backend goes parallel at
        // `parallel_min_elems` is a real drop, not monotone by design.)
        let one = CostModel::new(&p, Target::Cpu { threads: 1 }).expect("model");
        let mut prev = (0.0, 0.0);
        for rows in [1usize, 4, 16, 64, 256, 1024, 4096, 16384] {
            let lin = OpCost::linear(&[rows, 256], 256, 256, true, Activation::Identity);
            let add = OpCost::elementwise(
                OpKind::Binary,
                &[&[rows, 256], &[rows, 256]],
                &[rows, 256],
                1,
            );
            let t = (
                cm.predict_op(&lin, lin.weight_bytes).seconds,
                one.predict_op(&add, 0).seconds,
            );
            assert!(
                t.0 > prev.0 && t.1 > prev.1,
                "{name}: {rows} rows {t:?} after {prev:?}"
            );
            prev = t;
        }
        // DVFS: a compute-bound op scales with 1/f (and so does the overhead)...
        let f0 = p.machine.freq_mhz;
        let slow = CostModel::new(&p, Target::Cpu { threads: cores })
            .expect("model")
            .at_frequency(f0 / 2.0)
            .expect("clock");
        let big = OpCost::linear(&[512, 1024], 1024, 1024, false, Activation::Identity);
        let (a, b) = (
            cm.predict_op(&big, big.weight_bytes),
            slow.predict_op(&big, big.weight_bytes),
        );
        assert!(
            a.compute_s > a.memory_s,
            "{name}: the big linear is compute bound"
        );
        assert!(
            (b.seconds / a.seconds - 2.0).abs() < 1e-9,
            "{name}: {a:?} {b:?}"
        );
        // ...while a DRAM-bound op's memory term does not move.
        let huge = OpCost::elementwise(OpKind::Binary, &[&[1 << 24], &[1 << 24]], &[1 << 24], 1);
        let (a, b) = (cm.predict_op(&huge, 0), slow.predict_op(&huge, 0));
        assert_eq!(a.act_level, p.memory.len() - 1, "{name}: from DRAM");
        assert!((a.memory_s - b.memory_s).abs() < 1e-15, "{name}");
        assert!(
            b.seconds < 1.1 * a.seconds,
            "{name}: DRAM-bound barely slows"
        );
        assert!(CostModel::new(&p, Target::Cpu { threads: 1 })
            .expect("m")
            .at_frequency(0.0)
            .is_err());
    }
}

#[test]
fn a_slower_machine_predicts_slower() {
    // The same pass on the Pi 4 and on the Orin Nano's CPU (twice the FMA width,
    // more cores, more bandwidth): the Pi must be the slower.
    let orin = Profile::load(profiles_dir().join("jetson_orin_nano.toml")).expect("orin");
    let pi = pi4();
    let ops = [
        OpCost::linear(&[197, 192], 192, 576, true, Activation::Identity),
        OpCost::attention(&[1, 197, 576], 3),
        OpCost::elementwise(OpKind::LayerNorm, &[&[1, 197, 192]], &[1, 197, 192], 8),
    ];
    let t = |p: &Profile| -> f64 {
        CostModel::new(p, Target::Cpu { threads: 4 })
            .expect("model")
            .predict(&ops)
            .iter()
            .map(|o| o.seconds)
            .sum()
    };
    assert!(t(&pi) > 1.5 * t(&orin), "pi {} orin {}", t(&pi), t(&orin));
    assert!(
        CostModel::new(&pi, Target::Wgpu).is_err(),
        "no wgpu fit in a CPU profile"
    );
}

#[test]
fn probes_read_sysfs_and_measure_something() {
    assert_eq!(probe::parse_size("48K"), Some(48 << 10));
    assert_eq!(probe::parse_size("32M"), Some(32 << 20));
    assert_eq!(probe::parse_size("512"), Some(512));
    assert_eq!(probe::parse_size("lots"), None);
    let dir = tempfile::tempdir().expect("tmp");
    for (i, level, kind, size, shared) in [
        (0, "1", "Data", "32K", "0"),
        (1, "1", "Instruction", "48K", "0"),
        (2, "2", "Unified", "1024K", "0-3"),
    ] {
        let d = dir.path().join(format!("index{i}"));
        std::fs::create_dir(&d).expect("dir");
        for (f, v) in [
            ("level", level),
            ("type", kind),
            ("size", size),
            ("shared_cpu_list", shared),
        ] {
            std::fs::write(d.join(f), format!("{v}\n")).expect("write");
        }
    }
    let levels = probe::cache_levels_in(dir.path());
    assert_eq!(levels.len(), 2, "{levels:?}");
    assert_eq!(
        (levels[0].level, levels[0].size_bytes, levels[0].per_core),
        (1, 32 << 10, true)
    );
    assert_eq!(
        (levels[1].level, levels[1].size_bytes, levels[1].per_core),
        (2, 1 << 20, false)
    );
    let short = std::time::Duration::from_millis(5);
    for isa in probe::ProbeIsa::available() {
        assert!(probe::peak_gflops(isa, 1, short, 1) > 0.0);
    }
    assert!(probe::read_bandwidth(16 << 10, 1, short, 1) > 0.0);
    assert!(probe::latency_ns(16 << 10, short) > 0.0);
}
