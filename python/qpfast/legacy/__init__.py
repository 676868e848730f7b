"""The legacy QP pipeline (jieba + gazetteers + rules): stage-1 teacher and baseline.

    from qpfast.legacy import legacy_pipeline
    legacy_pipeline().label("兰蔻小黑瓶适合什么肤质")   # -> QPResult
"""
from __future__ import annotations

from .pipeline import LegacyPipeline, legacy_pipeline

__all__ = ["LegacyPipeline", "legacy_pipeline"]
