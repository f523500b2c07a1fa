"""Export-time patches that turn upstream's stateful modules into pure functions.

Upstream modules keep their streaming state inside a mutable `model_state` dict and update
it in place (preallocated KV buffers, `state[...][:] = ...`). Tracing in-place writes into
graph inputs gives wrong graphs, so while `stateless_modules()` is active each stateful
module reads its state from the dict and *replaces* the dict entry with a new tensor. The
graph wrappers (graphs.py) put graph inputs into the dict and read graph outputs back out.

State layout seen by the patched modules, keyed by the module's absolute name:
- attention: {"k": [B, H_kv, P, d], "v": [B, H_kv, P, d]} (upstream's "cache" [2, B, P, H_kv, d]
  split and made head-major) and {"offset": int64 [B]} (absolute position of the next token,
  shared by all layers of a transformer). Row j of the cache holds position offset - P + j;
  negative positions are masked, so whatever prefix a runtime starts with is ignored
  (docs/state-design.md). A module with a finite `context` keeps only the last
  `context - 1` keys, so its state stays bounded.
- buffered attention (the fast-KV / batched flow-LM step): {"buf_k", "buf_v": [B, H_kv, C, d]
  read only, "offset": [B] rows in use} in, {"new_k", "new_v": [B, H_kv, t, d]} out.
- conv: {"previous": [B, C, K_eff - stride]} plus, for replicate padding, {"started": [B]}
  (0.0 before the first call, so an all-zeros initial state is the right one).
- transposed conv: {"partial": [B, C_out, K - stride]}.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import torch

from pocket_tts_onnx.errors import UnsupportedVersionError

# pocket-tts versions whose module internals these patches were written and tested against.
TESTED_POCKET_TTS = ((4, 0, 0), (4, 1, 0))  # [min, max)


def pocket_tts_version() -> str:
    try:
        return version("pocket-tts")
    except PackageNotFoundError as e:
        raise UnsupportedVersionError(
            "pocket-tts is not installed: install the export extra, "
            "`pip install 'pocket-tts-onnx[export]'`"
        ) from e


def check_pocket_tts_version(installed: str | None = None) -> str:
    """Fail early on an untested pocket-tts: the patches depend on its module internals."""
    installed = installed or pocket_tts_version()
    try:
        parts = tuple(int(p) for p in installed.split("+")[0].split(".")[:3])
    except ValueError as e:
        raise UnsupportedVersionError(f"cannot parse pocket-tts version {installed!r}") from e
    low, high = TESTED_POCKET_TTS
    if not (low <= parts < high):
        raise UnsupportedVersionError(
            f"pocket-tts {installed} is installed, but the exporter is tested with "
            f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}; install a tested "
            f"version: pip install 'pocket-tts>={'.'.join(map(str, low))},"
            f"<{'.'.join(map(str, high))}'"
        )
    return installed


def _module_state(module: torch.nn.Module, model_state: dict | None) -> dict | None:
    if model_state is None:
        return None
    return model_state.get(module._module_absolute_name)


def _rope(q, k, offset, max_period: float):
    """Upstream's `apply_rope` with one offset per batch row ([B] int64), written without
    reshapes that infer a dimension, so zero-length inputs export and run on older ORT.
    Same float32 operations in the same order as upstream, hence the same values."""
    d = q.shape[-1]
    ds = torch.arange(d // 2, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / d))
    ts = torch.arange(q.shape[1], dtype=torch.float32)[None, :] + offset.reshape(-1, 1).float()
    angle = freqs * ts[:, :, None, None]  # [B, T, 1, d/2]
    rot_r, rot_i = torch.cos(angle), torch.sin(angle)

    def rotate(x):
        xr, xi = x[..., 0::2], x[..., 1::2]
        out = torch.stack([xr * rot_r - xi * rot_i, xr * rot_i + xi * rot_r], dim=-1)
        return out.reshape(x.shape)

    return rotate(q), rotate(k)


def _project(self, query):
    """in_proj -> q [B, t, H, d] and k, v [B, t, H_kv, d]."""
    b, t, _ = query.shape
    d = self.dim_per_head
    projected = self.in_proj(query)
    q = projected[..., : self.attn_dim].reshape(b, t, self.num_heads, d)
    kv = projected[..., self.attn_dim :].reshape(b, t, 2, self.num_kv_heads, d)
    k, v = kv.unbind(2)
    return q, k, v


def _grouped_queries(self, q):
    """[B, t, H, d] -> [B, H_kv, group * t, d], scaled: GQA groups queries per key head
    instead of repeating keys; row g * t + i is query i of group g."""
    b, t, _, d = q.shape
    group = self.num_heads // self.num_kv_heads
    return (q * d**-0.5).transpose(1, 2).reshape(b, self.num_kv_heads, group * t, d), group


def _finish(self, x, b, t):
    d = self.dim_per_head
    x = x.reshape(b, self.num_heads, t, d).transpose(1, 2).reshape(b, t, self.num_heads * d)
    return self.out_proj(x)


def _attention_forward(self, query, model_state, attn_mask=None):
    """Attention over [past; new] keys (module docstring: state layout). Past rows whose
    absolute position `offset - P + j` is negative are masked: a junk prefix left by a
    runtime's initial state, or front padding of a younger stream in a batch, is ignored."""
    state = _module_state(self, model_state)
    if state is not None and "buf_k" in state:
        return _buffered_attention(self, query, state)
    b, t, _ = query.shape
    q, k, v = _project(self, query)
    if state is None:
        past_len = 0
        offset = torch.zeros((b,), dtype=torch.long)
    else:
        past_len = state["k"].shape[2]
        offset = state["offset"].reshape(-1)
    q, k = _rope(q, k, offset, self.rope.max_period)
    k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, H_kv, t, d]
    if state is not None:
        k = torch.cat([state["k"], k], dim=2)
        v = torch.cat([state["v"], v], dim=2)
        keep = slice(None) if self.context is None else slice(-(self.context - 1), None)
        state["k"], state["v"] = k[:, :, keep], v[:, :, keep]
        state["offset"] = state["offset"] + t

    q, group = _grouped_queries(self, q)
    if state is None and self.context is not None:
        x = _banded_attention(q, k, v, group, t, self.context)
    else:
        pos_q = offset[:, None] + torch.arange(t, dtype=torch.long)[None, :]  # [B, t]
        pos_k = (offset - past_len)[:, None] + torch.arange(k.shape[2], dtype=torch.long)
        delta = pos_q[:, :, None] - pos_k[:, None, :]  # [B, t, P + t]
        mask = (delta >= 0) & (pos_k[:, None, :] >= 0)
        if self.context is not None:
            mask = mask & (delta < self.context)
        scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H_kv, group * t, P + t]
        scores = scores.masked_fill(~mask.repeat(1, group, 1)[:, None], float("-inf"))
        x = torch.matmul(torch.softmax(scores, dim=-1), v)
    return _finish(self, x, b, t)


