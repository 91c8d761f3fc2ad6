//! Just enough of the flatbuffers wire format to read AEDAT 4 headers and packets,
//! with every offset checked against the buffer (a verifier and a reader in one).
//! AEDAT 4 uses a handful of fixed schemas, so generated code and a dependency on the
//! flatbuffers crate buy little.

fn slice(buf: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    buf.get(at..at.checked_add(len)?)
}

pub(crate) fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = slice(buf, at, 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = slice(buf, at, 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub(crate) fn i64_at(buf: &[u8], at: usize) -> Option<i64> {
    let b = slice(buf, at, 8)?;
    let mut a = [0; 8];
    a.copy_from_slice(b);
    Some(i64::from_le_bytes(a))
}

/// A table: its position and its vtable's.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

impl<'a> Table<'a> {
    /// The root table of a buffer that starts at `start` (the root offset's position).
    pub(crate) fn root(buf: &'a [u8], start: usize) -> Option<Self> {
        let pos = start.checked_add(u32_at(buf, start)? as usize)?;
        Self::at(buf, pos)
    }

    fn at(buf: &'a [u8], pos: usize) -> Option<Self> {
        let soffset = u32_at(buf, pos)? as i32;
        let vtable = usize::try_from(pos as i64 - i64::from(soffset)).ok()?;
        let vtable_len = usize::from(u16_at(buf, vtable)?);
        if vtable_len < 4 || vtable_len % 2 != 0 {
            return None;
        }
        slice(buf, vtable, vtable_len)?;
        Some(Self {
            buf,
            pos,
            vtable,
            vtable_len,
        })
    }

    /// The position of field `id`, `None` when absent (default value).
    fn field(&self, id: usize) -> Option<usize> {
        let entry = 4 + 2 * id;
        if entry + 2 > self.vtable_len {
            return None;
        }
        match u16_at(self.buf, self.vtable + entry)? {
            0 => None,
            off => Some(self.pos + usize::from(off)),
        }
    }

    /// A scalar i32 field; `Err` when its bytes are out of bounds.
    pub(crate) fn i32(&self, id: usize, default: i32) -> Result<i32, &'static str> {
        match self.field(id) {
            None => Ok(default),
            Some(p) => u32_at(self.buf, p)
                .map(|v| v as i32)
                .ok_or("scalar field out of bounds"),
        }
    }

    /// A scalar i64 field.
    pub(crate) fn i64(&self, id: usize, default: i64) -> Result<i64, &'static str> {
        match self.field(id) {
            None => Ok(default),
            Some(p) => i64_at(self.buf, p).ok_or("scalar field out of bounds"),
        }
    }

    /// The bytes of a vector field whose elements are `elem` bytes each (a string is a
    /// vector of bytes), with its element count. `None` when the field is absent.
    pub(crate) fn vector(
        &self,
        id: usize,
        elem: usize,
    ) -> Result<Option<(&'a [u8], usize)>, &'static str> {
        let Some(p) = self.field(id) else {
            return Ok(None);
        };
        let target = u32_at(self.buf, p)
            .and_then(|off| p.checked_add(off as usize))
            .ok_or("vector offset out of bounds")?;
        let len = u32_at(self.buf, target).ok_or("vector length out of bounds")? as usize;
        let bytes = len.checked_mul(elem).ok_or("vector length overflows")?;
        let data = target
            .checked_add(4)
            .and_then(|start| slice(self.buf, start, bytes))
            .ok_or("vector runs past the end of the buffer")?;
        Ok(Some((data, len)))
    }
}

/// Writes flatbuffers for the AEDAT 4 schemas (used by the encoders for spec-made
/// test files and by the DV stream test server).
pub(crate) mod build {
    /// A size-prefixed `EventPacket` (file identifier `EVTS`) holding `events`.
    ///
    /// The layout is byte for byte the one dv-processing writes: it reads the file
    /// identifier as a NUL-terminated string, so the identifier must be followed by
    /// padding, not by the vtable.
    pub(crate) fn event_packet(events: &[crate::Event]) -> Vec<u8> {
        // Offsets from after the size prefix:
        // 0 root offset -> 16, 4 "EVTS", 8 pad, 10 vtable [6, 8, 4],
        // 16 table: soffset 6 (vtable at 10), 20 uoffset to the vector (-> 24),
        // 24 vector length, 28.. events (8-aligned counting the size prefix).
        let mut b = Vec::with_capacity(32 + 16 * events.len());
        b.extend_from_slice(&16u32.to_le_bytes()); // root table at 16
        b.extend_from_slice(b"EVTS");
        b.extend_from_slice(&[0, 0]); // pad
        b.extend_from_slice(&6u16.to_le_bytes()); // vtable length
        b.extend_from_slice(&8u16.to_le_bytes()); // table length
        b.extend_from_slice(&4u16.to_le_bytes()); // field 0 at table+4
        b.extend_from_slice(&6i32.to_le_bytes()); // table at 16: vtable at 16-6
        b.extend_from_slice(&4u32.to_le_bytes()); // field 0 at 20: vector at 24
        b.extend_from_slice(&(events.len() as u32).to_le_bytes()); // 24: length
        for e in events {
            b.extend_from_slice(&e.t.to_le_bytes());
            b.extend_from_slice(&(e.x as i16).to_le_bytes());
            b.extend_from_slice(&(e.y as i16).to_le_bytes());
            b.push(u8::from(e.p));
            b.extend_from_slice(&[0; 3]);
        }
        let mut out = Vec::with_capacity(b.len() + 4);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(&b);
        out
    }

    /// An `IOHeader` (file identifier `IOHE`): compression, data table position and the
    /// XML stream description, laid out as dv-processing lays it out.
    pub(crate) fn io_header(compression: i32, data_table: i64, description: &str) -> Vec<u8> {
        // 0 root offset -> 24, 4 "IOHE", 8 pad, 14 vtable [10, 24, 4, 12, 8],
        // 24 table: soffset 10, 28 compression, 32 uoffset string (-> 48),
        // 36 data table (i64, 8-aligned counting the size prefix), 44 pad,
        // 48 string length, 52 bytes, NUL.
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(b"IOHE");
        b.extend_from_slice(&[0; 6]);
        for v in [10u16, 24, 4, 12, 8] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&10i32.to_le_bytes()); // 24: vtable at 14
        b.extend_from_slice(&compression.to_le_bytes()); // 28
        b.extend_from_slice(&16u32.to_le_bytes()); // 32: string at 48
        b.extend_from_slice(&data_table.to_le_bytes()); // 36
        b.extend_from_slice(&[0; 4]); // 44
        b.extend_from_slice(&(description.len() as u32).to_le_bytes()); // 48
        b.extend_from_slice(description.as_bytes());
        b.push(0);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }
}
