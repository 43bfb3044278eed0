"""Helpers shared by several test files (imported as `helpers`: pytest puts tests/ on the path)."""

import contextlib
import socket
import threading
import time

from hafrm.data import PairCollator, PairEncoder
from hafrm.data.encoding import PAD
from hafrm.io.defaults import DEFAULT_TRAIN_DATA

TINY_RUN = {"max_train_pairs": 8, "max_length": 64, "batch_size": 4, "micro_batch_size": 2}


def train_command(model_dir, output_dir, *extra: str, **options) -> list[str]:
    """`hafrm train` arguments for a small run on the packaged sample pairs: keyword options (TrainConfig field
    names) add to or override TINY_RUN; extra arguments go last, so they win over both."""
    chosen = {"model": model_dir, "train_data": DEFAULT_TRAIN_DATA, **TINY_RUN, **options, "output_dir": output_dir}
    flags = [item for name, value in chosen.items() for item in (f"--{name.replace('_', '-')}", str(value))]
    return ["train", *flags, *extra]


def batch_for(tokenizer, pairs, padding_side="right", max_length=96, share_prompt=False):
    """A collated batch of pairs, as training builds it (separate rows unless share_prompt)."""
    encoder = PairEncoder(tokenizer, max_length)
    return PairCollator(tokenizer.pad_token_id, padding_side, share_prompt)([encoder.encode_pair(p) for p in pairs])


def padding_mask(batch):
    return (batch["segment_ids"] != PAD).long()


@contextlib.contextmanager
def running(app, limits):
    """The app under uvicorn, configured as `hafrm serve` configures it, on a free loopback port."""
    import uvicorn

    from hafrm.serve.server import server_config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = uvicorn.Server(server_config(app, "127.0.0.1", port, limits, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    assert instance.started
    try:
        yield port
    finally:
        instance.should_exit = True
        thread.join(timeout=10)
