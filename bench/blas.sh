# Sourced by the benches that run mlx-lm: makes the competitor's MLX call the BLAS ours calls, or refuses.
# A plain `pip install mlx-cpu` uses the wheel's reference BLAS (~20x slower f32 matmuls than OpenBLAS), and
# a comparison against it flatters us. `same_blas HOST PYTHON` prints both sides' BLAS and matmul speed and
# sets COMPETITOR_ENV (an `env` prefix for the competitor's commands): when ours is OpenBLAS and theirs is
# not, their process gets our OpenBLAS through LD_PRELOAD (its cblas/LAPACK symbols then take the place of
# the wheel's, as mlx-sys's redirection does for us). It exits if the two still differ.
# On a GPU the models' matmuls do not use the CPU BLAS: both sides are printed, nothing is changed.
same_blas() {
  local host=$1 python=$2 info ours_blas ours_lib ours_gflops device theirs
  info=$("$host" info --sizes 512 --iterations 5)
  device=$(echo "$info" | sed -n 's/^device *\([a-z]*\).*/\1/p')
  ours_blas=$(echo "$info" | sed -n 's/^BLAS *//p')
  ours_lib=$(echo "$info" | grep -o '/[^ ]*openblas[^ ]*\.so[^ ]*' | head -1 || true)
  ours_gflops=$(echo "$info" | sed -n 's/^matmul.*: \([0-9.]*\) \([GT]\)FLOP.*/\1 \2/p' | awk '{print ($2=="T") ? $1*1000 : $1}')
  COMPETITOR_ENV=(env)
  theirs=$("$python" bench/blas_probe.py 512)
  if [ "$device" = cpu ] && [[ "$ours_blas" == OpenBLAS* ]] && [[ "$(field_of "$theirs" blas)" != OpenBLAS* ]] && [ -n "$ours_lib" ]; then
    # Our libgfortran.so.5 name sits beside the MLX wheel's hashed copy (mlx-sys/build/blas.rs).
    local libs
    libs=$(ls -d "${ours_lib%%/openblas-wheel/*}"/mlx-wheel/*.libs 2>/dev/null | head -1 || true)
    COMPETITOR_ENV=(env "LD_PRELOAD=$ours_lib" "LD_LIBRARY_PATH=${libs:+$libs:}${LD_LIBRARY_PATH:-}")
    theirs=$("${COMPETITOR_ENV[@]}" "$python" bench/blas_probe.py 512)
  fi
  echo "BLAS, ours:   $ours_blas ($ours_gflops GFLOP/s f32 512³ on the CPU)"
  echo "BLAS, theirs: $(field_of "$theirs" blas) ($(field_of "$theirs" gflops) GFLOP/s)${COMPETITOR_ENV[1]:+ with ${COMPETITOR_ENV[1]}}"
  if [ "$device" = cpu ]; then
    if [ "$(field_of "$theirs" blas)" != "$ours_blas" ]; then
      echo "refusing to compare: the two sides use different BLAS builds" >&2
      exit 1
    fi
    # The same library must also run at about the same speed (a wrong symbol binding would not).
    if ! awk -v a="$ours_gflops" -v b="$(field_of "$theirs" gflops)" 'BEGIN {exit !(b > a / 2 && a > b / 2)}'; then
      echo "refusing to compare: the same BLAS runs at different speeds on the two sides" >&2
      exit 1
    fi
  fi
}

field_of() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
