"""Triton helpers shared by the DSnoT kernels (numerics: docs/KERNEL_CONTRACT.md).

* ``ordered_key``: the contract's order-preserving integer of a float32, here in *signed* form
  (``ord(x) - 2**31`` as int32), so that plain signed comparisons order floats and ``-0.0 == +0.0``.
* ``composite_key``: ``(ord(x) << 32) | col`` as a signed int64 (contract "Orders"): value first,
  then the column index; every row order of the project is ascending or descending in it.
* ``pair_tree_256``: the contract's pairwise tree ``p[l] = p[2l] + p[2l+1]`` over 256 lane partials.
"""
import torch
import triton
import triton.language as tl

# Sentinels of the int64 composite keys; no non-NaN float reaches either (contract "Orders").
KEY_MAX = tl.constexpr(0x7FFFFFFFFFFFFFFF)
KEY_MIN = tl.constexpr(-0x7FFFFFFFFFFFFFFF - 1)
SUM_LANES = tl.constexpr(256)  # contract "The reconstruction error": fixed 256 lanes


@triton.jit
def ordered_key(x):
    """float32 tensor (not NaN) -> int32 with the same order; -0.0 and +0.0 map to 0."""
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 -> +0.0 (contract: bits(x + 0.0f))
    bits = x.to(tl.int32, bitcast=True)
    # negative floats: flip the 31 magnitude bits, so a larger magnitude sorts lower
    return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


@triton.jit
def composite_key(x, col):
    """float32 values and their int column indices -> int64 ``(ord(x) << 32) | col`` (signed)."""
    return (ordered_key(x).to(tl.int64) << 32) | col.to(tl.int64)


@triton.jit
def key_column(key):
    """The column index (int32) held in the low 32 bits of a composite key."""
    return (key & 0xFFFFFFFF).to(tl.int32)


@triton.jit
def sign_of(x):
    """``(x > 0) - (x < 0)`` as int32 (contract: sign)."""
    return (x > 0).to(tl.int32) - (x < 0).to(tl.int32)


@triton.jit
def _pair_level(x, HALF: tl.constexpr):
    # a sum of two elements is exactly p[2l] + p[2l+1], whatever order the reduction picks
    return tl.sum(tl.reshape(x, [HALF, 2]), axis=1)


@triton.jit
def pair_tree_256(x):
    """Sum of a (256,) tensor as the contract's pairwise tree (8 levels), returned as a scalar."""
    x = _pair_level(x, 128)
    x = _pair_level(x, 64)
    x = _pair_level(x, 32)
    x = _pair_level(x, 16)
    x = _pair_level(x, 8)
    x = _pair_level(x, 4)
    x = _pair_level(x, 2)
    x = _pair_level(x, 1)
    return tl.sum(x, axis=0)  # one element: the value itself


@triton.jit
def load_w(ptrs, m):
    """Weights at ``ptrs`` widened exactly to float32 (0 where ``m`` is False).

    bfloat16 weights arrive as their int16 bit patterns (``weight_arg``): widening is then a 16-bit
    shift, exact for every value. Triton's interpreter (3.9) widens bfloat16 subnormals wrongly,
    and the compiled cvt is the same shift, so both paths now agree with the reference."""
    if ptrs.dtype.element_ty == tl.int16:
        bits = tl.load(ptrs, mask=m, other=0).to(tl.int32) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.load(ptrs, mask=m, other=0.0).to(tl.float32)


@triton.jit
def wanda_at(w_row, sqrt_s_ptr, offs, m):
    """``|w| * sqrt(scaler_row)`` (float32) at columns ``offs``; ``sqrt_s_ptr`` holds the
    correctly rounded ``sqrt(scaler_row)`` (computed once per call by the launcher)."""
    w = load_w(w_row + offs, m)
    return tl.abs(w) * tl.load(sqrt_s_ptr + offs, mask=m, other=0.0)


@triton.jit
def metric_at(w_row, sqrt_s_ptr, metric_row, offs, m, has_metric):
    """The initial metric (spec §2) at columns ``offs``: the caller's (``has_metric``, a runtime
    flag: one compiled kernel serves both), else wanda."""
    if has_metric:
        value = tl.load(metric_row + offs, mask=m, other=0.0)
    else:
        value = wanda_at(w_row, sqrt_s_ptr, offs, m)
    return value


@triton.jit
def dm_at(w_row, smr_ptr, offs, m):
    """``dm = w * sum_metric_row`` (one float32 product) at columns ``offs``; 0 where masked."""
    w = load_w(w_row + offs, m)
    return w * tl.load(smr_ptr + offs, mask=m, other=0.0)


def weight_arg(weight: torch.Tensor) -> torch.Tensor:
    """What the kernels take for ``weight``: itself, or its int16 bit view when bfloat16."""
    return weight.view(torch.int16) if weight.dtype == torch.bfloat16 else weight
