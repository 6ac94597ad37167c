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
    close(metric(&out, "rewards/margin"), 0.025);
    close(metric(&out, "rewards/accuracy"), 1.0);
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
    close(metric(&out, "nll"), 0.875);
    close(out.loss.item_exact(), 0.944_035_485_026_481_7);
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
