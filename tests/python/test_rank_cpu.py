"""rrank on CPU against transformers: every test architecture at every placement,
as real processes under rrun; chat-template prompts; and every start-up refusal."""
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, base_env, free_port, launch

DATA = ROOT / "tests" / "data"
RRANK = str(Path(launch.__globals__["RRUN"]).parent / "rrank")


def ref(arch):
    return json.loads((DATA / arch / "reference.json").read_text())


def generate(args, n=1, env=None, **kw):
    """rrank generate as `n` real processes under rrun (or alone when n == 1 and no launcher is wanted)."""
    cmd = ["--standalone", "--nproc-per-node", n, "--tee", 3, RRANK, "generate", *args]
    return launch("rrun", cmd, env=env, **kw)


def check_against(model, r, tp, pp, tmp_path, extra=()):
    """rrank's prompt logits within 1e-4 of the reference `r` and its 32 greedy tokens identical."""
    dump = tmp_path / "dump.json"
    p = generate(["--model", model, "-tp", tp, "-pp", pp, "--prompt-ids", ",".join(map(str, r["prompt_ids"])),
                  "--max-tokens", 32, "--ignore-eos", "--dump", dump, *extra], n=tp * pp)
    assert p.returncode == 0, p.stderr
    got = json.loads(dump.read_text())
    assert len(got["prompt_logits"]) == len(r["logits"])
    diff = max(abs(a - b) for ra, rb in zip(r["logits"], got["prompt_logits"]) for a, b in zip(ra, rb))
    assert diff <= 1e-4, f"max |logit diff| {diff}"
    assert got["tokens"] == r["greedy"]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2), (4, 2)])
def test_matches_transformers(tmp_path, arch, tp, pp):
    check_against(DATA / arch, ref(arch), tp, pp, tmp_path)


# llama-gelu: tanh GELU, attention and MLP biases, head_dim != hidden / heads, rms_norm_eps 1e-3.
# qwen2-window: sliding window 4 on layers >= max_window_layers (1), layer_types derived.
@pytest.mark.parametrize("arch,tp,pp", [("llama-gelu", 1, 1), ("llama-gelu", 2, 1), ("llama-gelu", 1, 2),
                                        ("qwen2-window", 1, 1), ("qwen2-window", 2, 1), ("qwen2-window", 1, 2),
                                        ("qwen2-window", 2, 2)])
def test_math_changing_fields_match_transformers(tmp_path, arch, tp, pp):
    check_against(DATA / arch, ref(arch), tp, pp, tmp_path)


# The same weights under config.json edits (erf GELU, linear RoPE, explicit layer_types, Mistral's
# all-layer window): reference-NAME.json holds the edits and transformers' outputs under them.
@pytest.mark.parametrize("arch,variant,tp,pp", [("llama-gelu", "gelu", 1, 1), ("llama-gelu", "rope-linear", 1, 1),
                                                ("llama-gelu", "rope-linear", 2, 1),
                                                ("qwen2-window", "layer-types", 1, 1),
                                                ("qwen2-window", "layer-types", 1, 2),
                                                ("mistral", "window", 1, 1), ("mistral", "window", 2, 2)])
def test_config_variants_match_transformers(tmp_path, arch, variant, tp, pp):
    r = json.loads((DATA / arch / f"reference-{variant}.json").read_text())
    m = tmp_path / "m"
    shutil.copytree(DATA / arch, m)
    edit_config(m, **r["config_edits"])
    check_against(m, r, tp, pp, tmp_path)


# Fields transformers 5.17 reads but that do not change these models' math (or that the
# architecture ignores): the logits stay those of the unedited model.
@pytest.mark.parametrize("arch,edits", [
    ("llama", {"pretraining_tp": 2}),
    ("llama", {"attention_dropout": 0.5}),
    ("llama", {"sliding_window": 4, "use_sliding_window": True}),
    ("llama", {"hidden_act": "swish"}),
    ("llama-gelu", {"hidden_act": "gelu_new"}),
    ("llama-gelu", {"hidden_act": "gelu_fast"}),
    ("mistral", {"attention_bias": True, "mlp_bias": True}),
    ("mistral", {"layer_types": ["sliding_attention"] * 4}),
    ("qwen2", {"sliding_window": 4, "max_window_layers": 0}),
    ("qwen2", {"attention_bias": False, "mlp_bias": True}),
    ("qwen2-window", {"max_window_layers": 0, "layer_types": ["full_attention"] + ["sliding_attention"] * 3}),
])
def test_fields_without_effect_leave_the_logits(tmp_path, arch, edits):
    m = tmp_path / "m"
    shutil.copytree(DATA / arch, m)
    edit_config(m, **edits)
    check_against(m, ref(arch), 1, 1, tmp_path)


