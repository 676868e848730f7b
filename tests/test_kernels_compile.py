"""The Triton kernels compiled for a Hopper GPU (sm_90) without one.

Triton's interpreter (test_kernels.py) runs the kernels as numpy code: it accepts things the
GPU compiler rejects (types that change in a loop, unsupported constructs, shapes the
tensor cores cannot take). Triton can compile for a target it is not running on, down to
the PTX and ptxas' cubin, so every launch variant the wrappers and the engine use is compiled
here for an H100/H200, and a kernel edit that would only break on the GPU fails in CI. Only
compilation: nothing runs (the GPU tests are test_kernels_cuda.py).
"""
from __future__ import annotations

import re

import pytest

import qpfast.kernels as K

pytestmark = pytest.mark.skipif(not K.HAS_TRITON, reason="triton is not installed")

P, I, F = "*bf16", "i32", "fp32"

# the (pointer / scalar) arguments of each kernel, in order
PREFIX_ARGS = dict(Q=P, PK=P, PV=P, PLEN="*i32", PART_O="*fp32", PART_LSE="*fp32", qk_scale=F, stride_qr=I,
                   stride_qh=I, stride_kh=I, stride_kt=I, stride_vh=I, stride_vt=I, num_rows=I, prefix_cap=I,
                   split_len=I, part_slots=I)
DECODE_ARGS = dict(Q=P, K=P, V=P, OUT=P, PART_O="*fp32", PART_LSE="*fp32", SEQ_LENS="*i32", COUNTERS="*i32",
                   PLEN="*i32", PK=P, PV=P, qk_scale=F, stride_qb=I, stride_qh=I, stride_kb=I, stride_kh=I,
                   stride_kt=I, stride_vb=I, stride_vh=I, stride_vt=I, stride_ob=I, stride_oh=I, stride_pkh=I,
                   stride_pkt=I, stride_pvh=I, stride_pvt=I, split_len=I, own_cap=I, prefix_cap=I)
MERGE_ARGS = dict(OUT=P, PART_O="*fp32", PART_LSE="*fp32", SEQ_LENS="*i32", stride_ob=I, stride_oh=I,
                  num_heads=I, split_len=I)
PREFILL_ARGS = dict(Q=P, K=P, V=P, OUT=P, CU_Q="*i32", CU_K="*i32", PART_O="*fp32", PART_LSE="*fp32",
                    VISIBLE="*i32", qk_scale=F, stride_qt=I, stride_qh=I, stride_kt=I, stride_kh=I, stride_vt=I,
                    stride_vh=I, stride_ot=I, stride_oh=I, num_seqs=I, split_len=I)

HEADS = dict(HEAD_DIM=128, BLOCK_D=128, DOT_PRECISION="tf32")


def _decode(num_warps: int, **constexprs):
    """A `_decode_kernel` variant: 64-key blocks at head dim 128, no prefix read by the kernel
    itself unless given (PREFIX_MODE 1: row 0's copy, 2: a shared prefix inline)."""
    return ("decode", "_decode_kernel", DECODE_ARGS, dict(dict(BLOCK_N=64, PREFIX_MODE=0, **HEADS), **constexprs),
            num_warps)


