"""GGUF files for host/tests/gguf_import.rs, written with the `gguf` package as llama.cpp's converter writes them.

  python gguf_write.py model DIR OUT.gguf ARCH QTYPE REFERENCE_DIR
      A Hugging Face model directory (a fixture host wrote) as GGUF: llama.cpp's tensor names and
      hyperparameter keys, Q/K rows permuted for llama, Gemma's norms stored as 1 + w, the byte-level BPE
      tokenizer (tokens, merges, token types, pre-tokenizer, special ids, chat template). 2-D weights are
      stored as QTYPE (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, or `mixed`: Q8_0 with the MLP's down
      projections as Q6_K and attention outputs as Q4_K, whose blocks are random since the package cannot
      quantize k-quants). REFERENCE_DIR gets the same model with every weight replaced by what the `gguf`
      package dequantizes from the file: what the converted model must compute.
  python gguf_write.py blocks OUT.gguf OUT.json
      Random blocks of every type host decodes itself, and the package's dequantization of each as JSON.
"""
import json
import shutil
import sys
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

ARCH = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3, "gemma3": gguf.MODEL_ARCH.GEMMA3}

LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "input_layernorm": "attn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def gguf_name(arch, name):
    stem, suffix = name.rsplit(".", 1)
    top = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
    if stem in top:
        return f"{top[stem]}.{suffix}"
    parts = stem.split(".")
    layer, module = parts[2], ".".join(parts[3:])
    if module == "post_attention_layernorm":
        part = "post_attention_norm" if arch == "gemma3" else "ffn_norm"
    elif module == "pre_feedforward_layernorm":
        part = "ffn_norm"
    else:
        part = LAYER[module]
    return f"blk.{layer}.{part}.{suffix}"


def permute(w, heads):
    # llama.cpp's convert_hf_to_gguf.py: HF's rotate-half rows → ggml's interleaved ones.
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, heads):
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(qtype, rows, cols, rng):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    # The f16 super-block scales: small finite values, as a quantizer writes them.
    fields = {T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q4_0: [0], T.Q8_0: [0], T.Q4_1: [0, 2]}[qtype]
    # Scales that keep weights near 0.05 whatever the type's integer range (a layer of ±80 weights would
    # overflow float16 activations).
    mult = {T.Q2_K: 45, T.Q3_K: 128, T.Q4_K: 945, T.Q5_K: 1953, T.Q6_K: 4096, T.Q5_0: 16, T.Q5_1: 31, T.Q4_0: 8, T.Q8_0: 128, T.Q4_1: 15}[qtype]
    for at in fields:
        d = ((rng.random(raw.shape[0]) + 0.5) * 0.05 / mult).astype(np.float16)
        raw[:, at:at + 2] = d.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // block * size)


def write_model(src, out, arch, qtype, reference):
    src, reference = Path(src), Path(reference)
    config = json.loads((src / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    weights = {k: np.array(v.astype(mx.float32)) for k, v in mx.load(str(src / "model.safetensors")).items()}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[ARCH[arch]])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config.get("rope_theta", 10000.0))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if arch == "gemma3":
        w.add_sliding_window(config["sliding_window"])
        pattern = config.get("sliding_window_pattern", 6)
        w.add_sliding_window_pattern([(i + 1) % pattern != 0 for i in range(config["num_hidden_layers"])])
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])
    # The tokenizer as llama.cpp's converter stores a byte-level BPE one.
    vocab = tok["model"]["vocab"]
    added = {t["id"]: t for t in tok["added_tokens"]}
    size = max(max(vocab.values()), max(added) if added else 0) + 1
    tokens, types = [""] * size, [gguf.TokenType.NORMAL] * size
    for t, i in vocab.items():
        tokens[i] = t
    for i, t in added.items():
        tokens[i] = t["content"]
        types[i] = gguf.TokenType.CONTROL if t["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    ids = {t: i for i, t in enumerate(tokens)}
    if tok_config.get("bos_token"):
        w.add_bos_token_id(ids[tok_config["bos_token"]])
    w.add_eos_token_id(ids[tok_config["eos_token"]])
    if tok_config.get("pad_token"):
        w.add_pad_token_id(ids[tok_config["pad_token"]])
    w.add_add_bos_token(bool(tok_config.get("add_bos_token")))
    w.add_chat_template(tok_config["chat_template"])

    rng = np.random.default_rng(7)
    dequantized = {}
    for name in sorted(weights):
        data = weights[name]
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = data + 1
        if arch == "llama" and name.endswith("q_proj.weight"):
            data = permute(data, heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            data = permute(data, kv_heads)
        kind = T.F32
        if data.ndim == 2:
            kind = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "mixed": T.Q8_0}[qtype]
            if qtype == "mixed" and name.endswith("down_proj.weight"):
                kind = [T.Q6_K, T.Q4_K, T.Q5_K, T.Q3_K, T.Q2_K][int(name.split(".")[2]) % 5]
        if kind in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
            raw = random_blocks(kind, data.shape[0], data.shape[1], rng)
        elif kind == T.F32:
            raw = data.astype(np.float32)
        elif kind == T.F16:
            raw = data.astype(np.float16)
        else:
            raw = quants.quantize(data.astype(np.float32), kind)
        w.add_tensor(gguf_name(arch, name), raw, raw_dtype=None if kind in (T.F32, T.F16) else kind)
        back = raw.astype(np.float32) if kind in (T.F32, T.F16) else quants.dequantize(raw, kind).astype(np.float32).reshape(data.shape)
        if arch == "llama" and name.endswith("q_proj.weight"):
            back = unpermute(back, heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            back = unpermute(back, kv_heads)
        if arch == "gemma3" and name.endswith("norm.weight"):
            back = back - 1
        dequantized[name] = mx.array(np.ascontiguousarray(back, dtype=np.float32))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type") == "llama3":
        # llama.cpp stores Llama 3's rope scaling as per-frequency factors, not as its parameters.
        base, dim = config["rope_theta"], head_dim
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
        factor, low, high, old = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["original_max_position_embeddings"]
        factors = []
        for f in freqs:
            wavelen = 2 * np.pi / f
            if wavelen < old / high:
                factors.append(1.0)
            elif wavelen > old / low:
                factors.append(factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shutil.rmtree(reference, ignore_errors=True)
    shutil.copytree(src, reference)
    mx.save_safetensors(str(reference / "model.safetensors"), dequantized, metadata={"format": "mlx"})


def write_blocks(out, out_json):
    rng = np.random.default_rng(3)
    w = gguf.GGUFWriter(out, "llama")
    values = {}
    for kind in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q5_0, T.Q5_1, T.Q4_0, T.Q4_1, T.Q8_0]:
        raw = random_blocks(kind, 2, 512, rng)
        w.add_tensor(f"{kind.name}.weight", raw, raw_dtype=kind)
        values[kind.name] = quants.dequantize(raw, kind).astype(np.float32).reshape(-1).tolist()
    x = rng.standard_normal((2, 64)).astype(np.float32)
    bf = quants.quantize(x, T.BF16)
    w.add_tensor("BF16.weight", bf, raw_dtype=T.BF16)
    values["BF16"] = quants.dequantize(bf, T.BF16).astype(np.float32).reshape(-1).tolist()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    Path(out_json).write_text(json.dumps(values))


if __name__ == "__main__":
    if sys.argv[1] == "model":
        write_model(*sys.argv[2:7])
    else:
        write_blocks(*sys.argv[2:4])
