//! cdylib plugins through the host's registry: the example library's plugins work like built-ins (its loss
//! under value_and_grad and compile, bit for bit), and broken libraries are refused or contained.

#[path = "support/cdylib.rs"]
mod support;

use std::path::{Path, PathBuf};

use host::plugins::{Origin, Registry, RegistryError};
use mlx_rs::{
    array,
    ops::{self, indexing::IndexOp},
    transforms::{compile::compile, value_and_grad},
    Array,
};
use sdk::{
    abi::{import::AbiError, ABI_MAJOR, ABI_MINOR},
    Loss, LossInputs, Plugin, PluginError, PluginKind, ScheduleContext,
};

fn table(text: &str) -> toml::Table {
    text.parse().expect("test TOML")
}

fn with_example() -> (Registry, PathBuf) {
    let path = support::cdylib("example_plugins");
    let mut registry = Registry::builtin().unwrap();
    registry.load_library(&path).unwrap();
    (registry, path)
}

#[test]
fn example_plugins_are_listed_with_their_file_as_origin() {
    let (registry, path) = with_example();
    let listed: Vec<(PluginKind, String, Origin)> =
        registry.plugins().map(|p| (p.kind, p.name.clone(), p.origin.clone())).collect();
    assert!(listed.contains(&(PluginKind::LrSchedule, "inverse_sqrt".into(), Origin::Library(path.clone()))));
    assert!(listed.contains(&(PluginKind::Loss, "pair_logsigmoid".into(), Origin::Library(path.clone()))));
    assert!(listed.contains(&(PluginKind::Reward, "ends_with".into(), Origin::Library(path))));
    assert!(listed.contains(&(PluginKind::LrSchedule, "cosine".into(), Origin::BuiltIn("plugin-schedules"))));
    // Unknown names list built-ins and loaded plugins alike.
    let err = registry.schedule("inverse", &table("")).err().unwrap().to_string();
    assert!(err.ends_with("valid names: constant, cosine, exponential, inverse_sqrt, linear, step, wsd"), "{err}");
}

#[test]
fn loading_the_same_library_twice_is_one_load() {
    let (mut registry, path) = with_example();
    registry.load_library(&path).unwrap();
    assert_eq!(registry.plugins().filter(|p| p.name == "inverse_sqrt").count(), 1);
}

#[test]
fn example_schedule_matches_its_closed_form() {
    let (registry, _) = with_example();
    let schedule = registry.schedule("inverse_sqrt", &table("timescale = 4.0")).unwrap();
    let ctx = ScheduleContext { base_lr: 0.02, total_steps: 100 };
    for (step, want) in [(0u64, 0.02), (4, 0.02 / 2f64.sqrt()), (12, 0.01), (60, 0.005)] {
        let got = schedule.lr(step, &ctx).unwrap();
        assert!((got - want).abs() < 1e-15, "step {step}: {got} vs {want}");
    }
}

#[test]
fn cdylib_reward_scores_a_batch_across_the_abi() {
    let (registry, _) = with_example();
    let mut reward = registry.reward("ends_with", &table("suffix = \".\"\nscore = 0.5")).unwrap();
    let prompts = ["p"; 4];
    let completions = ["The answer is 7.", "seven", "   ", "ok. "];
    let ids: Vec<&[u32]> = vec![&[1, 2], &[3], &[], &[4]];
    let rows = ["{}"; 4];
    let batch = sdk::RewardBatch { prompts: &prompts, completions: &completions, completion_ids: &ids, rows: &rows };
    assert_eq!(reward.score(&batch).unwrap(), vec![Some(0.5), Some(0.0), None, Some(0.5)]);
    let err = registry.reward("ends_with", &table("suffix = \"\"")).err().unwrap().to_string();
    assert!(err.contains("`suffix` must not be empty"), "{err}");
}

