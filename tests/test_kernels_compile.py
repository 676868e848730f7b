"""The attention kernels compiled for a Hopper GPU (sm_90) without one.

Triton's interpreter (test_kernels.py) runs the kernels as numpy code: it accepts things the
GPU compiler rejects (types that change in a loop, unsupported constructs, shapes the
tensor cores cannot take). Triton can compile for a target it is not running on, down to
the PTX and ptxas' cubin, so every launch variant the wrappers and the engine use is compiled
here for an H100/H200, and a kernel edit that would only break on the GPU fails in CI. Only
compilation: nothing runs (the GPU tests are test_kernels_cuda.py).
"""
from __future__ import annotations

import pytest

import qpfast.kernels as K

pytestmark = pytest.mark.skipif(not K.HAS_TRITON, reason="triton is not installed")

P, I, F = "*bf16", "i32", "fp32"

# the (pointer / scalar) arguments of each kernel, in order
PREFIX_ARGS = dict(Q=P, PK=P, PV=P, PLEN="*i32", PART_O="*fp32", PART_LSE="*fp32", qk_scale=F, stride_qr=I,
                   stride_qh=I, stride_kh=I, stride_kt=I, stride_vh=I, stride_vt=I, num_rows=I, prefix_cap=I,
                   split_len=I, part_slots=I)
DECODE_ARGS = dict(Q=P, K=P, V=P, OUT=P, PART_O="*fp32", PART_LSE="*fp32", SEQ_LENS="*i32", COUNTERS="*i32",
                   qk_scale=F, stride_qb=I, stride_qh=I, stride_kb=I, stride_kh=I, stride_kt=I, stride_vb=I,
                   stride_vh=I, stride_vt=I, stride_ob=I, stride_oh=I, split_len=I)
MERGE_ARGS = dict(OUT=P, PART_O="*fp32", PART_LSE="*fp32", SEQ_LENS="*i32", stride_ob=I, stride_oh=I,
                  num_heads=I, split_len=I)
PREFILL_ARGS = dict(Q=P, K=P, V=P, OUT=P, CU_Q="*i32", CU_K="*i32", PART_O="*fp32", PART_LSE="*fp32",
                    VISIBLE="*i32", qk_scale=F, stride_qt=I, stride_qh=I, stride_kt=I, stride_kh=I, stride_vt=I,
                    stride_vh=I, stride_ot=I, stride_oh=I, num_seqs=I, split_len=I)

HEADS = dict(HEAD_DIM=128, BLOCK_D=128, DOT_PRECISION="tf32")

VARIANTS = {
    # the shared-prefix kernel: length on the device (engine) or the buffer's (plain calls);
    # Qwen3-0.6B's 16:8 heads with a 64-row tile, 8:1 with the smallest one
    "prefix_device_len": ("cascade", "_prefix_kernel", PREFIX_ARGS,
                          dict(HAS_PLEN=True, GROUP=2, GROUP_PAD=2, BLOCK_M=64, BLOCK_N=64, **HEADS), 8),
    "prefix_fixed_len_gqa8": ("cascade", "_prefix_kernel", PREFIX_ARGS,
                              dict(HAS_PLEN=False, GROUP=8, GROUP_PAD=8, BLOCK_M=2, BLOCK_N=64, **HEADS), 4),
    # decode: unsplit, unsplit + prefix partials folded in, split with the fused merge (with
    # and without a prefix), split for the merge kernel
    "decode": ("decode", "_decode_kernel", DECODE_ARGS,
               dict(GROUP=2, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=0, **HEADS), 4),
    "decode_prefix": ("decode", "_decode_kernel", DECODE_ARGS,
                      dict(GROUP=2, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=4, **HEADS), 4),
    "decode_fused_prefix": ("decode", "_decode_kernel", DECODE_ARGS,
                            dict(GROUP=8, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=3, FUSED_MERGE=True, PART_BASE=2,
                                 **HEADS), 4),
    "decode_fused": ("decode", "_decode_kernel", DECODE_ARGS,
                     dict(GROUP=8, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=4, FUSED_MERGE=True, PART_BASE=0, **HEADS), 4),
    "decode_split_prefix": ("decode", "_decode_kernel", DECODE_ARGS,
                            dict(GROUP=2, BLOCK_H=16, BLOCK_N=64, NUM_SPLITS=2, FUSED_MERGE=False, PART_BASE=1,
                                 **HEADS), 4),
    "merge_prefix": ("decode", "_merge_splits_kernel", MERGE_ARGS,
                     dict(HEAD_DIM=128, BLOCK_D=128, NUM_SPLITS=6, BLOCK_S=8, PART_BASE=4), 4),
    # prefill: direct, split, and own-key partials after a prefix's
    "prefill": ("prefill", "_prefill_kernel", PREFILL_ARGS,
                dict(NUM_SPLITS=1, GROUP=2, GROUP_PAD=2, BLOCK_M=32, BLOCK_N=64, PART_BASE=0, DIRECT=True, **HEADS), 8),
    "prefill_prefix": ("prefill", "_prefill_kernel", PREFILL_ARGS,
                       dict(NUM_SPLITS=1, GROUP=2, GROUP_PAD=2, BLOCK_M=32, BLOCK_N=64, PART_BASE=2, DIRECT=False,
                            **HEADS), 8),
    "prefill_split_prefix": ("prefill", "_prefill_kernel", PREFILL_ARGS,
                             dict(NUM_SPLITS=4, GROUP=8, GROUP_PAD=8, BLOCK_M=2, BLOCK_N=64, PART_BASE=1,
                                  DIRECT=False, **HEADS), 4),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_attention_kernels_compile_for_sm90(variant):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, args, consts, warps = VARIANTS[variant]
    fn = getattr(importlib.import_module(f"qpfast.kernels.{module}"), name)
    signature = {**args, **{k: "constexpr" for k in consts}}
    assert sorted(signature) == sorted(fn.arg_names), "the test's argument list is out of date"
    signature = {n: signature[n] for n in fn.arg_names}
    src = ASTSource(fn, signature, {(fn.arg_names.index(k),): v for k, v in consts.items()})
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=3))
    except RuntimeError as exc:                   # the tool chain, not the kernel
        if "ptxas" in str(exc) and "not found" in str(exc):
            pytest.skip(f"no ptxas: {exc}")
        raise
    assert ".entry " + name in kernel.asm["ptx"]
    assert kernel.asm["cubin"]