def test_bias_tensors_the_config_does_not_declare_are_ignored(tmp_path):
    """transformers builds its layers from config.json and drops checkpoint tensors it has no
    parameter for; so must rrank."""
    from safetensors.torch import load_file, save_file
    import torch
    m = tmp_path / "m"
    shutil.copytree(DATA / "llama", m)
    f = m / "model.safetensors"
    t = load_file(f)
    g = torch.Generator().manual_seed(0)
    for l in range(4):
        p = f"model.layers.{l}"
        for name, n in (("self_attn.q_proj", 64), ("self_attn.k_proj", 32), ("self_attn.v_proj", 32),
                        ("self_attn.o_proj", 64), ("mlp.gate_proj", 128), ("mlp.up_proj", 128),
                        ("mlp.down_proj", 64)):
            t[f"{p}.{name}.bias"] = torch.randn(n, generator=g).to(torch.bfloat16)
    save_file(t, f, metadata={"format": "pt"})
    check_against(m, ref("llama"), 1, 1, tmp_path)


def test_text_prompt_with_chat_template_same_on_1_and_2_ranks():
    outs = []
    for n, extra in ((1, []), (2, ["-pp", 2]), (2, ["-tp", 2])):
        p = generate(["--model", DATA / "llama", "--prompt", "What is the capital of France?", "--max-tokens", 12, *extra], n=n)
        assert p.returncode == 0, p.stderr
        text = "".join(l.split("]:", 1)[1] for l in p.stdout.splitlines() if l.startswith("[default0]:"))
        outs.append(text)
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_seeded_sampling_is_reproducible():
    args = ["--model", DATA / "mistral", "--prompt", "Hello", "--max-tokens", 16, "--temperature", 1.0, "--seed", 7]
    a, b = generate(args), generate(args)
    c = generate([*args[:-1], 8])
    assert a.returncode == 0 and a.stdout == b.stdout
    assert a.stdout != c.stdout


# --- start-up refusals ----------------------------------------------------------

def truncated_copy(src, dst):
    """A copy of a model whose weight files keep their headers but lose their data:
    loading any weight would fail with 'truncated', so a refusal that names something
    else proves it came before any weight was read."""
    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        b = f.read_bytes()
        n = struct.unpack("<Q", b[:8])[0]
        f.write_bytes(b[:8 + n + 16])
    return dst


def edit_config(d, **kv):
    c = json.loads((d / "config.json").read_text())
    c.update(kv)
    (d / "config.json").write_text(json.dumps(c))


