//! Event-camera inputs (recordings, pipes, iniVation DV streams) as frames.
//!
//! `splitstream-events` reads the events in bounded batches; this source cuts them
//! into consecutive time windows (`window`, e.g. 33 ms) and turns each window into one
//! frame with a representation, so event inputs go through the same modes as
//! pictures:
//!
//! - [`EventRepr::Rendered`]: an RGB picture of the window (ON blue, OFF red over a
//!   dark background, the events crate's `render::accumulate_rgb`): any image model
//!   runs on it, and it can be offloaded as JPEG;
//! - [`EventRepr::Histogram`]: the two-channel count histogram `[1, 2, H, W]` (OFF,
//!   ON) as a tensor, for models that take events (the SNN head).
//!
//! Windows are aligned on the first event's time; a window without events yields no
//! frame (a still scene, or a pause in a stream). At most `max_events_per_window`
//! events of a window are kept (memory stays bounded on a burst); the surplus is
//! counted ([`EventFrameSource::overflowed`]) and left out of that frame.

use std::sync::Arc;
use std::time::Duration;

use splitstream_events::{Event, EventReader};

use super::error::{FrameError, OpenSourceError};
use super::{now_pair, Frame, InputTensor, Payload};

/// How a window of events becomes a frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EventRepr {
    /// An RGB picture of the window (an image model's input; offloadable as JPEG).
    #[default]
    Rendered,
    /// Two-channel count histogram `[1, 2, H, W]` (OFF, ON) as a tensor.
    Histogram,
}

impl EventRepr {
    /// Every representation, for `--help` and its value list.
    pub const ALL: [EventRepr; 2] = [Self::Rendered, Self::Histogram];

    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rendered => "rendered",
            Self::Histogram => "histogram",
        }
    }

    /// The representation of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// How event inputs are opened and cut into frames.
#[derive(Clone, Debug)]
pub struct EventOptions {
    /// The time window of one frame. Default 33 ms (30 frames per second of events).
    pub window: Duration,
    /// The representation. Default [`EventRepr::Rendered`].
    pub repr: EventRepr,
    /// Hand out events at their recorded speed (a recording played as a live
    /// camera). Default false: as fast as they decode.
    pub realtime: bool,
    /// The sensor size, for streams whose header does not declare it.
    pub sensor_size: Option<(u16, u16)>,
    /// Events kept per window at most. Default 4,194,304 (64 MiB).
    pub max_events_per_window: usize,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(33),
            repr: EventRepr::Rendered,
            realtime: false,
            sensor_size: None,
            max_events_per_window: 1 << 22,
        }
    }
}

/// Frames made of time windows of an event stream.
pub struct EventFrameSource {
    reader: Box<dyn EventReader>,
    spec: Arc<str>,
    width: u16,
    height: u16,
    window_us: i64,
    repr: EventRepr,
    max_events: usize,
    /// The batch being consumed, and the next event in it.
    batch: Vec<Event>,
    pos: usize,
    /// Events of the window being filled, and its start time.
    window: Vec<Event>,
    window_start: Option<i64>,
    yielded: u64,
    overflowed: u64,
    done: bool,
}

impl std::fmt::Debug for EventFrameSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFrameSource")
            .field("spec", &self.spec)
            .field("size", &(self.width, self.height))
            .field("window_us", &self.window_us)
            .field("repr", &self.repr)
            .finish()
    }
}

impl EventFrameSource {
    /// Opens `spec` (a path, `-` for stdin, or `dv+tcp://HOST:PORT`) through the events
    /// crate, which detects the format from the stream's header.
    pub fn open(spec: &str, options: &EventOptions) -> Result<Self, OpenSourceError> {
        let events_options = splitstream_events::SourceOptions {
            realtime: options.realtime,
            ..splitstream_events::SourceOptions::default()
        };
        let reader = splitstream_events::open(spec, &events_options).map_err(|source| {
            OpenSourceError::Events {
                spec: spec.to_owned(),
                source,
            }
        })?;
        Self::from_reader(reader, spec, options)
    }

