#!/usr/bin/env bash
# One prepared GPU session for issue #31 (run from the repository root, ~10 minutes on one
# H100/H200). Writes everything it prints to docs/gpu-check-output.txt (OUT_FILE overrides):
#   1. --cuda_graphs identity: kernel sequence, capture-iteration gradients bitwise, losses and
#      weights after 5 iterations vs the spread of two eager runs (sup, CPS, CPCL, UniMatch);
#   2. eager vs captured ms per iteration, batch 2 and 8, fp32 and bf16;
#   3. the official CPCL / U2PL / UniMatch iterations side by side with ours, if the official
#      code is there (OFFICIAL_ROOTS="cpcl=/path u2pl=/path unimatch=/path");
#   4. every method through `torchrun --nproc_per_node=1` (NCCL, SyncBN) on the toy data, a
#      snapshot per epoch, an exact resume from epoch 0, and --amp=fp16 with its GradScaler.
# Each step goes on after a failure; the exit status is the number of failed steps.
set -u
OUT_FILE=${OUT_FILE:-docs/gpu-check-output.txt}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=$(mktemp -d)
failed=0
exec > >(tee "$OUT_FILE") 2>&1

run() {  # run "what" cmd...: print, time and count a failure
  local what=$1; shift
  echo "=== $what: $*"
  local t0=$SECONDS
  if "$@"; then echo "=== ok ($((SECONDS - t0)) s): $what"; else
    echo "=== FAILED ($((SECONDS - t0)) s): $what"; failed=$((failed + 1)); fi
}

date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
git log -1 --format='commit %H %s' 2>/dev/null || true

run "identity" python scripts/bench_cuda_graphs.py identity --batch 2 --iters 5
run "speed" python scripts/bench_cuda_graphs.py speed --batch 2 8 --amp none bf16 --rounds 4 --iters 20
run "cuda tests" python -m pytest -q -x tests/test_cuda_graphs.py -k "not emulated"

if [ -n "${OFFICIAL_ROOTS:-}" ]; then
  for b in 2 8; do
    # shellcheck disable=SC2086  # OFFICIAL_ROOTS is a list of METHOD=PATH words
    run "official side by side, batch $b" python scripts/bench_official/run.py \
      --official-root $OFFICIAL_ROOTS --method cpcl u2pl unimatch --device cuda \
      --batch "$b" --ours-amp none bf16 --rounds 3 --iters 20
  done
else
  echo "=== skipped: official side by side (set OFFICIAL_ROOTS)"
fi

run "toy data" python scripts/make_toy_data.py --root "$WORK/toy" --n-train 32 --n-val 4
TINY=(--dataset_path="$WORK/toy" --backbone=resnet18 --pretrained_model=None --batch_size=4
      --image_height=64 --image_width=64 --nepochs=2 --niters_per_epoch=3 --snapshot_iter=1
      --num_workers=2 --eval_every=0 --device=cuda)
compare() {  # compare A B: model weights of two snapshots, bitwise or the max difference
  python - "$1" "$2" <<'PY'
import sys, torch
a, b = (torch.load(p, map_location="cpu", weights_only=False)["model"] for p in sys.argv[1:3])
d = max((x.double() - b[k].double()).abs().max().item() for k, x in a.items() if x.numel())
print(f"resume vs uninterrupted: max |diff| {d:.3g}", "(bitwise)" if d == 0 else "")
PY
}
for m in sup cps cpcl u2pl unimatch cosa; do
  extra=()
  [ "$m" = cosa ] && extra=(--cosa_backbone=vit_toy_patch16)  # the toy ViT of CoSA's toy preset
  full="$WORK/$m/full"; resumed="$WORK/$m/resumed"
  run "$m: torchrun nproc 1, NCCL + SyncBN, 2 epochs" torchrun --standalone --nproc_per_node=1 \
    exp_voc/train.py --method="$m" "${TINY[@]}" "${extra[@]}" --log_dir="$full"
  run "$m: resume from epoch-0.pth" torchrun --standalone --nproc_per_node=1 \
    exp_voc/train.py --method="$m" "${TINY[@]}" "${extra[@]}" --log_dir="$resumed" \
    -c "$full/snapshot/epoch-0.pth"
  run "$m: exact resume" compare "$full/snapshot/epoch-last.pth" "$resumed/snapshot/epoch-last.pth"
  run "$m: --amp=fp16 (GradScaler)" python exp_voc/train.py --method="$m" "${TINY[@]}" \
    "${extra[@]}" --amp=fp16 --log_dir="$WORK/$m/fp16"
  run "$m: --cuda_graphs=true" python exp_voc/train.py --method="$m" "${TINY[@]}" \
    "${extra[@]}" --cuda_graphs=true --nepochs=1 --niters_per_epoch=8 --log_dir="$WORK/$m/graphs"
done

echo "=== $failed failed step(s)"
date -u
exit "$failed"
