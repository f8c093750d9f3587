"""Hugging Face checkpoint import and export (config.json + safetensors) for all three families.

Supported: LlamaForCausalLM and Qwen2ForCausalLM (family `llama`), GPTNeoXForCausalLM (Pythia),
GPT2LMHeadModel. Params are a plain nested dict of numpy arrays with the paths of
`nnx.state(Decoder(config), nnx.Param)` (e.g. `params["stack"]["layers"]["attn"]["q"]`, block
weights stacked on a leading layers axis); `nnx.update(model, params)` loads them, `load_hf`
builds a placed (and, inside a mesh, sharded) Decoder in one call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from symtune.errors import UserError
from symtune.models.config import DecoderConfig
from symtune.models.decoder import Decoder
from symtune.models.layers import mesh_is_set
from symtune.models.safetensors_io import read_header, read_tensor, write_safetensors

Params = dict[str, Any]
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
_PREFIXES = ("model.", "gpt_neox.", "transformer.")


# Configs ---------------------------------------------------------------------------------------


def _rope(hf: Mapping[str, Any]) -> dict[str, Any]:
    """RoPE settings from either the v5 `rope_parameters` or the older `rope_scaling` + `rope_theta`."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope.setdefault("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UserError(f"unsupported RoPE type {rope_type!r} in config.json; supported: default, llama3")
    fields: dict[str, Any] = {"rope_base": float(rope["rope_theta"])}
    if rope_type == "llama3":
        fields.update(
            rope_llama3_factor=float(rope["factor"]),
            rope_low_freq_factor=float(rope["low_freq_factor"]),
            rope_high_freq_factor=float(rope["high_freq_factor"]),
            rope_original_max_positions=int(rope["original_max_position_embeddings"]),
        )
    return fields


def _require(hf: Mapping[str, Any], key: str, allowed: tuple, what: str) -> None:
    if key in hf and hf[key] not in allowed:
        raise UserError(f"unsupported {what}: config.json has {key}={hf[key]!r}; supported: {allowed}")


