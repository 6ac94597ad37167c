//! A cdylib compiling a function while the host holds one compiled must get its own function back.

use mlx_rs::{array, transforms::compile::compile, Array};

#[path = "support/cdylib.rs"]
mod support;

fn double(x: &Array) -> Result<Array, mlx_rs::error::Exception> {
    x.multiply(array!(2.0f32))
}

#[test]
fn plugin_compile_does_not_collide_with_host_compile() {
    let x = array!([1.0f32, 2.0, 4.0]);
    let keys_before = mlx_sys::compile_ids::live_keys();
    {
        // The host's first compiled function: mlx-rs gives it the same local number the plugin's will get.
        let mut host_double = compile(double, None);
        let doubled = host_double(&x).expect("host compile");
        assert_eq!(doubled.as_slice::<f32>(), &[2.0, 4.0, 8.0]);

        let library = support::cdylib("compile_probe");
        // SAFETY: the fixture exports probe_triple with this signature; the library is never unloaded.
        let lib = Box::leak(Box::new(unsafe { libloading::Library::new(&library) }.expect("load probe")));
        let probe: libloading::Symbol<unsafe extern "C" fn(mlx_sys::mlx_array, *mut mlx_sys::mlx_array) -> i32> =
            unsafe { lib.get(b"probe_triple\0") }.expect("probe_triple symbol");
        for _ in 0..3 {
            let mut out = unsafe { mlx_sys::mlx_array_new() };
            let status = unsafe { probe(x.as_ptr(), &mut out) };
            assert_eq!(status, 0, "probe failed");
            let tripled = unsafe { Array::from_ptr(out) };
            assert_eq!(tripled.as_slice::<f32>(), &[3.0, 6.0, 12.0], "plugin got the host's compiled function");
            // And the host still gets its own.
            assert_eq!(host_double(&x).expect("host compile").as_slice::<f32>(), &[2.0, 4.0, 8.0]);
        }
        // The input handle was only lent: still valid and unchanged.
        assert_eq!(x.as_slice::<f32>(), &[1.0, 2.0, 4.0]);
    }
    assert_eq!(mlx_sys::compile_ids::live_keys(), keys_before, "erase must release the host's keys");

    let a = mlx_sys::compile_ids::process_key(1_000_001);
    let b = mlx_sys::compile_ids::process_key(1_000_002);
    assert_ne!(a, b);
    assert_eq!(a, mlx_sys::compile_ids::process_key(1_000_001), "a live id keeps its key");
    assert_ne!(a, 1_000_001, "keys are addresses, not the binary-local numbers");
}