VARIANTS = {
    # the shared-prefix kernel as prefix_plan launches it: length on the device (engine) or
    # the buffer's (plain calls); Qwen3-0.6B's 16:8 heads at batch 64, 8:1 at batch 1
    "prefix_device_len": ("cascade", "_prefix_kernel", PREFIX_ARGS, dict(HAS_PLEN=True), (64, 8, 2)),
    "prefix_fixed_len_gqa8": ("cascade", "_prefix_kernel", PREFIX_ARGS, dict(HAS_PLEN=False), (1, 1, 8)),
    # decode: unsplit, unsplit + prefix partials folded in, split with the fused merge (with
    # and without a prefix), split for the merge kernel
    "decode": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=0, QPS=1),
    "decode_prefix": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=4, QPS=1),
    "decode_fused_prefix": _decode(4, GROUP=8, BLOCK_H=16, NUM_SPLITS=3, FUSED_MERGE=True, PART_BASE=2, QPS=1),
    "decode_fused": _decode(4, GROUP=8, BLOCK_H=16, NUM_SPLITS=4, FUSED_MERGE=True, PART_BASE=0, QPS=1),
    "decode_split_prefix": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=2, FUSED_MERGE=False, PART_BASE=1, QPS=1),
    # several new tokens per sequence (multi-token graph steps): 8 tokens x 2 heads, split with
    # the fused merge and a prefix; 4 x 8 heads unsplit; 8 x 8 heads (the largest tile) split
    "decode_multi_fused_prefix": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=2, FUSED_MERGE=True, PART_BASE=1, QPS=8),
    "decode_multi": _decode(8, GROUP=8, BLOCK_H=32, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=0, QPS=4),
    "decode_multi_split": _decode(8, GROUP=8, BLOCK_H=64, NUM_SPLITS=3, FUSED_MERGE=False, PART_BASE=0, QPS=8),
    # the "kernels" layout's steps: the prefix keys from row 0, one token a row unsplit at
    # batch 64, eight tokens a row split with the fused merge
    "decode_row0": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=0, QPS=1,
                           PREFIX_MODE=1),
    "decode_row0_multi_fused": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=2, FUSED_MERGE=True, PART_BASE=0, QPS=8,
                                       PREFIX_MODE=1),
    # the cascade layout at small batches: the shared prefix read inline, unsplit and split
    # with the fused merge (one token a row), 4 tokens x 8 heads split
    "decode_inline_prefix": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=1, FUSED_MERGE=False, PART_BASE=0, QPS=1,
                                    PREFIX_MODE=2),
    "decode_inline_prefix_fused": _decode(4, GROUP=2, BLOCK_H=16, NUM_SPLITS=4, FUSED_MERGE=True, PART_BASE=0,
                                          QPS=1, PREFIX_MODE=2),
    "decode_inline_prefix_multi": _decode(8, GROUP=8, BLOCK_H=32, NUM_SPLITS=3, FUSED_MERGE=True, PART_BASE=0,
                                          QPS=4, PREFIX_MODE=2),
    "merge_multi": ("decode", "_merge_splits_kernel", MERGE_ARGS,
                    dict(HEAD_DIM=128, BLOCK_D=128, NUM_SPLITS=3, BLOCK_S=4, PART_BASE=0, QPS=8), 4),
    "merge_prefix": ("decode", "_merge_splits_kernel", MERGE_ARGS,
                     dict(HEAD_DIM=128, BLOCK_D=128, NUM_SPLITS=6, BLOCK_S=8, PART_BASE=4, QPS=1), 4),
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

# the layer pieces and the bitmask ops (Qwen3-0.6B sizes, bf16 logits)
L64 = "*i64"
VARIANTS.update({
    "add_rms_norm": ("layers", "_add_rms_kernel",
                     dict(X=P, RES=P, W=P, OUT=P, H_OUT=P, n_cols=I, stride_x=I, stride_r=I, stride_o=I, stride_h=I,
                          eps=F), dict(HAS_RES=True, BLOCK=1024), 4),
    "qk_norm_rope_store": ("layers", "_qk_norm_rope_kernel",
                           dict(QKV=P, QN=P, KN=P, COS=P, SIN=P, ROPE_POS=L64, KC=P, VC=P, SLOT=L64, WPOS=L64,
                                Q_OUT=P, stride_qkv=I, stride_cos=I, stride_kb=I, stride_kh=I, stride_kt=I,
                                stride_vb=I, stride_vh=I, stride_vt=I, stride_qo=I, stride_qh=I, eps=F),
                           dict(HQ=16, HKV=8, HALF=64, BLOCK=64, HAS_QN=True, HAS_KN=True), 1),
    "silu_mul": ("layers", "_silu_mul_kernel", dict(GU=P, OUT=P, n_inter=I, stride_gu=I, stride_o=I),
                 dict(BLOCK=1024), 4),
    "apply_bitmask": ("bitmask", "_apply_bitmask_kernel",
                      dict(LOGITS=P, BITMASK="*i32", vocab=I, stride_l=I, stride_m=I), dict(BLOCK_V=1024), 4),
    "masked_sample_chunks": ("bitmask", "_pick_kernel",
                             dict(LOGITS=P, BITMASK="*i32", OUT=L64, PART_VAL="*fp32", PART_IDX="*i32",
                                  PART_FIRST="*i32", SEED=L64, THRESH="*fp32", vocab=I, stride_l=I, stride_m=I,
                                  inv_temp=F, chunk_len=I),
                             dict(SAMPLE=True, USE_THRESH=True, NUM_CHUNKS=4, BLOCK_V=1024), 4),
    "masked_argmax": ("bitmask", "_pick_kernel",
                      dict(LOGITS=P, BITMASK="*i32", OUT=L64, PART_VAL=L64, PART_IDX=L64, PART_FIRST=L64, SEED=L64,
                           THRESH=L64, vocab=I, stride_l=I, stride_m=I, inv_temp=F, chunk_len=I),
                      dict(SAMPLE=False, USE_THRESH=False, NUM_CHUNKS=1, BLOCK_V=2048), 8),
    "reduce_picks": ("bitmask", "_reduce_picks_kernel",
                     dict(OUT=L64, PART_VAL="*fp32", PART_IDX="*i32", PART_FIRST="*i32", vocab=I),
                     dict(NUM_CHUNKS=6, BLOCK_C=8), 1),
    # the top-p threshold search, rows cut into 5 chunks (16 candidates a round)
    "top_p_stats": ("bitmask", "_top_p_stats_kernel",
                    dict(LOGITS=P, BITMASK="*i32", PART_M="*fp32", PART_Z="*fp32", vocab=I, stride_l=I, stride_m=I,
                         inv_temp=F, chunk_len=I), dict(NUM_CHUNKS=5, BLOCK_V=1024), 8),
    "top_p_round": ("bitmask", "_top_p_round_kernel",
                    dict(LOGITS=P, BITMASK="*i32", PART_M="*fp32", PART_Z="*fp32", PART_MASS="*fp32", LOHI="*fp32",
                         vocab=I, stride_l=I, stride_m=I, inv_temp=F, top_p=F, search_width=F, chunk_len=I, rnd=I),
                    dict(NUM_CHUNKS=5, BLOCK_C=8, CANDIDATES=16, BLOCK_V=1024), 8),
    "top_p_final": ("bitmask", "_top_p_final_kernel",
                    dict(PART_M="*fp32", PART_Z="*fp32", PART_MASS="*fp32", LOHI="*fp32", THRESH="*fp32", top_p=F,
                         last=I), dict(NUM_CHUNKS=5, BLOCK_C=8, CANDIDATES=16), 1),
})

