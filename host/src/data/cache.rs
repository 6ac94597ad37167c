//! The on-disk form of a tokenized dataset and the key it is stored under. The key covers everything the
//! tokens depend on — the tokenizer file, the chat template, the data file, masking, length limit — so a
//! change to any of them misses the cache instead of reusing stale tokens.

use super::{ByteReader, DataStats, Example, Item};

const MAGIC: &[u8; 4] = b"HDS2";

/// 128-bit FNV-1a over the parts (two 64-bit lanes with different offsets), as hex.
pub fn key(parts: &[&[u8]]) -> String {
    let mut lanes = [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64];
    for part in parts {
        for (i, lane) in lanes.iter_mut().enumerate() {
            for &b in (part.len() as u64).to_le_bytes().iter().chain(part.iter()) {
                *lane ^= u64::from(b) + i as u64;
                *lane = lane.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{:016x}{:016x}", lanes[0], lanes[1])
}

pub fn encode(entries: &[(usize, Item)], stats: &DataStats) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.iter().flat_map(|(_, i)| &i.examples).map(|e| e.tokens.len() * 5 + 16).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (line, item) in entries {
        out.extend_from_slice(&(*line as u64).to_le_bytes());
        out.push(item.examples.len() as u8);
        out.push(match item.label {
            None => 2,
            Some(l) => u8::from(l),
        });
        for e in &item.examples {
            encode_example(&mut out, e);
        }
    }
    for n in [stats.rows, stats.truncated, stats.unsupervised] {
        out.extend_from_slice(&(n as u64).to_le_bytes());
    }
    out.extend_from_slice(&(stats.bad_rows.len() as u64).to_le_bytes());
    for (line, message) in &stats.bad_rows {
        out.extend_from_slice(&(*line as u64).to_le_bytes());
        out.extend_from_slice(&(message.len() as u32).to_le_bytes());
        out.extend_from_slice(message.as_bytes());
    }
    out
}

fn encode_example(out: &mut Vec<u8>, e: &Example) {
        out.extend_from_slice(&(e.tokens.len() as u32).to_le_bytes());
        out.push(u8::from(e.truncated));
        for t in &e.tokens {
            out.extend_from_slice(&t.to_le_bytes());
        }
        for chunk in e.supervised.chunks(8) {
            out.push(chunk.iter().enumerate().fold(0u8, |acc, (i, &s)| acc | (u8::from(s) << i)));
        }
}

/// The entries and statistics of a blob written by [`encode`]; `None` if it is not one (then the cache is
/// ignored and rebuilt).
pub fn decode(data: &[u8]) -> Option<(Vec<(usize, Item)>, DataStats)> {
    let mut r = ByteReader::new(data);
    if r.take(4)? != MAGIC {
        return None;
    }
    let count = r.u64()? as usize;
    let mut entries = Vec::with_capacity(count.min(1 << 24));
    for _ in 0..count {
        let line = r.u64()? as usize;
        let head = r.take(2)?;
        let (count, label) = (head[0], match head[1] {
            0 => Some(false),
            1 => Some(true),
            2 => None,
            _ => return None,
        });
        let examples = (0..count).map(|_| decode_example(&mut r)).collect::<Option<Vec<_>>>()?;
        entries.push((line, Item { examples, label }));
    }
    let mut stats = DataStats { rows: r.u64()? as usize, truncated: r.u64()? as usize, unsupervised: r.u64()? as usize, ..Default::default() };
    for _ in 0..r.u64()? {
        let line = r.u64()? as usize;
        let len = r.u32()? as usize;
        stats.bad_rows.push((line, String::from_utf8_lossy(r.take(len)?).into_owned()));
    }
    r.at_end().then_some((entries, stats))
}

fn decode_example(r: &mut ByteReader<'_>) -> Option<Example> {
    let n = r.u32()? as usize;
    let truncated = r.byte()? != 0;
    let tokens = r.u32s(n)?;
    let bits = r.take(n.div_ceil(8))?;
    let supervised = (0..n).map(|i| bits[i / 8] & (1 << (i % 8)) != 0).collect();
    Some(Example { tokens, supervised, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_reject_garbage() {
        let a = Example { tokens: vec![1, 70000, 3], supervised: vec![false, true, true], truncated: false };
        let b = Example { tokens: (0..19).collect(), supervised: (0..19).map(|i| i % 3 == 0).collect(), truncated: true };
        let entries = vec![
            (3, Item { examples: vec![a.clone()], label: None }),
            (9, Item { examples: vec![b.clone(), a.clone()], label: None }),
            (11, Item { examples: vec![b], label: Some(false) }),
        ];
        let stats = DataStats { rows: 3, truncated: 1, unsupervised: 0, bad_rows: vec![(5, "bad json".into())], ..Default::default() };
        let blob = encode(&entries, &stats);
        let (back, s) = decode(&blob).unwrap();
        assert_eq!(back, entries);
        assert_eq!((s.rows, s.truncated, s.bad_rows.clone()), (3, 1, vec![(5, "bad json".to_owned())]));
        assert!(decode(&blob[..blob.len() - 1]).is_none());
        assert!(decode(b"nope").is_none());
        assert_ne!(key(&[b"a", b"bc"]), key(&[b"ab", b"c"]), "part boundaries count");
    }
}
