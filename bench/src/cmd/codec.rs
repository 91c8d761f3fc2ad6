//! `splitstream-bench codec`: bytes, error and single-core speed of every codec scheme
//! on real DeiT-Tiny tokens (several split points, two photos) and synthetic binary
//! spikes, side by side in the same run with zstd on the raw f32 bytes and with JPEG
//! of the 224x224 input frame (the "send the frame" baseline).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use splitstream_codec::{Bits, CodecParams, Decoder, Encoder, Entropy, Scheme, Tensor, TensorView};

use crate::stats::median;

/// Arguments of `splitstream-bench codec`.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  splitstream-bench codec\n  splitstream-bench codec --json --runs 31\n  splitstream-bench codec --reference /data/shared/reference"
)]
pub(crate) struct Args {
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Directory with deit_tiny_patch16_224.expected.safetensors, astronaut.png and
    /// chelsea.png [default: $SPLITSTREAM_SHARED/reference, else ../shared/reference
    /// beside the workspace].
    #[arg(long, value_name = "DIR")]
    reference: Option<PathBuf>,
    /// Timed samples per measurement; the median is reported.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Token tensors after these stages (embed, block0..block11).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "embed,block0,block5,block11"
    )]
    splits: Vec<String>,
}

const PHOTOS: [&str; 2] = ["astronaut", "chelsea"];
const ZSTD1: Entropy = Entropy::Zstd { level: 1 };

#[derive(Serialize)]
struct Row {
    /// What was encoded: `astronaut/block5`, `spikes`, `astronaut/image`.
    tensor: String,
    /// The scheme or peer.
    scheme: String,
    /// Whether this row is a peer (zstd on raw f32, JPEG) rather than the codec.
    peer: bool,
    /// Encoded bytes.
    bytes: usize,
    /// Raw f32 bytes of the tensor divided by `bytes`.
    ratio: f64,
    /// Largest absolute error (None where not comparable, e.g. JPEG pixels).
    max_abs_err: Option<f64>,
    /// Mean absolute error.
    mean_abs_err: Option<f64>,
    /// Encode speed, MB (1e6 bytes) of f32 input per second of thread CPU time,
    /// median over runs.
    encode_mb_s: f64,
    /// Decode speed, MB of f32 output per second of thread CPU time, median over runs.
    decode_mb_s: f64,
    /// Encode speed by wall-clock time (includes waiting for the core on a busy machine).
    encode_wall_mb_s: f64,
    /// Decode speed by wall-clock time.
    decode_wall_mb_s: f64,
}

#[derive(Serialize)]
struct SpeedCheck {
    tensor: String,
    shape: Vec<usize>,
    codec_encode_gb_s: f64,
    codec_decode_gb_s: f64,
    zstd1_raw_compress_gb_s: f64,
    zstd1_raw_decompress_gb_s: f64,
    /// codec speed / raw zstd speed (>= 0.5 means "within 2x of raw zstd").
    encode_vs_zstd: f64,
    decode_vs_zstd: f64,
    meets_1_gb_s: bool,
    within_2x_of_zstd: bool,
}

#[derive(Serialize)]
struct Report {
    reference: String,
    runs: usize,
    rows: Vec<Row>,
    speed_check: Vec<SpeedCheck>,
}

