#!/usr/bin/env bash
# GPU readiness check: on a machine with an NVIDIA GPU and `pip install -e ".[cuda,embed]"`
# (".[cuda13,embed]" with a driver >= 580), runs the main job, the benchmarks and an embedding
# extraction on the GPU and prints their figures. Nothing here needs the network.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ./gpu_check
#   ENCODER_MODEL=/models/qwen2.5-0.5b bash scripts/gpu_check.sh   # embed with a real local model
#
# Without ENCODER_MODEL the extraction uses a randomly initialised Llama (hidden 1024, 12 layers,
# ~0.2B parameters) saved locally: its texts/s is that of a real model of that size.
# Expected runtime on one H100/H200: about 10 minutes.
set -euo pipefail
OUT=${1:-gpu_check}
mkdir -p "$OUT"
export PLURALIGN_CACHE="$OUT/cache"
say() { printf '\n=== %s ===\n' "$*"; }

say "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'EOF'
import jax
print("jax", jax.__version__, jax.devices())
assert jax.devices()[0].platform == "gpu", "JAX sees no GPU: install pluralign[cuda] (or [cuda13])"
import torch
print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
EOF

say "main job: PAL-A, 3 seeds in one program (default precision, then bf16 matmuls)"
/usr/bin/time -f "wall %e s, peak host RSS %M KB" pluralign model=pal_a 'seeds=[0,1,2]' hydra.run.dir="$OUT/main"
/usr/bin/time -f "wall %e s, peak host RSS %M KB" pluralign model=pal_a 'seeds=[0,1,2]' train.matmul_precision=bfloat16 \
  hydra.run.dir="$OUT/main_bf16"

say "benchmarks"
python scripts/bench_train.py
python scripts/bench_fewshot.py --users 1000 --many-users 100000
python scripts/bench_host_gather.py --items 200000 --dim 2048 --pairs 1000000 --batch 4096
python scripts/bench_memory.py

say "embedding extraction (pluralign embed encoder=hf, dtype auto = bf16 on GPU)"
MODEL=${ENCODER_MODEL:-}
if [ -z "$MODEL" ]; then
  MODEL="$OUT/random-llama"
  python - "$MODEL" <<'EOF'
import sys, torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast
words = [f"w{i}" for i in range(32000)]
tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(["<unk>", "</s>", *words])}, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
torch.manual_seed(0)
model = LlamaModel(LlamaConfig(vocab_size=32002, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                               num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=1024))
model.save_pretrained(sys.argv[1]); fast.save_pretrained(sys.argv[1])
print("saved", sys.argv[1], sum(p.numel() for p in model.parameters()) / 1e6, "M parameters")
EOF
fi
python - "$OUT/texts.csv" <<'EOF'
import csv, sys, numpy as np
rng = np.random.default_rng(0)
text = lambda: " ".join(f"w{i}" for i in rng.integers(32000, size=int(rng.integers(5, 400))))
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f); w.writerow(["user", "a", "b"])
    for i in range(10000):
        w.writerow([f"u{i % 100}", text(), text()])
EOF
/usr/bin/time -f "wall %e s" pluralign embed input="$OUT/texts.csv" output="$OUT/embedded" label=null overwrite=true \
  encoder=hf encoder.model="$MODEL" encoder.local_files_only=true encoder.batch_size=64 encoder.max_length=512 progress=false

say "done: figures above; runs under $OUT"
