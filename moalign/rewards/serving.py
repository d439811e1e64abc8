"""The reward model as an MLflow pyfunc, so a registered version scores text anywhere MLflow loads.

The multi-head model is not a transformers pipeline, so the transformers flavor cannot hold it; the
pyfunc wraps the saved folder (``save_pretrained`` backbone, ``heads.safetensors``,
``reward_heads.json``, ``reward_stats.json``, tokenizer) as an artifact and this class as the loader.

``predict`` takes a DataFrame (or a list of dicts) with ``prompt`` and ``response`` columns; a
prompt may carry MOSLIM control tags. It returns, per row, each head's expected intensity
(``<dimension>``) and, where the prompt has tags, the mapped reward of Eq. 11 (``mapped_reward``).
"""

from __future__ import annotations

import mlflow.pyfunc

ARTIFACT = "reward_model"
MAPPED_REWARD_COLUMN = "moslim_mapped_reward"


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoTokenizer

        from moalign.models import from_pretrained
        from moalign.rewards.mapping import RewardStats
        from moalign.rewards.model import MultiHeadRewardModel

        folder = context.artifacts[ARTIFACT]
        self.model = MultiHeadRewardModel.load(folder)
        self.tokenizer = from_pretrained(AutoTokenizer, folder)
        self.stats = RewardStats.load(folder)

    # no type hints: MLflow would read them as an input schema
    def predict(self, context, model_input, params=None):
        import pandas as pd

        from moalign.rewards.control import expected_intensity, target_classes
        from moalign.rewards.model import score_texts

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(list(model_input))
        missing = [c for c in ("prompt", "response") if c not in frame.columns]
        if missing:
            raise ValueError(f"the input needs columns prompt and response; missing: {', '.join(missing)}")
        dims, classes = list(self.model.dimensions), list(self.model.n_classes)
        targets, stripped = target_classes([str(p) for p in frame["prompt"]], dims, classes)
        probs = score_texts(self.model, self.tokenizer, stripped, [str(r) for r in frame["response"]])
        out = pd.DataFrame({d: expected_intensity(p).tolist() for d, p in zip(dims, probs, strict=True)})
        tagged = (targets != -1).any(dim=1)
        rewards = self.stats.rewards(probs, targets).tolist()
        out[MAPPED_REWARD_COLUMN] = [r if t else None for r, t in zip(rewards, tagged.tolist(), strict=True)]
        return out
