"""One line on stderr per trial event (started, validated, finished, failed), instead of Tune's tables."""
from __future__ import annotations

import sys
from typing import Any

from ray import tune

from rayseq.experiments.spec import QNET_PREFIX
from rayseq.metrics import QNET_GREEDY_BLEU, QNET_VALID_TD


class TrialProgress(tune.Callback):
    """``[NAME] KEY started on node …`` / ``… valid BLEU …`` / ``… done: test BLEU …`` / ``… FAILED: …``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _say(self, trial: Any, text: str) -> None:
        print(f"[{self.name}] {trial.config['trial']['key']} {text}", file=sys.stderr, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trial, "started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("status") == "ok":
            reused = " (read back: it had finished)" if result.get("reused") else ""
            if trial.config["trial"]["key"].startswith(QNET_PREFIX):  # a shared Q-net: no actor trained, its figures
                self._say(trial, f"done: Q-net held-out TD {result.get(QNET_VALID_TD, float('nan')):.3f}, greedy BLEU given "
                                 f"y* {result.get(QNET_GREEDY_BLEU, float('nan')):.2f}{reused}")
            else:
                self._say(trial, f"done: test BLEU {result['test_bleu']:.2f}, best valid BLEU {result['valid_bleu']:.2f}{reused}")
        elif "bleu/valid" in result:
            self._say(trial, f"step {result.get('step')}: valid BLEU {result['bleu/valid']:.2f}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._say(trial, f"FAILED (see {trial.config['trial']['run_dir']}/compare_error.txt)")
