//! The event type and what a reader knows about its stream.

/// One change event: a pixel saw its log intensity rise (ON) or fall (OFF).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Event {
    /// Time in microseconds since the recording's (or the stream's) time origin.
    pub t: i64,
    /// Column, 0 at the left.
    pub x: u16,
    /// Row, 0 at the top.
    pub y: u16,
    /// Polarity: `true` for ON (brighter), `false` for OFF (darker).
    pub p: bool,
}

impl Event {
    /// An event at `t` microseconds, pixel (`x`, `y`), polarity `p`.
    pub const fn new(t: i64, x: u16, y: u16, p: bool) -> Self {
        Self { t, x, y, p }
    }
}

/// The recording formats this crate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prophesee EVT 2.0 `.raw`: 32-bit words, 34-bit timestamps.
    Evt2,
    /// Prophesee EVT 2.1 `.raw`: 64-bit vectorised words.
    Evt21,
    /// Prophesee EVT 3.0 `.raw`: 16-bit words, 24-bit time base, vector words.
    Evt3,
    /// iniVation AEDAT 4.0: flatbuffer packets, optionally LZ4 or zstd compressed.
    Aedat4,
    /// iniVation/jAER AEDAT 2.0: big-endian address and timestamp pairs.
    Aedat2,
    /// iniVation cAER AEDAT 3.1: typed packets of polarity events.
    Aedat31,
    /// N-MNIST / N-Caltech101 `.bin`: 40-bit events.
    NBin,
    /// Plain text or CSV, one event per line.
    Text,
    /// A numpy structured array with fields `t`, `x`, `y`, `p` (what `convert` writes).
    Npy,
}

impl Format {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Evt2 => "EVT 2.0",
            Format::Evt21 => "EVT 2.1",
            Format::Evt3 => "EVT 3.0",
            Format::Aedat4 => "AEDAT 4.0",
            Format::Aedat2 => "AEDAT 2.0",
            Format::Aedat31 => "AEDAT 3.1",
            Format::NBin => "N-MNIST/N-Caltech101 bin",
            Format::Text => "text/CSV",
            Format::Npy => "numpy .npy",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the header of a stream says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The format being decoded.
    pub format: Format,
    /// Sensor width in pixels, when the header declares it.
    pub width: Option<u16>,
    /// Sensor height in pixels, when the header declares it.
    pub height: Option<u16>,
    /// Sensor or camera name, when the header declares it.
    pub sensor: Option<String>,
    /// Every other header key and value, in file order (for `events inspect`).
    pub metadata: Vec<(String, String)>,
}

impl StreamInfo {
    /// Info with nothing known but the format.
    pub fn new(format: Format) -> Self {
        Self {
            format,
            width: None,
            height: None,
            sensor: None,
            metadata: Vec::new(),
        }
    }

    /// `(width, height)` when both are declared.
    pub fn resolution(&self) -> Option<(u16, u16)> {
        Some((self.width?, self.height?))
    }
}
