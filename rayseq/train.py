"""``rayseq train``'s library entry point: ``train(cfg)`` runs the algorithm's registered driver
(``rayseq.drivers``)."""
from rayseq.drivers import train

__all__ = ["train"]