def config_from_hf(hf: Mapping[str, Any]) -> DecoderConfig:
    """Our config from a Hugging Face config.json dict; a UserError for unsupported architectures."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"unsupported architecture {hf.get('architectures', ['?'])[0]} (model_type {model_type!r}); "
            f"supported: {', '.join(ARCHITECTURES.values())}"
        )
    if model_type in ("llama", "qwen2"):
        _require(hf, "hidden_act", ("silu",), "activation")
        _require(hf, "use_sliding_window", (False,), "sliding-window attention")
        heads = hf["num_attention_heads"]
        bias = bool(hf.get("attention_bias", model_type == "qwen2"))
        return DecoderConfig(
            family="llama", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
            embed_dim=hf["hidden_size"], num_heads=heads,
            num_kv_heads=hf.get("num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qkv_bias=bias,
            out_bias=bias and model_type == "llama", mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_positions=hf.get("max_position_embeddings", 2048), **_rope(hf),
        )
    if model_type == "gpt_neox":
        _require(hf, "hidden_act", ("gelu",), "activation")
        heads, width = hf["num_attention_heads"], hf["hidden_size"]
        rope = dict(hf.get("rope_parameters") or {})
        fraction = rope.get("partial_rotary_factor", hf.get("rotary_pct", 0.25))
        bias = bool(hf.get("attention_bias", True))
        return DecoderConfig(
            family="gpt_neox", vocab_size=hf["vocab_size"], num_layers=hf["num_hidden_layers"],
            embed_dim=width, num_heads=heads, num_kv_heads=heads, head_dim=width // heads,
            mlp_dim=hf["intermediate_size"], norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            activation="gelu", gated_mlp=False, rotary_fraction=float(fraction), qkv_bias=bias,
            out_bias=bias, mlp_bias=True, parallel_residual=bool(hf.get("use_parallel_residual", True)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_positions=hf.get("max_position_embeddings", 2048), **_rope(hf),
        )
    _require(hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh", "gelu"), "activation")
    _require(hf, "scale_attn_weights", (True,), "attention scaling")
    _require(hf, "scale_attn_by_inverse_layer_idx", (False,), "attention scaling")
    heads, width = hf["n_head"], hf["n_embd"]
    return DecoderConfig(
        family="gpt2", vocab_size=hf["vocab_size"], num_layers=hf["n_layer"], embed_dim=width,
        num_heads=heads, num_kv_heads=heads, head_dim=width // heads, mlp_dim=hf.get("n_inner") or 4 * width,
        norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        activation="gelu" if hf.get("activation_function") == "gelu" else "gelu_tanh", gated_mlp=False,
        position="learned", qkv_bias=True, out_bias=True, mlp_bias=True,
        tie_embeddings=bool(hf.get("tie_word_embeddings", True)), max_positions=hf.get("n_positions", 1024),
    )


def _check_exportable(c: DecoderConfig, model_type: str) -> None:
    wanted = {
        "gpt_neox": dict(norm="layernorm", gated_mlp=False, position="rope", activation="gelu", mlp_bias=True,
                         num_kv_heads=c.num_heads, head_dim=c.embed_dim // c.num_heads, out_bias=c.qkv_bias,
                         rope_llama3_factor=None),
        "gpt2": dict(norm="layernorm", gated_mlp=False, position="learned", qkv_bias=True, out_bias=True,
                     mlp_bias=True, num_kv_heads=c.num_heads, head_dim=c.embed_dim // c.num_heads,
                     parallel_residual=False),
        "llama": dict(norm="rmsnorm", gated_mlp=True, position="rope", activation="silu", rotary_fraction=1.0,
                      parallel_residual=False, out_bias=c.qkv_bias),
        "qwen2": dict(norm="rmsnorm", gated_mlp=True, position="rope", activation="silu", rotary_fraction=1.0,
                      parallel_residual=False, mlp_bias=False, head_dim=c.embed_dim // c.num_heads),
    }[model_type]
    for field, value in wanted.items():
        if getattr(c, field) != value:
            raise UserError(
                f"cannot export as {ARCHITECTURES[model_type]}: it needs {field}={value!r}, the config has "
                f"{getattr(c, field)!r}"
            )


def config_to_hf(config: DecoderConfig, dtype: str = "float32") -> dict[str, Any]:
    """The config.json dict that `transformers` builds the same model from."""
    c = config
    if c.family == "llama":
        model_type = "qwen2" if c.qkv_bias and not c.out_bias else "llama"
    else:
        model_type = c.family
    _check_exportable(c, model_type)
    common = {"model_type": model_type, "architectures": [ARCHITECTURES[model_type]], "vocab_size": c.vocab_size,
              "tie_word_embeddings": c.tie_embeddings, "dtype": dtype}
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": c.rope_base}
    if c.rope_llama3_factor is not None:
        rope.update(rope_type="llama3", factor=c.rope_llama3_factor, low_freq_factor=c.rope_low_freq_factor,
                    high_freq_factor=c.rope_high_freq_factor,
                    original_max_position_embeddings=c.rope_original_max_positions)
    if c.family == "gpt2":
        return {**common, "n_embd": c.embed_dim, "n_layer": c.num_layers, "n_head": c.num_heads,
                "n_inner": c.mlp_dim, "n_positions": c.max_positions, "layer_norm_epsilon": c.norm_eps,
                "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",
                "resid_pdrop": c.dropout_rate, "embd_pdrop": c.dropout_rate, "attn_pdrop": 0.0}
    shared = {"hidden_size": c.embed_dim, "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
              "intermediate_size": c.mlp_dim, "max_position_embeddings": c.max_positions,
              "rope_parameters": rope}
    if c.family == "gpt_neox":
        rope["partial_rotary_factor"] = c.rotary_fraction
        return {**common, **shared, "hidden_act": "gelu", "layer_norm_eps": c.norm_eps,
                "use_parallel_residual": c.parallel_residual, "attention_bias": c.qkv_bias,
                "hidden_dropout": c.dropout_rate, "attention_dropout": 0.0}
    llama = {**common, **shared, "hidden_act": "silu", "num_key_value_heads": c.num_kv_heads,
             "rms_norm_eps": c.norm_eps, "attention_dropout": 0.0}
    if model_type == "qwen2":
        return {**llama, "use_sliding_window": False}
    return {**llama, "head_dim": c.head_dim, "attention_bias": c.qkv_bias, "mlp_bias": c.mlp_bias}


# Tensor layouts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    """One HF tensor ({i} = layer index) with its shape, and the param(s) of ours it holds."""

    name: str
    shape: tuple[int, ...]
    ours: tuple[str, ...]
    split: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    join: Callable[..., np.ndarray]


def _same(name, shape, ours, our_shape) -> _Tensor:
    """Same numbers, possibly reshaped (norms, biases, embeddings, GPT-2's Conv1D [in, out] weights)."""
    return _Tensor(name, shape, (ours,), lambda w: (w.reshape(our_shape),), lambda x: x.reshape(shape))


def _linear(name, shape, ours, our_shape) -> _Tensor:
    """A torch Linear weight [out, in] against ours [in..., out...]."""
    return _Tensor(name, shape, (ours,), lambda w: (w.T.reshape(our_shape),),
                   lambda x: x.reshape(shape[::-1]).T)


def _fused(name, shape, ours, unfused_shape, axis, part_shape) -> _Tensor:
    """q, k and v fused along `axis` of the HF tensor viewed as `unfused_shape`."""
    def split(w):
        w = w.reshape(unfused_shape)
        return tuple(np.take(w, j, axis=axis).reshape(part_shape) for j in range(3))

    def join(*parts):
        return np.stack([p.reshape(np.delete(unfused_shape, axis)) for p in parts], axis=axis).reshape(shape)
    return _Tensor(name, shape, ours, split, join)


def _fused_neox(name, c: DecoderConfig) -> _Tensor:
    """GPT-NeoX query_key_value weight [H*3*D, E], per head q|k|v; ours [E, H, D] each."""
    h, d, e = c.num_heads, c.head_dim, c.embed_dim
    t = _fused(name, (3 * h * d, e), ("attn/q", "attn/k", "attn/v"), (h, 3, d, e), 1, (h, d, e))
    return _Tensor(t.name, t.shape, t.ours, lambda w: tuple(p.transpose(2, 0, 1) for p in t.split(w)),
                   lambda *ps: t.join(*(p.transpose(1, 2, 0) for p in ps)))


def _top_tensors(c: DecoderConfig) -> list[_Tensor]:
    v, e = c.vocab_size, c.embed_dim
    norm = {"llama": "model.norm", "gpt_neox": "gpt_neox.final_layer_norm", "gpt2": "transformer.ln_f"}[c.family]
    embed = {"llama": "model.embed_tokens", "gpt_neox": "gpt_neox.embed_in", "gpt2": "transformer.wte"}[c.family]
    head = "embed_out" if c.family == "gpt_neox" else "lm_head"
    out = [_same(f"{embed}.weight", (v, e), "embed/embedding", (v, e)),
           _same(f"{norm}.weight", (e,), "stack/final_norm/scale", (e,))]
    if c.norm == "layernorm":
        out.append(_same(f"{norm}.bias", (e,), "stack/final_norm/bias", (e,)))
    if c.position == "learned":
        out.append(_same("transformer.wpe.weight", (c.max_positions, e), "stack/pos_embed/embedding",
                         (c.max_positions, e)))
    if not c.tie_embeddings:
        out.append(_linear(f"{head}.weight", (v, e), "lm_head", (e, v)))
    return out


def _layer_tensors(c: DecoderConfig) -> list[_Tensor]:
    """Per-layer tensors; names carry `{i}`, our paths are relative to stack/layers."""
    e, h, k, d, m = c.embed_dim, c.num_heads, c.num_kv_heads, c.head_dim, c.mlp_dim
    if c.family == "llama":
        p = "model.layers.{i}."
        out = [
            _same(p + "input_layernorm.weight", (e,), "attn_norm/scale", (e,)),
            _same(p + "post_attention_layernorm.weight", (e,), "mlp_norm/scale", (e,)),
            _linear(p + "self_attn.q_proj.weight", (h * d, e), "attn/q", (e, h, d)),
            _linear(p + "self_attn.k_proj.weight", (k * d, e), "attn/k", (e, k, d)),
            _linear(p + "self_attn.v_proj.weight", (k * d, e), "attn/v", (e, k, d)),
            _linear(p + "self_attn.o_proj.weight", (e, h * d), "attn/o", (h, d, e)),
            _linear(p + "mlp.gate_proj.weight", (m, e), "mlp/wi_gate", (e, m)),
            _linear(p + "mlp.up_proj.weight", (m, e), "mlp/wi", (e, m)),
            _linear(p + "mlp.down_proj.weight", (e, m), "mlp/wo", (m, e)),
        ]
        if c.qkv_bias:
            out += [_same(p + f"self_attn.{x}_proj.bias", (n * d,), f"attn/{x}_bias", (n, d))
                    for x, n in (("q", h), ("k", k), ("v", k))]
        if c.out_bias:
            out.append(_same(p + "self_attn.o_proj.bias", (e,), "attn/o_bias", (e,)))
        if c.mlp_bias:
            out += [_same(p + "mlp.gate_proj.bias", (m,), "mlp/wi_gate_bias", (m,)),
                    _same(p + "mlp.up_proj.bias", (m,), "mlp/wi_bias", (m,)),
                    _same(p + "mlp.down_proj.bias", (e,), "mlp/wo_bias", (e,))]
        return out
    if c.family == "gpt_neox":
        p = "gpt_neox.layers.{i}."
        out = [
            _same(p + "input_layernorm.weight", (e,), "attn_norm/scale", (e,)),
            _same(p + "input_layernorm.bias", (e,), "attn_norm/bias", (e,)),
            _same(p + "post_attention_layernorm.weight", (e,), "mlp_norm/scale", (e,)),
            _same(p + "post_attention_layernorm.bias", (e,), "mlp_norm/bias", (e,)),
            _fused_neox(p + "attention.query_key_value.weight", c),
            _linear(p + "attention.dense.weight", (e, h * d), "attn/o", (h, d, e)),
            _linear(p + "mlp.dense_h_to_4h.weight", (m, e), "mlp/wi", (e, m)),
            _same(p + "mlp.dense_h_to_4h.bias", (m,), "mlp/wi_bias", (m,)),
            _linear(p + "mlp.dense_4h_to_h.weight", (e, m), "mlp/wo", (m, e)),
            _same(p + "mlp.dense_4h_to_h.bias", (e,), "mlp/wo_bias", (e,)),
        ]
        if c.qkv_bias:
            out += [_fused(p + "attention.query_key_value.bias", (3 * h * d,),
                           ("attn/q_bias", "attn/k_bias", "attn/v_bias"), (h, 3, d), 1, (h, d)),
                    _same(p + "attention.dense.bias", (e,), "attn/o_bias", (e,))]
        return out
    p = "transformer.h.{i}."
    return [
        _same(p + "ln_1.weight", (e,), "attn_norm/scale", (e,)),
        _same(p + "ln_1.bias", (e,), "attn_norm/bias", (e,)),
        _same(p + "ln_2.weight", (e,), "mlp_norm/scale", (e,)),
        _same(p + "ln_2.bias", (e,), "mlp_norm/bias", (e,)),
        _fused(p + "attn.c_attn.weight", (e, 3 * e), ("attn/q", "attn/k", "attn/v"), (e, 3, h, d), 1, (e, h, d)),
        _fused(p + "attn.c_attn.bias", (3 * e,), ("attn/q_bias", "attn/k_bias", "attn/v_bias"), (3, h, d), 0,
               (h, d)),
        _same(p + "attn.c_proj.weight", (h * d, e), "attn/o", (h, d, e)),
        _same(p + "attn.c_proj.bias", (e,), "attn/o_bias", (e,)),
        _same(p + "mlp.c_fc.weight", (e, m), "mlp/wi", (e, m)),
        _same(p + "mlp.c_fc.bias", (m,), "mlp/wi_bias", (m,)),
        _same(p + "mlp.c_proj.weight", (m, e), "mlp/wo", (m, e)),
        _same(p + "mlp.c_proj.bias", (e,), "mlp/wo_bias", (e,)),
    ]


# Import ----------------------------------------------------------------------------------------


class _Checkpoint:
    """The tensors of a model directory (one safetensors file, or several with an index), read
    one at a time from the files' headers: nothing is mapped or held beyond the tensor asked for."""

    def __init__(self, model_dir: Path):
        self.dir = model_dir
        if (model_dir / INDEX).is_file():
            weight_map = json.loads((model_dir / INDEX).read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        elif (model_dir / WEIGHTS).is_file():
            files = [WEIGHTS]
        else:
            raise UserError(
                f"{model_dir} has neither {WEIGHTS} nor {INDEX} (PyTorch .bin checkpoints are not read: "
                "re-save with save_pretrained(..., safe_serialization=True))"
            )
        self.entries: dict[str, tuple[Path, dict, int]] = {}
        for name in files:
            if not (model_dir / name).is_file():
                raise UserError(f"{model_dir}: {INDEX} lists {name}, which is missing")
            header, data_start = read_header(model_dir / name)
            self.entries.update({t: (model_dir / name, info, data_start) for t, info in header.items()})

    def _entry(self, name: str, shape: tuple[int, ...]) -> tuple[Path, dict, int]:
        """The file entry of a tensor by its canonical name (or without the base-model prefix), shape-checked."""
        candidates = [name] + [name[len(p):] for p in _PREFIXES if name.startswith(p)]
        found = next((self.entries[n] for n in candidates if n in self.entries), None)
        if found is None:
            raise UserError(f"{self.dir}: checkpoint has no tensor {name}")
        if tuple(found[1]["shape"]) != shape:
            raise UserError(f"{found[0]}: tensor {name} has shape {tuple(found[1]['shape'])}, config.json "
                            f"implies {shape}")
        return found

    def check(self, config: DecoderConfig) -> None:
        """A UserError naming the first tensor the config needs that is missing or misshapen."""
        for t in _top_tensors(config):
            self._entry(t.name, t.shape)
        for t in _layer_tensors(config):
            for i in range(config.num_layers):
                self._entry(t.name.format(i=i), t.shape)

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The tensor, read into memory."""
        return read_tensor(*self._entry(name, shape))


def _put(tree: Params, path: str, value: np.ndarray) -> None:
    *parents, leaf = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def _get(tree: Mapping[str, Any], path: str) -> np.ndarray:
    for key in path.split("/"):
        tree = tree[key]
    return np.asarray(tree)


def import_hf(model_dir: str | Path, param_dtype: str = "float32") -> tuple[DecoderConfig, Params]:
    """Reads a HF model directory -> (config, params as a nested dict of numpy arrays in param_dtype)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} has no config.json; point at a Hugging Face model directory")
    config = config_from_hf(json.loads((model_dir / "config.json").read_text())).replace(param_dtype=param_dtype)
    ckpt = _Checkpoint(model_dir)
    dtype = np.dtype(ml_dtypes.bfloat16) if param_dtype == "bfloat16" else np.dtype(param_dtype)
    params: Params = {}
    for t in _top_tensors(config):
        for path, value in zip(t.ours, t.split(ckpt.get(t.name, t.shape))):
            _put(params, path, value.astype(dtype))
    for t in _layer_tensors(config):
        per_layer = [t.split(ckpt.get(t.name.format(i=i), t.shape)) for i in range(config.num_layers)]
        for j, path in enumerate(t.ours):
            _put(params, "stack/layers/" + path, np.stack([parts[j] for parts in per_layer]).astype(dtype))
    return config, params


def check_checkpoint(model_dir: str | Path) -> None:
    """Checks from the files' headers alone that a HF directory holds every tensor its config.json
    needs, in its shape: a UserError naming the file and tensor otherwise."""
    model_dir = Path(model_dir)
    _Checkpoint(model_dir).check(config_from_hf(json.loads((model_dir / "config.json").read_text())))


def read_sharded_params(model_dir: str | Path, abstract_params: Mapping[str, Any]) -> Params:
    """A HF checkpoint's tensors as the model's sharded parameters: `abstract_params` is the nested
    dict of jax.ShapeDtypeStruct (with shardings) of `import_hf`'s layout.

    Each process reads the HF tensors one at a time and keeps only the slices its devices hold,
    cast to the target dtype: its memory grows by its shards plus one HF tensor, never the whole
    checkpoint (a process reads every tensor, as a transposed slice is spread over the file).
    """
    model_dir = Path(model_dir)
    ckpt = _Checkpoint(model_dir)
    config = config_from_hf(json.loads((model_dir / "config.json").read_text()))
    ckpt.check(config)  # every tensor present and shaped before any is read
    out: Params = {}

    def fill(tensors: list[_Tensor], prefix: str, layers: int | None) -> None:
        for t in tensors:
            targets = [_get_abstract(abstract_params, prefix + path, model_dir) for path in t.ours]
            # One host buffer per distinct slice; devices holding the same slice share it.
            placements = [x.sharding.addressable_devices_indices_map(x.shape) for x in targets]
            slices = [{_key(index): index for index in placed.values()} for placed in placements]
            buffers = [{k: _aligned_empty(_slice_shape(index, x.shape), x.dtype) for k, index in s.items()}
                       for s, x in zip(slices, targets)]
            for i in range(layers or 1):
                name = t.name.format(i=i) if layers else t.name
                parts = t.split(ckpt.get(name, t.shape))
                for part, s, b in zip(parts, slices, buffers):
                    for k, index in s.items():
                        if layers is None:
                            b[k][...] = part[index]
                        elif (index[0].start or 0) <= i < (index[0].stop if index[0].stop is not None else layers):
                            b[k][i - (index[0].start or 0)] = part[index[1:]]
                del parts  # before the next tensor is read
            for path, x, placed, b in zip(t.ours, targets, placements, buffers):
                # may_alias: on a CPU device the buffer becomes the array's memory, not a copy of it.
                arrays = [jax.device_put(b[_key(index)], device, may_alias=True) for device, index in placed.items()]
                b.clear()
                _put(out, prefix + path, jax.make_array_from_single_device_arrays(x.shape, x.sharding, arrays))

    fill(_top_tensors(config), "", None)
    fill(_layer_tensors(config), "stack/layers/", config.num_layers)
    return out


def _get_abstract(tree: Mapping[str, Any], path: str, model_dir: Path):
    for key in path.split("/"):
        if key not in tree:
            raise UserError(f"{model_dir}: the model has no parameter {path} (does config.json match it?)")
        tree = tree[key]
    return tree


def _key(index: tuple[slice, ...]) -> tuple:
    return tuple((s.start, s.stop) for s in index)


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """np.empty on a 64-byte boundary: a CPU device can then take it as its buffer without a copy."""
    dtype = np.dtype(dtype)
    raw = np.empty(int(np.prod(shape)) * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


def _slice_shape(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))


def decoder_from_params(config: DecoderConfig, params: Mapping[str, Any]) -> Decoder:
    """A Decoder holding `params`; inside `jax.set_mesh` + logical rules they are placed sharded."""
    model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    mesh = jax.sharding.get_mesh() if mesh_is_set() else None
    dtype = jnp.dtype(config.param_dtype)

    def place(path, variable):
        value = _get(params, "/".join(str(k) for k in path)).astype(dtype)
        if mesh is None:
            return variable.replace(jnp.asarray(value))
        spec = nnx.get_partition_spec(variable).get_value()
        return variable.replace(jax.device_put(value, jax.sharding.NamedSharding(mesh, spec)))

    nnx.update(model, nnx.map_state(place, nnx.state(model, nnx.Param)))
    return model


def load_hf(model_dir: str | Path, **overrides: Any) -> Decoder:
    """A Decoder holding a HF checkpoint (sharded inside a mesh); `overrides` replace config fields
    (e.g. dtype="float32", dropout_rate=0.1)."""
    config, params = import_hf(model_dir, overrides.get("param_dtype", "float32"))
    return decoder_from_params(config.replace(**overrides), params)


# Export ----------------------------------------------------------------------------------------


def export_hf(
    config: DecoderConfig,
    params: Mapping[str, Any] | nnx.State | Decoder,
    out_dir: str | Path,
    dtype: str = "float32",
    max_shard_bytes: int | None = None,
) -> Path:
    """Writes config.json and safetensors (sharded with an index past max_shard_bytes) that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads."""
    if isinstance(params, Decoder):
        params = nnx.state(params, nnx.Param)
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(config, dtype)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    tensors: dict[str, np.ndarray] = {}
    for t in _top_tensors(config):
        tensors[t.name] = t.join(*(_get(params, p) for p in t.ours)).astype(np_dtype)
    for t in _layer_tensors(config):
        stacks = [_get(params, "stack/layers/" + p) for p in t.ours]
        for i in range(config.num_layers):
            tensors[t.name.format(i=i)] = t.join(*(s[i] for s in stacks)).astype(np_dtype)
    _write_shards(out_dir, tensors, max_shard_bytes)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
    return out_dir


def _write_shards(out_dir: Path, tensors: dict[str, np.ndarray], max_shard_bytes: int | None) -> None:
    total = sum(t.nbytes for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        write_safetensors(out_dir / WEIGHTS, tensors)
        return
    shards: list[dict[str, np.ndarray]] = [{}]
    for name, tensor in tensors.items():
        if shards[-1] and sum(t.nbytes for t in shards[-1].values()) + tensor.nbytes > max_shard_bytes:
            shards.append({})
        shards[-1][name] = tensor
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(out_dir / file, shard)
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2))
