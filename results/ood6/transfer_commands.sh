#!/bin/bash
# Exploratory: off-policy SFT and GFT on S1-S3 at the rates the recommended protocol chose on R1-R3
# (SFT 1e-3, GFT 1e-4 at tau 0.1; results/regimes_valbases/), with the registered run's exact settings
# otherwise, then each model's pass@k on the 6-operand OOD split as regimes.py step 5 measures it.
# Usage: S="S1/ckpt.pt S2/ckpt.pt S3/ckpt.pt" OUT=dir bash results/ood6/transfer_commands.sh
set -e
EV="--device auto --ood_ops 6 --eval_n 1000 --passk_problems 64 --passk_n 64 --kl_n 64"
OODK="--device auto --ood_ops 6 --passk_split ood --passk_problems 64 --passk_n 64 --eval_n 64 --kl_n 8"
jobs=()
i=0
for b in $S; do
  jobs+=("python train.py sft --batch_size 128 --steps 80 --n_prompts 1280 --log_every 10 --eval_every 20 --ckpt_every 80 --expert_style tree --lr 1e-3 --init $b --out $OUT/sft_b${i}_lr1e-3 --seed $i $EV && python train.py eval --init $OUT/sft_b${i}_lr1e-3/ckpt.pt --out $OUT/sft_b${i}_lr1e-3_oodk --seed 0 $OODK")
  jobs+=("python train.py gft --prompts_per_step 16 --n_expert 1 --n_teacher 3 --n_rollout 4 --steps 80 --n_prompts 1280 --log_every 10 --eval_every 20 --ckpt_every 80 --tau 0.1 --expert_style tree --lr 1e-4 --init $b --out $OUT/gft_b${i}_lr1e-4 --seed $i $EV && python train.py eval --init $OUT/gft_b${i}_lr1e-4/ckpt.pt --out $OUT/gft_b${i}_lr1e-4_oodk --seed 0 $OODK")
  i=$((i + 1))
done
mkdir -p $OUT
printf '%s\n' "${jobs[@]}" | OMP_NUM_THREADS=1 xargs -P 2 -I{} bash -c '{} > /dev/null 2>&1 || { echo "failed: {}"; exit 255; }'
