cd /tmp/vb2
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
for b in 0 1 2; do
  python train.py sft --batch_size 128 --steps 300 --n_prompts 1280 --log_every 10 --eval_every 60 --ckpt_every 60 --expert_style chain --digits 3 --max_new_tokens 72 --lr 0.001 --init /tmp/vb2_out/runs/base_s$b/ckpt.pt --out /tmp/k300/sft_b$b --seed 0 --device auto --eval_n 1000 --passk_problems 64 --passk_n 64 --kl_n 64 > /tmp/k300/sft_b$b.log 2>&1 &
  python train.py gft --prompts_per_step 16 --n_expert 1 --n_teacher 3 --n_rollout 4 --steps 300 --n_prompts 1280 --log_every 10 --eval_every 60 --ckpt_every 60 --tau 0.1 --expert_style chain --digits 3 --max_new_tokens 72 --lr 0.001 --init /tmp/vb2_out/runs/base_s$b/ckpt.pt --out /tmp/k300/gft_b$b --seed 0 --device auto --eval_n 1000 --passk_problems 64 --passk_n 64 --kl_n 64 > /tmp/k300/gft_b$b.log 2>&1
  wait
done
echo done