    /// Frames from an already open reader (`spec` names it in frames and errors).
    pub fn from_reader(
        reader: Box<dyn EventReader>,
        spec: &str,
        options: &EventOptions,
    ) -> Result<Self, OpenSourceError> {
        let (width, height) = reader
            .info()
            .resolution()
            .or(options.sensor_size)
            .filter(|&(w, h)| w > 0 && h > 0)
            .ok_or_else(|| OpenSourceError::EventSize {
                spec: spec.to_owned(),
            })?;
        let window_us = i64::try_from(options.window.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        Ok(Self {
            reader,
            spec: Arc::from(spec),
            width,
            height,
            window_us,
            repr: options.repr,
            max_events: options.max_events_per_window.max(1),
            batch: Vec::new(),
            pos: 0,
            window: Vec::new(),
            window_start: None,
            yielded: 0,
            overflowed: 0,
            done: false,
        })
    }

    /// The sensor size (width, height) frames are made at.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }

    /// Events left out of frames because their window already held
    /// `max_events_per_window`.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Turns the window's events into a frame and empties it.
    fn emit(&mut self) -> Frame {
        let (w, h) = (self.width, self.height);
        let payload = match self.repr {
            EventRepr::Rendered => {
                let rgb = splitstream_events::render::accumulate_rgb(&self.window, w, h);
                // accumulate_rgb gives exactly w * h * 3 bytes, so this cannot fail;
                // a blank picture keeps the frame count right if it ever did.
                Payload::Image(
                    image::RgbImage::from_raw(u32::from(w), u32::from(h), rgb)
                        .unwrap_or_else(|| image::RgbImage::new(u32::from(w), u32::from(h))),
                )
            }
            EventRepr::Histogram => Payload::Tensor(InputTensor {
                shape: [1, 2, usize::from(h), usize::from(w)],
                data: splitstream_events::repr::histogram(&self.window, w, h),
            }),
        };
        self.window.clear();
        let (captured, captured_wall) = now_pair();
        let index = self.yielded;
        self.yielded += 1;
        Frame {
            index,
            captured,
            captured_wall,
            source: self.spec.clone(),
            payload,
        }
    }
}

impl Iterator for EventFrameSource {
    type Item = Result<Frame, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if self.pos >= self.batch.len() {
                self.pos = 0;
                match self.reader.read_batch(&mut self.batch) {
                    Ok(0) => {
                        self.done = true;
                        self.batch.clear();
                        break;
                    }
                    Ok(_) => {}
                    Err(source) => {
                        self.done = true;
                        self.batch.clear();
                        return Some(Err(FrameError::Events {
                            spec: self.spec.to_string(),
                            source,
                        }));
                    }
                }
            }
            while let Some(&e) = self.batch.get(self.pos) {
                let start = *self.window_start.get_or_insert(e.t);
                let elapsed = e.t.saturating_sub(start);
                if elapsed >= self.window_us {
                    // This event opens a later window: skip whole empty windows so
                    // windows stay aligned on the first event's time.
                    let skip = (elapsed / self.window_us).saturating_mul(self.window_us);
                    self.window_start = Some(start.saturating_add(skip));
                    if !self.window.is_empty() {
                        return Some(Ok(self.emit()));
                    }
                }
                self.pos += 1;
                if self.window.len() < self.max_events {
                    self.window.push(e);
                } else {
                    self.overflowed += 1;
                }
            }
        }
        // The stream ended: the last, partial window is a frame too.
        if self.window.is_empty() {
            None
        } else {
            Some(Ok(self.emit()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitstream_events::{Format, ReadError, StreamInfo};

    /// A reader over events in memory, in batches of `batch`.
    struct Memory {
        info: StreamInfo,
        events: Vec<Event>,
        at: usize,
        batch: usize,
    }

    impl EventReader for Memory {
        fn info(&self) -> &StreamInfo {
            &self.info
        }
        fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReadError> {
            out.clear();
            let end = (self.at + self.batch).min(self.events.len());
            out.extend_from_slice(&self.events[self.at..end]);
            self.at = end;
            Ok(out.len())
        }
        fn set_batch_size(&mut self, events: usize) {
            self.batch = events.max(1);
        }
    }

    fn source(events: Vec<Event>, batch: usize, options: &EventOptions) -> EventFrameSource {
        let mut info = StreamInfo::new(Format::Text);
        info.width = Some(4);
        info.height = Some(3);
        let reader = Memory {
            info,
            events,
            at: 0,
            batch,
        };
        EventFrameSource::from_reader(Box::new(reader), "memory", options).unwrap()
    }

    fn histogram_options(window_ms: u64) -> EventOptions {
        EventOptions {
            window: Duration::from_millis(window_ms),
            repr: EventRepr::Histogram,
            ..EventOptions::default()
        }
    }

    fn counts(frame: &Frame) -> f32 {
        match &frame.payload {
            Payload::Tensor(t) => t.data.iter().sum(),
            Payload::Image(_) => panic!("expected a tensor"),
        }
    }

    #[test]
    fn windows_cut_the_stream_and_empty_windows_make_no_frame() {
        // Windows of 10 ms from t = 1000: [1000, 11000) has 2 events, [11000, 21000)
        // none, [21000, 31000) has 3, the rest is the last partial window.
        let ts = [1_000, 5_000, 21_000, 22_000, 30_999, 31_000];
        let events: Vec<Event> = ts.iter().map(|&t| Event::new(t, 1, 2, true)).collect();
        for batch in [1, 2, 64] {
            let frames: Vec<Frame> = source(events.clone(), batch, &histogram_options(10))
                .map(Result::unwrap)
                .collect();
            let per_frame: Vec<f32> = frames.iter().map(counts).collect();
            assert_eq!(per_frame, [2.0, 3.0, 1.0], "batch {batch}");
            assert_eq!(
                frames.iter().map(|f| f.index).collect::<Vec<_>>(),
                [0, 1, 2]
            );
        }
    }

    #[test]
    fn histogram_puts_off_and_on_in_their_channels() {
        let events = vec![
            Event::new(0, 3, 2, true),
            Event::new(1, 3, 2, true),
            Event::new(2, 0, 0, false),
        ];
        let frame = source(events, 8, &histogram_options(10))
            .next()
            .unwrap()
            .unwrap();
        let Payload::Tensor(t) = frame.payload else {
            panic!("tensor")
        };
        assert_eq!(t.shape, [1, 2, 3, 4]);
        assert_eq!(t.data[0], 1.0, "OFF at (0, 0) in channel 0");
        assert_eq!(t.data[12 + 2 * 4 + 3], 2.0, "two ON at (3, 2) in channel 1");
    }

    #[test]
    fn rendered_frames_are_sensor_sized_pictures() {
        let events = vec![Event::new(0, 3, 2, true)];
        let frame = source(events, 8, &EventOptions::default())
            .next()
            .unwrap()
            .unwrap();
        let Payload::Image(img) = frame.payload else {
            panic!("image")
        };
        assert_eq!(img.dimensions(), (4, 3));
        assert_ne!(img.get_pixel(3, 2), img.get_pixel(0, 0), "the event shows");
    }

    #[test]
    fn a_burst_beyond_the_cap_is_counted_not_kept() {
        let events: Vec<Event> = (0..10).map(|t| Event::new(t, 0, 0, true)).collect();
        let options = EventOptions {
            max_events_per_window: 4,
            ..histogram_options(1)
        };
        let mut src = source(events, 3, &options);
        let frame = src.next().unwrap().unwrap();
        assert_eq!(counts(&frame), 4.0);
        assert!(src.next().is_none());
        assert_eq!(src.overflowed(), 6);
    }

    #[test]
    fn a_stream_without_a_size_needs_one() {
        let reader = Memory {
            info: StreamInfo::new(Format::Text),
            events: Vec::new(),
            at: 0,
            batch: 1,
        };
        let err =
            EventFrameSource::from_reader(Box::new(reader), "x.csv", &EventOptions::default())
                .unwrap_err();
        assert!(err.to_string().contains("--event-size"), "{err}");
    }
}
