"""GGUF block formats -> float32, in torch, bit for bit equal to the `gguf` package's numpy dequantizers.

Legend: R = rows, NB = blocks per row, QK = values per block, K = NB * QK values per row.

A GGUF weight row of K values is NB blocks stored back to back; each block holds QK values as small
integers and one or more fp16 scales (layouts: ggml-common.h; the reference arithmetic: gguf-py's
quants.py, which this module follows operation for operation so that results are identical, not only
close: every product and sum is one fp32 rounding in the same order, no fused multiply-add).
- Q4_0 (32 values, 18 bytes): d, 16 bytes of nibbles (low nibbles = values 0-15, high = 16-31); w = d * (q - 8).
- Q4_1 (32, 20): d, m, nibbles; w = d * q + m.
- Q5_0 (32, 22): d, 32 high bits (uint32 LE), nibbles; w = d * (q - 16), q = nibble | high bit << 4.
- Q5_1 (32, 24): d, m, high bits, nibbles; w = d * q + m.
- Q8_0 (32, 34): d, 32 int8; w = d * q.
- Q4_K (256, 144): d, dmin, 12 bytes of eight 6-bit scales and mins, 128 bytes of nibbles; per 32-value
  sub-block j: w = (d * sc_j) * q - dmin * m_j.
- Q5_K (256, 176): as Q4_K plus 32 bytes of high bits.
- Q6_K (256, 210): 128 bytes of low nibbles, 64 of 2-bit highs, 16 int8 scales, d; w = (d * sc) * (q - 32).
- F32, F16, BF16: plain values (a row of them is a one-value "block").
"""

from __future__ import annotations

import torch

# format -> (values per block, bytes per block), as ggml's type traits (gguf.GGML_QUANT_SIZES).
BLOCK_FORMATS: dict[str, tuple[int, int]] = {
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q5_0": (32, 22),
    "Q5_1": (32, 24),
    "Q8_0": (32, 34),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}
# ggml type ids of the formats above (GGUF tensor infos carry the id).
GGML_TYPE_IDS: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    30: "BF16",
}
FLOAT_FORMATS = ("F32", "F16", "BF16")


def row_bytes(fmt: str, in_features: int) -> int:
    """Bytes of one row of `in_features` values in `fmt` (ValueError unless it is whole blocks)."""
    if fmt not in BLOCK_FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(BLOCK_FORMATS)}, got {fmt!r}")
    block, nbytes = BLOCK_FORMATS[fmt]
    if in_features <= 0 or in_features % block:
        raise ValueError(f"in_features: expected a positive multiple of {block} for {fmt}, got {in_features}")
    return in_features // block * nbytes


