//! Every loss against values of its formula computed by hand (in f64, independently of MLX) on fixed
//! log-probs; gradients for DPO-sigmoid and KTO against their derivatives.

use sdk::{
    mlx_rs::{error::Exception, transforms::{value_and_grad, value_and_grad_with_argnums}, Array},
    Loss, LossInputs, LossOutput,
};

use crate::{Dpo, DpoType, Kto, Orpo, Simpo};

/// Two pairs: rows 0 and 1 chosen, rows 2 and 3 rejected.
fn policy() -> Array {
    Array::from_slice(&[-1.0f32, -2.0, -0.5, -0.3, -0.7, -9.0, -1.5, -1.0, -2.0, -0.2, -0.4, -0.6], &[4, 3])
}

fn reference() -> Array {
    Array::from_slice(&[-1.1f32, -1.8, -0.9, -0.5, -0.5, -1.0, -1.0, -1.5, -1.5, -0.3, -0.3, -0.3], &[4, 3])
}

fn mask() -> Array {
    Array::from_slice(&[0.0f32, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], &[4, 3])
}

fn run_pairs(loss: &dyn Loss, policy: &Array) -> LossOutput {
    let (reference, mask) = (reference(), mask());
    let mut inputs = LossInputs::new(policy, &mask);
    inputs.num_pairs = 2;
    if loss.requirements().reference {
        inputs.reference_logps = Some(&reference);
    }
    loss.forward(&inputs).unwrap()
}

fn metric(out: &LossOutput, name: &str) -> f32 {
    out.metrics.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no metric {name}")).1.item_exact::<f32>()
}

fn close(actual: f32, expected: f64) {
    assert!((f64::from(actual) - expected).abs() < 1e-5, "{actual} vs {expected}");
}

// Hand values: Δ = (0.2, 0, 0, −0.3) so h = (0.2, 0.3); per-token means p̄ = (−1.25, −0.5, −1.5, −0.4).
#[test]
fn dpo_variants_equal_their_formulas() {
    let p = policy();
    // mean of −log σ(0.1·h)
    let out = run_pairs(&Dpo::new(DpoType::Sigmoid, 0.1, 0.0).unwrap(), &p);
    close(out.loss.item_exact(), 0.680_728_428_034_041_3);
    close(metric(&out, "rewards/margins"), 0.025);
    close(metric(&out, "rewards/accuracies"), 1.0);
    close(metric(&out, "rewards/chosen"), 0.01);
    close(metric(&out, "rewards/rejected"), -0.015);
    close(metric(&out, "logps/chosen"), -1.75);
    close(metric(&out, "logps/rejected"), -2.1);
    // −0.9·log σ(βh) − 0.1·log σ(−βh)
    close(run_pairs(&Dpo::new(DpoType::Sigmoid, 0.1, 0.1).unwrap(), &p).loss.item_exact(), 0.683_228_428_034_041_3);
    // max(0, 1 − βh)
    close(run_pairs(&Dpo::new(DpoType::Hinge, 0.1, 0.0).unwrap(), &p).loss.item_exact(), 0.975);
    // h̄ = (0.1, 0.1): (0.1 − 5)²
    close(run_pairs(&Dpo::new(DpoType::Ipo, 0.1, 0.0).unwrap(), &p).loss.item_exact(), 24.01);
    close(run_pairs(&Dpo::new(DpoType::Robust, 0.1, 0.1).unwrap(), &p).loss.item_exact(), 0.677_603_428_034_041_3);
}

#[test]
fn dpo_options_that_do_not_apply_are_refused() {
    assert!(Dpo::new(DpoType::Hinge, 0.1, 0.1).is_err());
    assert!(Dpo::new(DpoType::Sigmoid, 0.0, 0.0).is_err());
    assert!(Dpo::new(DpoType::Robust, 0.1, 0.5).is_err());
}