def refuse(model, args, n, want, store_port=None):
    """Starts the n ranks as separate processes with the launcher's env contract (so no
    rank is cut short by another's failure) and checks each one refuses with exit 2
    and the same single line. Without `store_port` no store is reachable (the refusal
    must come first); with it, rank 0 hosts the store there."""
    procs = []
    for r in range(n):
        store = dict(MASTER_PORT=store_port) if store_port else dict(MASTER_PORT=1, TORCHELASTIC_USE_AGENT_STORE="True")
        env = base_env(RANK=r, WORLD_SIZE=n, LOCAL_RANK=r, LOCAL_WORLD_SIZE=n, MASTER_ADDR="127.0.0.1", **store)
        procs.append(subprocess.Popen([RRANK, "generate", "--model", str(model), "--prompt-ids", "1,2,3", *map(str, args)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    texts = set()
    try:
        for r, p in enumerate(procs):
            _, err = p.communicate(timeout=30)
            assert p.returncode == 2, (r, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"rrank: error (rank {r}): "), err
            texts.add(lines[0].split("): ", 1)[1])
    finally:
        for p in procs:  # a rank that did not refuse would wait minutes for its store
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert len(texts) == 1, f"same text on every rank: {texts}"
    text = texts.pop()
    assert want in text, text
    if "truncated" not in want:
        assert "truncated" not in text
    return text


def test_refusal_under_rrun_is_reported(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    p = generate(["--model", m, "-tp", 1, "--prompt-ids", "1,2,3"], n=2)
    assert p.returncode == 1
    assert "but WORLD_SIZE is 2" in p.stderr and "exitcode  : 2" in p.stderr


def test_refuses_world_size_mismatch(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    refuse(m, ["-tp", 1], 2, "tensor parallel size (1) x pipeline parallel size (1) = 1 but WORLD_SIZE is 2")


def test_refuses_heads_not_divisible(tmp_path):
    m = truncated_copy(DATA / "qwen2", tmp_path / "m")
    t = refuse(m, ["-tp", 3], 3, "Total number of attention heads (4) must be divisible by tensor parallel size (3)")
    assert "valid -tp values: 1, 2, 4" in t


def test_refuses_kv_heads_not_dividing(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    edit_config(m, num_attention_heads=12, num_key_value_heads=4)
    refuse(m, ["-tp", 6], 6, "number of key/value heads (4) and tensor parallel size (6) must divide one another")


def test_refuses_more_stages_than_layers(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    refuse(m, ["-pp", 5], 5, "pipeline parallel size (5) exceeds the number of hidden layers (4)")


def test_refuses_quantization_config(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    edit_config(m, quantization_config={"quant_method": "awq", "bits": 4})
    refuse(m, [], 1, 'quantized checkpoint (quantization_config.quant_method = "awq") is not supported')


def test_refuses_quantized_weights_under_base_config(tmp_path):
    m = tmp_path / "m"
    shutil.copytree(DATA / "llama", m)
    f = m / "model.safetensors"
    b = f.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    header["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "I32"
    header["model.layers.0.self_attn.q_proj.weight"]["shape"] = [64, 16]
    h = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 16)
    refuse(m, [], 1, "tensor model.layers.0.self_attn.q_proj.weight: dtype I32 is not a float type")


def test_refuses_weights_of_another_model(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    edit_config(m, intermediate_size=256)
    refuse(m, [], 1, "tensor model.layers.0.mlp.gate_proj.weight: shape [128, 64] does not match config.json (expected [256, 64])")


def test_refuses_tokenizer_larger_than_embedding(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(m / "tokenizer.json"))
    tok.add_tokens([f"<extra_{i}>" for i in range(40)])
    tok.save(str(m / "tokenizer.json"))
    assert tok.get_vocab_size(True) > 320
    refuse(m, [], 1, "but the embedding has only 320 rows")


def test_refuses_missing_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    refuse(empty, [], 1, "config.json: No such file")
    m = tmp_path / "noweights"
    shutil.copytree(DATA / "llama", m)
    (m / "model.safetensors").unlink()
    refuse(m, [], 1, "no *.safetensors weights in")


@pytest.mark.parametrize("edits,want", [
    ({"hidden_act": "relu"}, 'hidden_act "relu" is not supported (supported: silu, swish, gelu, gelu_python, '
                             'gelu_new, gelu_pytorch_tanh, gelu_python_tanh, gelu_fast, gelu_accurate)'),
    ({"hidden_act": "quick_gelu"}, 'hidden_act "quick_gelu" is not supported'),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                          "original_max_position_embeddings": 64}},
     'rope_parameters.rope_type "yarn" is not supported (supported: default, linear, llama3)'),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}},
     'rope_parameters.rope_type "dynamic" is not supported'),
    ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 4,
                          "long_factor": [1.0] * 4, "original_max_position_embeddings": 64}},
     'rope_parameters.rope_type "longrope" is not supported'),
    ({"rope_parameters": None, "rope_scaling": {"type": "yarn", "factor": 4.0}},
     'rope_scaling.type "yarn" is not supported'),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 32, "rope_theta": 10000.0,
                          "partial_rotary_factor": 0.5}},
     "rope_parameters.partial_rotary_factor 0.5 is not supported with rope_type \"llama3\" (RoPE on the whole head only)"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
     "rope_parameters per layer type (key \"full_attention\") is not supported"),
])
def test_refuses_math_it_does_not_implement(tmp_path, edits, want):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    edit_config(m, **edits)
    t = refuse(m, ["-tp", 2], 2, want)
    assert t.startswith("config.json: "), t


@pytest.mark.parametrize("edits,want", [
    ({"layer_types": ["full_attention", "chunked_attention", "full_attention", "full_attention"]},
     'layer_types[1] "chunked_attention" is not supported (supported: full_attention, sliding_attention)'),
    ({"layer_types": ["full_attention", "sliding_attention"]},
     "layer_types has 2 entries but num_hidden_layers is 4"),
    ({"use_sliding_window": False, "layer_types": ["full_attention", "sliding_attention"] * 2},
     'layer_types[1] is "sliding_attention" but there is no sliding window'),
])
def test_refuses_layer_types_it_cannot_follow(tmp_path, edits, want):
    m = truncated_copy(DATA / "qwen2-window", tmp_path / "m")
    edit_config(m, **edits)
    refuse(m, ["-pp", 2], 2, want)


def test_truncated_weights_name_the_same_tensor_on_every_rank_and_run(tmp_path):
    """Every weight file of the sharded qwen2 keeps its header and 16 data bytes; the refusal
    names the first tensor cut off, in file order then offset order, every time."""
    m = truncated_copy(DATA / "qwen2", tmp_path / "m")
    first = sorted(m.glob("*.safetensors"))[0]
    b = first.read_bytes()
    header = json.loads(b[8:8 + struct.unpack("<Q", b[:8])[0]])
    header.pop("__metadata__", None)
    name = min(header, key=lambda k: header[k]["data_offsets"][0])
    want = f"{first} is truncated: tensor {name} ends at byte"
    texts = {refuse(m, [], 1, want) for _ in range(3)}
    texts |= {refuse(m, ["-tp", 2], 2, want, store_port=free_port()) for _ in range(2)}
    assert len(texts) == 1, texts