def dequantize(blocks: torch.Tensor, fmt: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """(R, row bytes) uint8 rows of `fmt` blocks -> (R, K) float32, written into `out` when given.

    `out` must be a contiguous float32 (R, K) tensor on the same device (a reused buffer).
    """
    if fmt not in BLOCK_FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(BLOCK_FORMATS)}, got {fmt!r}")
    if blocks.dtype != torch.uint8 or blocks.dim() != 2:
        raise ValueError(f"blocks: expected a 2-D uint8 tensor of raw rows, got {blocks.dtype} {tuple(blocks.shape)}")
    block, nbytes = BLOCK_FORMATS[fmt]
    rows, width = blocks.shape
    if width % nbytes:
        raise ValueError(f"blocks: rows of {fmt} are whole {nbytes}-byte blocks, got {width} bytes per row")
    k = width // nbytes * block
    if out is None:
        out = torch.empty(rows, k, dtype=torch.float32, device=blocks.device)
    elif out.shape != (rows, k) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(
            f"out: expected a contiguous float32 tensor of shape {(rows, k)}, got {out.dtype} {tuple(out.shape)}"
        )
    if rows == 0:
        return out
    if not blocks.is_contiguous():
        blocks = blocks.contiguous()
    b = blocks.view(rows, width // nbytes, nbytes)  # (R, NB, bytes)
    _DEQUANTIZERS[fmt](b, out.view(rows, width // nbytes, block))
    return out


# The 4-bit formats whose values are groups of 32 of (scale * q + minimum), q in 0..15: what torch's
# int4 CPU GEMM computes on (fastx.ops.int4_linear).
FOUR_BIT_FORMATS = ("Q4_0", "Q4_1", "Q4_K")


def four_bit_groups(blocks: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, row bytes) uint8 rows of a FOUR_BIT_FORMATS format -> (q, scale, minimum).

    q: (R, K) uint8 in 0..15, the file's own values; scale, minimum: (R, K / 32) float32 such that value
    i of a row is scale[i // 32] * q[i] + minimum[i // 32] (dequantize() computes the same numbers up to
    one fp32 rounding: Q4_0 is d * (q - 8), so minimum = -8 * d).
    """
    if fmt not in FOUR_BIT_FORMATS:
        raise ValueError(f"fmt: expected one of {', '.join(FOUR_BIT_FORMATS)}, got {fmt!r}")
    block, nbytes = BLOCK_FORMATS[fmt]
    if blocks.dtype != torch.uint8 or blocks.dim() != 2 or blocks.shape[1] % nbytes:
        raise ValueError(f"blocks: expected (rows, whole {fmt} blocks) uint8, got {blocks.dtype} {tuple(blocks.shape)}")
    rows, nb = blocks.shape[0], blocks.shape[1] // nbytes
    b = blocks.contiguous().view(rows, nb, nbytes)
    if fmt == "Q4_K":
        sc, mn = _k_scales(b[..., 4:16])
        scale, minimum = _f16(b, 0) * sc.float(), -(_f16(b, 2) * mn.float())  # (R, NB, 8)
        q = _nibbles(b[..., 16:144].reshape(rows, nb, 4, 32))  # (R, NB, 4, 2, 32): sub-blocks in order
    else:
        scale = _f16(b, 0)  # (R, NB, 1)
        minimum = _f16(b, 2) if fmt == "Q4_1" else -8 * scale
        q = _nibbles(b[..., 4:20] if fmt == "Q4_1" else b[..., 2:18])  # (R, NB, 2, 16)
    return q.reshape(rows, nb * block), scale.reshape(rows, -1), minimum.reshape(rows, -1)


# -- helpers ---------------------------------------------------------------------------------------
def _f16(b: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 at byte `offset` of every block -> (R, NB, 1) float32 (exact: fp16 widens losslessly)."""
    return b[..., offset : offset + 2].contiguous().view(torch.float16).float()


def _shifts(device: torch.device, *amounts: int) -> torch.Tensor:
    """Right-shift amounts as a (n, 1) uint8 tensor that broadcasts over a new second-to-last dim."""
    return torch.tensor(amounts, dtype=torch.uint8, device=device).view(len(amounts), 1)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(..., n) packed bytes -> (..., 2, n) uint8: low nibbles, then high nibbles (ggml's order).

    Where the bytes line up with int32 (Q4_1, Q5_1, the K-quants) four are unpacked per element: masking
    with 0x0F0F0F0F keeps each byte's own nibble (a shift's carry from the next byte lands in the masked
    high half). NOTE: 4x fewer elements per op; a Q4_1 (1536, 576) weight's nibbles took 0.95 ms one
    byte at a time, 0.2 ms this way (2-core EPYC, shared).
    """
    n = qs.shape[-1]
    word = 4 if n % 4 == 0 and qs.storage_offset() % 4 == 0 and all(s % 4 == 0 for s in qs.stride()[:-1]) else 1
    if word == 1:
        shifts = torch.tensor([0, 4], dtype=torch.uint8, device=qs.device).view(2, 1)
        return (qs.unsqueeze(-2) >> shifts).bitwise_and_(0x0F)
    words = qs.view(torch.int32)  # (..., n / 4)
    out = torch.empty(*words.shape[:-1], 2, n // 4, dtype=torch.int32, device=qs.device)
    torch.bitwise_and(words, 0x0F0F0F0F, out=out[..., 0, :])
    torch.bitwise_right_shift(words, 4, out=out[..., 1, :]).bitwise_and_(0x0F0F0F0F)
    return out.view(torch.uint8)


def _bits(qh: torch.Tensor) -> torch.Tensor:
    """(..., n) bytes -> (..., 8 * n) uint8 0/1: bit j of a little-endian bit string (bit j % 8 of byte j // 8)."""
    bits = (qh.unsqueeze(-1) >> _shifts(qh.device, *range(8)).view(8)).bitwise_and_(1)
    return bits.flatten(-2)


def _scale_and_add(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, out: torch.Tensor) -> None:
    """out = d * q (+ m / - m as given), each step one fp32 rounding, as numpy computes it."""
    torch.mul(q, d, out=out)
    if m is not None:
        out.add_(m)


# -- the formats (shapes: b (R, NB, bytes) -> out (R, NB, QK)) ---------------------------------------
def _float32(b, out):
    out.copy_(b.view(torch.float32))


def _float16(b, out):
    out.copy_(b.contiguous().view(torch.float16))


def _bfloat16(b, out):
    out.copy_(b.contiguous().view(torch.bfloat16))  # bf16 -> fp32 is exact (the high half of the bits)


def _q4_0(b, out):
    q = _nibbles(b[..., 2:18]).flatten(-2).view(torch.int8) - 8  # (R, NB, 32) in -8..7
    _scale_and_add(q.float(), _f16(b, 0), None, out)


def _q4_1(b, out):
    q = _nibbles(b[..., 4:20]).flatten(-2)  # (R, NB, 32) in 0..15
    _scale_and_add(q, _f16(b, 0), _f16(b, 2), out)


def _q5_0(b, out):
    q = _nibbles(b[..., 6:22]).flatten(-2) | (_bits(b[..., 2:6]) << 4)  # (R, NB, 32) in 0..31
    _scale_and_add((q.view(torch.int8) - 16).float(), _f16(b, 0), None, out)


def _q5_1(b, out):
    q = _nibbles(b[..., 8:24]).flatten(-2) | (_bits(b[..., 4:8]) << 4)
    _scale_and_add(q, _f16(b, 0), _f16(b, 2), out)


def _q8_0(b, out):
    _scale_and_add(b[..., 2:34].view(torch.int8), _f16(b, 0), None, out)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> eight 6-bit scales and eight 6-bit mins, (R, NB, 8) uint8 each.

    Bytes 0-3 hold scales 0-3 in their low 6 bits, 4-7 mins 0-3; bytes 8-11 hold the low 4 bits of
    scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits sit in bytes 0-3 / 4-7's top bits.
    """
    d, m, md = s[..., 0:4], s[..., 4:8], s[..., 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn


def _k_quant(b, out, high_bits: bool):
    rows, nb = b.shape[:2]
    sc, mn = _k_scales(b[..., 4:16])
    d = (_f16(b, 0) * sc.float()).unsqueeze(-1)  # (R, NB, 8, 1): each 32-value sub-block's scale
    dm = (_f16(b, 2) * mn.float()).unsqueeze(-1)
    qs = b[..., 48:176] if high_bits else b[..., 16:144]
    # 4 chunks of 32 bytes; each chunk's low nibbles are sub-block 2c, its high nibbles 2c + 1.
    q = _nibbles(qs.reshape(rows, nb, 4, 32)).reshape(rows, nb, 8, 32)
    if high_bits:  # bit j of byte i is the 5th bit of sub-block j's value i
        qh = (b[..., 16:48].unsqueeze(-2) >> _shifts(b.device, *range(8))).bitwise_and_(1)  # (R, NB, 8, 32)
        q = q | (qh << 4)
    o = out.view(rows, nb, 8, 32)
    torch.mul(d, q.float(), out=o)
    o.sub_(dm)


def _q4_k(b, out):
    _k_quant(b, out, high_bits=False)


def _q5_k(b, out):
    _k_quant(b, out, high_bits=True)


def _q6_k(b, out):
    rows, nb = b.shape[:2]
    d = (_f16(b, 208) * b[..., 192:208].view(torch.int8).float()).unsqueeze(-1)  # (R, NB, 16, 1)
    # low nibbles: 2 halves of 64 bytes, each giving 2 x 64 values; 2-bit highs: 2 halves of 32 bytes x 4 shifts.
    ql = _nibbles(b[..., 0:128].reshape(rows, nb, 2, 64)).reshape(rows, nb, 8, 32)
    qh = (b[..., 128:192].reshape(rows, nb, 2, 1, 32) >> _shifts(b.device, 0, 2, 4, 6)).bitwise_and_(3)
    q = (ql | (qh.reshape(rows, nb, 8, 32) << 4)).view(torch.int8) - 32
    torch.mul(d, q.reshape(rows, nb, 16, 16).float(), out=out.view(rows, nb, 16, 16))


_DEQUANTIZERS = {
    "F32": _float32,
    "F16": _float16,
    "BF16": _bfloat16,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}
