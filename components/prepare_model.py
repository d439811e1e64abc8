"""Stage prepare_model: the starting policy as a plain HF directory (safetensors + tokenizer).

The embedded SmolLM2 GGUF is dequantised once here; DVC caches the result, so no later stage (and no
rerun) touches GGUF or the network.
"""

from __future__ import annotations

from pathlib import Path

import typer

from components._stage import PARAMS_OPTION, named_errors, setup_logging, stage_params

app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    out: Path = typer.Option(..., help="Output model directory (models/base in dvc.yaml)."),
    params: Path = PARAMS_OPTION,
) -> None:
    config = stage_params(params)
    log = setup_logging("prepare_model")
    from moalign.models import ModelDirError, prepare_base_model

    log.info("materialising model.source=%s into %s", config.model.source, out)
    with named_errors(ModelDirError):
        prepare_base_model(config.model.source, out, path=config.model.path, seed=config.seed)


if __name__ == "__main__":
    app()
