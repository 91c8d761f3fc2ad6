//! Still images: one file, a folder, or a glob, decoded one at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::pace::Pacer;
use super::{
    extension_of, now_pair, Frame, FrameError, OpenSourceError, Payload, SourceOptions,
    IMAGE_EXTENSIONS,
};

/// Images from a list of files, yielded in order, each decoded when it is asked for.
///
/// Folders and globs are listed once at open and sorted by path (byte order), so
/// runs are repeatable; name frames with zero-padded numbers (`frame_0001.png`) for
/// the order to be the capture order.
#[derive(Debug)]
pub struct ImageSource {
    paths: Vec<PathBuf>,
    /// Next position in `paths`.
    cursor: usize,
    next_index: u64,
    skip_unreadable: bool,
    max_side: u32,
    skipped: u64,
    repeat: bool,
    /// Whether the current pass over `paths` has yielded a frame (a pass of only
    /// unreadable files must not repeat forever).
    yielded_this_pass: bool,
    pacer: Option<Pacer>,
}

impl ImageSource {
    /// A source over these files, in this order.
    pub fn from_paths(paths: Vec<PathBuf>, opts: &SourceOptions) -> Self {
        Self {
            paths,
            cursor: 0,
            next_index: 0,
            skip_unreadable: opts.skip_unreadable,
            max_side: opts.max_side,
            skipped: 0,
            repeat: opts.repeat,
            yielded_this_pass: false,
            pacer: opts.fps.and_then(Pacer::new),
        }
    }

    /// Every image file directly in `dir` (not recursive), sorted by path.
    pub fn folder(dir: &Path, opts: &SourceOptions) -> Result<Self, OpenSourceError> {
        let list_err = |source| OpenSourceError::ListFolder {
            path: dir.to_owned(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(list_err)? {
            let path = entry.map_err(list_err)?.path();
            if path.is_file() && is_image_path(&path) {
                paths.push(path);
            }
        }
        if paths.is_empty() {
            return Err(OpenSourceError::NoImages {
                what: format!("folder {}", dir.display()),
            });
        }
        paths.sort();
        Ok(Self::from_paths(paths, opts))
    }

    /// Every image file matching a glob pattern (`frames/*.png`, `run[12]/**/*.jpg`),
    /// sorted by path.
    pub fn glob(pattern: &str, opts: &SourceOptions) -> Result<Self, OpenSourceError> {
        let matches = glob::glob(pattern).map_err(|source| OpenSourceError::BadGlob {
            pattern: pattern.to_owned(),
            source,
        })?;
        let mut paths = Vec::new();
        for m in matches {
            match m {
                Ok(path) if path.is_file() && is_image_path(&path) => paths.push(path),
                Ok(_) => {}
                // A directory the pattern walks through cannot be read: say so, keep
                // the rest (the pattern may cross directories we have no business in).
                Err(e) => tracing::warn!(
                    "glob {pattern:?}: skipping {}: {}",
                    e.path().display(),
                    e.error()
                ),
            }
        }
        if paths.is_empty() {
            return Err(OpenSourceError::NoImages {
                what: format!("pattern {pattern:?}"),
            });
        }
        paths.sort();
        Ok(Self::from_paths(paths, opts))
    }

    /// Files not yet read (in this pass, when repeating).
    pub fn remaining(&self) -> usize {
        self.paths.len() - self.cursor
    }

    /// Whether the source starts again at the end.
    pub fn repeats(&self) -> bool {
        self.repeat
    }

    /// Frame ticks skipped because the consumer was late (with `fps`).
    pub fn missed_ticks(&self) -> u64 {
        self.pacer.as_ref().map_or(0, Pacer::missed)
    }

    /// Files skipped so far because they could not be read (with `skip_unreadable`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    fn decode(&self, path: &Path) -> Result<image::RgbImage, image::ImageError> {
        let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
        // Cap the decoder before it allocates: a corrupt or hostile header can claim
        // any size.
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(self.max_side);
        limits.max_image_height = Some(self.max_side);
        reader.limits(limits);
        Ok(reader.decode()?.into_rgb8())
    }
}

impl Iterator for ImageSource {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.cursor >= self.paths.len() {
                if !(self.repeat && self.yielded_this_pass) {
                    return None;
                }
                self.cursor = 0;
                self.yielded_this_pass = false;
            }
            let path = self.paths.get(self.cursor)?.clone();
            self.cursor += 1;
            match self.decode(&path) {
                Ok(img) => {
                    self.yielded_this_pass = true;
                    if let Some(p) = self.pacer.as_mut() {
                        p.wait();
                    }
                    let (captured, captured_wall) = now_pair();
                    let index = self.next_index;
                    self.next_index += 1;
                    return Some(Ok(Frame {
                        index,
                        captured,
                        captured_wall,
                        source: Arc::from(path.to_string_lossy().as_ref()),
                        payload: Payload::Image(img),
                    }));
                }
                Err(source) if self.skip_unreadable => {
                    self.skipped += 1;
                    tracing::warn!("skipping unreadable image {}: {source}", path.display());
                }
                Err(source) => {
                    // A failing file counts as progress for `repeat`: the caller sees
                    // the error and decides.
                    self.yielded_this_pass = true;
                    return Some(Err(FrameError::Image { path, source }));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.remaining();
        if self.repeat {
            return (n, None);
        }
        (if self.skip_unreadable { 0 } else { n }, Some(n))
    }
}

fn is_image_path(path: &Path) -> bool {
    extension_of(path).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{open_source, Source};

    fn write_png(path: &Path, w: u32, h: u32, shade: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([shade, x as u8, y as u8]));
        img.save(path).unwrap();
    }

