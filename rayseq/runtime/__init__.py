"""The Ray/RLlib runtime: the one place that imports ``ray.rllib``.

It wires the plain-torch math (``rayseq.models``, ``rayseq.algorithms``) into RLlib's new API
stack: an RLModule wrapping the actor, a TorchLearner that calls the algorithms' loss functions,
and Algorithm subclasses that feed it batches.
"""
