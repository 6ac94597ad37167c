//! Gradient checkpointing through MLX's `checkpoint` transform (mlx-rs has no wrapper): a function whose
//! intermediate activations are dropped after the forward pass and recomputed during the backward pass.
//! Gradients reach only the function's inputs; anything else it reads is a constant to autodiff, so callers
//! pass the trainable parameters in explicitly (mlx-lm's `grad_checkpoint` does the same).

use std::{ffi::c_void, panic::AssertUnwindSafe};

use mlx_rs::{error::Exception, Array};
use mlx_sys::{mlx_array, mlx_closure, mlx_vector_array};

type Body = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

unsafe fn read_vector(v: mlx_vector_array) -> Vec<Array> {
    (0..mlx_sys::mlx_vector_array_size(v))
        .map(|i| {
            let mut a = mlx_sys::mlx_array_new();
            mlx_sys::mlx_vector_array_get(&mut a, v, i);
            Array::from_ptr(a)
        })
        .collect()
}

unsafe extern "C" fn trampoline(res: *mut mlx_vector_array, input: mlx_vector_array, payload: *mut c_void) -> i32 {
    let body = &mut *payload.cast::<Body>();
    let inputs = read_vector(input);
    // A panic must not unwind into MLX's C++ frames.
    match std::panic::catch_unwind(AssertUnwindSafe(|| body(&inputs))) {
        Ok(Ok(outputs)) => {
            let handles: Vec<mlx_array> = outputs.iter().map(Array::as_ptr).collect();
            let v = mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len());
            mlx_sys::mlx_vector_array_set(res, v);
            mlx_sys::mlx_vector_array_free(v);
            0
        }
        _ => 1,
    }
}

unsafe extern "C" fn drop_body(payload: *mut c_void) {
    drop(Box::from_raw(payload.cast::<Body>()));
}

/// Applies `body` to `inputs` under MLX's checkpoint transform. `body` is kept by MLX until the graph that
/// uses it is released, hence `'static`.
pub fn checkpointed(inputs: &[Array], body: impl FnMut(&[Array]) -> Result<Vec<Array>, Exception> + 'static) -> Result<Vec<Array>, Exception> {
    let payload: *mut Body = Box::into_raw(Box::new(Box::new(body) as Body));
    // SAFETY: the closure owns its payload (freed by drop_body); every handle made here is freed here.
    unsafe {
        let fun: mlx_closure = mlx_sys::mlx_closure_new_func_payload(Some(trampoline), payload.cast(), Some(drop_body));
        let mut wrapped = mlx_sys::mlx_closure_new();
        let status = mlx_sys::mlx_checkpoint(&mut wrapped, fun);
        mlx_sys::mlx_closure_free(fun);
        if status != 0 {
            mlx_sys::mlx_closure_free(wrapped);
            return Err(Exception::custom("mlx_checkpoint failed"));
        }
        let handles: Vec<mlx_array> = inputs.iter().map(Array::as_ptr).collect();
        let input = mlx_sys::mlx_vector_array_new_data(handles.as_ptr(), handles.len());
        let mut output = mlx_sys::mlx_vector_array_new();
        let status = mlx_sys::mlx_closure_apply(&mut output, wrapped, input);
        mlx_sys::mlx_vector_array_free(input);
        mlx_sys::mlx_closure_free(wrapped);
        if status != 0 {
            mlx_sys::mlx_vector_array_free(output);
            return Err(Exception::custom("the checkpointed function failed"));
        }
        let result = read_vector(output);
        mlx_sys::mlx_vector_array_free(output);
        Ok(result)
    }
}
