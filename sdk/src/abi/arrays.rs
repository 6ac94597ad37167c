//! MLX arrays across the boundary. Both sides call the same libmlx; each side's mlx-c can free a handle the
//! other made (they share libstdc++'s allocator).

use mlx_rs::Array;
use mlx_sys::mlx_array;

/// The "absent" handle.
pub const fn absent() -> mlx_array {
    mlx_array { ctx: std::ptr::null_mut() }
}

/// Lends an array for a call: the callee must not free it.
pub fn lend(array: &Array) -> mlx_array {
    array.as_ptr()
}

/// Lends an optional array; `None` becomes the absent handle.
pub fn lend_opt(array: Option<&Array>) -> mlx_array {
    array.map_or(absent(), Array::as_ptr)
}

/// Takes a second reference to a lent array, as an `Array` this side owns (dropping it frees only that
/// reference). The absent handle gives `None`.
///
/// # Safety
/// `handle` must be absent or a live mlx_array.
pub unsafe fn borrow(handle: mlx_array) -> Option<Array> {
    if handle.ctx.is_null() {
        return None;
    }
    let mut own = mlx_sys::mlx_array_new();
    mlx_sys::mlx_array_set(&mut own, handle);
    Some(Array::from_ptr(own))
}

/// Hands an array to the other side, which then owns the handle.
pub fn give(array: Array) -> mlx_array {
    let handle = array.as_ptr();
    std::mem::forget(array);
    handle
}

/// Takes ownership of a handle the other side gave.
///
/// # Safety
/// `handle` must be a live mlx_array given to us (not lent).
pub unsafe fn take(handle: mlx_array) -> Array {
    Array::from_ptr(handle)
}
