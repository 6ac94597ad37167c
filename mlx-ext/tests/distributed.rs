//! MLX's ring backend over 127.0.0.1 with two processes: this test binary re-runs itself as the two ranks.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mlx_ext::distributed::{self, Membership};
use mlx_rs::{random, Array, Dtype, Stream};

const ROLE: &str = "MLX_EXT_DIST_TEST_ROLE";

/// Rank r's contribution: normal values seeded by the rank, so every rank can compute everyone's.
fn contribution(rank: usize, dtype: Dtype) -> Array {
    let key = random::key(100 + rank as u64).unwrap();
    random::normal::<f32>(&[3, 1000], None, None, &key).unwrap().as_dtype(dtype).unwrap()
}

fn bits(a: &Array) -> Vec<u32> {
    a.as_dtype(Dtype::Float32).unwrap().as_slice::<f32>().iter().map(|v| v.to_bits()).collect()
}

/// One rank's work (runs only in the child processes the test below starts).
#[test]
#[ignore = "a rank of `two_ranks_over_ring_sum_gather_and_max_exactly`, started by it"]
fn rank() {
    let Ok(role) = std::env::var(ROLE) else { return };
    let rank: usize = std::env::var("MLX_RANK").unwrap().parse().unwrap();
    assert_eq!(distributed::join("ring").unwrap(), Membership { rank, size: 2 }, "{role}");
    let cpu = Stream::cpu();
    for dtype in [Dtype::Float32, Dtype::Bfloat16] {
        let (x0, x1) = (contribution(0, dtype), contribution(1, dtype));
        let mine = if rank == 0 { &x0 } else { &x1 };
        // Two ranks: one addition, computed once and copied, so the sum is bitwise the local x0 + x1.
        let sum = distributed::all_sum(mine, &cpu).unwrap();
        assert_eq!(sum.dtype(), dtype);
        assert_eq!(bits(&sum), bits(&x0.add(&x1).unwrap()), "all_sum {dtype:?}");
        let max = distributed::all_max(mine, &cpu).unwrap();
        assert_eq!(bits(&max), bits(&mlx_rs::ops::maximum(&x0, &x1).unwrap()), "all_max {dtype:?}");
        let gathered = distributed::all_gather(mine, &cpu).unwrap();
        assert_eq!(gathered.shape(), &[6, 1000]);
        assert_eq!(bits(&gathered), bits(&mlx_rs::ops::concatenate(&[&x0, &x1], 0).unwrap()), "all_gather {dtype:?}");
    }
    // Integers sum exactly whatever the order: what exact metric reductions rely on.
    let counts = Array::from_slice(&[rank as i64 + 1, 1 << 40], &[2]);
    let total = distributed::all_sum(&counts, &cpu).unwrap();
    assert_eq!(total.as_slice::<i64>(), &[3, 2 << 40]);
    println!("rank {rank} ok");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_ranks_over_ring_sum_gather_and_max_exactly() {
    let dir = std::env::temp_dir().join(format!("mlx-ext-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hostfile = dir.join("hostfile.json");
    let hosts: Vec<Vec<String>> = (0..2).map(|_| vec![format!("127.0.0.1:{}", free_port())]).collect();
    std::fs::write(&hostfile, serde_json_like(&hosts)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|r| {
            Command::new(&exe)
                .args(["--exact", "rank", "--ignored", "--nocapture", "--test-threads=1"])
                .env(ROLE, format!("rank {r}"))
                .env("MLX_RANK", r.to_string())
                .env("MLX_HOSTFILE", &hostfile)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Init takes about a second; a hang (a rank that never connects) must fail the test, not stall CI.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut status = vec![None, None];
    while status.iter().any(Option::is_none) {
        for (c, s) in children.iter_mut().zip(status.iter_mut()) {
            if s.is_none() {
                *s = c.try_wait().unwrap();
            }
        }
        if Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("the ranks did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (r, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && text.contains(&format!("rank {r} ok")), "rank {r}:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[["127.0.0.1:p0"], ["127.0.0.1:p1"]]`: the ring backend's hostfile (no JSON crate in this crate).
fn serde_json_like(hosts: &[Vec<String>]) -> String {
    let ranks: Vec<String> = hosts.iter().map(|h| format!("[{}]", h.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","))).collect();
    format!("[{}]", ranks.join(","))
}

#[test]
fn joining_without_the_backends_environment_is_an_error_naming_it() {
    // This process has no MLX_RANK / MLX_HOSTFILE (the test above sets them only for its children).
    if std::env::var_os("MLX_RANK").is_some() {
        return;
    }
    let e = distributed::join("ring").unwrap_err().to_string();
    assert!(e.contains("ring") && e.contains("MLX_RANK"), "{e}");
    let e = distributed::join("jaccl").unwrap_err().to_string();
    assert!(e.contains("jaccl"), "{e}");
}
