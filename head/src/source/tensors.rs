//! Preprocessed model inputs from a safetensors file: a tensor `input` of shape
//! `[B, 3, H, W]` (or `[3, H, W]`), yielded one sample at a time as `[1, 3, H, W]`.
//!
//! Only the header is parsed up front (by the `safetensors` crate, which checks that
//! the offsets and shapes agree); each sample is read from the file when asked for, so
//! a file of a thousand inputs costs the memory of one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::Metadata;
use safetensors::Dtype;

use super::pace::Pacer;
use super::{now_pair, Frame, FrameError, InputTensor, OpenSourceError, Payload, SourceOptions};

/// Largest header accepted (the limit the `safetensors` crate itself uses).
const MAX_HEADER: u64 = 100 << 20;

/// Samples of one tensor in a safetensors file.
#[derive(Debug)]
pub struct TensorSource {
    file: File,
    path: PathBuf,
    name: String,
    dtype: Dtype,
    /// `[C, H, W]` of one sample.
    sample_shape: [usize; 3],
    sample_bytes: usize,
    /// Absolute file offset of sample 0.
    data_start: u64,
    batch: usize,
    /// Samples yielded so far (over every pass when repeating).
    yielded: u64,
    /// Next sample in this pass.
    next: usize,
    repeat: bool,
    pacer: Option<Pacer>,
}

