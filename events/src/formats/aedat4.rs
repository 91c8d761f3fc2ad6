//! iniVation AEDAT 4.0: the version line `#!AER-DAT4.0\r\n`, a size-prefixed `IOHeader`
//! flatbuffer (compression, position of the trailing data table, an XML description
//! of the streams), then packets: `i32 stream id`, `i32 size`, and `size` bytes of a
//! size-prefixed flatbuffer, compressed as a whole (LZ4 frame or zstd frame) when the
//! header says so. Event packets (identifier `EVTS`) hold a vector of 16-byte structs
//! `{ i64 t, i16 x, i16 y, bool on, 3 bytes padding }`.
//!
//! The same header-then-packets stream (without the version line) is what iniVation's
//! DV software sends to a TCP client, so the network source reuses this reader.
//!
//! Memory: one compressed and one decompressed packet at a time, both capped.

use std::io::{Cursor, Read};

use crate::flatbuf::{u32_at, Table};
use crate::window::ByteWindow;
use crate::{Event, EventReader, Format, OpenError, ReadError, StreamInfo};

/// The version line that starts a file.
pub const MAGIC: &[u8] = b"#!AER-DAT4.0\r\n";
/// Largest `IOHeader` accepted (the XML for a handful of streams is a few KiB).
pub const MAX_HEADER: u32 = 16 << 20;
/// Largest compressed packet accepted. dv-processing writes packets of about 10,000
/// events (160 KB); this leaves two orders of magnitude of room.
pub const MAX_PACKET: u32 = 64 << 20;
/// Largest decompressed packet accepted.
pub const MAX_DECOMPRESSED: usize = 256 << 20;

const FORMAT: Format = Format::Aedat4;

/// Packet compression named by the `IOHeader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Packets are stored as they are.
    None,
    /// LZ4 frame format (`LZ4` and `LZ4_HIGH` are the same on the read side).
    Lz4,
    /// zstd frame format (`ZSTD` and `ZSTD_HIGH`).
    Zstd,
}

impl Compression {
    fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 | 2 => Some(Self::Lz4),
            3 | 4 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The `IOHeader` code written for this compression.
    pub fn code(self) -> i32 {
        match self {
            Self::None => 0,
            Self::Lz4 => 1,
            Self::Zstd => 3,
        }
    }
}

/// A streaming AEDAT 4 event reader over a file, a pipe or a socket.
pub struct Aedat4Reader<R> {
    win: ByteWindow<R>,
    info: StreamInfo,
    compression: Compression,
    event_stream: i32,
    /// Stream offset of the data table (end of packets) in a file, or -1.
    data_table: i64,
    /// Stream offset (from the file's first byte) of the next unread byte.
    position: u64,
    packet: Vec<u8>,
    plain: Vec<u8>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    lz4: Option<lz4_flex::frame::FrameDecoder<Cursor<Vec<u8>>>>,
    /// Byte range of the current packet's event structs in `plain`, and the next one.
    events: std::ops::Range<usize>,
    batch: usize,
    done: bool,
}

