//! Bit packing of symbols (8, 4, 2 or 1 bits each, first element in the lowest bits)
//! and byte-plane ordering of float bytes for the zstd stage.

/// Bytes taken by `n` symbols of `bits` (1, 2, 4 or 8) bits.
pub(crate) fn packed_len(n: usize, bits: u8) -> usize {
    let per_byte = 8 / usize::from(bits.clamp(1, 8));
    n.div_ceil(per_byte)
}

/// Appends `symbols` (each `< 2^bits`) packed to `bits` bits to `out`.
pub(crate) fn pack(symbols: &[u8], bits: u8, out: &mut Vec<u8>) {
    match bits {
        8 => out.extend_from_slice(symbols),
        4 => pack_with::<2>(symbols, out, 4),
        2 => pack_with::<4>(symbols, out, 2),
        _ => pack_with::<8>(symbols, out, 1),
    }
}

fn pack_with<const PER: usize>(symbols: &[u8], out: &mut Vec<u8>, bits: u32) {
    let chunks = symbols.chunks_exact(PER);
    let rest = chunks.remainder();
    out.extend(chunks.map(|c| {
        let mut b = 0u8;
        for (i, &s) in c.iter().enumerate() {
            b |= s << (i as u32 * bits);
        }
        b
    }));
    if !rest.is_empty() {
        let mut b = 0u8;
        for (i, &s) in rest.iter().enumerate() {
            b |= s << (i as u32 * bits);
        }
        out.push(b);
    }
}

/// Unpacks `n` symbols of `bits` bits from `packed` into `out` (resized to `n`).
/// `packed` must hold at least `packed_len(n, bits)` bytes; missing bytes read as 0.
pub(crate) fn unpack(packed: &[u8], bits: u8, n: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(n, 0);
    match bits {
        8 => {
            let m = n.min(packed.len());
            out[..m].copy_from_slice(&packed[..m]);
        }
        4 => unpack_with::<2>(packed, out, 4),
        2 => unpack_with::<4>(packed, out, 2),
        _ => unpack_with::<8>(packed, out, 1),
    }
}

fn unpack_with<const PER: usize>(packed: &[u8], out: &mut [u8], bits: u32) {
    let mask = ((1u16 << bits) - 1) as u8;
    let mut chunks = out.chunks_exact_mut(PER);
    for (c, &b) in (&mut chunks).zip(packed) {
        for (i, s) in c.iter_mut().enumerate() {
            *s = (b >> (i as u32 * bits)) & mask;
        }
    }
    let full = out.len() / PER;
    if let (Some(&b), rest) = (packed.get(full), &mut out[full * PER..]) {
        for (i, s) in rest.iter_mut().enumerate() {
            *s = (b >> (i as u32 * bits)) & mask;
        }
    }
}

/// Writes the bytes of `elems` elements of `size` bytes as `size` planes: all first
/// bytes, then all second bytes, ... The exponent bytes of neighbouring floats are
/// alike, so zstd finds runs it cannot see in interleaved bytes.
pub(crate) fn to_byte_planes(bytes: &[u8], size: usize, out: &mut Vec<u8>) {
    let elems = bytes.len() / size.max(1);
    let start = out.len();
    out.resize(start + elems * size, 0);
    let dst = &mut out[start..];
    for (i, e) in bytes.chunks_exact(size).enumerate() {
        for (p, &b) in e.iter().enumerate() {
            if let Some(d) = dst.get_mut(p * elems + i) {
                *d = b;
            }
        }
    }
}

/// Inverse of [`to_byte_planes`]: `planes` holds `size` planes; `out` gets the
/// interleaved bytes (resized to `planes.len()` rounded down to whole elements).
pub(crate) fn from_byte_planes(planes: &[u8], size: usize, out: &mut Vec<u8>) {
    let elems = planes.len() / size.max(1);
    out.clear();
    out.resize(elems * size, 0);
    for (p, plane) in planes.chunks_exact(elems.max(1)).take(size).enumerate() {
        for (i, &b) in plane.iter().enumerate() {
            if let Some(d) = out.get_mut(i * size + p) {
                *d = b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_width_round_trips_odd_lengths() {
        for bits in [1u8, 2, 4, 8] {
            let max = ((1u16 << bits) - 1) as u8;
            let symbols: Vec<u8> = (0..37u32).map(|i| (i * 7 % 256) as u8 & max).collect();
            let mut packed = Vec::new();
            pack(&symbols, bits, &mut packed);
            assert_eq!(packed.len(), packed_len(symbols.len(), bits));
            let mut back = Vec::new();
            unpack(&packed, bits, symbols.len(), &mut back);
            assert_eq!(back, symbols, "bits {bits}");
        }
    }

    #[test]
    fn first_element_goes_to_the_lowest_bits() {
        let mut packed = Vec::new();
        pack(&[1, 0, 0, 0, 0, 0, 0, 1], 1, &mut packed);
        assert_eq!(packed, [0b1000_0001]);
        packed.clear();
        pack(&[0xA, 0x5], 4, &mut packed);
        assert_eq!(packed, [0x5A]);
    }

    #[test]
    fn byte_planes_round_trip() {
        let bytes: Vec<u8> = (0..40u8).collect();
        let mut planes = Vec::new();
        to_byte_planes(&bytes, 4, &mut planes);
        assert_eq!(&planes[..3], &[0, 4, 8]);
        let mut back = Vec::new();
        from_byte_planes(&planes, 4, &mut back);
        assert_eq!(back, bytes);
    }
}
