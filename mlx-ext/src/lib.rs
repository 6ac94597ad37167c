//! MLX primitives of our own, compiled from `csrc/` against the same libmlx and mlx-c as mlx-rs.
//!
//! Decode multiplies one activation row by every weight matrix of the model. MLX's CPU backend runs that as a
//! GEMM (float32) or a scalar loop (quantized), both far below the machine's memory bandwidth; the products
//! here take over exactly that case (one row of float32 on a CPU stream) and leave every other case, and every
//! other device, to MLX's own matmul and quantized_matmul. Both primitives have gradients (through MLX ops).

pub mod distributed;

use std::ffi::{c_char, c_int, CStr};

use mlx_rs::{error::Exception, Array, Stream};
use mlx_sys::{mlx_array, mlx_stream};

extern "C" {
    fn mlx_ext_matmul_t(res: *mut mlx_array, x: mlx_array, w: mlx_array, s: mlx_stream, err: *mut c_char, cap: usize) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn mlx_ext_quantized_matmul_t(
        res: *mut mlx_array,
        x: mlx_array,
        w: mlx_array,
        scales: mlx_array,
        biases: mlx_array,
        group_size: c_int,
        bits: c_int,
        s: mlx_stream,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

#[allow(clippy::too_many_arguments)]
extern "C" {
    fn mlx_ext_quantize(
        w_out: *mut mlx_array,
        scales_out: *mut mlx_array,
        biases_out: *mut mlx_array,
        w: mlx_array,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        s: mlx_stream,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn mlx_ext_dequantize(
        res: *mut mlx_array,
        w: mlx_array,
        scales: mlx_array,
        biases: mlx_array,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        s: mlx_stream,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn mlx_ext_quantized_matmul(
        res: *mut mlx_array,
        x: mlx_array,
        w: mlx_array,
        scales: mlx_array,
        biases: mlx_array,
        transpose: c_int,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        s: mlx_stream,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
    fn mlx_ext_gather_qmm(
        res: *mut mlx_array,
        x: mlx_array,
        w: mlx_array,
        scales: mlx_array,
        biases: mlx_array,
        lhs_indices: mlx_array,
        rhs_indices: mlx_array,
        transpose: c_int,
        group_size: c_int,
        bits: c_int,
        mode: *const c_char,
        sorted_indices: c_int,
        s: mlx_stream,
        err: *mut c_char,
        cap: usize,
    ) -> c_int;
}

extern "C" {
    fn mlx_ext_primitive_name(a: mlx_array, out: *mut c_char, cap: usize) -> c_int;
    fn mlx_ext_use_portable_kernels(on: c_int);
}

/// Runs the primitives with plain loops only (no BLAS, no AVX2), as on a machine that has neither: for tests
/// of those loops. Process-wide; takes effect for products evaluated afterwards.
pub fn use_portable_kernels(on: bool) {
    // SAFETY: sets an atomic flag.
    unsafe { mlx_ext_use_portable_kernels(c_int::from(on)) }
}

/// The name of the MLX primitive that computes `a` (`"mlx_ext::MatvecT"`, `"mlx_ext::QuantizedMatmul"`, MLX's `"Matmul"`, ...), or `""`
/// once `a` is evaluated: which path a product took, for tests and diagnostics.
pub fn primitive_name(a: &Array) -> Result<String, Exception> {
    let mut out = [0 as c_char; 128];
    // SAFETY: `a` is borrowed for the call; the callee NUL-terminates within `cap` bytes.
    let status = unsafe { mlx_ext_primitive_name(a.as_ptr(), out.as_mut_ptr(), out.len()) };
    let text = unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned();
    if status == 0 {
        Ok(text)
    } else {
        Err(Exception::custom(text))
    }
}

/// Calls one of the C entry points with a fresh result handle and an error buffer.
fn call(op: impl FnOnce(*mut mlx_array, *mut c_char, usize) -> c_int) -> Result<Array, Exception> {
    let mut err = [0 as c_char; 512];
    // SAFETY: mlx_array_new returns an empty handle that the callee fills on success.
    let mut res = unsafe { mlx_sys::mlx_array_new() };
    if op(&mut res, err.as_mut_ptr(), err.len()) == 0 {
        // SAFETY: on success the handle owns a valid array, whose ownership moves into `Array`.
        Ok(unsafe { Array::from_ptr(res) })
    } else {
        // SAFETY: the callee NUL-terminates within `cap` bytes; the handle is still ours to free.
        let what = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        unsafe { mlx_sys::mlx_array_free(res) };
        Err(Exception::custom(what))
    }
}

/// `x @ wᵀ` on the stream mlx-rs ops use (the thread-local default stream, else the default device's).
pub fn matmul_t(x: &Array, w: &Array) -> Result<Array, Exception> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: the handles stay alive (borrowed) for the duration of the call.
    call(|res, err, cap| unsafe { mlx_ext_matmul_t(res, x.as_ptr(), w.as_ptr(), stream.as_ptr(), err, cap) })
}

/// `x @ dequantize(w, scales, biases)ᵀ` (affine, `bits` per weight, one scale and bias per `group_size`) on the
/// same stream as [`matmul_t`]: what MLX's `quantized_matmul(x, w, scales, biases, transpose = true, …)` computes.
pub fn quantized_matmul_t(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: &Array,
    group_size: i32,
    bits: i32,
) -> Result<Array, Exception> {
    let stream = Stream::thread_local_or_default();
    // SAFETY: as in `matmul_t`.
    call(|res, err, cap| unsafe {
        mlx_ext_quantized_matmul_t(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            biases.as_ptr(),
            group_size,
            bits,
            stream.as_ptr(),
            err,
            cap,
        )
    })
}

/// A matrix packed by [`quantize`]: biases only in the affine mode (the microscaling modes have none).
pub struct Packed {
    pub weight: Array,
    pub scales: Array,
    pub biases: Option<Array>,
}

/// An absent optional array, as mlx-c passes it (a null handle, nothing to free).
fn none() -> mlx_array {
    mlx_array { ctx: std::ptr::null_mut() }
}

fn handle(a: Option<&Array>) -> mlx_array {
    a.map_or_else(none, |a| a.as_ptr())
}

fn mode_name(mode: &str) -> Result<std::ffi::CString, Exception> {
    std::ffi::CString::new(mode).map_err(|_| Exception::custom(format!("quantization mode {mode:?} has a NUL byte")))
}

/// MLX's `quantize(w, group_size, bits, mode)` for every mode MLX packs (`affine`, `mxfp4`, `nvfp4`, `mxfp8`).
pub fn quantize(w: &Array, group_size: i32, bits: i32, mode: &str) -> Result<Packed, Exception> {
    let stream = Stream::thread_local_or_default();
    let mode = mode_name(mode)?;
    let mut err = [0 as c_char; 512];
    // SAFETY: fresh handles the callee fills on success; the inputs are borrowed for the call.
    let (mut wq, mut sc, mut bi) = unsafe { (mlx_sys::mlx_array_new(), mlx_sys::mlx_array_new(), mlx_sys::mlx_array_new()) };
    let status = unsafe {
        mlx_ext_quantize(&mut wq, &mut sc, &mut bi, w.as_ptr(), group_size, bits, mode.as_ptr(), stream.as_ptr(), err.as_mut_ptr(), err.len())
    };
    // SAFETY: each handle is either filled (ownership moves into `Array`) or still null (nothing to free).
    let take = |h: mlx_array| (!h.ctx.is_null()).then(|| unsafe { Array::from_ptr(h) });
    let (wq, sc, bi) = (take(wq), take(sc), take(bi));
    if status != 0 {
        let what = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
        return Err(Exception::custom(what));
    }
    match (wq, sc) {
        (Some(weight), Some(scales)) => Ok(Packed { weight, scales, biases: bi }),
        _ => Err(Exception::custom("quantize returned no weight or scales")),
    }
}

/// MLX's `dequantize` with the mode named; `biases` only for `affine`. The result has the scales' dtype for
/// affine and MLX's default (float32 unless told) for the microscaling modes.
pub fn dequantize(w: &Array, scales: &Array, biases: Option<&Array>, group_size: i32, bits: i32, mode: &str) -> Result<Array, Exception> {
    let stream = Stream::thread_local_or_default();
    let mode = mode_name(mode)?;
    // SAFETY: as in `matmul_t`; an absent bias is a null handle.
    call(|res, err, cap| unsafe {
        mlx_ext_dequantize(res, w.as_ptr(), scales.as_ptr(), handle(biases), group_size, bits, mode.as_ptr(), stream.as_ptr(), err, cap)
    })
}

/// MLX's `quantized_matmul` with the mode named (`transpose`: `x @ Wᵀ`).
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
    mode: &str,
) -> Result<Array, Exception> {
    let stream = Stream::thread_local_or_default();
    let mode = mode_name(mode)?;
    // SAFETY: as in `dequantize`.
    call(|res, err, cap| unsafe {
        mlx_ext_quantized_matmul(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            handle(biases),
            c_int::from(transpose),
            group_size,
            bits,
            mode.as_ptr(),
            stream.as_ptr(),
            err,
            cap,
        )
    })
}

/// MLX's `gather_qmm` with the mode named: the product with the quantized matrices `w[rhs_indices]`.
#[allow(clippy::too_many_arguments)]
pub fn gather_qmm(
    x: &Array,
    w: &Array,
    scales: &Array,
    biases: Option<&Array>,
    lhs_indices: Option<&Array>,
    rhs_indices: Option<&Array>,
    transpose: bool,
    group_size: i32,
    bits: i32,
    mode: &str,
    sorted_indices: bool,
) -> Result<Array, Exception> {
    let stream = Stream::thread_local_or_default();
    let mode = mode_name(mode)?;
    // SAFETY: as in `dequantize`.
    call(|res, err, cap| unsafe {
        mlx_ext_gather_qmm(
            res,
            x.as_ptr(),
            w.as_ptr(),
            scales.as_ptr(),
            handle(biases),
            handle(lhs_indices),
            handle(rhs_indices),
            c_int::from(transpose),
            group_size,
            bits,
            mode.as_ptr(),
            c_int::from(sorted_indices),
            stream.as_ptr(),
            err,
            cap,
        )
    })
}
