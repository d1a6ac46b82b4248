"""Where an export starts: a deployed program and the input shape it was built for, from a
training checkpoint (converted) or a deployed-model file. The file I/O of the export wing
lives here, so :mod:`binsense.export.common` stays arithmetic."""

from __future__ import annotations

from binsense.deploy.infer import file_input_shape
from binsense.deploy.program import DeployedModel
from binsense.errors import BinsenseError


def load_for_export(
    checkpoint: str | None = None, deployed_path: str | None = None, allow_large: bool | None = None
) -> tuple[DeployedModel, tuple[int, int, int], str]:
    """``(program, input shape (C, H, W), data set name)`` from a training checkpoint
    (converted) or a deployed-model file (its manifest's input shape, else its data set's:
    :func:`binsense.deploy.infer.file_input_shape`, the one answer ``binsense infer`` uses)."""
    from binsense.data import dataset_info

    if (checkpoint is None) == (deployed_path is None):
        raise BinsenseError("give --checkpoint RUN/checkpoint.pt or --deployed model.bsd (one).")
    if checkpoint is not None:
        from binsense.deploy import convert
        from binsense.train import load_model

        model, config = load_model(checkpoint, allow_large=allow_large)
        info = dataset_info(config.dataset)
        return convert(model), (info.in_channels, *info.image_size), config.dataset
    from binsense.deploy.fileformat import read_deployed

    loaded = read_deployed(deployed_path)
    shape = file_input_shape(loaded.meta)
    if shape is None:
        raise BinsenseError(
            f"{deployed_path!r} names neither its input shape nor a built-in data set, so the "
            "input size is unknown: export from the checkpoint instead."
        )
    dataset = loaded.meta.get("dataset")
    return loaded.model, shape, dataset if isinstance(dataset, str) else ""


__all__ = ["load_for_export"]
