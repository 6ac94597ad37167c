//! ggml's tensor types: which MLX reads itself, which are repacked into MLX's affine quantization without
//! loss, and the block layouts of the rest (k-quants, Q5_0/Q5_1, BF16), decoded here to float32. Layouts follow
//! ggml's `ggml-common.h` block structs; every decoder is checked against the `gguf` package's dequantizer
//! (host/tests/gguf_import.rs).

use half::{bf16, f16};

/// A ggml tensor type, by its id in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    /// A type this program does not decode (the i-quants, Q8_1/Q8_K, integer tensors...), by id.
    Unsupported(u32),
}

const QK_K: usize = 256;

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            30 => BF16,
            9 | 15..=29 | 31..=41 => Unsupported(id),
            _ => return None,
        })
    }

    /// (values per block, bytes per block); (1, 0) for an unsupported type.
    pub fn block(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 => (1, 2),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q2_K => (QK_K, 84),
            Q3_K => (QK_K, 110),
            Q4_K => (QK_K, 144),
            Q5_K => (QK_K, 176),
            Q6_K => (QK_K, 210),
            Unsupported(_) => (1, 0),
        }
    }

    /// MLX's GGUF reader loads these as they are: floats copied, Q4_0/Q4_1/Q8_0 as affine quantization with
    /// group size 32 (BF16 it would narrow to float16, so it is decoded here).
    pub fn mlx_reads(self) -> bool {
        matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
    }

    /// Bits of the affine quantization a Q4_0/Q4_1/Q8_0 tensor is, losslessly.
    pub fn affine_bits(self) -> Option<i32> {
        match self {
            GgmlType::Q4_0 | GgmlType::Q4_1 => Some(4),
            GgmlType::Q8_0 => Some(8),
            _ => None,
        }
    }
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Float32 values of a tensor of `kind` stored in `bytes` (ggml order), or `None` for a type not decoded here.
pub fn decode(kind: GgmlType, bytes: &[u8]) -> Option<Vec<f32>> {
    use GgmlType::*;
    let (block, size) = kind.block();
    if size == 0 {
        return None;
    }
    let mut out = vec![0f32; bytes.len() / size * block];
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        match kind {
            F32 => o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            F16 => o[0] = half(b),
            BF16 => o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            Q4_0 | Q4_1 | Q5_0 | Q5_1 => small_block(kind, b, o),
            Q8_0 => {
                let d = half(b);
                for (j, q) in b[2..34].iter().enumerate() {
                    o[j] = d * f32::from(*q as i8);
                }
            }
            Q2_K => q2_k(b, o),
            Q3_K => q3_k(b, o),
            Q4_K | Q5_K => q45_k(kind == Q5_K, b, o),
            Q6_K => q6_k(b, o),
            Unsupported(_) => return None,
        }
    }
    Some(out)
}

/// Q4_0, Q4_1, Q5_0, Q5_1: 32 values; value j's low nibble sits in byte j % 16 (low half for j < 16, high half
/// after), Q5's fifth bit in bit j of a 32-bit word; Q*_0 are centred (−8 / −16), Q*_1 carry a minimum.
fn small_block(kind: GgmlType, b: &[u8], o: &mut [f32]) {
    use GgmlType::*;
    let d = half(b);
    let (min, rest) = match kind {
        Q4_1 | Q5_1 => (Some(half(&b[2..])), &b[4..]),
        _ => (None, &b[2..]),
    };
    let (high, qs) = match kind {
        Q5_0 | Q5_1 => (Some(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]])), &rest[4..]),
        _ => (None, rest),
    };
    for j in 0..32 {
        let mut q = u32::from((qs[j % 16] >> (4 * (j / 16))) & 0x0F);
        if let Some(h) = high {
            q |= ((h >> j) & 1) << 4;
        }
        o[j] = match (min, high.is_some()) {
            (Some(m), _) => d * q as f32 + m,
            (None, true) => d * (q as f32 - 16.0),
            (None, false) => d * (q as f32 - 8.0),
        };
    }
}

