"""VL-BERT modeling: importing this package registers the ``VLBERT`` and ``VLBERTPretrain``
meta-architectures and the task heads."""
from .bert import build_bert, build_tokenizer, resolve_pretrained
from .ddp import keep_alive
from .heads import VLBERT_HEAD_REGISTRY, VCRHead, build_vlbert_head
from .meta_arch import VLBERT, PretrainEmbeddings, VLBERTPretrain, VLBertBatch
from .visual import RegionFeatureExtractor, VisualFusion, geometry_embedding
from .vl_bert import VisualLinguisticBert, VLBertOutput

__all__ = ["build_bert", "build_tokenizer", "resolve_pretrained", "VLBERT_HEAD_REGISTRY", "VCRHead",
           "build_vlbert_head", "VLBERT", "VLBERTPretrain", "PretrainEmbeddings", "VLBertBatch", "keep_alive",
           "RegionFeatureExtractor", "VisualFusion",
           "geometry_embedding", "VisualLinguisticBert", "VLBertOutput"]