#[test]
fn dpo_sigmoid_gradient_is_minus_beta_sigma_of_minus_beta_h() {
    let loss = Dpo::new(DpoType::Sigmoid, 0.1, 0.0).unwrap();
    let mut vg = value_and_grad(|x: &[Array]| -> Result<Vec<Array>, Exception> { Ok(vec![run_pairs(&loss, &x[0]).loss]) });
    let (_, g) = vg(&[policy()]).unwrap();
    // dL/dh_i = −β·σ(−βh_i)/P; chosen tokens get it, rejected tokens its negative, masked tokens nothing.
    let (d0, d1) = (-0.024_750_008_333_000_017f32, -0.024_625_028_122_468_983f32);
    let expected = [0.0, d0, d0, d1, d1, 0.0, 0.0, -d0, -d0, -d1, -d1, -d1];
    for (a, e) in g[0].as_slice::<f32>().iter().zip(expected) {
        assert!((a - e).abs() < 1e-7, "{:?}", g[0]);
    }
}

#[test]
fn orpo_is_chosen_nll_plus_lambda_odds_ratio() {
    let out = run_pairs(&Orpo::new(0.1).unwrap(), &policy());
    // NLL over chosen completion tokens: (2.5 + 1.0) / 4
    close(metric(&out, "nll_loss"), 0.875);
    close(out.loss.item_exact(), 0.944_035_485_026_481_7);
    // Log-odds of the per-token means p̄: ratio_i = lo(p̄_chosen) − lo(p̄_rejected), lo(p) = p − log(1 − e^p).
    close(metric(&out, "log_odds_chosen"), 0.029_108_152_070_108_917);
    close(metric(&out, "log_odds_ratio"), -0.690_354_850_264_817_6);
    assert!(Orpo::new(0.1).unwrap().requirements().reference == false, "ORPO never asks for a reference");
}

#[test]
fn simpo_margin_is_not_scaled_by_beta() {
    let out = run_pairs(&Simpo::new(2.0, 0.5, 0.0, 0.0).unwrap(), &policy());
    // z = 2·(p̄_w − p̄_l) − 0.5
    close(out.loss.item_exact(), 0.898_166_614_722_701_7);
    close(run_pairs(&Simpo::new(2.0, 0.5, 0.0, 1.0).unwrap(), &policy()).loss.item_exact(), 1.773_166_614_722_701_7);
    assert!(!Simpo::new(2.0, 0.5, 0.0, 0.0).unwrap().requirements().reference);
}

struct KtoBatch {
    policy: Array,
    reference: Array,
    mask: Array,
    labels: Array,
    kl_policy: Array,
    kl_reference: Array,
    kl_mask: Array,
}

