"""Stage policy_inputs: what train_policy reads besides its pairs and starting model, as hashes.

For an online method (MOSLIM, MORLHF, Rewarded Soups: ``moalign/training/methods.py``) that is the
reward model and its code; for an offline one (AMoPO, DPO, ...) nothing. train_policy depends on
this small file rather than on ``models/reward``, so retraining the reward model reruns the online
methods only: DVC cannot make a dependency conditional on a parameter, but it skips a stage whose
dependencies hash the same.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    reward_model: Path = typer.Option(..., help="The train_reward stage's model (models/reward)."),
    out: Path = typer.Option(..., help="Output JSON (data/policy_inputs.json)."),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("policy_inputs")
    from moalign.data.schema import write_json
    from moalign.training import policy_inputs

    inputs = policy_inputs(config, reward_model)
    write_json(out, inputs)
    log.info("%s reads %s", config.train.method,
             f"reward model {inputs['reward_model']}" if inputs["reward_model"] else "no reward model")


if __name__ == "__main__":
    app()