impl<R: Read + Send> Aedat4Reader<R> {
    /// Reads the header of a file (`with_magic`) or of a DV network stream (no version
    /// line) and sets up for packets.
    pub(crate) fn from_window(mut win: ByteWindow<R>, with_magic: bool) -> Result<Self, OpenError> {
        let bad = |reason: String| OpenError::BadHeader {
            format: FORMAT,
            reason,
        };
        let io = |e: std::io::Error| bad(e.to_string());
        let mut position = 0u64;
        if with_magic {
            if !win.fill_to(MAGIC.len()).map_err(io)? || !win.data().starts_with(MAGIC) {
                return Err(bad("missing `#!AER-DAT4.0` version line".into()));
            }
            win.consume(MAGIC.len());
            position += MAGIC.len() as u64;
        }
        if !win.fill_to(4).map_err(io)? {
            return Err(bad("stream ends before the header size".into()));
        }
        let d = win.data();
        let size = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
        if size > MAX_HEADER {
            return Err(bad(format!(
                "declared header size {size} exceeds {MAX_HEADER} bytes"
            )));
        }
        win.consume(4);
        let mut header = Vec::new();
        if !win
            .read_exact_into(&mut header, size as usize)
            .map_err(io)?
        {
            return Err(bad(format!("stream ends inside the {size}-byte header")));
        }
        position += 4 + u64::from(size);
        let table = Table::root(&header, 0)
            .ok_or_else(|| bad("IOHeader flatbuffer is malformed".into()))?;
        let code = table.i32(0, 0).map_err(|e| bad(e.into()))?;
        let compression = Compression::from_code(code)
            .ok_or_else(|| bad(format!("unknown compression code {code}")))?;
        let data_table = table.i64(1, -1).map_err(|e| bad(e.into()))?;
        let description = match table.vector(2, 1).map_err(|e| bad(e.into()))? {
            Some((bytes, _)) => String::from_utf8_lossy(bytes).into_owned(),
            None => String::new(),
        };
        let streams = parse_description(&description);
        let Some(stream) = streams.iter().find(|s| s.type_id == "EVTS") else {
            return Err(bad(format!(
                "the stream description declares no event (EVTS) stream; streams: [{}]",
                streams
                    .iter()
                    .map(|s| format!("{}:{}", s.id, s.type_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let mut info = StreamInfo::new(FORMAT);
        info.width = stream.width;
        info.height = stream.height;
        info.sensor = stream.source.clone();
        info.metadata
            .push(("compression".into(), format!("{compression:?}")));
        info.metadata
            .push(("event stream id".into(), stream.id.to_string()));
        Ok(Self {
            win,
            info,
            compression,
            event_stream: stream.id,
            data_table,
            position,
            packet: Vec::new(),
            plain: Vec::new(),
            zstd: None,
            lz4: None,
            events: 0..0,
            batch: crate::window::DEFAULT_BATCH,
            done: false,
        })
    }

    fn corrupt(&self, reason: impl Into<String>) -> ReadError {
        ReadError::Corrupt {
            format: FORMAT,
            offset: self.position,
            reason: reason.into(),
        }
    }

    /// Loads the next event packet. `false` at the end of the packets.
    fn next_packet(&mut self) -> Result<bool, ReadError> {
        loop {
            if self.data_table > 0 && self.position >= self.data_table as u64 {
                return Ok(false);
            }
            if !self.win.fill_to(8)? {
                return match self.win.data().len() {
                    0 => Ok(false),
                    n => Err(ReadError::Truncated {
                        format: FORMAT,
                        unit: "packet header",
                        bytes: n,
                    }),
                };
            }
            let d = self.win.data();
            let stream = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i32;
            let size = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
            if size > MAX_PACKET {
                return Err(ReadError::TooLarge {
                    format: FORMAT,
                    what: "packet",
                    size: size.into(),
                    limit: MAX_PACKET.into(),
                });
            }
            self.win.consume(8);
            self.position += 8;
            if stream != self.event_stream {
                if !self.win.skip(u64::from(size))? {
                    return Err(ReadError::Truncated {
                        format: FORMAT,
                        unit: "packet",
                        bytes: 0,
                    });
                }
                self.position += u64::from(size);
                continue;
            }
            let mut packet = std::mem::take(&mut self.packet);
            let complete = self.win.read_exact_into(&mut packet, size as usize)?;
            if !complete {
                let n = packet.len();
                self.packet = packet;
                return Err(ReadError::Truncated {
                    format: FORMAT,
                    unit: "packet",
                    bytes: n,
                });
            }
            let result = self.decompress(&mut packet);
            self.packet = packet;
            result?;
            self.locate_events()?;
            self.position += u64::from(size);
            return Ok(true);
        }
    }

    /// Makes `self.plain` the packet's plain bytes. `packet` keeps a buffer to reuse.
    fn decompress(&mut self, packet: &mut Vec<u8>) -> Result<(), ReadError> {
        if self.compression == Compression::None {
            // A stored packet is its own plain form: swap the buffers, don't copy.
            std::mem::swap(&mut self.plain, packet);
            return Ok(());
        }
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        let packet_buf = packet;
        let result = match self.compression {
            Compression::None => Ok(()), // swapped above
            Compression::Lz4 => {
                // One decoder for the whole stream keeps its block buffers (a fresh
                // one per packet allocated and faulted them in every time). The
                // packet's buffer is lent to it and taken back.
                let mut decoder = self
                    .lz4
                    .take()
                    .unwrap_or_else(|| lz4_flex::frame::FrameDecoder::new(Cursor::new(Vec::new())));
                std::mem::swap(decoder.get_mut().get_mut(), packet_buf);
                decoder.get_mut().set_position(0);
                let read = (&mut decoder)
                    .take(MAX_DECOMPRESSED as u64 + 1)
                    .read_to_end(&mut plain);
                std::mem::swap(decoder.get_mut().get_mut(), packet_buf);
                if read.is_ok() {
                    // After an error its state is unknown: the next packet gets a new one.
                    self.lz4 = Some(decoder);
                }
                match read {
                    Ok(_) if plain.len() > MAX_DECOMPRESSED => Err(ReadError::TooLarge {
                        format: FORMAT,
                        what: "decompressed packet",
                        size: plain.len() as u64,
                        limit: MAX_DECOMPRESSED as u64,
                    }),
                    Ok(_) => Ok(()),
                    Err(e) => Err(self.corrupt(format!("LZ4 frame does not decode: {e}"))),
                }
            }
            Compression::Zstd => self.unzstd(packet_buf, &mut plain),
        };
        self.plain = plain;
        result
    }

    fn unzstd(&mut self, packet: &[u8], plain: &mut Vec<u8>) -> Result<(), ReadError> {
        // dv-processing writes the content size into each frame: decompress in one call
        // into a buffer of exactly that size (capped). Without it, stream with a cap.
        let declared = zstd::zstd_safe::get_frame_content_size(packet)
            .ok()
            .flatten();
        if let Some(size) = declared {
            if size > MAX_DECOMPRESSED as u64 {
                return Err(ReadError::TooLarge {
                    format: FORMAT,
                    what: "decompressed packet",
                    size,
                    limit: MAX_DECOMPRESSED as u64,
                });
            }
            if self.zstd.is_none() {
                self.zstd = Some(zstd::bulk::Decompressor::new().map_err(ReadError::Io)?);
            }
            plain.reserve(size as usize);
            let Some(dec) = self.zstd.as_mut() else {
                return Ok(());
            };
            return match dec.decompress_to_buffer(packet, plain) {
                Ok(_) => Ok(()),
                Err(e) => Err(self.corrupt(format!("zstd frame does not decode: {e}"))),
            };
        }
        let decoder = zstd::stream::read::Decoder::with_buffer(packet).map_err(ReadError::Io)?;
        match decoder.take(MAX_DECOMPRESSED as u64 + 1).read_to_end(plain) {
            Ok(_) if plain.len() > MAX_DECOMPRESSED => Err(ReadError::TooLarge {
                format: FORMAT,
                what: "decompressed packet",
                size: plain.len() as u64,
                limit: MAX_DECOMPRESSED as u64,
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(self.corrupt(format!("zstd frame does not decode: {e}"))),
        }
    }

    /// Checks the decompressed packet and finds its event vector.
    fn locate_events(&mut self) -> Result<(), ReadError> {
        let buf = &self.plain;
        let declared = u32_at(buf, 0)
            .ok_or_else(|| self.corrupt("packet shorter than its size prefix"))?
            as usize;
        if declared.checked_add(4).is_none_or(|n| n > buf.len()) {
            return Err(self.corrupt(format!(
                "packet declares {declared} bytes but holds {}",
                buf.len().saturating_sub(4)
            )));
        }
        let body = &buf[4..];
        if body.get(4..8) != Some(b"EVTS".as_slice()) {
            return Err(self.corrupt("packet of the event stream lacks the EVTS identifier"));
        }
        let table = Table::root(body, 0)
            .ok_or_else(|| self.corrupt("EventPacket flatbuffer is malformed"))?;
        let range = match table.vector(0, 16).map_err(|e| self.corrupt(e))? {
            Some((bytes, _)) => {
                let start = bytes.as_ptr() as usize - buf.as_ptr() as usize;
                start..start + bytes.len()
            }
            None => 0..0,
        };
        self.events = range;
        Ok(())
    }
}

impl<R: Read + Send> EventReader for Aedat4Reader<R> {
    fn info(&self) -> &StreamInfo {
        &self.info
    }

    fn set_batch_size(&mut self, events: usize) {
        self.batch = events.max(1);
    }

    fn read_batch(&mut self, out: &mut Vec<Event>) -> Result<usize, ReadError> {
        out.clear();
        while !self.done {
            if self.events.is_empty() {
                if !self.next_packet()? {
                    self.done = true;
                    break;
                }
                continue;
            }
            let n = (self.events.len() / 16).min(self.batch);
            let end = self.events.start + 16 * n;
            let bytes = self.plain.get(self.events.start..end).unwrap_or(&[]);
            out.reserve(n);
            let (structs, _) = bytes.as_chunks::<16>();
            for s in structs {
                let [t0, t1, t2, t3, t4, t5, t6, t7, x0, x1, y0, y1, ..] = *s;
                let tb = [t0, t1, t2, t3, t4, t5, t6, t7];
                let x = i16::from_le_bytes([x0, x1]);
                let y = i16::from_le_bytes([y0, y1]);
                if x < 0 || y < 0 {
                    let offset = self.position;
                    out.clear();
                    return Err(ReadError::Corrupt {
                        format: FORMAT,
                        offset,
                        reason: format!("negative pixel address ({x}, {y})"),
                    });
                }
                out.push(Event {
                    t: i64::from_le_bytes(tb),
                    x: x as u16,
                    y: y as u16,
                    p: s[12] != 0,
                });
            }
            self.events.start = end;
            return Ok(out.len());
        }
        Ok(0)
    }
}

/// One stream declared in the XML description.
#[derive(Debug, Default)]
pub(crate) struct StreamDecl {
    pub(crate) id: i32,
    pub(crate) type_id: String,
    pub(crate) width: Option<u16>,
    pub(crate) height: Option<u16>,
    pub(crate) source: Option<String>,
}

/// Reads the streams out of the `<dv><node name="outInfo"><node name="ID">` tree: the
/// `typeIdentifier` attribute, and `sizeX`/`sizeY`/`source` of its `info` node. The
/// XML is machine-written and flat, so a tag scanner that tracks the node path is
/// enough (and never allocates more than the description's size).
pub(crate) fn parse_description(xml: &str) -> Vec<StreamDecl> {
    let mut streams: Vec<StreamDecl> = Vec::new();
    let mut path: Vec<String> = Vec::new();
    let mut rest = xml;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('>') else { break };
        let tag = &rest[..close];
        rest = &rest[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            if name.trim() == "node" {
                path.pop();
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let element = tag.split_whitespace().next().unwrap_or("");
        match element {
            "node" if !self_closing => path.push(attribute(tag, "name").unwrap_or_default()),
            "attr" if !self_closing => {
                let key = attribute(tag, "key").unwrap_or_default();
                let end = rest.find("</attr>").unwrap_or(rest.len());
                let value = rest[..end].trim().to_string();
                rest = &rest[end..];
                let segs: Vec<&str> = path.iter().map(String::as_str).collect();
                let (id, in_info) = match segs.as_slice() {
                    ["outInfo", id] => (id.parse::<i32>().ok(), false),
                    ["outInfo", id, "info"] => (id.parse::<i32>().ok(), true),
                    _ => (None, false),
                };
                let Some(id) = id else { continue };
                let pos = match streams.iter().position(|s| s.id == id) {
                    Some(p) => p,
                    None => {
                        streams.push(StreamDecl {
                            id,
                            ..Default::default()
                        });
                        streams.len() - 1
                    }
                };
                let s = &mut streams[pos];
                match (in_info, key.as_str()) {
                    (false, "typeIdentifier") => s.type_id = value,
                    (true, "sizeX") => s.width = value.parse().ok(),
                    (true, "sizeY") => s.height = value.parse().ok(),
                    (true, "source") => s.source = Some(value),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    streams
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let pat = format!("{name}=\"");
    let start = tag.find(&pat)? + pat.len();
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_string())
}

/// The XML description iniVation's software writes for one event stream (dv-processing
/// needs every attribute of the stream node to accept the file).
pub fn description_for(width: u16, height: u16, compression: Compression, source: &str) -> String {
    let c = match compression {
        Compression::None => "NONE",
        Compression::Lz4 => "LZ4",
        Compression::Zstd => "ZSTD",
    };
    format!(
        "<dv version=\"2.0\">\n    <node name=\"outInfo\" path=\"/outInfo/\">\n        <node name=\"0\" path=\"/outInfo/0/\">\n            <attr key=\"compression\" type=\"string\">{c}</attr>\n            <attr key=\"originalModuleName\" type=\"string\">MonoCameraWriter</attr>\n            <attr key=\"originalOutputName\" type=\"string\">events</attr>\n            <attr key=\"typeDescription\" type=\"string\">Custom data type output.</attr>\n            <attr key=\"typeIdentifier\" type=\"string\">EVTS</attr>\n            <node name=\"info\" path=\"/outInfo/0/info/\">\n                <attr key=\"sizeX\" type=\"int\">{width}</attr>\n                <attr key=\"sizeY\" type=\"int\">{height}</attr>\n                <attr key=\"source\" type=\"string\">{source}</attr>\n            </node>\n        </node>\n    </node>\n</dv>\n"
    )
}