/// Q2_K: 16 sub-blocks of 16, each with a 4-bit scale and 4-bit minimum (`scales[16]`), 2-bit values
/// (`qs[64]`), then the super-block's `d` and `dmin`. Value p = 128h + 32s + l is bits 2s..2s+1 of qs[32h + l].
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half(&b[80..]), half(&b[82..]));
    for (p, v) in o.iter_mut().enumerate() {
        let (h, s, l) = (p / 128, (p / 32) % 4, p % 32);
        let q = f32::from((qs[32 * h + l] >> (2 * s)) & 3);
        let sc = scales[p / 16];
        *v = d * f32::from(sc & 0x0F) * q - dmin * f32::from(sc >> 4);
    }
}

/// Q3_K: a high-bit mask (`hmask[32]`: value p's bit is bit p / 32 of hmask[p % 32], set meaning "no −4"),
/// 2-bit values laid out as Q2_K's, 16 signed 6-bit scales packed into 12 bytes (low nibbles in bytes 0-7,
/// high pairs in bytes 8-11), and `d`.
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half(&b[108..]);
    let mut scales = [0f32; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = (packed[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 0x03;
        *s = f32::from(((low | (high << 4)) as i8) - 32);
    }
    for (p, v) in o.iter_mut().enumerate() {
        let (h, s, l) = (p / 128, (p / 32) % 4, p % 32);
        let low = i8::try_from((qs[32 * h + l] >> (2 * s)) & 3).unwrap_or(0);
        let set = (hmask[p % 32] >> (p / 32)) & 1 == 1;
        let q = if set { low } else { low - 4 };
        *v = d * scales[p / 16] * f32::from(q);
    }
}

/// Q4_K's and Q5_K's 8 six-bit scales and minimums, packed into 12 bytes.
fn scale_min_k4(packed: &[u8], j: usize) -> (f32, f32) {
    if j < 4 {
        (f32::from(packed[j] & 63), f32::from(packed[j + 4] & 63))
    } else {
        let sc = (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4);
        let m = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
        (f32::from(sc), f32::from(m))
    }
}

/// Q4_K / Q5_K: `d`, `dmin`, packed scales, (Q5_K: `qh[32]`, value p's fifth bit is bit p / 32 of
/// qh[p % 32]), then 4-bit values: sub-block s of 32 takes the low (even s) or high (odd s) nibbles of
/// qs[32 (s / 2) ..][..32].
fn q45_k(five: bool, b: &[u8], o: &mut [f32]) {
    let (d, dmin, packed) = (half(b), half(&b[2..]), &b[4..16]);
    let (qh, qs) = if five { (Some(&b[16..48]), &b[48..176]) } else { (None, &b[16..144]) };
    for (p, v) in o.iter_mut().enumerate() {
        let (s, l) = (p / 32, p % 32);
        let mut q = (qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F;
        if let Some(qh) = qh {
            q |= ((qh[l] >> s) & 1) << 4;
        }
        let (sc, m) = scale_min_k4(packed, s);
        *v = d * sc * f32::from(q) - dmin * m;
    }
}

/// Q6_K: low nibbles `ql[128]`, high pairs `qh[64]`, 16 signed 8-bit scales, `d`. Value p = 128h + r:
/// low nibble of ql[64h + r % 64] (high nibble when r ≥ 64), high bits 2(r / 32) of qh[32h + r % 32]; minus 32.
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half(&b[208..]);
    for (p, v) in o.iter_mut().enumerate() {
        let (h, r) = (p / 128, p % 128);
        let low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = i32::from(low | (high << 4)) - 32;
        *v = d * f32::from(scales[p / 16] as i8) * q as f32;
    }
}

/// A Q4_0/Q4_1/Q8_0 tensor as MLX affine quantization with group size 32, without loss: `w = scale · q + bias`
/// with unsigned q packed little-endian into u32 words (value k of a row at bits `bits · (k % per_word)` of
/// word k / per_word), scales and biases in float16 as MLX's own reader gives them. Q*_0's centring becomes
/// the bias (−8d, −128d); Q4_1's minimum is the bias. Returns (weights, scales, biases), row-major.
pub fn to_affine(kind: GgmlType, bytes: &[u8]) -> Option<(Vec<u32>, Vec<f16>, Vec<f16>)> {
    let bits = kind.affine_bits()?;
    let (_, size) = kind.block();
    let blocks = bytes.len() / size;
    let per_word = 32 / bits as usize;
    let mut words = vec![0u32; blocks * 32 / per_word];
    let (mut scales, mut biases) = (Vec::with_capacity(blocks), Vec::with_capacity(blocks));
    for (i, b) in bytes.chunks_exact(size).enumerate() {
        let d = f16::from_le_bytes([b[0], b[1]]);
        let (bias, values): (f16, [u32; 32]) = match kind {
            GgmlType::Q8_0 => {
                let mut v = [0u32; 32];
                for (j, q) in b[2..34].iter().enumerate() {
                    v[j] = u32::from((*q as i8 as i16 + 128) as u8);
                }
                (f16::from_f32(-128.0 * d.to_f32()), v)
            }
            _ => {
                let (bias, qs) = match kind {
                    GgmlType::Q4_1 => (f16::from_le_bytes([b[2], b[3]]), &b[4..20]),
                    _ => (f16::from_f32(-8.0 * d.to_f32()), &b[2..18]),
                };
                let mut v = [0u32; 32];
                for (j, x) in v.iter_mut().enumerate() {
                    *x = u32::from((qs[j % 16] >> (4 * (j / 16))) & 0x0F);
                }
                (bias, v)
            }
        };
        scales.push(d);
        biases.push(bias);
        let base = i * 32 / per_word;
        for (k, q) in values.iter().enumerate() {
            words[base + k / per_word] |= q << (bits as usize * (k % per_word));
        }
    }
    Some((words, scales, biases))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes with finite, modest f16 scale fields at `fields`.
    fn blocks(kind: GgmlType, count: usize, fields: &[usize]) -> Vec<u8> {
        let (_, size) = kind.block();
        let mut state = 0x9e37_79b9_u32;
        let mut out: Vec<u8> = (0..count * size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        for (b, block) in out.chunks_exact_mut(size).enumerate() {
            for (k, &at) in fields.iter().enumerate() {
                let v = f16::from_f32(0.01 * (1 + b + k) as f32).to_le_bytes();
                block[at..at + 2].copy_from_slice(&v);
            }
        }
        out
    }

    #[test]
    fn a_hand_made_q4_0_block_decodes_to_its_definition() {
        // d = 0.5; byte j holds value j (low nibble) and value j + 16 (high nibble).
        let mut b = f16::from_f32(0.5).to_le_bytes().to_vec();
        b.extend((0..16u8).map(|j| (j & 0x0F) | ((15 - j) << 4)));
        let v = decode(GgmlType::Q4_0, &b).unwrap();
        assert_eq!(v[0], 0.5 * (0.0 - 8.0));
        assert_eq!(v[3], 0.5 * (3.0 - 8.0));
        assert_eq!(v[16], 0.5 * (15.0 - 8.0));
        assert_eq!(v[31], 0.5 * (0.0 - 8.0));
    }

    #[test]
    fn the_affine_repacking_dequantizes_to_the_decoded_values() {
        // MLX's affine dequantization w = scale · q + bias of the repacked words gives exactly the block's
        // values: the biases (−8d, −128d, m) are exact in float16, and so are the products.
        for (kind, fields) in [(GgmlType::Q4_0, vec![0]), (GgmlType::Q4_1, vec![0, 2]), (GgmlType::Q8_0, vec![0])] {
            let bytes = blocks(kind, 6, &fields);
            let want = decode(kind, &bytes).unwrap();
            let (words, scales, biases) = to_affine(kind, &bytes).unwrap();
            let bits = kind.affine_bits().unwrap() as usize;
            let per_word = 32 / bits;
            for (k, w) in want.iter().enumerate() {
                let q = (words[k / per_word] >> (bits * (k % per_word))) & ((1 << bits) - 1);
                let g = k / 32;
                let got = scales[g].to_f32() * q as f32 + biases[g].to_f32();
                assert_eq!(got, *w, "{kind:?} value {k}");
            }
        }
    }
}