#[test]
fn plugin_config_errors_come_back_with_the_key() {
    let (registry, path) = with_example();
    let err = registry.schedule("inverse_sqrt", &table("timescale = \"slow\"")).err().unwrap().to_string();
    assert!(err.starts_with(&format!("schedule `inverse_sqrt` ({}): `timescale`", path.display())), "{err}");
    let err = registry.schedule("inverse_sqrt", &table("time_scale = 3")).err().unwrap().to_string();
    assert!(err.contains("unknown field `time_scale`"), "{err}");
    let err = registry.schedule("inverse_sqrt", &table("timescale = -1.0")).err().unwrap().to_string();
    assert!(err.contains("`timescale` must be positive"), "{err}");
}

/// Rows: 2 pairs (chosen rows 0-1, rejected rows 2-3) of 3 target positions; the last row's first target is a
/// prompt token (masked out). Policy log-probs are log_softmax(x·Wᵀ) at the targets, so they depend on W.
struct Batch {
    x: Array,
    targets: Array,
    mask: Array,
}

fn batch() -> Batch {
    let x: Vec<f32> = (0..4 * 3 * 5).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    Batch {
        x: Array::from_slice(&x, &[4, 3, 5]),
        targets: Array::from_slice(&[1i32, 2, 0, 3, 1, 1, 0, 2, 3, 2, 2, 1], &[4, 3]),
        mask: Array::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0], &[4, 3]),
    }
}

fn policy_logps(w: &Array, b: &Batch) -> Result<Array, mlx_rs::error::Exception> {
    let logits = b.x.matmul(&w.t())?;
    let logps = logits.subtract(&ops::logsumexp_axis(&logits, -1, true)?)?;
    ops::indexing::take_along_axis(&logps, &b.targets.expand_dims(-1)?, -1)?.squeeze_axes(&[-1])
}

fn weights() -> Array {
    let w: Vec<f32> = (0..4 * 5).map(|i| ((i * 5 % 9) as f32 - 4.0) / 6.0).collect();
    Array::from_slice(&w, &[4, 5])
}

fn loss_of(loss: &dyn Loss, w: &Array, b: &Batch) -> Result<Array, mlx_rs::error::Exception> {
    let logps = policy_logps(w, b)?;
    let mut inputs = LossInputs::new(&logps, &b.mask);
    inputs.num_pairs = 2;
    let out = loss.forward(&inputs).map_err(|e| mlx_rs::error::Exception::custom(e.to_string()))?;
    Ok(out.loss)
}

#[test]
fn cdylib_loss_equals_the_same_loss_compiled_in_under_grad_and_compile() {
    let (registry, _) = with_example();
    let config = table("beta = 0.7");
    let plugin = registry.loss("pair_logsigmoid", &config).unwrap();
    let native = example_plugins::PairLogSigmoid::from_config(&config).unwrap();
    assert_eq!(plugin.requirements(), native.requirements());
    let b = batch();
    let w = weights();

    let grad_of = |loss: &dyn Loss| {
        let mut vg = value_and_grad(|w: &[Array]| Ok(vec![loss_of(loss, &w[0], &b)?]));
        let (value, grad) = vg(&[w.clone()]).unwrap();
        (value[0].item_exact::<f32>(), grad[0].contiguous().unwrap().to_vec_exact::<f32>().unwrap())
    };
    let (v_native, g_native) = grad_of(&native);
    let (v_plugin, g_plugin) = grad_of(&*plugin);
    assert_eq!(v_plugin.to_bits(), v_native.to_bits(), "loss {v_plugin} vs {v_native}");
    assert_eq!(g_plugin, g_native);
    assert!(g_native.iter().any(|g| g.abs() > 1e-3), "the gradient reaches W");

    // Under compile, with the batch passed as inputs (arrays captured by a compiled closure are undefined).
    let compiled_grad = |loss: Box<dyn Loss>| {
        let mut f = compile(
            move |args: &[Array]| -> Result<Vec<Array>, mlx_rs::error::Exception> {
                let b = Batch { x: args[1].clone(), targets: args[2].clone(), mask: args[3].clone() };
                let mut vg = value_and_grad(|w: &[Array]| Ok(vec![loss_of(&*loss, &w[0], &b)?]));
                let (mut value, mut grad) = vg(&args[..1])?;
                Ok(vec![value.remove(0), grad.remove(0)])
            },
            None,
        );
        let out = f(&[w.clone(), b.x.clone(), b.targets.clone(), b.mask.clone()][..]).unwrap();
        (out[0].item_exact::<f32>(), out[1].contiguous().unwrap().to_vec_exact::<f32>().unwrap())
    };
    let (cv_native, cg_native) = compiled_grad(Box::new(native));
    let (cv_plugin, cg_plugin) = compiled_grad(plugin);
    assert_eq!(cv_plugin.to_bits(), cv_native.to_bits());
    assert_eq!(cg_plugin, cg_native);
    assert!((cv_native - v_native).abs() < 1e-6);
}

