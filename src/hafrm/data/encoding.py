"""Turn canonical pairs into token ids for the shared-backbone model, and batch chosen+rejected together.

A sequence is prompt tokens followed by response tokens. The response is what both heads judge: the
reward head reads the hidden state of the last (non-pad) token, the policy head scores response
tokens only. When a pair is longer than max_length the prompt is cut from the left first (the most
recent turns stay) and, if that is not enough, the response is cut from the left, so the response
end, where the reward is read, is always kept.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

from hafrm.data.formats import Messages

MIN_MAX_LENGTH = 8
"""The smallest max_length accepted anywhere. A truncated row keeps the prompt's end and the responses' ends;
below this it is mostly chat-template tokens and its score means nothing. A floor against typos such as
`--max-length 5`, not a tuned value."""

EVAL_POSITION = "eval_position"  # an eval pair's index in its set, carried through batches to put its scores back

HH_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
HH_ASSISTANT_PREFIX = "\n\nAssistant:"

# What each token of a batch row is (see model/hybrid.py's sequence layout): padding, prompt, a response (the chosen one
# of a pair, or the only one), or the rejected response of a pair sharing its prompt.
PAD, PROMPT, RESPONSE, REJECTED = 0, 1, 2, 3

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import datasets


def chat_template_for(prompt_template: str) -> str:
    """A Jinja chat template that writes each user turn as `prompt_template` with {prompt} replaced by the turn's
    text (a system message before it, on its own line) and each assistant turn as one space, the answer and EOS:
    the paper code's formats, e.g. `Instruct: {prompt}\nOutput:` (Phi-2) or `[INST] {prompt} [/INST]` (Mistral,
    no BOS). As the tokenizer's chat template it goes into every export, so every reader formats the same way."""
    if prompt_template.count("{prompt}") != 1:
        raise ValueError(f"prompt_template must contain {{prompt}} once, got {prompt_template!r}")
    before, after = (json.dumps(part) for part in prompt_template.split("{prompt}"))
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}{{ '\\n' }}"
        f"{{% elif message['role'] == 'user' %}}{{{{ {before} }}}}{{{{ message['content'] }}}}{{{{ {after} }}}}"
        "{% else %}{{ ' ' }}{{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    )


def hh_chat_template(tokenizer) -> str:
    """Anthropic HH text as a Jinja chat template, for a tokenizer without one: each turn `\\n\\nHuman: ...` (roles
    as `HH_ROLES`), the generation prompt `\\n\\nAssistant:`, a final assistant turn followed by EOS, after the
    special tokens the tokenizer itself puts before plain text (e.g. Gemma's and Llama's BOS). Training gives it
    to such a tokenizer (`ensure_chat_template`), so the export carries the format it trained on and every reader that
    calls `apply_chat_template` (transformers, RewardBench, OpenRLHF, pipelines) formats as training did."""
    probe = tokenizer("x", add_special_tokens=False)["input_ids"]
    with_specials = tokenizer("x")["input_ids"]
    start = next((i for i in range(len(with_specials)) if with_specials[i : i + len(probe)] == probe), None)
    if start is None:
        logger.warning("Could not tell which special tokens the tokenizer adds to plain text: the HH format gets none")
        start = 0
    leading = tokenizer.decode(with_specials[:start]) if start else ""
    prefix = "{{ bos_token }}" if leading == tokenizer.bos_token else "{{ " + json.dumps(leading) + " }}"
    roles = "".join(
        f"{{% {'if' if i == 0 else 'elif'} message['role'] == {json.dumps(role)} %}}{{{{ {json.dumps(name)} }}}}"
        for i, (role, name) in enumerate(HH_ROLES.items())
    )
    return (
        (prefix if leading else "")
        + "{% for message in messages %}{{ '\\n\\n' }}"
        + roles
        + "{% else %}{{ message['role'] }}{% endif %}{{ ': ' }}{{ message['content'] }}"
        "{% if loop.last and message['role'] == 'assistant' and eos_token and not add_generation_prompt %}"
        "{{ eos_token }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ " + json.dumps(HH_ASSISTANT_PREFIX) + " }}{% endif %}"
    )


