//! mlx-c's half.h declares `float16_t`/`bfloat16_t` and their accessors only on ARM; mlx-rs uses them on every
//! platform. The shapes match what bindgen emits on aarch64 (float16_t a transparent u16 newtype whose `.0`
//! mlx-rs reads, bfloat16_t a plain u16). MLX's `array::item<T>`/`data<T>` only reinterpret the buffer, so
//! the uint16 accessors return the same 16 bits.

use std::os::raw::c_int;

use super::{mlx_array, mlx_array_data_uint16, mlx_array_item_uint16};

#[repr(transparent)]
#[derive(Debug, Default, Copy, Clone, Hash, PartialEq, Eq)]
pub struct __BindgenFloat16(pub u16);
pub type float16_t = __BindgenFloat16;
pub type bfloat16_t = u16;

pub unsafe fn mlx_array_item_float16(res: *mut float16_t, arr: mlx_array) -> c_int {
    mlx_array_item_uint16(res.cast::<u16>(), arr)
}

pub unsafe fn mlx_array_item_bfloat16(res: *mut bfloat16_t, arr: mlx_array) -> c_int {
    mlx_array_item_uint16(res, arr)
}

pub unsafe fn mlx_array_data_float16(arr: mlx_array) -> *const float16_t {
    mlx_array_data_uint16(arr).cast::<float16_t>()
}

pub unsafe fn mlx_array_data_bfloat16(arr: mlx_array) -> *const bfloat16_t {
    mlx_array_data_uint16(arr)
}
