"""One training loop for SFT and every distillation method: a method is a batch source plus a per-token loss.

- :mod:`.losses`: per-token CE / divergence mix (pure functions);
- :mod:`.objective`: chunked full-vocabulary loss with global-token normalisation;
- :mod:`.batches`, :mod:`.replay`, :mod:`.sources`: what each step trains on (ground truth, rollouts, replay,
  GKD mix, DistiLLM's adaptive schedule, MiniLLM's reused rollouts);
- :mod:`.policy_gradient`, :mod:`.lm_corpus`: MiniLLM's rewards, advantages, importance weights and PPO loss; its
  optional pre-training LM term;
- :mod:`.optim`, :mod:`.state`, :mod:`.dev`, :mod:`.progress`, :mod:`.seeding`: AdamW + cosine, atomic resumable
  state and its fingerprint, dev metrics, console progress, derived random streams;
- :mod:`.job`, :mod:`.step`, :mod:`.step_stats`, :mod:`.traces`, :mod:`.outputs`: a run's inputs and result, the
  step's examples and gradient reduction, its named statistics and logging windows, rollout traces, the best
  checkpoint and the published output folder;
- :mod:`.loop`: :func:`train`.
"""
from switch_core.training.batches import (
    PolicyTokens,
    Sequence1D,
    TrainBatch,
    batch_from_examples,
    batch_from_sequences,
)
from switch_core.training.dev import DevData
from switch_core.training.job import SUMMARY_FILE, TIMINGS_FILE, TrainingSetupError, TrainJob, TrainResult
from switch_core.training.loop import train
from switch_core.training.losses import LossSpec, token_loss_terms
from switch_core.training.objective import OutputHeadError, batch_loss
from switch_core.training.replay import ReplayBuffer
from switch_core.training.sources import Action, BatchSource, MethodSetupError, choose_action
from switch_core.training.state import StateError, StateMismatchError
from switch_core.training.traces import TRACE_FILE, read_traces

__all__ = [
    "SUMMARY_FILE",
    "TIMINGS_FILE",
    "TRACE_FILE",
    "Action",
    "BatchSource",
    "DevData",
    "LossSpec",
    "MethodSetupError",
    "OutputHeadError",
    "PolicyTokens",
    "ReplayBuffer",
    "Sequence1D",
    "StateError",
    "StateMismatchError",
    "TrainBatch",
    "TrainJob",
    "TrainResult",
    "TrainingSetupError",
    "batch_from_examples",
    "batch_from_sequences",
    "batch_loss",
    "choose_action",
    "read_traces",
    "token_loss_terms",
    "train",
]
