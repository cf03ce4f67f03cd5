"""VL-BERT modeling: importing this package registers the ``VLBERT`` meta-architecture."""
from .bert import build_bert, build_tokenizer, resolve_pretrained
from .heads import VLBERT_HEAD_REGISTRY, VCRHead, build_vlbert_head
from .meta_arch import VLBERT, VLBertBatch
from .visual import RegionFeatureExtractor, VisualFusion, geometry_embedding
from .vl_bert import VisualLinguisticBert, VLBertOutput

__all__ = ["build_bert", "build_tokenizer", "resolve_pretrained", "VLBERT_HEAD_REGISTRY", "VCRHead",
           "build_vlbert_head", "VLBERT", "VLBertBatch", "RegionFeatureExtractor", "VisualFusion",
           "geometry_embedding", "VisualLinguisticBert", "VLBertOutput"]