#[test]
fn cdylib_loss_value_and_metrics_match_the_formula() {
    let (registry, _) = with_example();
    let plugin = registry.loss("pair_logsigmoid", &table("beta = 0.7")).unwrap();
    let b = batch();
    let logps = policy_logps(&weights(), &b).unwrap();
    let mut inputs = LossInputs::new(&logps, &b.mask);
    inputs.num_pairs = 2;
    let out = plugin.forward(&inputs).unwrap();
    // By hand: per-row mean over masked targets, margins chosen − rejected, −mean log σ(0.7·margin).
    let lp: Vec<f64> = logps.as_slice::<f32>().iter().map(|&v| v.into()).collect();
    let m: Vec<f64> = b.mask.as_slice::<f32>().iter().map(|&v| v.into()).collect();
    let mean = |r: usize| {
        let n: f64 = m[r * 3..r * 3 + 3].iter().sum();
        (0..3).map(|t| lp[r * 3 + t] * m[r * 3 + t]).sum::<f64>() / n
    };
    let margins = [mean(0) - mean(2), mean(1) - mean(3)];
    let loss = -margins.iter().map(|d| -(1.0 + (-0.7 * d).exp()).ln()).sum::<f64>() / 2.0;
    assert!((f64::from(out.loss.item_exact::<f32>()) - loss).abs() < 1e-6);
    let metric = |name: &str| {
        let (_, a) = out.metrics.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("metric {name}"));
        f64::from(a.item_exact::<f32>())
    };
    assert!((metric("margin") - (margins[0] + margins[1]) / 2.0).abs() < 1e-6);
    let accuracy = margins.iter().filter(|d| **d > 0.0).count() as f64 / 2.0;
    assert_eq!(metric("accuracy"), accuracy);
    // The inputs were only lent: still usable.
    assert_eq!(logps.index(0).shape(), &[3]);
}

