//! Each schedule against its closed form at chosen steps, built through the registry as the host does.

use sdk::{builtin_registrations, Factory, LrSchedule, ScheduleContext, Warmup};

fn build(kind: &str, config: &str) -> Result<Box<dyn LrSchedule>, sdk::PluginError> {
    let table: sdk::toml::Table = config.parse().expect("test config is TOML");
    let registration = builtin_registrations().find(|r| r.name == kind).expect("schedule is registered");
    match registration.factory {
        Factory::LrSchedule(make) => make(&table),
        _ => panic!("{kind} is not a schedule"),
    }
}

const CTX: ScheduleContext = ScheduleContext { base_lr: 1e-3, total_steps: 100 };

fn assert_at(schedule: &dyn LrSchedule, ctx: &ScheduleContext, expected: &[(u64, f64)]) {
    for &(step, want) in expected {
        let got = schedule.lr(step, ctx).unwrap();
        assert!((got - want).abs() <= 1e-15 + 1e-12 * want.abs(), "step {step}: {got} != {want}");
    }
}

#[test]
fn constant() {
    assert_at(&*build("constant", "").unwrap(), &CTX, &[(0, 1e-3), (57, 1e-3), (1000, 1e-3)]);
}

#[test]
fn linear_decays_to_end_and_stays() {
    let s = build("linear", "end_lr = 1e-4").unwrap();
    assert_at(&*s, &CTX, &[(0, 1e-3), (50, 5.5e-4), (100, 1e-4), (150, 1e-4)]);
    let s = build("linear", "decay_steps = 10").unwrap();
    assert_at(&*s, &CTX, &[(5, 5e-4), (10, 0.0), (99, 0.0)]);
}

#[test]
fn cosine_follows_half_cosine_to_min() {
    let s = build("cosine", "min_lr = 1e-5").unwrap();
    let quarter = 1e-5 + 9.9e-4 * 0.5 * (1.0 + std::f64::consts::FRAC_PI_4.cos());
    assert_at(&*s, &CTX, &[(0, 1e-3), (25, quarter), (50, 5.05e-4), (100, 1e-5), (200, 1e-5)]);
}

#[test]
fn step_multiplies_by_gamma_every_step_size() {
    let s = build("step", "step_size = 30\ngamma = 0.5").unwrap();
    assert_at(&*s, &CTX, &[(0, 1e-3), (29, 1e-3), (30, 5e-4), (95, 1.25e-4)]);
    let s = build("step", "step_size = 10").unwrap();
    assert_at(&*s, &CTX, &[(10, 1e-4), (20, 1e-5)]);
}

#[test]
fn exponential_decays_continuously() {
    let s = build("exponential", "decay_rate = 0.9").unwrap();
    assert_at(&*s, &CTX, &[(0, 1e-3), (1, 9e-4), (10, 1e-3 * 0.9f64.powi(10))]);
    let s = build("exponential", "decay_rate = 0.9\ndecay_steps = 10").unwrap();
    assert_at(&*s, &CTX, &[(5, 1e-3 * 0.9f64.sqrt()), (20, 1e-3 * 0.81)]);
}

#[test]
fn wsd_holds_then_decays_in_the_chosen_shape() {
    let min = 1e-4;
    let linear = build("wsd", "decay_ratio = 0.2\nmin_lr = 1e-4").unwrap();
    assert_at(&*linear, &CTX, &[(0, 1e-3), (79, 1e-3), (80, 1e-3), (90, 1e-3 - 9e-4 * 0.5), (100, min), (120, min)]);
    let sqrt = build("wsd", "decay_steps = 20\nmin_lr = 1e-4\ndecay_shape = \"sqrt\"").unwrap();
    assert_at(&*sqrt, &CTX, &[(80, 1e-3), (85, 1e-3 - 9e-4 * 0.5), (100, min)]);
    let cosine = build("wsd", "decay_steps = 20\nmin_lr = 1e-4\ndecay_shape = \"cosine\"").unwrap();
    assert_at(&*cosine, &CTX, &[(80, 1e-3), (90, 5.5e-4), (100, min)]);
    // Default: the last 10% of the run.
    let default = build("wsd", "").unwrap();
    assert_at(&*default, &CTX, &[(89, 1e-3), (90, 1e-3), (95, 5e-4), (100, 0.0)]);
}

#[test]
fn warmup_combines_with_any_schedule() {
    let ctx = ScheduleContext { base_lr: 1e-3, total_steps: 110 };
    let s = Warmup { inner: build("cosine", "min_lr = 1e-5").unwrap(), steps: 10, init: 0.0 };
    // Warmup to the cosine's first rate, then the cosine over the remaining 100 steps.
    assert_at(&s, &ctx, &[(0, 0.0), (5, 5e-4), (10, 1e-3), (60, 5.05e-4), (110, 1e-5)]);
}

#[test]
fn bad_configs_name_the_key() {
    let err = |kind: &str, cfg: &str| build(kind, cfg).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err("cosine", "min_lrr = 0.1").contains("min_lrr"), "{}", err("cosine", "min_lrr = 0.1"));
    assert!(err("step", "").contains("step_size"));
    assert!(err("step", "step_size = 0").contains("step_size"));
    assert!(err("cosine", "min_lr = \"low\"").contains("min_lr"));
    assert!(err("wsd", "decay_steps = 5\ndecay_ratio = 0.1").contains("not both"));
    assert!(err("wsd", "decay_shape = \"square\"").contains("decay_shape"));
    assert!(err("exponential", "decay_rate = -1.0").contains("decay_rate"));
    let zero = ScheduleContext { base_lr: 1e-3, total_steps: 0 };
    assert!(build("cosine", "").unwrap().lr(0, &zero).is_err());
}
