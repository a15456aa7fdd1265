"""A MultiRLModule whose modules (one per task) share one encoder object.

RLlib builds each module of a MultiRLModule from its own spec, so K identical specs give K
separate encoders. `SharedEncoderMultiRLModule` ties them after building: every module's
`encoder` attribute becomes the first module's (in sorted module-id order, so env runners and
learners tie the same way). Heads (pi, vf, ...) stay per task. Works with RLlib's default
PPO / IMPALA / APPO modules, whose trunk is `module.encoder`; set `encoder_attrs` for others
(SAC: ("pi_encoder", "qf_encoder")).

With RLlib's stock learners a tied encoder is trained by every module's optimizer, once per
module per update; `accord.rllib.CombinedGradientsMixin` keeps it in one optimizer.
"""
from __future__ import annotations

from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule


class SharedEncoderMultiRLModule(MultiRLModule):
    """Ties `encoder_attrs` of all modules to the first module's objects."""

    encoder_attrs: tuple[str, ...] = ("encoder",)

    def setup(self):
        super().setup()
        ids = sorted(self._rl_modules)
        if len(ids) < 2:
            return
        first = self._rl_modules[ids[0]]
        for attr in self.encoder_attrs:
            if not hasattr(first, attr):
                raise ValueError(f"module {ids[0]!r} has no attribute {attr!r} to share; "
                                 f"set encoder_attrs to the names of its trunk modules")
            for mid in ids[1:]:
                setattr(self._rl_modules[mid], attr, getattr(first, attr))


class SharedSACEncoderMultiRLModule(SharedEncoderMultiRLModule):
    """SAC modules sharing the policy and the critic encoders (the twin critic keeps its own)."""

    encoder_attrs = ("pi_encoder", "qf_encoder")