impl TensorSource {
    /// Opens `path` and checks the tensor named by `opts.tensor_name`.
    pub fn open(path: &Path, opts: &SourceOptions) -> Result<Self, OpenSourceError> {
        let bad = |message: String| OpenSourceError::Tensors {
            path: path.to_owned(),
            message,
        };
        let io = |source| OpenSourceError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|_| bad("too short for a safetensors file (no header length)".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER || header_len > file_len.saturating_sub(8) {
            return Err(bad(format!(
                "header length {header_len} is larger than the file or the {MAX_HEADER}-byte limit: not a safetensors file?"
            )));
        }
        // header_len <= 100 MiB, checked above.
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let meta: Metadata = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("malformed safetensors header: {e}")))?;
        let data_base = 8 + header_len;
        if data_base.saturating_add(meta.data_len() as u64) > file_len {
            return Err(bad(format!(
                "the header describes {} bytes of data but the file holds {}: truncated file",
                meta.data_len(),
                file_len - data_base
            )));
        }
        let name = opts.tensor_name.clone();
        let Some(info) = meta.info(&name) else {
            let mut names: Vec<String> = meta.tensors().into_keys().collect();
            names.sort();
            names.truncate(10);
            return Err(bad(format!(
                "no tensor {name:?} (it has: {}); name the input tensor with --tensor",
                names.join(", ")
            )));
        };
        let dtype = info.dtype;
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(bad(format!(
                "tensor {name:?} is {dtype:?}; inputs must be F32, F16 or BF16"
            )));
        }
        let (batch, c, h, w) = match info.shape.as_slice() {
            &[b, c, h, w] => (b, c, h, w),
            &[c, h, w] => (1, c, h, w),
            other => {
                return Err(bad(format!(
                    "tensor {name:?} has shape {other:?}; expected [B, 3, H, W] or [3, H, W]"
                )))
            }
        };
        if c != 3 {
            let hint = if w == 3 {
                " (it looks like [B, H, W, 3]: permute to channels-first)"
            } else {
                ""
            };
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}; expected 3 channels in [B, 3, H, W]{hint}",
                info.shape
            )));
        }
        let max = opts.max_side as usize;
        if h == 0 || w == 0 || h > max || w > max || batch == 0 {
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}; sides must be 1..={max} and the batch non-empty",
                info.shape
            )));
        }
        let elem = dtype.bitsize() / 8;
        // c, h, w are bounded above, so this cannot overflow a 64-bit usize.
        let sample_bytes = c * h * w * elem;
        let (begin, end) = info.data_offsets;
        if batch.checked_mul(sample_bytes) != Some(end - begin) {
            return Err(bad(format!(
                "tensor {name:?}: data size disagrees with its shape"
            )));
        }
        tracing::debug!(path = %path.display(), batch, c, h, w, ?dtype, "tensor source opened");
        Ok(Self {
            file,
            path: path.to_owned(),
            name,
            dtype,
            sample_shape: [c, h, w],
            sample_bytes,
            data_start: data_base + begin as u64,
            batch,
            yielded: 0,
            next: 0,
            repeat: opts.repeat,
            pacer: opts.fps.and_then(Pacer::new),
        })
    }

    /// Samples not yet read (in this pass, when repeating).
    pub fn remaining(&self) -> usize {
        self.batch - self.next
    }

    /// Whether the source starts again at the end.
    pub fn repeats(&self) -> bool {
        self.repeat
    }

    /// `[C, H, W]` of every sample.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.sample_shape
    }

    fn read_sample(&mut self, i: usize) -> Result<Vec<f32>, std::io::Error> {
        let offset = self.data_start + (i as u64) * (self.sample_bytes as u64);
        self.file.seek(SeekFrom::Start(offset))?;
        let mut raw = vec![0u8; self.sample_bytes];
        self.file.read_exact(&mut raw)?;
        Ok(match self.dtype {
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            // F32, the only other dtype `open` admits.
            _ => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }
}

impl Iterator for TensorSource {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.batch {
            if !self.repeat {
                return None;
            }
            self.next = 0;
        }
        let i = self.next;
        self.next += 1;
        let data = match self.read_sample(i) {
            Ok(d) => d,
            Err(source) => {
                self.next = self.batch;
                self.repeat = false;
                return Some(Err(FrameError::Io {
                    what: self.path.display().to_string(),
                    source,
                }));
            }
        };
        if let Some(p) = self.pacer.as_mut() {
            p.wait();
        }
        let (captured, captured_wall) = now_pair();
        let [c, h, w] = self.sample_shape;
        let index = self.yielded;
        self.yielded += 1;
        Some(Ok(Frame {
            index,
            captured,
            captured_wall,
            source: Arc::from(format!("{}#{}[{i}]", self.path.display(), self.name)),
            payload: Payload::Tensor(InputTensor {
                shape: [1, c, h, w],
                data,
            }),
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.repeat {
            return (self.remaining(), None);
        }
        (self.remaining(), Some(self.remaining()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{open_source, Source};
    use safetensors::tensor::TensorView;
    use std::collections::HashMap;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
        let views: HashMap<String, TensorView<'_>> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize_to_file(&views, None, path).unwrap();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn batch_is_yielded_one_sample_at_a_time_with_its_values() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inputs.safetensors");
        let values: Vec<f32> = (0..2 * 3 * 2 * 2).map(|i| i as f32 * 0.5).collect();
        write(
            &p,
            &[
                ("other", Dtype::F32, vec![1], f32_bytes(&[9.0])),
                ("input", Dtype::F32, vec![2, 3, 2, 2], f32_bytes(&values)),
            ],
        );
        let src = open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap();
        assert_eq!(src.len_hint(), Some(2));
        let frames: Vec<_> = src.map(|f| f.unwrap()).collect();
        assert_eq!(frames.len(), 2);
        for (i, f) in frames.iter().enumerate() {
            let Payload::Tensor(t) = &f.payload else {
                panic!("not a tensor")
            };
            assert_eq!(t.shape, [1, 3, 2, 2]);
            assert_eq!(t.data, values[i * 12..(i + 1) * 12]);
            assert!(f.source.ends_with(&format!("#input[{i}]")));
        }
    }

    #[test]
    fn half_precision_inputs_are_widened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        let vals = [1.5f32, -2.0, 0.25];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = vals
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        write(
            &p,
            &[
                ("input", Dtype::F16, vec![3, 1, 1], f16),
                ("b", Dtype::BF16, vec![3, 1, 1], bf16),
            ],
        );
        let mut src = open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap();
        let Payload::Tensor(t) = src.next().unwrap().unwrap().payload else {
            panic!()
        };
        assert_eq!(t.data, vals);
        let opts = SourceOptions {
            tensor_name: "b".into(),
            ..SourceOptions::default()
        };
        let Source::Tensors(mut src) = open_source(p.to_str().unwrap(), &opts).unwrap() else {
            panic!()
        };
        let Payload::Tensor(t) = src.next().unwrap().unwrap().payload else {
            panic!()
        };
        assert_eq!(t.data, vals);
    }

    #[test]
    fn missing_tensor_lists_what_the_file_has() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        write(
            &p,
            &[("pixels", Dtype::F32, vec![3, 1, 1], f32_bytes(&[0.0; 3]))],
        );
        let err = open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"input\"") && msg.contains("pixels"), "{msg}");
    }

    #[test]
    fn channels_last_input_is_refused_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nhwc.safetensors");
        write(
            &p,
            &[("input", Dtype::F32, vec![1, 2, 2, 3], f32_bytes(&[0.0; 12]))],
        );
        let err = open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap_err();
        assert!(err.to_string().contains("permute"), "{err}");
    }

    #[test]
    fn integer_tensors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("u8.safetensors");
        write(&p, &[("input", Dtype::U8, vec![3, 1, 1], vec![1, 2, 3])]);
        let err = open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap_err();
        assert!(err.to_string().contains("F32"), "{err}");
    }

    #[test]
    fn truncated_and_garbage_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        write(
            &p,
            &[(
                "input",
                Dtype::F32,
                vec![4, 3, 8, 8],
                f32_bytes(&[1.0; 4 * 3 * 64]),
            )],
        );
        let full = std::fs::read(&p).unwrap();
        for cut in [0, 4, 8, 20, full.len() / 2, full.len() - 1] {
            std::fs::write(&p, &full[..cut]).unwrap();
            let err = open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap_err();
            assert!(
                matches!(err, OpenSourceError::Tensors { .. }),
                "cut {cut}: {err}"
            );
        }
        let mut huge = u64::MAX.to_le_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        std::fs::write(&p, &huge).unwrap();
        assert!(open_source(p.to_str().unwrap(), &SourceOptions::default()).is_err());
    }

    #[test]
    fn repeat_cycles_through_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.safetensors");
        write(
            &p,
            &[(
                "input",
                Dtype::F32,
                vec![2, 3, 1, 1],
                f32_bytes(&[0., 0., 0., 1., 1., 1.]),
            )],
        );
        let opts = SourceOptions {
            repeat: true,
            ..SourceOptions::default()
        };
        let src = open_source(p.to_str().unwrap(), &opts).unwrap();
        assert_eq!(src.len_hint(), None);
        let firsts: Vec<(u64, f32)> = src
            .take(5)
            .map(|f| {
                let f = f.unwrap();
                let Payload::Tensor(t) = f.payload else {
                    panic!()
                };
                (f.index, t.data[0])
            })
            .collect();
        assert_eq!(firsts, [(0, 0.), (1, 1.), (2, 0.), (3, 1.), (4, 0.)]);
    }
}