/// A private copy of the misfit fixture with its mode set, so each case is its own library instance.
fn misfit(mode: u32) -> PathBuf {
    let source = support::cdylib("misfit_descriptors");
    let dir = std::env::temp_dir().join(format!("misfits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("libmisfit_{mode}.so"));
    std::fs::copy(&source, &path).unwrap();
    // SAFETY: the fixture exports this function; the library stays loaded (the registry reopens this path).
    unsafe {
        let lib = Box::leak(Box::new(libloading::Library::new(&path).unwrap()));
        let set: libloading::Symbol<extern "C" fn(u32)> = lib.get(b"fixture_set_mode\0").unwrap();
        set(mode);
    }
    path
}

fn load_error(mode: u32) -> (RegistryError, PathBuf) {
    let path = misfit(mode);
    let mut registry = Registry::builtin().unwrap();
    (registry.load_library(&path).unwrap_err(), path)
}

#[test]
fn a_hand_written_descriptor_with_the_documented_layout_loads() {
    let path = misfit(0);
    let mut registry = Registry::builtin().unwrap();
    registry.load_library(&path).unwrap();
    assert!(registry.get(PluginKind::LrSchedule, "misfit_ok").is_ok());
    // Its create refuses without a message: the host still reports a clear error.
    let err = registry.schedule("misfit_ok", &table("")).err().unwrap().to_string();
    assert!(err.contains("failed with status 1"), "{err}");
}

#[test]
fn wrong_magic_is_refused_naming_the_file() {
    let (err, path) = load_error(1);
    assert!(matches!(err, RegistryError::Abi { error: AbiError::BadMagic { .. }, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains("magic"), "{text}");
}

#[test]
fn another_abi_major_is_refused_with_both_versions() {
    let (err, path) = load_error(2);
    let text = err.to_string();
    assert_eq!(
        text,
        format!(
            "refusing plugin library {}: plugin ABI 2.0 is incompatible with the host's ABI {ABI_MAJOR}.{ABI_MINOR} \
             (major versions must be equal); rebuild the plugin against this host's sdk",
            path.display()
        )
    );
}

#[test]
fn a_newer_abi_minor_is_refused_with_both_versions() {
    let (err, path) = load_error(3);
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&format!("plugin ABI 1.99 is newer than the host's ABI {ABI_MAJOR}.{ABI_MINOR}")), "{text}");
}

#[test]
fn another_mlx_build_is_refused_with_both_build_strings() {
    let (err, path) = load_error(4);
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("plugin `mlx 0.0.1; mlx-c elsewhere`"), "{text}");
    assert!(text.contains(&format!("host `{}`", mlx_sys::BUILD)), "{text}");
}

#[test]
fn an_unknown_kind_is_refused() {
    let (err, _) = load_error(5);
    let expected = format!("plugin `misfit_unknown_kind` has kind 99, unknown to ABI {ABI_MAJOR}.{ABI_MINOR}");
    assert!(err.to_string().contains(&expected), "{err}");
}

#[test]
fn a_cdylib_reusing_a_builtin_name_is_refused_naming_both() {
    let (err, path) = load_error(6);
    assert_eq!(
        err.to_string(),
        format!("schedule `cosine` is registered twice: by built-in (plugin-schedules) and by {}", path.display())
    );
}

#[test]
fn a_library_without_the_entry_point_is_refused() {
    let mut registry = Registry::builtin().unwrap();
    let err = registry.load_library(&support::cdylib("compile_probe")).unwrap_err().to_string();
    assert!(err.contains("exports no `mlx_host_plugin_entry`"), "{err}");
    let err = registry.load_library(Path::new("/nonexistent/libnothing.so")).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/libnothing.so: no such file"), "{err}");
}

#[test]
fn panics_in_a_plugin_are_errors_and_later_calls_still_work() {
    let mut registry = Registry::builtin().unwrap();
    registry.load_library(&support::cdylib("panicky_plugins")).unwrap();
    let ctx = ScheduleContext { base_lr: 0.5, total_steps: 10 };
    let schedule = registry.schedule("panicky", &table("")).unwrap();
    assert_eq!(schedule.lr(2, &ctx).unwrap(), 0.5);
    match schedule.lr(3, &ctx) {
        Err(PluginError::Panicked(message)) => assert_eq!(message, "deliberate panic at step 3"),
        other => panic!("expected a caught panic, got {other:?}"),
    }
    assert_eq!(schedule.lr(4, &ctx).unwrap(), 0.5);

    let err = registry.schedule("panicky", &table("panic = true")).err().unwrap();
    assert!(matches!(err, RegistryError::Create { error: PluginError::Panicked(ref m), .. } if m == "deliberate panic while creating"), "{err}");

    let loss = registry.loss("panicky_loss", &table("")).unwrap();
    let (logps, mask) = (array!([[0.0f32]]), array!([[1.0f32]]));
    match loss.forward(&LossInputs::new(&logps, &mask)) {
        Err(PluginError::Panicked(message)) => assert_eq!(message, "deliberate panic in forward"),
        Err(other) => panic!("expected a caught panic, got {other}"),
        Ok(_) => panic!("expected a caught panic, got a loss"),
    }
}