def _buffered_attention(self, query, state):
    """Fast-KV / batched step: keys and values of row b live in the read-only buffers
    `buf_k`/`buf_v` [B, H_kv, C, d] at [0, offset[b]); only the new rows are returned
    (`new_k`/`new_v`), for the runtime to write into its buffer. Scores against the buffer
    and against the new rows are computed apart and only the scores are concatenated, so
    no step copies the cache."""
    b, t, _ = query.shape
    q, k, v = _project(self, query)
    offset = state["offset"].reshape(-1)
    q, k = _rope(q, k, offset, self.rope.max_period)
    # The last position's post-RoPE query [B, H, d] (zeros when nothing is fed): what
    # word timestamps score against the text keys (runtime/timestamps.py).
    state["query"] = torch.cat([q.new_zeros((b, 1, *q.shape[2:])), q], 1)[:, -1]
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    state["new_k"], state["new_v"] = k, v
    buf_k, buf_v = state["buf_k"], state["buf_v"]
    q, group = _grouped_queries(self, q)
    steps = torch.arange(t, dtype=torch.long)
    pos_q = offset[:, None] + steps[None, :]  # [B, t]
    cache_pos = torch.arange(buf_k.shape[2], dtype=torch.long)
    delta_c = pos_q[:, :, None] - cache_pos[None, None, :]  # [B, t, C]
    mask_c = (cache_pos[None, None, :] < offset[:, None, None]) & (delta_c >= 0)  # [B, t, C]
    delta_n = steps[:, None] - steps[None, :]  # [t, t]
    mask_n = delta_n >= 0
    if self.context is not None:
        mask_c = mask_c & (delta_c < self.context)
        mask_n = mask_n & (delta_n < self.context)
    mask_c = mask_c.repeat(1, group, 1)[:, None]  # [B, 1, group * t, C]
    mask_n = mask_n.repeat(group, 1)  # [group * t, t]
    s_cache = torch.matmul(q, buf_k.transpose(-1, -2)).masked_fill(~mask_c, float("-inf"))
    s_new = torch.matmul(q, k.transpose(-1, -2)).masked_fill(~mask_n, float("-inf"))
    p = torch.softmax(torch.cat([s_cache, s_new], dim=-1), dim=-1)
    cache_len = buf_k.shape[2]
    x = torch.matmul(p[..., :cache_len], buf_v) + torch.matmul(p[..., cache_len:], v)
    return _finish(self, x, b, t)


