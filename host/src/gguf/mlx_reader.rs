//! MLX's own GGUF reader (`mlx::core::load_gguf` through mlx-c): its arrays by GGUF tensor name, quantized
//! tensors as `name` (packed u32), `prefix.scales` and `prefix.biases`.

use std::{collections::HashMap, ffi::CString, path::Path};

use mlx_rs::{Array, Stream};

use super::GgufError;

/// An mlx-c handle freed on drop.
struct Handle<T: Copy>(T, unsafe extern "C" fn(T) -> std::os::raw::c_int);

impl<T: Copy> Drop for Handle<T> {
    fn drop(&mut self) {
        // SAFETY: the handle was created by the matching mlx-c constructor and is freed once.
        unsafe {
            (self.1)(self.0);
        }
    }
}

pub fn load(file: &Path) -> Result<HashMap<String, Array>, GgufError> {
    let fail = |what: &str| GgufError::Mlx(format!("{}: MLX's GGUF reader failed ({what})", file.display()));
    let path = CString::new(file.to_string_lossy().as_bytes()).map_err(|_| fail("a NUL in the path"))?;
    let stream = Stream::cpu();
    // SAFETY: every mlx-c object below is created, used and freed here; arrays handed to `Array::from_ptr`
    // are fresh references it then owns.
    unsafe {
        let mut raw = mlx_sys::mlx_io_gguf_new();
        let status = mlx_sys::mlx_load_gguf(&mut raw, path.as_ptr(), stream.as_ptr());
        let gguf = Handle(raw, mlx_sys::mlx_io_gguf_free);
        if status != 0 {
            return Err(fail("load"));
        }
        let mut keys_raw = mlx_sys::mlx_vector_string_new();
        let status = mlx_sys::mlx_io_gguf_get_keys(&mut keys_raw, gguf.0);
        let keys = Handle(keys_raw, mlx_sys::mlx_vector_string_free);
        if status != 0 {
            return Err(fail("keys"));
        }
        let mut out = HashMap::new();
        for i in 0..mlx_sys::mlx_vector_string_size(keys.0) {
            let mut name_ptr: *mut std::os::raw::c_char = std::ptr::null_mut();
            if mlx_sys::mlx_vector_string_get(&mut name_ptr, keys.0, i) != 0 || name_ptr.is_null() {
                return Err(fail("a key"));
            }
            let name = std::ffi::CStr::from_ptr(name_ptr).to_string_lossy().into_owned();
            let mut arr = mlx_sys::mlx_array_new();
            if mlx_sys::mlx_io_gguf_get_array(&mut arr, gguf.0, name_ptr) != 0 {
                mlx_sys::mlx_array_free(arr);
                return Err(fail(&name));
            }
            out.insert(name, Array::from_ptr(arr));
        }
        Ok(out)
    }
}