def ensure_chat_template(tokenizer):
    """The tokenizer, given `hh_chat_template` if it has no chat template of its own (training and every export
    call this, so a base model's export carries the format it was trained on)."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = hh_chat_template(tokenizer)
        logger.info(
            "The tokenizer has no chat template: conversations are HH text (\\n\\nHuman: ... \\n\\nAssistant:), "
            "written into its chat template so exports carry it"
        )
    return tokenizer


KEEP_RESPONSE_ENDS, PAPER_TRUNCATION = "keep-response-ends", "paper"
TRUNCATIONS = (KEEP_RESPONSE_ENDS, PAPER_TRUNCATION)


class PairEncoder:
    """Format conversations with the tokenizer's chat template and tokenize them. A tokenizer without one is given
    HH text as its template (`ensure_chat_template`), so the export it goes into formats as training did.

    A conversation is tokenized whole, once, so its ids are those of `apply_chat_template` on the whole
    conversation (what TRL's RewardTrainer, RewardBench and every serving path see). The prompt is the longest
    prefix of whole tokens it shares with the prompt-only text; a token that merges across the boundary belongs
    to the response (as TRL's DPO split does). The chosen and rejected sequences of a pair share that prefix.
    """

    def __init__(self, tokenizer, max_length: int = 512, truncation: str = KEEP_RESPONSE_ENDS):
        if max_length < MIN_MAX_LENGTH:
            raise ValueError(f"max_length must be at least {MIN_MAX_LENGTH}, got {max_length}")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {truncation!r}")
        self.tokenizer = ensure_chat_template(tokenizer)
        self.max_length = max_length
        self.truncation = truncation

    # ------------------------------------------------------------------ text

    def prompt_text(self, prompt: Messages) -> str:
        """The prompt as formatted text, ending where the assistant's answer starts."""
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def conversation_text(self, prompt: Messages, response: str) -> str:
        """The whole conversation, prompt then response and the turn end the format puts after it."""
        prompt_text = self.prompt_text(prompt)
        full = self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
        return full if full.startswith(prompt_text) else prompt_text + response + (self.tokenizer.eos_token or "")

    @cached_property
    def assistant_prefix(self) -> str:
        """What the format writes before an assistant's answer (e.g. `<|im_start|>assistant\\n`,
        HH's `\\n\\nAssistant:`)."""
        messages = [{"role": "user", "content": "x"}]
        with_prefix = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        without = self.tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
        return with_prefix[len(without) :] if with_prefix.startswith(without) else ""

    @cached_property
    def turn_end(self) -> str:
        """What the format writes after an assistant's answer (e.g. `<|im_end|>\\n`, or the EOS token)."""
        sentinel = "\u2063hafrm\u2063"
        full = self.conversation_text([{"role": "user", "content": "x"}], sentinel)
        return full[full.rindex(sentinel) + len(sentinel) :]

    def is_formatted(self, text: str) -> bool:
        """A prompt that is already formatted text (it ends where the assistant's answer starts)."""
        return bool(self.assistant_prefix) and text.endswith(self.assistant_prefix)

    def normalise_rollout(self, text: str, finished: bool = False) -> str:
        """A formatted conversation as training formatted it.

        Drops leading pad/EOS strings (left padding that RL trainers such as OpenRLHF decode with the text) and
        trailing ones (right padding). A turn that ended at EOS, or is `finished` (a completion decoded without
        special tokens), gets the rest of the format's turn end, so `...answer<|im_end|>` scores as
        `...answer<|im_end|>\\n`. A rollout cut off before EOS is scored as given. Text without the BOS token the
        format starts with (decoded without special tokens) gets it back.
        """
        eos = self.tokenizer.eos_token
        fillers = [t for t in {self.tokenizer.pad_token, eos} if t]
        start, end = 0, len(text)  # linear scans by index: no copy, no regular expression, whatever the input
        while stripped := next((t for t in fillers if text.startswith(t, start, end)), None):
            start += len(stripped)
        body_end = end
        while stripped := next((t for t in fillers if text.endswith(t, start, body_end)), None):
            body_end -= len(stripped)
        finished = finished or bool(eos and text.find(eos, body_end, end) != -1)
        text = text[start:body_end]
        if not text.startswith(self.format_start):
            text = self.format_start + text
        turn_end = self.turn_end
        specials = self.tokenizer.all_special_tokens
        for cut in range(len(turn_end), 0, -1):
            head = turn_end[:cut]
            if text.endswith(head) and (cut == len(turn_end) or any(head.endswith(t) for t in specials)):
                return text + turn_end[cut:]
        return text + turn_end if finished else text

    @cached_property
    def format_start(self) -> str:
        """The BOS token where the format starts with it (e.g. Llama 3's template, or HH text for a tokenizer that
        puts BOS before plain text), else ''."""
        bos = self.tokenizer.bos_token
        return bos if bos and self.prompt_text([{"role": "user", "content": "x"}]).startswith(bos) else ""

    # ------------------------------------------------------------------ tokens

    def tokenize(self, text: str) -> list[int]:
        """Token ids of formatted text; the chat template has written its special tokens."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def split(self, prompt: Messages, responses: list[str]) -> tuple[list[int], list[list[int]]]:
        """(shared prompt ids, one id list per response): each conversation tokenized whole, then split by position."""
        prompt_alone = self.tokenize(self.prompt_text(prompt))
        conversations = [self.tokenize(self.conversation_text(prompt, r)) for r in responses]
        shared = min(common_prefix_length(prompt_alone, ids) for ids in conversations)
        return conversations[0][:shared], [ids[shared:] for ids in conversations]

    def truncate(self, prompt_ids: list[int], responses: list[list[int]]) -> tuple[list[int], list[list[int]], bool]:
        """Cut a shared prompt and its responses to max_length, keeping every response's end (or, truncation
        "paper", the prompt's last quarter of max_length and each response's first three quarters)."""
        longest = max(len(r) for r in responses)
        if len(prompt_ids) + longest <= self.max_length:
            return prompt_ids, responses, False
        if self.truncation == PAPER_TRUNCATION:  # as TRL 0.7's DPOTrainer did it for the paper's code
            prompt_budget = self.max_length // 4
            kept_prompt = prompt_ids[max(0, len(prompt_ids) - prompt_budget) :]
            if len(kept_prompt) + longest > self.max_length:
                responses = [r[: self.max_length - prompt_budget] for r in responses]
            return kept_prompt, responses, True
        prompt_budget = max(self.max_length - longest, min(len(prompt_ids), self.max_length // 2))
        response_budget = self.max_length - prompt_budget
        kept_prompt = prompt_ids[len(prompt_ids) - prompt_budget :] if prompt_budget else []
        return kept_prompt, [r[max(0, len(r) - response_budget) :] for r in responses], True

    def encode_pair(self, pair: dict) -> dict:
        """Token ids of chosen and rejected sequences and where each response starts."""
        prompt_ids, (chosen, rejected) = self.split(pair["prompt"], [pair["chosen"], pair["rejected"]])
        prompt_ids, (chosen, rejected), truncated = self.truncate(prompt_ids, [chosen, rejected])
        return {
            "chosen_input_ids": prompt_ids + chosen,
            "rejected_input_ids": prompt_ids + rejected,
            "prompt_length": len(prompt_ids),
            "margin": float(pair.get("margin") or 0.0),
            "truncated": truncated,
            "length": len(prompt_ids) + len(chosen) + len(rejected),  # of the shared-prompt row; batches group by it
        }

    def encode_single(self, prompt: Messages, response: str) -> dict:
        """One prompt/response sequence for scoring."""
        prompt_ids, (response_ids,) = self.split(prompt, [response])
        prompt_ids, (response_ids,), _ = self.truncate(prompt_ids, [response_ids])
        return {"input_ids": prompt_ids + response_ids, "prompt_length": len(prompt_ids)}

    def encode_text(self, text: str, finished: bool = False) -> list[int]:
        """Token ids of an already formatted conversation (an RL rollout), normalised and cut from the left."""
        return self.tokenize(self.normalise_rollout(text, finished))[-self.max_length :]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """How many leading ids two sequences share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def encode_pairs(pairs: list[dict], encoder: PairEncoder, report) -> datasets.Dataset:
    """Tokenize canonical pairs into a datasets.Dataset; count pairs cut to max_length in the (SkipReport) report."""
    import datasets

    encoded = [encoder.encode_pair(p) for p in pairs]
    report.truncated += sum(e.pop("truncated") for e in encoded)
    return datasets.Dataset.from_list(encoded)


def pad_sequences(
    sequences: list[list[int]], prompt_lengths: list[int], pad_id: int, padding_side: str = "right"
) -> dict:
    """One sequence per row, padded to a common length; segment_ids mark prompt, response and padding."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    segment_ids = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        start = width - len(ids) if padding_side == "left" else 0
        input_ids[row, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        segment_ids[row, start : start + prompt_length] = PROMPT
        segment_ids[row, start + prompt_length : start + len(ids)] = RESPONSE
    return {"input_ids": input_ids, "segment_ids": segment_ids}


def shared_prompt_rows(features: list[dict], pad_id: int) -> dict:
    """One row per pair, [prompt | chosen | rejected], right-padded; rejected positions continue from the prompt."""
    rows = []
    for f in features:
        length = f["prompt_length"]
        prompt, chosen, rejected = (
            f["chosen_input_ids"][:length],
            f["chosen_input_ids"][length:],
            f["rejected_input_ids"][length:],
        )
        segments = [PROMPT] * length + [RESPONSE] * len(chosen) + [REJECTED] * len(rejected)
        positions = list(range(length + len(chosen))) + list(range(length, length + len(rejected)))
        rows.append((prompt + chosen + rejected, segments, positions))
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    segment_ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, segments, positions) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        segment_ids[row, : len(ids)] = torch.tensor(segments)
        position_ids[row, : len(ids)] = torch.tensor(positions)
    return {"input_ids": input_ids, "segment_ids": segment_ids, "position_ids": position_ids}


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, so little of each batch is padding; callers put results back by index."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def batches_by_length(dataset, collator, batch_size: int, device, description: str, progress: bool = True):
    """(indices, batch on device) over an encoded pair data set in batches of similar length, for passes whose
    results are put back in the data set's order by index (reference log-probs, frozen-trunk states, scoring)."""
    from tqdm.auto import tqdm

    batches = length_sorted_batches(dataset["length"], batch_size)
    for indices in tqdm(batches, desc=description, leave=False, disable=not progress):
        batch = collator([dataset[i] for i in indices])
        yield indices, {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}


@dataclass
class PairCollator:
    """A batch of B pairs for one forward pass whose outputs are the B chosen responses, then the B rejected ones.

    share_prompt: one row per pair, [prompt | chosen | rejected] (the prompt is computed once); otherwise 2B rows,
    chosen sequences then rejected ones, for attention implementations that cannot take a block mask.
    """

    pad_token_id: int
    padding_side: str = "right"
    share_prompt: bool = True
    trunk: object | None = None  # a model.trunk.TrunkStore: cached frozen-trunk states of shared rows, by pair_index

    def __call__(self, features: list[dict]) -> dict:
        if self.share_prompt:
            batch = shared_prompt_rows(features, self.pad_token_id)
            if self.trunk is not None:
                batch["trunk_states"] = self.trunk.batch(
                    [f["pair_index"] for f in features], batch["input_ids"].shape[1]
                )
        else:
            sequences = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
            batch = pad_sequences(
                sequences, [f["prompt_length"] for f in features] * 2, self.pad_token_id, self.padding_side
            )
        batch["margin"] = torch.tensor([f["margin"] for f in features], dtype=torch.float32)
        if EVAL_POSITION in features[0]:
            batch[EVAL_POSITION] = torch.tensor([f[EVAL_POSITION] for f in features])
        if "reference_chosen_logps" in features[0]:
            batch["reference_logps"] = torch.tensor(
                [f["reference_chosen_logps"] for f in features] + [f["reference_rejected_logps"] for f in features],
                dtype=torch.float32,
            )
        return batch