def _banded_attention(q, k, v, group: int, t, context: int):
    """Causal attention limited to `context` keys, in blocks of `context` queries that each
    see their own and the previous block: O(t * context) time and memory instead of O(t^2)
    (a 30 s voice prompt is 6000 encoder steps). The same keys as the full masked form.

    q: [B, H_kv, group * t, d] (query groups of one key head stacked), k, v: [B, H_kv, t, d].
    """
    b, heads, _, d = k.shape
    size = context
    blocks = (t + size - 1) // size
    pad = blocks * size - t
    q = q.reshape(b, heads, group, t, d)
    q = torch.cat([q, q.new_zeros((b, heads, group, pad, d))], dim=3)
    q = q.reshape(b, heads, group, blocks, size, d).transpose(2, 3)  # [B, H, nb, g, S, d]

    def windows(x):  # [B, H, t, d] -> [B, H, nb, 2S, d]: previous block + own block
        x = torch.cat([x.new_zeros((b, heads, size, d)), x, x.new_zeros((b, heads, pad, d))], 2)
        x = x.reshape(b, heads, blocks + 1, size, d)
        return torch.cat([x[:, :, :-1], x[:, :, 1:]], dim=3)

    k_win, v_win = windows(k), windows(v)
    block = torch.arange(blocks, dtype=torch.long)[:, None, None]
    row = torch.arange(size, dtype=torch.long)[None, :, None]
    col = torch.arange(2 * size, dtype=torch.long)[None, None, :]
    delta = size + row - col  # query position minus key position
    mask = (delta >= 0) & (delta < context) & ((block - 1) * size + col >= 0)
    scores = torch.matmul(q, k_win[:, :, :, None].transpose(-1, -2))  # [B, H, nb, g, S, 2S]
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    x = torch.matmul(torch.softmax(scores, dim=-1), v_win[:, :, :, None])  # [B, H, nb, g, S, d]
    x = x.transpose(2, 3).reshape(b, heads, group, blocks * size, d)[:, :, :, :t]
    return x.reshape(b, heads, group * t, d)


def _conv_forward(self, x, model_state):
    state = _module_state(self, model_state)
    pad = self._effective_kernel_size - self._stride
    if pad == 0:
        return self.conv(x)
    b, c, _ = x.shape
    replicate = self.pad_mode == "replicate"
    if state is None:
        previous = x[..., :1].expand(b, c, pad) if replicate else x.new_zeros(b, c, pad)
    else:
        previous = state["previous"]
        if replicate:
            started = state["started"].reshape(b, 1, 1) > 0
            previous = torch.where(started, previous, x[..., :1].expand(b, c, pad))
    padded = torch.cat([previous, x], dim=-1)
    if state is not None:
        state["previous"] = padded[..., -pad:]
        if replicate:
            state["started"] = torch.ones_like(state["started"])
    return self.conv(padded)


def _conv_transpose_forward(self, x, model_state):
    state = _module_state(self, model_state)
    y = self.convtr(x)
    overlap = self._kernel_size - self._stride
    if overlap == 0:
        return y
    partial = state["partial"]
    length = y.shape[-1]
    head = y[..., :overlap] + partial
    tail = y[..., length - overlap :]
    if self.convtr.bias is not None:
        tail = tail - self.convtr.bias[:, None]
    state["partial"] = tail
    return torch.cat([head, y[..., overlap : length - overlap]], dim=-1)


def _patch_targets():
    from pocket_tts.modules.attention import StreamingMultiheadAttention
    from pocket_tts.modules.conv import StreamingConv1d, StreamingConvTranspose1d

    return [
        (StreamingMultiheadAttention, "forward", _attention_forward),
        (StreamingConv1d, "forward", _conv_forward),
        (StreamingConvTranspose1d, "forward", _conv_transpose_forward),
    ]


@contextlib.contextmanager
def stateless_modules() -> Iterator[None]:
    """Swap upstream's stateful forwards for functional ones; always restore them."""
    check_pocket_tts_version()
    targets = _patch_targets()
    originals = [(cls, name, cls.__dict__[name]) for cls, name, _ in targets]
    try:
        for cls, name, replacement in targets:
            setattr(cls, name, replacement)
        yield
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