fn kto_batch() -> KtoBatch {
    let a = |v: &[f32]| Array::from_slice(v, &[3, 3]);
    KtoBatch {
        policy: a(&[-1.0, -2.0, -0.5, -0.3, -0.7, -9.0, -1.5, -1.0, -2.0]),
        reference: a(&[-1.1, -1.8, -0.9, -0.5, -0.5, -1.0, -1.0, -1.5, -1.5]),
        mask: a(&[0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]),
        labels: Array::from_slice(&[1.0f32, 0.0, 1.0], &[3]),
        kl_policy: a(&[-2.0, -1.0, -1.0, -1.0, -1.0, -3.0, -0.5, -0.5, -0.5]),
        kl_reference: a(&[-2.5, -1.5, -1.0, -1.2, -1.1, -3.0, -0.5, -0.7, -0.5]),
        kl_mask: a(&[1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
    }
}

fn run_kto(loss: &Kto, b: &KtoBatch, policy: &Array, kl_policy: &Array) -> LossOutput {
    let mut inputs = LossInputs::new(policy, &b.mask);
    inputs.reference_logps = Some(&b.reference);
    inputs.labels = Some(&b.labels);
    inputs.kl_policy_logps = Some(kl_policy);
    inputs.kl_reference_logps = Some(&b.kl_reference);
    inputs.kl_mask = Some(&b.kl_mask);
    loss.forward(&inputs).unwrap()
}

// r = (0.2, 0, 0); the mismatched pairs' log-ratios average 1.3/3, so z₀ = 0.4333.
#[test]
fn kto_uses_the_batch_kl_reference_point() {
    let b = kto_batch();
    let loss = Kto::new(0.1, 1.0, 1.5).unwrap();
    let out = run_kto(&loss, &b, &b.policy, &b.kl_policy);
    close(out.loss.item_exact(), 0.583_472_416_489_824_7);
    close(metric(&out, "kl"), 0.433_333_333_333_333_2);
    close(metric(&out, "rewards/chosen"), 0.01);
    close(metric(&out, "rewards/rejected"), 0.0);
}

#[test]
fn kto_gradient_flows_through_rewards_but_not_the_reference_point() {
    let b = kto_batch();
    let loss = Kto::new(0.1, 1.0, 1.5).unwrap();
    let mut vg = value_and_grad_with_argnums(|x: &[Array]| -> Result<Vec<Array>, Exception> { Ok(vec![run_kto(&loss, &b, &x[0], &x[1]).loss]) }, &[0, 1]);
    let (_, g) = vg(&[b.policy.clone(), b.kl_policy.clone()]).unwrap();
    let d = [-0.008_332_199_176_989_663f32, 0.012_494_133_780_440_08, -0.008_329_422_520_293_386];
    let m = b.mask.as_slice::<f32>();
    for (i, a) in g[0].as_slice::<f32>().iter().enumerate() {
        assert!((a - d[i / 3] * m[i]).abs() < 1e-7, "{:?}", g[0]);
    }
    assert!(g[1].as_slice::<f32>().iter().all(|&v| v == 0.0), "z₀ is detached: {:?}", g[1]);
}

mod grpo {
    use sdk::{
        mlx_rs::{error::Exception, transforms::value_and_grad, Array},
        Loss, LossInputs, LossOutput,
    };

    use super::{close, metric};
    use crate::{Grpo, GrpoConfig, GrpoType, ImportanceLevel};

    fn grpo(loss_type: GrpoType, epsilon: f32, epsilon_high: Option<f32>, beta: f32, max_completion_length: Option<usize>) -> Result<Grpo, sdk::PluginError> {
        Grpo::new(GrpoConfig { loss_type, epsilon, epsilon_high, beta, max_completion_length, ..GrpoConfig::default() })
    }

    fn a(v: &[f32]) -> Array {
        Array::from_slice(v, &[3, 3])
    }

    struct Batch {
        logp: Array,
        old: Array,
        reference: Array,
        mask: Array,
        advantages: Array,
    }

    fn batch() -> Batch {
        Batch {
            logp: a(&[-1.0, -0.5, -2.0, -0.2, -0.3, -0.4, -1.5, -1.0, -0.7]),
            old: a(&[-1.1, -0.5, -1.8, -0.5, -0.3, -0.1, -1.5, -1.4, -0.7]),
            reference: a(&[-1.2, -0.6, -2.1, -0.1, -0.3, -0.6, -1.4, -1.1, -0.9]),
            mask: a(&[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
            advantages: Array::from_slice(&[0.5f32, -1.0, 2.0], &[3]),
        }
    }

    fn run(loss: &Grpo, b: &Batch, logp: &Array, old: &Array) -> LossOutput {
        let mut inputs = LossInputs::new(logp, &b.mask);
        inputs.old_logps = Some(old);
        inputs.advantages = Some(&b.advantages);
        if loss.requirements().reference {
            inputs.reference_logps = Some(&b.reference);
        }
        loss.forward(&inputs).unwrap()
    }

    // Ratios (masked tokens): row 0 (1.105, 1, 0.819), row 1 (1.350, 1), row 2 (1, 1.492). Clipped away: row 2's
    // 1.492 > 1.28 with A = 2 (1 of 7 tokens); row 1's 1.350 with A = −1 keeps its unclipped (smaller) term.
    #[test]
    fn each_loss_type_equals_its_formula() {
        let b = batch();
        let cases = [
            (GrpoType::Grpo, None, 0.0, -0.530_795_847_134_756_8),
            (GrpoType::Bnpo, None, 0.0, -0.524_584_575_428_687_4),
            (GrpoType::Dapo, None, 0.0, -0.524_584_575_428_687_4),
            (GrpoType::DrGrpo, Some(8), 0.0, -0.153_003_834_500_033_83),
            (GrpoType::Grpo, None, 0.04, -0.530_568_405_043_953_2),
            (GrpoType::Bnpo, None, 0.04, -0.524_335_519_181_046_5),
            (GrpoType::DrGrpo, Some(8), 0.04, -0.152_931_193_094_471_9),
        ];
        for (kind, length, beta, expected) in cases {
            let loss = grpo(kind, 0.2, Some(0.28), beta, length).unwrap();
            assert_eq!(loss.requirements().reference, beta > 0.0, "β = 0 runs no reference");
            // Means per completion (grpo) or over a fixed B × length (dr_grpo) weigh micro-batches by rows.
            assert_eq!(loss.requirements().row_mean, matches!(kind, GrpoType::Grpo | GrpoType::DrGrpo), "{kind:?}");
            let out = run(&loss, &b, &b.logp, &b.old);
            close(out.loss.item_exact(), expected);
            close(metric(&out, "clip_ratio/region_mean"), 1.0 / 7.0);
            close(metric(&out, "clip_ratio/high_mean"), 1.0 / 7.0);
            close(metric(&out, "clip_ratio/low_mean"), 0.0);
            close(metric(&out, "ratio"), 1.109_369_310_910_129);
            if beta > 0.0 {
                close(metric(&out, "kl"), 0.006_226_406_191_022_279);
            }
        }
    }

    #[test]
    fn on_the_first_iteration_the_ratio_is_one_and_nothing_is_clipped() {
        let b = batch();
        let loss = grpo(GrpoType::Bnpo, 0.2, None, 0.0, None).unwrap();
        let out = run(&loss, &b, &b.logp, &b.logp);
        assert_eq!(metric(&out, "ratio"), 1.0);
        assert_eq!(metric(&out, "clip_ratio/region_mean"), 0.0);
        // −Σ m·A / Σ m = −(3·0.5 − 2·1 + 2·2) / 7
        close(out.loss.item_exact(), -(1.5 - 2.0 + 4.0) / 7.0);
    }

    #[test]
    fn clipped_tokens_get_no_gradient() {
        let b = batch();
        let loss = grpo(GrpoType::Bnpo, 0.2, Some(0.28), 0.0, None).unwrap();
        let mut vg = value_and_grad(|x: &[Array]| -> Result<Vec<Array>, Exception> { Ok(vec![run(&loss, &b, &x[0], &b.old).loss]) });
        let (_, g) = vg(&[b.logp.clone()]).unwrap();
        // −A·ρ/7 where the unclipped term is the minimum, 0 where clipping wins or the mask is 0.
        let expected = [-0.078_940_78, -0.071_428_57, -0.058_480_77, 0.192_836_97, 0.142_857_14, 0.0, -0.285_714_29, 0.0, 0.0];
        for (x, e) in g[0].as_slice::<f32>().iter().zip(expected) {
            assert!((x - e).abs() < 1e-6, "{:?}", g[0]);
        }
    }

    // GSPO: one weight per completion, exp of its tokens' mean log-ratio: row 0 exp(−0.1/3) = 0.967216, row 1
    // exp(0.3/2) = 1.161834, row 2 exp(0.4/2) = 1.221403, the last clipped to 1.2 with A = 2 (ε_high = ε = 0.2).
    // Per-token losses, constant over a completion: −0.5·0.967216, +1.161834, −2·1.2.
    #[test]
    fn sequence_level_weights_equal_gspo_by_hand() {
        let b = batch();
        let gspo = |loss_type| Grpo::new(GrpoConfig { loss_type, importance_sampling_level: ImportanceLevel::Sequence, ..GrpoConfig::default() }).unwrap();
        let out = run(&gspo(GrpoType::Grpo), &b, &b.logp, &b.old);
        close(out.loss.item_exact(), -0.573_924_602_504_239_9);
        let out = run(&gspo(GrpoType::Dapo), &b, &b.logp, &b.old);
        // (3·−0.483608 + 2·1.161834 + 2·−2.4) / 7
        close(out.loss.item_exact(), -0.561_022_237_895_206_1);
        // Row 2's weight counts for both its tokens.
        close(metric(&out, "clip_ratio/high_mean"), 2.0 / 7.0);
        close(metric(&out, "clip_ratio/low_mean"), 0.0);
        close(metric(&out, "ratio"), 1.095_446_043_317_560_3);
        // The gradient reaches every token of an unclipped completion equally: d/dlogp_t of −A·w·n/7 with
        // w = exp(Σ m·r / n) is −A·w·m_t/7 (token-level weights would give each token its own ratio).
        let loss = gspo(GrpoType::Dapo);
        let mut vg = value_and_grad(|x: &[Array]| -> Result<Vec<Array>, Exception> { Ok(vec![run(&loss, &b, &x[0], &b.old).loss]) });
        let (_, g) = vg(&[b.logp.clone()]).unwrap();
        let (g0, g1) = (-0.069_086_864_320_143_28f32, 0.165_976_320_389_754_7f32);
        let expected = [g0, g0, g0, g1, g1, 0.0, 0.0, 0.0, 0.0];
        for (x, e) in g[0].as_slice::<f32>().iter().zip(expected) {
            assert!((x - e).abs() < 1e-6, "{:?}", g[0]);
        }
    }

    #[test]
    fn the_kl_log_ratio_clip_keeps_k3_finite_when_the_policy_drifts() {
        // One token 100 nats below the reference: exp(100) overflows float32.
        let (logp, old, reference, mask) = (Array::from_slice(&[-1.0f32], &[1, 1]), Array::from_slice(&[-1.0f32], &[1, 1]), Array::from_slice(&[99.0f32], &[1, 1]), Array::from_slice(&[1.0f32], &[1, 1]));
        let advantages = Array::from_slice(&[0.0f32], &[1]);
        let forward = |clip: Option<f32>| {
            let loss = Grpo::new(GrpoConfig { beta: 0.1, kl_log_ratio_clip: clip, ..GrpoConfig::default() }).unwrap();
            let mut inputs = LossInputs::new(&logp, &mask);
            inputs.old_logps = Some(&old);
            inputs.advantages = Some(&advantages);
            inputs.reference_logps = Some(&reference);
            loss.forward(&inputs).unwrap()
        };
        assert!(!forward(None).loss.item_exact::<f32>().is_finite());
        // d clipped to 10: k3 = e¹⁰ − 10 − 1; the loss is β·k3 (A = 0). float32 holds 22015.47 to ~2e-3.
        let out = forward(Some(10.0));
        assert!((metric(&out, "kl") - 22_015.466).abs() < 1e-2, "{}", metric(&out, "kl"));
        assert!((out.loss.item_exact::<f32>() - 2_201.546_6).abs() < 1e-3);
        assert!(Grpo::new(GrpoConfig { kl_log_ratio_clip: Some(10.0), ..GrpoConfig::default() }).is_err(), "no KL term to clip with β = 0");
        assert!(Grpo::new(GrpoConfig { beta: 0.1, kl_log_ratio_clip: Some(-1.0), ..GrpoConfig::default() }).is_err());
    }

    #[test]
    fn settings_that_do_not_apply_are_refused() {
        assert!(grpo(GrpoType::DrGrpo, 0.2, None, 0.0, None).is_err());
        assert!(grpo(GrpoType::Dapo, 0.2, None, 0.0, Some(8)).is_err());
        assert!(grpo(GrpoType::Dapo, 1.5, None, 0.0, None).is_err());
        assert!(grpo(GrpoType::Dapo, 0.2, None, -0.1, None).is_err());
    }
}
