//! The GGUF container (ggml's `docs/gguf.md`, versions 2 and 3, little-endian): header, typed key-value
//! metadata, tensor infos, and the aligned data section. Only the directory is read here; tensor bytes are
//! read one tensor at a time, so a many-gigabyte file is never held whole in memory.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use super::{quants::GgmlType, GgufError};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    /// Unsigned 64-bit values above `i64::MAX` keep their own variant.
    UInt(u64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(v) => u64::try_from(*v).ok(),
            Value::UInt(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            Value::UInt(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's directory entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous (row) dimension, the reverse of MLX's shape.
    pub dims: Vec<u64>,
    pub kind: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape as MLX and safetensors hold it (slowest dimension first).
    pub fn shape(&self) -> Vec<i32> {
        self.dims.iter().rev().map(|&d| d as i32).collect()
    }

    pub fn byte_len(&self) -> u64 {
        let (block, bytes) = self.kind.block();
        self.elements() / block as u64 * bytes as u64
    }
}

pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Bounds on counts read from the file, so a corrupt header fails cleanly instead of allocating terabytes.
const MAX_COUNT: u64 = 1 << 24;
const MAX_STRING: u64 = 1 << 30;

struct Reader<R> {
    inner: R,
    path: PathBuf,
}

impl<R: Read> Reader<R> {
    fn bad(&self, message: impl Into<String>) -> GgufError {
        GgufError::Format { path: self.path.clone(), message: message.into() }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b).map_err(|e| self.bad(format!("truncated: {e}")))?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn count(&mut self, what: &str) -> Result<u64, GgufError> {
        let n = self.u64()?;
        if n > MAX_COUNT {
            return Err(self.bad(format!("{what} count {n} is not plausible")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(self.bad(format!("string length {n} is not plausible")));
        }
        let mut b = vec![0u8; n as usize];
        self.inner.read_exact(&mut b).map_err(|e| self.bad(format!("truncated string: {e}")))?;
        String::from_utf8(b).map_err(|e| self.bad(format!("a string is not UTF-8: {e}")))
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match kind {
            0 => Value::Int(i64::from(u8::from_le_bytes(self.bytes()?))),
            1 => Value::Int(i64::from(i8::from_le_bytes(self.bytes()?))),
            2 => Value::Int(i64::from(u16::from_le_bytes(self.bytes()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.bytes()?))),
            4 => Value::Int(i64::from(u32::from_le_bytes(self.bytes()?))),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.bytes()?))),
            6 => Value::Float(f64::from(f32::from_le_bytes(self.bytes()?))),
            7 => Value::Bool(self.bytes::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.bad("arrays nested too deeply"));
                }
                let inner = self.u32()?;
                let n = self.count("array")?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => {
                let v = self.u64()?;
                i64::try_from(v).map_or(Value::UInt(v), Value::Int)
            }
            11 => Value::Int(i64::from_le_bytes(self.bytes()?)),
            12 => Value::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

impl Gguf {
    /// Reads the header, metadata and tensor directory of `path`.
    pub fn open(path: &Path) -> Result<Gguf, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::Io { path: path.to_owned(), message: e.to_string() })?;
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        let mut r = Reader { inner: BufReader::new(file), path: path.to_owned() };
        if &r.bytes::<4>()? != MAGIC {
            return Err(r.bad("not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!("GGUF version {version}; versions 2 and 3 are read")));
        }
        let tensor_count = r.count("tensor")?;
        let kv_count = r.count("metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let ndim = r.u32()?;
            if ndim == 0 || ndim > 4 {
                return Err(r.bad(format!("{name}: {ndim} dimensions")));
            }
            let dims = (0..ndim).map(|_| r.u64()).collect::<Result<Vec<_>, _>>()?;
            let type_id = r.u32()?;
            let kind = GgmlType::from_id(type_id).ok_or_else(|| r.bad(format!("{name}: unknown ggml tensor type {type_id}")))?;
            let offset = r.u64()?;
            let info = TensorInfo { name, dims, kind, offset };
            let (block, _) = info.kind.block();
            if !info.dims[0].is_multiple_of(block as u64) {
                return Err(r.bad(format!("{}: rows of {} values do not fill {:?} blocks of {block}", info.name, info.dims[0], info.kind)));
            }
            tensors.push(info);
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32).max(1);
        let position = r.inner.stream_position().map_err(|e| r.bad(e.to_string()))?;
        let data_start = position.div_ceil(alignment) * alignment;
        for t in &tensors {
            if data_start + t.offset + t.byte_len() > file_len {
                return Err(r.bad(format!("{}: its data runs past the end of the file", t.name)));
            }
        }
        Ok(Gguf { path: path.to_owned(), version, metadata, tensors, data_start })
    }

    /// A file's directory without a file, for tests of what is built from metadata.
    #[cfg(test)]
    pub(crate) fn from_metadata(metadata: BTreeMap<String, Value>) -> Gguf {
        Gguf { path: PathBuf::from("test.gguf"), version: 3, metadata, tensors: Vec::new(), data_start: 0 }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The raw bytes of one tensor.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let io = |e: std::io::Error| GgufError::Io { path: self.path.clone(), message: format!("{}: {e}", t.name) };
        let mut f = File::open(&self.path).map_err(io)?;
        f.seek(SeekFrom::Start(self.data_start + t.offset)).map_err(io)?;
        let mut bytes = vec![0u8; t.byte_len() as usize];
        f.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }
}