# the decode steps' projections (kernels.projection, Qwen3-0.6B at batch 64 and 128): K split
# with the last program's sum, the fused SwiGLU split, a biased unsplit 128-row tile
LINEAR_ARGS = dict(X=P, W=P, BIAS=P, OUT=P, PART="*fp32", COUNTERS="*i32", RES=P, NORM_W=P, ROW_SS="*fp32",
                   SS_OUT="*fp32", M=I, N=I, K=I, stride_xm=I, stride_wn=I, stride_om=I, stride_rm=I, split_len=I,
                   n_parts=I, eps=F)


def _linear(num_warps: int, ptr: str = P, **constexprs):
    args = {k: (ptr if k in ("X", "W", "BIAS", "OUT", "RES", "NORM_W") else v) for k, v in LINEAR_ARGS.items()}
    return ("projection", "_linear_kernel", args,
            dict(dict(BLOCK_N=64, BLOCK_K=128, EVEN_K=True, HAS_BIAS=False, SWIGLU=False, DOT_PRECISION="tf32",
                      NORM_MODE=0, HAS_RES=False, WRITE_SS=False), **constexprs), num_warps)


# an H100/H200 block's shared memory (227 KiB)
SMEM_PER_BLOCK = 227 * 1024
# the pipeline depth a variant is launched with where it is not 3 (linear_launch's)
STAGES = {"linear_split": 4, "linear_one_row_ragged_k": 4}

VARIANTS.update({
    "linear_split": _linear(4, BLOCK_M=64, SPLIT_K=8),
    "linear_swiglu_split": _linear(4, BLOCK_M=64, SPLIT_K=2, SWIGLU=True),
    "linear_bias_rows128": _linear(8, BLOCK_M=128, SPLIT_K=1, HAS_BIAS=True),
    "linear_one_row_ragged_k": _linear(4, BLOCK_M=16, SPLIT_K=3, EVEN_K=False),
    # fp32 (the engine's fp32 tests on CUDA): the largest tile, SwiGLU, 64-long K blocks
    "linear_fp32_swiglu_rows128": _linear(8, "*fp32", BLOCK_M=128, BLOCK_K=64, SPLIT_K=1, SWIGLU=True,
                                          DOT_PRECISION="ieee"),
    # a layer's norms and residual adds fused (set_projection_rows): qkv normalizing its rows
    # itself (the first layer of a piece), o_proj / down_proj adding to the residual stream and
    # leaving its sums of squares, gate/up normalizing from them
    "linear_norm_rows": _linear(4, BLOCK_M=64, SPLIT_K=2, HAS_BIAS=True, NORM_MODE=1),
    "linear_residual_sumsq": _linear(4, BLOCK_M=64, SPLIT_K=8, HAS_RES=True, WRITE_SS=True),
    "linear_swiglu_norm_parts": _linear(4, BLOCK_M=64, SPLIT_K=2, SWIGLU=True, NORM_MODE=2),
})


