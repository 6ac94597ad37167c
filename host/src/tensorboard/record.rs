//! TFRecord framing, the container of TensorBoard event files: per record a little-endian u64 length, the
//! masked CRC-32C of those 8 bytes, the data, and the masked CRC-32C of the data.

use std::io::{self, Write};

/// TensorFlow's CRC mask (tensorflow/core/lib/hash/crc32c.h): rotate right by 15 and add a constant, so a
/// CRC over data that itself holds CRCs stays well distributed.
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

pub fn write(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let length = (data.len() as u64).to_le_bytes();
    out.write_all(&length)?;
    out.write_all(&masked_crc(&length).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// The records of `bytes` up to the first one that is incomplete or fails its checksums (what a crash in the
/// middle of a write leaves), and whether all bytes were read.
pub fn read_all(bytes: &[u8]) -> (Vec<&[u8]>, bool) {
    let mut records = Vec::new();
    let mut at = 0;
    let u32_at = |i: usize| bytes.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else { return (records, false) };
        if u32_at(at + 8) != Some(masked_crc(header)) {
            return (records, false);
        }
        let mut length = [0u8; 8];
        length.copy_from_slice(header);
        let Ok(length) = usize::try_from(u64::from_le_bytes(length)) else { return (records, false) };
        let start = at + 12;
        let Some(data) = start.checked_add(length).and_then(|end| bytes.get(start..end)) else { return (records, false) };
        if u32_at(start + length) != Some(masked_crc(data)) {
            return (records, false);
        }
        records.push(data);
        at = start + length + 4;
    }
    (records, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_the_published_values() {
        // RFC 3720 B.4: CRC-32C of 32 zero bytes is 0x8a9136aa; of "123456789", 0xe3069283.
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // TensorFlow's Mask(): ((crc >> 15) | (crc << 17)) + 0xa282ead8, by hand for 0xe3069283.
        let crc: u32 = 0xe306_9283;
        assert_eq!(masked_crc(b"123456789"), ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8));
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let mut bytes = Vec::new();
        write(&mut bytes, b"first").unwrap();
        write(&mut bytes, b"").unwrap();
        write(&mut bytes, b"third record").unwrap();
        assert_eq!(bytes.len(), 3 * 16 + 5 + 12);
        let (records, complete) = read_all(&bytes);
        assert_eq!(records, vec![&b"first"[..], b"", b"third record"]);
        assert!(complete);
        let (records, complete) = read_all(&bytes[..bytes.len() - 3]);
        assert_eq!(records.len(), 2);
        assert!(!complete);
        let mut corrupt = bytes.clone();
        corrupt[12] ^= 1;
        assert_eq!(read_all(&corrupt).0.len(), 0);
    }
}
