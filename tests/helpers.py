"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on the path)."""

from hafrm.defaults import DEFAULT_TRAIN_DATA

TINY_RUN = {"max_train_pairs": 8, "max_length": 64, "batch_size": 4, "micro_batch_size": 2}


def train_command(model_dir, output_dir, *extra: str, **options) -> list[str]:
    """`hafrm train` arguments for a small run on the packaged sample pairs: keyword options (TrainConfig field
    names) add to or override TINY_RUN; extra arguments go last, so they win over both."""
    chosen = {"model": model_dir, "train_data": DEFAULT_TRAIN_DATA, **TINY_RUN, **options, "output_dir": output_dir}
    flags = [item for name, value in chosen.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    return ["train", *flags, *extra]