pub(crate) fn run(args: Args) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = reference_dir(args.reference.as_deref())?;
    let file = dir.join("deit_tiny_patch16_224.expected.safetensors");
    let bytes = std::fs::read(&file).with_context(|| {
        format!(
            "cannot read {}: pass --reference DIR or set SPLITSTREAM_SHARED",
            file.display()
        )
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a safetensors file", file.display()))?;

    let mut rows = Vec::new();
    let mut checks = Vec::new();
    for split in &args.splits {
        let name = format!("tokens.{split}");
        let t = st.tensor(&name).with_context(|| {
            format!(
                "{} has no tensor {name}: splits are embed, block0..block11",
                file.display()
            )
        })?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 3 || t.shape()[0] != 2 {
            bail!(
                "{name} is {:?} {:?}, expected F32 [2, N, D]",
                t.dtype(),
                t.shape()
            );
        }
        let (n, d) = (t.shape()[1], t.shape()[2]);
        let all: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        for (i, photo) in PHOTOS.iter().enumerate() {
            let data = &all[i * n * d..(i + 1) * n * d];
            let shape = [1, n, d];
            let label = format!("{photo}/{split}");
            let first = rows.len();
            token_rows(&label, &shape, data, args.runs, &mut rows)?;
            checks.push(speed_check(&label, &shape, &rows[first..]));
        }
    }
    spike_rows(args.runs, &mut rows)?;
    for photo in PHOTOS {
        jpeg_rows(&dir, photo, args.runs, &mut rows)?;
    }

    let report = Report {
        reference: dir.display().to_string(),
        runs: args.runs,
        rows,
        speed_check: checks,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// `--reference`, else `$SPLITSTREAM_SHARED/reference`, else `../shared/reference`
/// relative to the workspace root.
fn reference_dir(flag: Option<&Path>) -> Result<PathBuf> {
    let dir = match (flag, std::env::var_os("SPLITSTREAM_SHARED")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(shared)) => PathBuf::from(shared).join("reference"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    if !dir.is_dir() {
        bail!(
            "reference directory {} not found: pass --reference DIR or set SPLITSTREAM_SHARED",
            dir.display()
        );
    }
    Ok(dir)
}

/// Seconds of CPU time this thread has used. The bench machine may be shared, and
/// wall-clock time then counts other processes' turns on the core; thread CPU time
/// counts only ours, which is what "MB/s on one core" means.
fn thread_cpu_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Median seconds per call of `f` as (thread CPU time, wall time), over `runs`
/// samples of enough calls to take ~2 ms each.
fn median_secs(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let iters = ((2e-3 / once).ceil() as usize).clamp(1, 1000);
    let mut cpu = Vec::with_capacity(runs);
    let mut wall = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (c, t) = (thread_cpu_secs(), Instant::now());
        for _ in 0..iters {
            f();
        }
        wall.push(t.elapsed().as_secs_f64() / iters as f64);
        cpu.push((thread_cpu_secs() - c) / iters as f64);
    }
    (
        median(&cpu).unwrap_or(f64::NAN),
        median(&wall).unwrap_or(f64::NAN),
    )
}

fn mb_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn errors(original: &[f32], decoded: &Tensor) -> (f64, f64) {
    let back = decoded.to_f32();
    let mut max = 0f64;
    let mut sum = 0f64;
    for (a, b) in original.iter().zip(&back) {
        let e = f64::from((a - b).abs());
        max = max.max(e);
        sum += e;
    }
    (max, sum / original.len().max(1) as f64)
}

/// One codec row: encode and decode timed with a reused Encoder/Decoder.
fn codec_row(
    label: &str,
    scheme: &str,
    shape: &[usize],
    data: &[f32],
    params: CodecParams,
    runs: usize,
) -> Result<Row> {
    let view = TensorView::f32(shape, data)?;
    let mut enc = Encoder::new();
    let mut frame = Vec::new();
    enc.encode_into(&view, &params, &mut frame)?;
    let (enc_s, enc_w) = median_secs(runs, || {
        let _ = enc.encode_into(&view, &params, &mut frame);
    });
    let mut dec = Decoder::new();
    let mut out = Tensor::default();
    dec.decode_into(&frame, &mut out)?;
    let (dec_s, dec_w) = median_secs(runs, || {
        let _ = dec.decode_into(&frame, &mut out);
    });
    let (max, mean) = errors(data, &out);
    Ok(Row {
        tensor: label.into(),
        scheme: scheme.into(),
        peer: false,
        bytes: frame.len(),
        ratio: (data.len() * 4) as f64 / frame.len() as f64,
        max_abs_err: Some(max),
        mean_abs_err: Some(mean),
        encode_mb_s: mb_s(data.len() * 4, enc_s),
        decode_mb_s: mb_s(data.len() * 4, dec_s),
        encode_wall_mb_s: mb_s(data.len() * 4, enc_w),
        decode_wall_mb_s: mb_s(data.len() * 4, dec_w),
    })
}

/// Rows for f16/bf16: the cast from f32 is part of the timed encode.
fn cast_row(label: &str, shape: &[usize], data: &[f32], bf16: bool, runs: usize) -> Result<Row> {
    let params = CodecParams::LOSSLESS.with_entropy(ZSTD1);
    let mut enc = Encoder::new();
    let mut frame = Vec::new();
    let mut h = Vec::new();
    let mut b = Vec::new();
    let mut encode = |frame: &mut Vec<u8>| -> Result<()> {
        if bf16 {
            b.clear();
            b.extend(data.iter().map(|&v| half::bf16::from_f32(v)));
            enc.encode_into(&TensorView::bf16(shape, &b)?, &params, frame)?;
        } else {
            h.clear();
            h.extend(data.iter().map(|&v| half::f16::from_f32(v)));
            enc.encode_into(&TensorView::f16(shape, &h)?, &params, frame)?;
        }
        Ok(())
    };
    encode(&mut frame)?;
    let (enc_s, enc_w) = median_secs(runs, || {
        let _ = encode(&mut frame);
    });
    let mut dec = Decoder::new();
    let mut out = Tensor::default();
    dec.decode_into(&frame, &mut out)?;
    let (dec_s, dec_w) = median_secs(runs, || {
        let _ = dec.decode_into(&frame, &mut out);
    });
    let (max, mean) = errors(data, &out);
    Ok(Row {
        tensor: label.into(),
        scheme: if bf16 {
            "bf16 cast+zstd1"
        } else {
            "f16 cast+zstd1"
        }
        .into(),
        peer: false,
        bytes: frame.len(),
        ratio: (data.len() * 4) as f64 / frame.len() as f64,
        max_abs_err: Some(max),
        mean_abs_err: Some(mean),
        encode_mb_s: mb_s(data.len() * 4, enc_s),
        decode_mb_s: mb_s(data.len() * 4, dec_s),
        encode_wall_mb_s: mb_s(data.len() * 4, enc_w),
        decode_wall_mb_s: mb_s(data.len() * 4, dec_w),
    })
}

/// Delta row: keyframe `key` is held by both sides; `next` is sent as a delta.
fn delta_row(
    label: &str,
    scheme: &str,
    shape: &[usize],
    key: &[f32],
    next: &[f32],
    runs: usize,
) -> Result<Row> {
    let mut enc = Encoder::new();
    let mut dec = Decoder::new();
    let mut frame = Vec::new();
    enc.encode_keyframe_into(
        &TensorView::f32(shape, key)?,
        &CodecParams::UINT8_ZSTD1,
        1,
        &mut frame,
    )?;
    dec.decode(&frame)?;
    let view = TensorView::f32(shape, next)?;
    enc.encode_delta_into(&view, 1, ZSTD1, &mut frame)?;
    let (enc_s, enc_w) = median_secs(runs, || {
        let _ = enc.encode_delta_into(&view, 1, ZSTD1, &mut frame);
    });
    let mut out = Tensor::default();
    dec.decode_into(&frame, &mut out)?;
    let (dec_s, dec_w) = median_secs(runs, || {
        let _ = dec.decode_into(&frame, &mut out);
    });
    let (max, mean) = errors(next, &out);
    Ok(Row {
        tensor: label.into(),
        scheme: scheme.into(),
        peer: false,
        bytes: frame.len(),
        ratio: (next.len() * 4) as f64 / frame.len() as f64,
        max_abs_err: Some(max),
        mean_abs_err: Some(mean),
        encode_mb_s: mb_s(next.len() * 4, enc_s),
        decode_mb_s: mb_s(next.len() * 4, dec_s),
        encode_wall_mb_s: mb_s(next.len() * 4, enc_w),
        decode_wall_mb_s: mb_s(next.len() * 4, dec_w),
    })
}

/// The peer: zstd on the raw little-endian f32 bytes, reused contexts.
fn zstd_row(label: &str, data: &[f32], level: i32, runs: usize) -> Result<Row> {
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut c = zstd::bulk::Compressor::new(level)?;
    let mut d = zstd::bulk::Decompressor::new()?;
    let mut packed = Vec::with_capacity(zstd::compress_bound(raw.len()));
    c.compress_to_buffer(&raw, &mut packed)?;
    let (enc_s, enc_w) = median_secs(runs, || {
        let _ = c.compress_to_buffer(&raw, &mut packed);
    });
    let mut back = Vec::with_capacity(raw.len());
    d.decompress_to_buffer(&packed, &mut back)?;
    if back != raw {
        bail!("zstd did not round-trip");
    }
    let (dec_s, dec_w) = median_secs(runs, || {
        let _ = d.decompress_to_buffer(&packed, &mut back);
    });
    Ok(Row {
        tensor: label.into(),
        scheme: format!("peer: zstd{level} raw f32"),
        peer: true,
        bytes: packed.len(),
        ratio: raw.len() as f64 / packed.len() as f64,
        max_abs_err: Some(0.0),
        mean_abs_err: Some(0.0),
        encode_mb_s: mb_s(raw.len(), enc_s),
        decode_mb_s: mb_s(raw.len(), dec_s),
        encode_wall_mb_s: mb_s(raw.len(), enc_w),
        decode_wall_mb_s: mb_s(raw.len(), dec_w),
    })
}

fn token_rows(
    label: &str,
    shape: &[usize],
    data: &[f32],
    runs: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let channel_axis = shape.len() - 1;
    let none = Entropy::None;
    let z3 = Entropy::Zstd { level: 3 };
    let schemes: Vec<(&str, CodecParams)> = vec![
        ("lossless f32", CodecParams::LOSSLESS),
        (
            "lossless f32+zstd1",
            CodecParams::LOSSLESS.with_entropy(ZSTD1),
        ),
        ("u8 tensor", CodecParams::affine(Bits::B8, none)),
        ("u8 tensor+zstd1", CodecParams::UINT8_ZSTD1),
        ("u8 tensor+zstd3", CodecParams::affine(Bits::B8, z3)),
        (
            "u8 channel+zstd1",
            CodecParams::affine_per_channel(Bits::B8, channel_axis, ZSTD1),
        ),
        ("u4 tensor+zstd1", CodecParams::affine(Bits::B4, ZSTD1)),
        (
            "u4 channel+zstd1",
            CodecParams::affine_per_channel(Bits::B4, channel_axis, ZSTD1),
        ),
        ("u2 tensor+zstd1", CodecParams::affine(Bits::B2, ZSTD1)),
        (
            "u2 channel+zstd1",
            CodecParams::affine_per_channel(Bits::B2, channel_axis, ZSTD1),
        ),
    ];
    for (name, params) in schemes {
        rows.push(codec_row(label, name, shape, data, params, runs)?);
    }
    rows.push(cast_row(label, shape, data, false, runs)?);
    rows.push(cast_row(label, shape, data, true, runs)?);
    // Temporal deltas. A static scene sends the same tokens again; the "moving"
    // case is synthetic (these are still photos): 20 of the tokens move by 10% of
    // the tensor's standard deviation, the rest stay.
    rows.push(delta_row(
        label,
        "u8 delta+zstd1 (static)",
        shape,
        data,
        data,
        runs,
    )?);
    let next = perturbed(data, shape);
    rows.push(delta_row(
        label,
        "u8 delta+zstd1 (20 tok moved)",
        shape,
        data,
        &next,
        runs,
    )?);
    rows.push(zstd_row(label, data, 1, runs)?);
    rows.push(zstd_row(label, data, 3, runs)?);
    Ok(())
}

fn perturbed(data: &[f32], shape: &[usize]) -> Vec<f32> {
    let d = shape.last().copied().unwrap_or(1).max(1);
    let tokens = data.len() / d;
    let mean = data.iter().map(|&v| f64::from(v)).sum::<f64>() / data.len().max(1) as f64;
    let var = data
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / data.len().max(1) as f64;
    let step = (0.1 * var.sqrt()) as f32;
    let mut next = data.to_vec();
    let mut state = 0x9E37_79B9u32;
    let mut rand = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    for _ in 0..20.min(tokens) {
        let t = rand() as usize % tokens;
        for v in &mut next[t * d..(t + 1) * d] {
            *v += if rand() % 2 == 0 { step } else { -step };
        }
    }
    next
}

/// Synthetic spikes: SpikePoint-like `[16 timesteps, 1024 points, 64 channels]`,
/// 10% firing rate, each neuron with its own rate so the pattern is not uniform noise.
fn spike_rows(runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    let shape = [16usize, 1024, 64];
    let n: usize = shape.iter().product();
    let mut state = 0x2545_F491u32;
    let mut rand = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let neurons = 1024 * 64;
    let rates: Vec<u32> = (0..neurons).map(|_| rand() % 200).collect(); // per mille, mean 10%
    let data: Vec<f32> = (0..n)
        .map(|i| f32::from(u8::from(rand() % 1000 < rates[i % neurons])))
        .collect();
    let label = "spikes[16,1024,64]";
    let binary = CodecParams {
        scheme: Scheme::Binary,
        entropy: Entropy::None,
    };
    rows.push(codec_row(
        label,
        "binary 1-bit",
        &shape,
        &data,
        binary,
        runs,
    )?);
    rows.push(codec_row(
        label,
        "binary 1-bit+zstd1",
        &shape,
        &data,
        binary.with_entropy(ZSTD1),
        runs,
    )?);
    rows.push(codec_row(
        label,
        "lossless f32+zstd1",
        &shape,
        &data,
        CodecParams::LOSSLESS.with_entropy(ZSTD1),
        runs,
    )?);
    rows.push(zstd_row(label, &data, 1, runs)?);
    rows.push(zstd_row(label, &data, 3, runs)?);
    Ok(())
}

/// JPEG of the 224x224 model input: resize the shorter side to 248 (bicubic), centre
/// crop 224, as timm's DeiT transform does. Ratio is against the f32 token tensor
/// `[1, 197, 192]` the split would send instead.
fn jpeg_rows(dir: &Path, photo: &str, runs: usize, rows: &mut Vec<Row>) -> Result<()> {
    use image::imageops::FilterType;
    let path = dir.join(format!("{photo}.png"));
    let img = image::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (w, h) = (img.width(), img.height());
    let (nw, nh) = if w <= h {
        (248, (u64::from(h) * 248 / u64::from(w).max(1)) as u32)
    } else {
        ((u64::from(w) * 248 / u64::from(h).max(1)) as u32, 248)
    };
    let resized = img.resize_exact(nw, nh, FilterType::CatmullRom);
    let crop = resized
        .crop_imm((nw - 224) / 2, (nh - 224) / 2, 224, 224)
        .to_rgb8();
    let tokens_bytes = 197 * 192 * 4;
    let pixels = crop.as_raw().len();
    for quality in [75u8, 90] {
        let mut buf = Vec::new();
        let encode = |buf: &mut Vec<u8>| -> Result<()> {
            buf.clear();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut *buf, quality)
                .encode_image(&crop)?;
            Ok(())
        };
        encode(&mut buf)?;
        let (enc_s, enc_w) = median_secs(runs, || {
            let _ = encode(&mut buf);
        });
        let (dec_s, dec_w) = median_secs(runs, || {
            let _ = image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg);
        });
        rows.push(Row {
            tensor: format!("{photo}/image 224x224"),
            scheme: format!("peer: JPEG q{quality}"),
            peer: true,
            bytes: buf.len(),
            ratio: tokens_bytes as f64 / buf.len() as f64,
            max_abs_err: None,
            mean_abs_err: None,
            // Throughput of JPEG is per RGB8 pixel byte, not f32: not comparable,
            // given for scale only.
            encode_mb_s: mb_s(pixels, enc_s),
            decode_mb_s: mb_s(pixels, dec_s),
            encode_wall_mb_s: mb_s(pixels, enc_w),
            decode_wall_mb_s: mb_s(pixels, dec_w),
        });
    }
    Ok(())
}

fn speed_check(label: &str, shape: &[usize], rows: &[Row]) -> SpeedCheck {
    let find = |scheme: &str| rows.iter().find(|r| r.scheme == scheme);
    let (ce, cd) = find("u8 tensor+zstd1").map_or((0.0, 0.0), |r| (r.encode_mb_s, r.decode_mb_s));
    let (ze, zd) =
        find("peer: zstd1 raw f32").map_or((0.0, 0.0), |r| (r.encode_mb_s, r.decode_mb_s));
    let (ev, dv) = (ce / ze.max(1e-9), cd / zd.max(1e-9));
    SpeedCheck {
        tensor: label.into(),
        shape: shape.to_vec(),
        codec_encode_gb_s: ce / 1e3,
        codec_decode_gb_s: cd / 1e3,
        zstd1_raw_compress_gb_s: ze / 1e3,
        zstd1_raw_decompress_gb_s: zd / 1e3,
        encode_vs_zstd: ev,
        decode_vs_zstd: dv,
        meets_1_gb_s: ce >= 1e3 && cd >= 1e3,
        within_2x_of_zstd: ev >= 0.5 && dv >= 0.5,
    }
}

fn print_table(report: &Report) {
    println!(
        "codec bench: reference {}, median of {} runs, one core",
        report.reference, report.runs
    );
    println!("ratio = raw f32 bytes / encoded bytes (JPEG: f32 tokens [1,197,192] / JPEG bytes)");
    println!("MB/s = 1e6 bytes of f32 per second of this thread's CPU time (JPEG: of RGB8 pixels); wall clock in --json\n");
    println!(
        "{:<22} {:<30} {:>9} {:>7} {:>10} {:>10} {:>9} {:>9}",
        "tensor", "scheme", "bytes", "ratio", "max err", "mean err", "enc MB/s", "dec MB/s"
    );
    let mut last = "";
    for r in &report.rows {
        if r.tensor != last && !last.is_empty() {
            println!();
        }
        last = &r.tensor;
        let err = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{e:.3e}"));
        println!(
            "{:<22} {:<30} {:>9} {:>7.2} {:>10} {:>10} {:>9.0} {:>9.0}",
            r.tensor,
            r.scheme,
            r.bytes,
            r.ratio,
            err(r.max_abs_err),
            err(r.mean_abs_err),
            r.encode_mb_s,
            r.decode_mb_s
        );
    }
    println!("\nspeed check: u8 per-tensor + zstd1 vs zstd1 on the raw f32 bytes (GB/s of f32)");
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}  verdict",
        "tensor", "enc", "dec", "zstd c", "zstd d", "enc x", "dec x"
    );
    for c in &report.speed_check {
        println!(
            "{:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.2}  {}",
            c.tensor,
            c.codec_encode_gb_s,
            c.codec_decode_gb_s,
            c.zstd1_raw_compress_gb_s,
            c.zstd1_raw_decompress_gb_s,
            c.encode_vs_zstd,
            c.decode_vs_zstd,
            match (c.meets_1_gb_s, c.within_2x_of_zstd) {
                (true, true) => "ok: >= 1 GB/s and within 2x of zstd",
                (false, true) => "below 1 GB/s",
                (true, false) => "slower than 2x zstd",
                (false, false) => "below 1 GB/s and slower than 2x zstd",
            }
        );
    }
}