# a decode step's kernels as a graph captured with programmatic dependent launch runs them
# (DecodeGraphs.pdl): every kernel the step launches, at one of its variants
VARIANTS.update({f"{name}_pdl": VARIANTS[name] for name in (
    "add_rms_norm", "qk_norm_rope_store", "silu_mul", "linear_split", "linear_swiglu_split",
    "linear_residual_sumsq", "linear_swiglu_norm_parts", "decode_row0",
    "decode_fused", "decode_inline_prefix_multi", "merge_multi", "prefix_device_len", "masked_argmax",
    "masked_sample_chunks", "reduce_picks")})
STAGES.update({f"{name}_pdl": STAGES[name] for name in list(STAGES)})


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kernels_compile_for_sm90(variant):
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, name, args, consts, warps = VARIANTS[variant]
    mod = importlib.import_module(f"qpfast.kernels.{module}")
    fn = getattr(mod, name)
    if isinstance(warps, tuple):                  # (rows, Hkv, group): the wrapper's own launch plan
        rows, hkv, group = warps
        cfg = dict(mod.prefix_plan(rows, hkv, group, 128, 512, 132)[0])
        warps = cfg.pop("num_warps")
        cfg.pop("num_stages")
        consts = dict(consts, GROUP=group, HEAD_DIM=128, DOT_PRECISION="tf32", **cfg)
    if variant.endswith("_pdl"):                  # programmatic dependent launch (kernels.launch)
        consts, options = dict(consts, USE_PDL=True), dict(launch_pdl=True)
    else:
        consts, options = (dict(consts, USE_PDL=False) if "USE_PDL" in fn.arg_names else consts), {}
    if "PREFETCH" in fn.arg_names:                # the projections' weight prefetch comes with PDL
        consts = dict(consts, PREFETCH=consts["USE_PDL"])
    signature = {**args, **{k: "constexpr" for k in consts}}
    assert sorted(signature) == sorted(fn.arg_names), "the test's argument list is out of date"
    signature = {n: signature[n] for n in fn.arg_names}
    # as a launch on the GPU specializes them: pointers (torch's allocations), strides, split
    # lengths (whole key / K blocks) and the projections' sizes divisible by 16, without
    # which the loads are neither vectorized nor pipelined
    aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
               if signature[n].startswith("*") or n.startswith("stride") or n in ("split_len", "N", "K")}
    src = ASTSource(fn, signature, {(fn.arg_names.index(k),): v for k, v in consts.items()}, aligned)
    stages = STAGES.get(variant, 3)
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages, **options))
    except RuntimeError as exc:                   # the tool chain, not the kernel
        if "ptxas" in str(exc) and "not found" in str(exc):
            pytest.skip(f"no ptxas: {exc}")
        raise
    assert ".entry " + name in kernel.asm["ptx"]
    assert kernel.asm["cubin"]
    assert kernel.metadata.shared <= SMEM_PER_BLOCK, f"{kernel.metadata.shared} bytes of shared memory"
    ptx = kernel.asm["ptx"]
    if variant.endswith("_pdl"):                  # waits for the kernel ahead, then lets the next launch
        assert ptx.index("griddepcontrol.wait") < ptx.index("griddepcontrol.launch_dependents")
        assert kernel.metadata.launch_pdl
        if "PREFETCH" in fn.arg_names:            # what the kernel reads, asked of the L2 before the wait
            prefetches = [m.start() for m in re.finditer(r"cp\.async\.bulk\.prefetch\.L2", ptx)]
            if name == "_linear_kernel":          # the weight rows (gate and up)
                calls = 2 if consts["SWIGLU"] else 1
            else:                                 # the own keys and values (and the prefix's)
                calls = 4 if consts["PREFIX_MODE"] else 2
            assert prefetches and len(prefetches) % calls == 0    # (a thread may issue several pieces)
            assert max(prefetches) < ptx.index("griddepcontrol.wait")
    else:
        assert "griddepcontrol" not in ptx
