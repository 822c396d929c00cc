"""The real small model: SmolLM2-135M-Instruct (prepared by scripts/get-smollm2.sh)
answers the France question with Paris, identically on 1 rank and on 2 ranks (PP=2);
TP=2 is refused clearly (9 heads); quantized to FP8 by llmcompressor it still answers Paris."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import launch

MODEL = os.environ.get("RRUN_SMOLLM2", str(Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct"))
RRANK = str(Path(launch.__globals__["RRUN"]).parent / "rrank")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def model():
    assert (Path(MODEL) / "config.json").exists(), f"{MODEL} missing: run scripts/get-smollm2.sh (scripts/test.sh does)"
    return MODEL


def answer(model, n, *extra):
    p = launch("rrun", ["--standalone", "--nproc-per-node", n, RRANK, "generate", "--model", model, "--prompt", QUESTION,
                        "--max-tokens", 24, *extra], timeout=600)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_paris_on_one_rank_and_two_pipeline_ranks(model):
    one = answer(model, 1)
    two = answer(model, 2, "-pp", 2)
    assert "Paris" in one, one
    assert one == two


def test_tensor_parallel_two_is_refused_clearly(model):
    p = launch("rrun", ["--standalone", "--nproc-per-node", 2, RRANK, "generate", "--model", model, "-tp", 2,
                        "--prompt", QUESTION])
    assert p.returncode == 1
    assert ("Total number of attention heads (9) must be divisible by tensor parallel size (2); "
            "valid -tp values: 1, 3, 9") in p.stderr
    assert "exitcode  : 2" in p.stderr


@pytest.fixture(scope="module")
def fp8_model(model, tmp_path_factory):
    """SmolLM2 quantized by llmcompressor, FP8 dynamic (e4m3 weights with per-channel
    scales, lm_head and the tied embedding left bf16), saved compressed."""
    out = tmp_path_factory.mktemp("smollm2-fp8") / "SmolLM2-135M-Instruct-FP8-dynamic"
    code = f"""
import shutil, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
m = AutoModelForCausalLM.from_pretrained({model!r}, dtype=torch.bfloat16)
oneshot(model=m, recipe=QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=["lm_head"]))
m.save_pretrained({str(out)!r}, save_compressed=True)
for f in Path({model!r}).glob("*"):
    if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
        shutil.copy(f, {str(out)!r})
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return str(out)


def test_fp8_dynamic_from_llmcompressor_answers_paris(fp8_model):
    cfg = json.loads((Path(fp8_model) / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "float-quantized"
    one = answer(fp8_model, 1)
    assert "Paris" in one, one
    assert answer(fp8_model, 2, "-pp", 2) == one
