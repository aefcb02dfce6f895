"""Evaluation as a library: scores, decoding, and scoring a run's actor.

``bleu``    corpus BLEU-4 on token ids as the paper reported it, and sacrebleu (no torch)
``coco``    coco-caption's BLEU-1..4 and CIDEr-D for captioning (no torch)
``decode``  batched greedy / beam decoding of id sequences with an actor
``score``   ``evaluate`` (a run directory's actor on a split or on files: ``rayseq eval``) and
            ``validation_bleu`` (what the training drivers select actors by)

The BLEU functions are re-exported here (``from rayseq.evaluation import corpus_bleu_ids``); the
rest is imported from its module, so that importing this package does not import torch.
"""
from rayseq.evaluation.bleu import bleu_from_stats, corpus_bleu_ids, ids_to_text, sacrebleu_corpus

__all__ = ["bleu_from_stats", "corpus_bleu_ids", "ids_to_text", "sacrebleu_corpus"]