    fn images(src: Source) -> Vec<Frame> {
        src.map(|f| f.unwrap()).collect()
    }

    #[test]
    fn single_image_yields_one_rgb_frame_with_its_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("one.png");
        write_png(&p, 5, 3, 77);
        let frames = images(open_source(p.to_str().unwrap(), &SourceOptions::default()).unwrap());
        assert_eq!(frames.len(), 1);
        let Payload::Image(img) = &frames[0].payload else {
            panic!("not an image")
        };
        assert_eq!(img.dimensions(), (5, 3));
        assert_eq!(img.get_pixel(4, 2).0, [77, 4, 2]);
        assert_eq!(frames[0].index, 0);
        assert!(frames[0].source.ends_with("one.png"));
    }

    #[test]
    fn folder_is_read_in_sorted_order_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for (name, shade) in [("b.png", 2), ("a.png", 1), ("c.jpg", 3)] {
            write_png(&dir.path().join(name), 4, 4, shade);
        }
        std::fs::write(dir.path().join("labels.txt"), "cat\n").unwrap();
        std::fs::create_dir(dir.path().join("sub.png")).unwrap();
        let src = open_source(dir.path().to_str().unwrap(), &SourceOptions::default()).unwrap();
        assert_eq!(src.len_hint(), Some(3));
        let frames = images(src);
        let names: Vec<_> = frames
            .iter()
            .map(|f| f.source.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "c.jpg"]);
        let idx: Vec<_> = frames.iter().map(|f| f.index).collect();
        assert_eq!(idx, [0, 1, 2]);
    }

    #[test]
    fn glob_selects_matching_images_sorted() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["f_02.png", "f_01.png", "g_01.png"] {
            write_png(&dir.path().join(name), 2, 2, 0);
        }
        let pattern = format!("{}/f_*.png", dir.path().display());
        let frames = images(open_source(&pattern, &SourceOptions::default()).unwrap());
        let names: Vec<_> = frames
            .iter()
            .map(|f| f.source.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["f_01.png", "f_02.png"]);
    }

    #[test]
    fn glob_matching_nothing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.png", dir.path().display());
        let err = open_source(&pattern, &SourceOptions::default()).unwrap_err();
        assert!(matches!(err, OpenSourceError::NoImages { .. }), "{err}");
    }

    #[test]
    fn unreadable_image_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 2, 2, 0);
        std::fs::write(dir.path().join("b.png"), b"this is not a png").unwrap();
        write_png(&dir.path().join("c.png"), 2, 2, 0);
        let mut src = open_source(dir.path().to_str().unwrap(), &SourceOptions::default()).unwrap();
        assert!(src.next().unwrap().is_ok());
        let err = src.next().unwrap().unwrap_err();
        assert!(err.to_string().contains("b.png"), "{err}");
        // The source goes on with the next file.
        assert!(src.next().unwrap().is_ok());
        assert!(src.next().is_none());
    }

    #[test]
    fn unreadable_images_can_be_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 2, 2, 0);
        std::fs::write(dir.path().join("b.jpg"), b"").unwrap();
        write_png(&dir.path().join("c.png"), 2, 2, 0);
        let opts = SourceOptions {
            skip_unreadable: true,
            ..SourceOptions::default()
        };
        let Source::Images(mut src) = open_source(dir.path().to_str().unwrap(), &opts).unwrap()
        else {
            panic!("not an image source")
        };
        let frames: Vec<_> = src.by_ref().map(|f| f.unwrap()).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].index, 1, "skipped files take no index");
        assert_eq!(src.skipped(), 1);
    }

    #[test]
    fn oversized_image_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wide.png");
        write_png(&p, 64, 2, 0);
        let opts = SourceOptions {
            max_side: 32,
            ..SourceOptions::default()
        };
        let err = open_source(p.to_str().unwrap(), &opts)
            .unwrap()
            .next()
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, FrameError::Image { .. }), "{err}");
    }

    #[test]
    fn repeat_starts_again_and_keeps_counting() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 2, 2, 1);
        write_png(&dir.path().join("b.png"), 2, 2, 2);
        let opts = SourceOptions {
            repeat: true,
            ..SourceOptions::default()
        };
        let src = open_source(dir.path().to_str().unwrap(), &opts).unwrap();
        assert_eq!(src.len_hint(), None);
        let frames: Vec<_> = src.take(5).map(|f| f.unwrap()).collect();
        let names: Vec<_> = frames
            .iter()
            .map(|f| f.source.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.png", "b.png", "a.png", "b.png", "a.png"]);
        assert_eq!(frames[4].index, 4);
    }

    #[test]
    fn repeat_over_only_unreadable_files_ends() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"junk").unwrap();
        let opts = SourceOptions {
            repeat: true,
            skip_unreadable: true,
            ..SourceOptions::default()
        };
        assert_eq!(
            open_source(dir.path().to_str().unwrap(), &opts)
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn fps_paces_image_frames() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 2, 2, 1);
        let opts = SourceOptions {
            repeat: true,
            fps: Some(20.0),
            ..SourceOptions::default()
        };
        let frames: Vec<_> = open_source(dir.path().to_str().unwrap(), &opts)
            .unwrap()
            .take(4)
            .map(|f| f.unwrap())
            .collect();
        // Frames 0..3 at 20 fps: the last is captured at least 150 ms after the first.
        let span = frames[3].captured - frames[0].captured;
        assert!(span >= std::time::Duration::from_millis(145), "{span:?}");
    }
}