# FP8 checkpoints made by llmcompressor (scripts/make-fp8-test-model.py): compressed-tensors
# float-quantized, e4m3 weights with per-channel (dynamic) or per-tensor (static) scales, lm_head left
# bf16. The reference is the tool's dequantized model (e4m3 · scale in float32, activations unquantized)
# run by transformers; the static scheme's input scales are checked but not applied on CPU.
# llama-fp8-block: transformers' own fp8 quantizer (16x16 blocks of weight_scale_inv; made on a GPU).
@pytest.mark.parametrize("arch", ["llama-fp8-dynamic", "qwen2-fp8-dynamic", "llama-fp8-static", "llama-fp8-block"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_fp8_checkpoints_match_their_dequantized_model(tmp_path, arch, tp, pp):
    check_against(DATA / arch, ref(arch), tp, pp, tmp_path)


def fp8_config():
    return json.loads((DATA / "llama-fp8-dynamic" / "config.json").read_text())["quantization_config"]


def test_refuses_base_weights_under_an_fp8_config(tmp_path):
    m = truncated_copy(DATA / "llama", tmp_path / "m")
    edit_config(m, quantization_config=fp8_config())
    refuse(m, [], 1, "tensor model.layers.0.self_attn.q_proj.weight_scale is missing from the checkpoint "
                     "(quantization_config says FP8 with saved weight scales")


@pytest.mark.parametrize("edit,want", [
    (lambda q: q["config_groups"]["group_0"]["input_activations"].update(dynamic=False),
     'dynamic false, strategy "token" is not implemented'),
    (lambda q: q["config_groups"]["group_0"]["input_activations"].update(dynamic=False, strategy="tensor"),
     "tensor model.layers.0.self_attn.q_proj.input_scale is missing from the checkpoint"),
    (lambda q: q["config_groups"]["group_0"]["weights"].update(strategy="block", block_structure=[128, 128]),
     "strategy Some(\"block\") (block or group scales) is not implemented"),
    (lambda q: q.update(ignore=["lm_head", "model.layers.7.mlp.down_proj"]),
     'ignore names "model.layers.7.mlp.down_proj", which is not a Linear layer of this model'),
    (lambda q: q.update(kv_cache_scheme={"num_bits": 8, "type": "float", "strategy": "tensor"}),
     "(an FP8 KV cache) is not implemented"),
])
def test_refuses_fp8_schemes_it_does_not_implement(tmp_path, edit, want):
    m = truncated_copy(DATA / "llama-fp8-dynamic", tmp_path / "m")
    q = fp8_config()
    edit(q)
    edit_config(m, quantization_config=q)
    refuse(m, ["-tp", 2], 2, want)


def test_refuses_fp8_scale_shapes_that_do_not_match_the_strategy(tmp_path):
    m = truncated_copy(DATA / "llama-fp8-dynamic", tmp_path / "m")
    q = fp8_config()
    q["config_groups"]["group_0"]["weights"]["strategy"] = "tensor"
    edit_config(m, quantization_config=q)
    refuse(m, [], 1, "shape [64, 1] does not match config.json (expected [1] (the FP8 scales of quantization_config's per-tensor strategy)")


def test_refuses_a_quantization_flag_the_checkpoint_contradicts(tmp_path):
    m = truncated_copy(DATA / "llama-fp8-dynamic", tmp_path / "m")
    refuse(m, ["--quantization", "fp8"], 1,
           '--quantization fp8 but the checkpoint\'s quantization_config says quant_method "compressed-tensors"')
    b = truncated_copy(DATA / "llama", tmp_path / "b")
    refuse(b, ["--quantization", "gptq"], 1, "--quantization gptq: the checkpoint has no quantization_config")


# --quantization fp8 on a bf16 checkpoint: every Linear of the layers quantized per channel at load;
# reference-fp8-at-load.json is transformers on the same quantize-dequantize of the weights.
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2)])
def test_fp8_quantized_at_load_matches_its_reference(tmp_path, arch, tp, pp):
    r = json.loads((DATA / arch / "reference-fp8-at-load.json").read_text())
    assert r["logits"] != ref(arch)["logits"]
    check_against(DATA / arch, r, tp, pp, tmp_path, extra=r["args"])


def test_refuses_a_tensor_parallel_size_that_cuts_fp8_blocks(tmp_path):
    m = truncated_copy(DATA / "llama-fp8-block", tmp_path / "m")
    t = refuse(m, ["-tp", 4], 4, "tensor parallel size 4 would cut the FP8 scale blocks (16×16): a shard's "
                                 "k_proj/v_proj rows start at 8, not a multiple of 16")
    assert t.endswith("valid -tp values: 1, 2"), t
