"""accord's gradient combiners inside RLlib's own Learner (install the `rllib` extra).

- `CombinedGradientsMixin` and the ready learners `AccordPPOTorchLearner`,
  `AccordIMPALATorchLearner`, `AccordAPPOTorchLearner`, `AccordSACTorchLearner`: per-term
  gradients on the shared parameters, combined by Sum / CosineGate / OLAux / PCGrad, then
  RLlib's own clipping and optimizer step (see `accord.rllib.learner`).
- `combiner_settings(name, **kwargs)`: what to pass as `config.learners(learner_config_dict=...)`.
- `SharedEncoderMultiRLModule`: one module per task over one encoder object.
- `MultiTaskCartPole`, `multitask_ppo_config`: CartPole variants as tasks, ready to train.
"""
from accord.rllib.learner import (AccordAPPOTorchLearner, AccordIMPALATorchLearner,
                                  AccordPPOTorchLearner, AccordSACTorchLearner,
                                  CombinedGradientsMixin, combiner_settings)
from accord.rllib.multitask_cartpole import MultiTaskCartPole, multitask_ppo_config
from accord.rllib.shared_encoder import SharedEncoderMultiRLModule, SharedSACEncoderMultiRLModule

__all__ = [
    "AccordAPPOTorchLearner", "AccordIMPALATorchLearner", "AccordPPOTorchLearner",
    "AccordSACTorchLearner", "CombinedGradientsMixin", "MultiTaskCartPole",
    "SharedEncoderMultiRLModule", "SharedSACEncoderMultiRLModule", "combiner_settings",
    "multitask_ppo_config",
]
