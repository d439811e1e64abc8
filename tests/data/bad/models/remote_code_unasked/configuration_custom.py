"""A model's own code, shipped beside its config.json: moalign must refuse the model before running it."""

raise RuntimeError("moalign ran a model's own code although model.trust_remote_code is false")
