# exploratory (after the replication): off-policy SFT at lr 1e-3 on N1-N3, the rate the replication's grid chose on R1
cd /tmp/fullrun
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
C="python train.py sft --batch_size 128 --steps 80 --n_prompts 1280 --log_every 10 --eval_every 20 --ckpt_every 80 --expert_style tree --lr 0.001"
$C --init /tmp/bswork/gate_cpu_t2_s1/ckpt.pt --out /tmp/sft1e3/val_N1 --seed 0 --device auto --eval_split val --eval_n 200 --passk_problems 8 --passk_n 2 --kl_n 8 --eval_every 0 > /tmp/sft1e3/val_N1.log 2>&1 &
$C --init /tmp/bswork/gate_cpu_t2_s1/ckpt.pt --out /tmp/sft1e3/N1 --seed 0 --device auto --eval_n 1000 --passk_problems 64 --passk_n 64 --kl_n 64 > /tmp/sft1e3/N1.log 2>&1
wait
$C --init /tmp/bswork/gate_cpu_t2_s2/ckpt.pt --out /tmp/sft1e3/N2 --seed 1 --device auto --eval_n 1000 --passk_problems 64 --passk_n 64 --kl_n 64 > /tmp/sft1e3/N2.log 2>&1 &
$C --init /tmp/bswork/gate_cpu_t2_s3/ckpt.pt --out /tmp/sft1e3/N3 --seed 2 --device auto --eval_n 1000 --passk_problems 64 --passk_n 64 --kl_n 64 > /tmp/sft1e3/N3.log 2>&1
wait
for f in /tmp/sft1e3/*.log; do echo "$f: $(grep '^final' $f | cut -c1-300)"; done
